"""The tables and summaries the commands print (rich tables, built from plain results; no computing here)."""

from __future__ import annotations

from pathlib import Path

from ..budget import Budget
from .output import Table, shown


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def budget_warnings(b: Budget) -> list[str]:
    notes = []
    if b.ratio > 1:
        notes.append(
            f"the output ({b.output_tokens:,} tokens) is larger than the input ({b.input_tokens:,}): ratio "
            f"{b.ratio:.2f} > 1, the 'compression' expands; use fewer --slow-frames or a slow pool"
        )
    return notes


def budget_table(b: Budget, context: int | None) -> Table:
    t = Table(title="token budget", show_header=True, header_style="bold")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_column("how", style="dim")
    t.add_row("frames (T)", _fmt_int(b.frames), "sampled from the video")
    t.add_row("patch grid", f"{b.grid[0]}x{b.grid[1]}", "image size / patch size")
    t.add_row("tokens per frame (N)", _fmt_int(b.tokens_per_frame), "Gh * Gw")
    t.add_row("input tokens", _fmt_int(b.input_tokens), "T * N")
    if b.layout == "frames":
        t.add_row("layout", "frames", "every frame pooled alike, no fast pathway")
        t.add_row("frame tokens", _fmt_int(b.slow_tokens), f"T * {b.slow_tokens_per_frame} ({b.slow_pool})")
    else:
        how = "min(T, slow frames), linspace" if b.slow_index == "linspace" else "slow frames, segment_start"
        t.add_row("slow frames (S)", _fmt_int(b.slow_frames), how)
        t.add_row("slow tokens", _fmt_int(b.slow_tokens), f"S * {b.slow_tokens_per_frame} ({b.slow_pool})")
        t.add_row("fast tokens", _fmt_int(b.fast_tokens), f"T * {b.fast_size[0]}x{b.fast_size[1]}")
    if b.newline != "no_token":
        where = {
            "grid": "one after each row of each frame",
            "frame": "one after each frame",
            "one_token": "one at the end",
        }
        t.add_row("newline tokens", _fmt_int(b.newline_tokens), f"{b.newline}: {where[b.newline]}")
    parts = ("frames" if b.layout == "frames" else "slow + fast") + (" + newlines" if b.newline_tokens else "")
    t.add_row("output tokens (L)", f"[bold]{_fmt_int(b.output_tokens)}[/]", parts)
    t.add_row("ratio", f"{b.ratio:.2f}", "L / input")
    if context is not None:
        spare = context - b.output_tokens
        t.add_row("context", _fmt_int(context), "--context")
        verdict = f"[green]fits, {spare:,} spare[/]" if spare >= 0 else f"[red]over by {-spare:,}[/]"
        t.add_row("fits", verdict, "context - L")
    return t


def plan_table(entries, context: int, reserve: int, grid, top: int) -> Table:
    """The planner's Pareto front, ``top`` rows."""
    grids = {tuple(e.budget.grid) for e in entries}
    each = len(grids) > 1  # Qwen3-VL: the grid follows the frame count; a column then, not the title
    where = "the grid of each row's frames" if each else f"{grid[0]}x{grid[1]} grid"
    t = Table(
        title=f"settings that fit {context:,} tokens ({where}, reserve {reserve:,}): Pareto front",
        caption=f"{len(entries)} non-dominated settings; ranked by frames, then slow detail, then fast detail",
    )
    names = ("#", "frames", *(("grid",) if each else ()), "slow", "pool", "fast", "slow tok", "fast tok", "total")
    for name in (*names, "spare"):
        t.add_column(name, justify="right" if name not in ("pool",) else "left")
    for i, e in enumerate(entries[:top]):
        b = e.budget
        fast = f"{b.fast_size[0]}x{b.fast_size[1]}"
        g = (f"{b.grid[0]}x{b.grid[1]}",) if each else ()
        t.add_row(str(i + 1), str(b.frames), *g, str(b.slow_frames), b.slow_pool, fast, _fmt_int(b.slow_tokens),
                  _fmt_int(b.fast_tokens), _fmt_int(b.output_tokens), _fmt_int(e.spare))  # fmt: skip
    return t


def plan_hint(entries, per_step: int = 1, by_rate: bool = False) -> str:
    """The flags of the planner's first row. ``per_step``: sampled frames per planned step (a Qwen-VL temporal
    patch is 2 frames); ``by_rate``: T follows each video (sampling by rate), so the row's frames are a cap
    (``--max-frames``), which a short video does not reach."""
    b = entries[0].budget
    newline = f" --newline {b.newline}" if b.newline != "no_token" else ""
    frames = f"--max-frames {b.frames * per_step}" if by_rate else f"--frames {b.frames * per_step}"
    if by_rate:
        newline += f"  ({b.frames} temporal patches of {per_step} frames at most; a shorter video gets fewer)"
    if b.layout == "frames":
        return f"use #1 with: --layout frames {frames} --slow-pool {b.slow_pool}{newline}"
    return (
        f"use #1 with: {frames} --slow-frames {b.slow_frames} --slow-pool {b.slow_pool} "
        f"--fast-size {b.fast_size[0]}x{b.fast_size[1]} --slow-index {b.slow_index}{newline}  (the *_avg pools cost "
        "the same as *_max)"
    )


def report_table(r, title: str) -> Table:
    t = Table(title=title)
    t.add_column("statistic")
    t.add_column("value", justify="right")

    def f(v, digits=2):
        return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else _fmt_int(v))

    t.add_row("token files", _fmt_int(r.files))
    t.add_row("input tokens", _fmt_int(r.input_tokens))
    t.add_row("output tokens", _fmt_int(r.output_tokens))
    t.add_row("overall ratio", f(r.ratio))
    t.add_row("ratio min / median / max", f"{f(r.ratio_min)} / {f(r.ratio_median)} / {f(r.ratio_max)}")
    t.add_row(
        "tokens per file min / median / max",
        f"{f(r.tokens_per_file_min)} / {f(r.tokens_per_file_median, 1)} / {f(r.tokens_per_file_max)}",
    )
    t.add_row("token width (D)", ", ".join(map(str, r.dims)) or "-")
    t.add_row("layout / newlines", ", ".join(f"{k}: {_fmt_int(v)}" for k, v in r.layouts.items()) or "-")
    if r.newline_tokens:
        t.add_row("of which newline tokens", _fmt_int(r.newline_tokens))
    if r.skipped:
        t.add_row("skipped (not token files)", f"[yellow]{len(r.skipped)}[/]")
    return t


def encode_summary(m: dict, target: Path, features: Path | None) -> Table:
    t = Table(title=f"encoded {shown(m['source'])}", show_header=False)
    t.add_column("k", style="bold")
    t.add_column("v")
    v = m["video"]
    t.add_row(
        "video", f"{v['num_frames']} frames, {v['fps']:.2f} fps, {v['duration']:.2f} s, {v['width']}x{v['height']}"
    )
    note = " (the video has fewer frames than --frames)" if m.get("short_video") else ""
    if isinstance(m.get("positions"), dict):  # a hf: tower: the aggregator's frames are temporal patches
        note += f" in {m['frames']} temporal patches of {m['positions'].get('temporal_patch', 2)}"
    t.add_row("sampled", f"{len(m.get('frame_indices') or []) or m['frames']} frames{note}")
    t.add_row("model", shown(f"{m['model']} ({m['pretrained']}), layer {m['layer']}, {m['dtype']} on {m['device']}"))
    t.add_row("grid", f"{m['grid'][0]}x{m['grid'][1]} = {m['tokens_per_frame']} tokens per frame")
    if m.get("layout") == "frames":
        parts = f"{m['frames']} frames of {m['slow_tokens'] // max(m['frames'], 1):,}"
    else:
        parts = f"slow {m['slow_tokens']:,} + fast {m['fast_tokens']:,}"
    if m.get("newline_tokens"):
        parts += f" + {m['newline_tokens']:,} newlines ({m['newline']})"
    t.add_row(
        "tokens",
        f"{m['input_tokens']:,} -> [bold]{m['output_tokens']:,}[/] ({parts}), ratio {m['ratio']:.2f}, width {m['dim']}",
    )
    tm = m.get("timings", {})
    t.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in tm.items()))
    t.add_row("written", shown(str(target) + (f" and features {features}" if features else "")))
    return t


def batch_table(report: dict, out_dir: Path) -> Table:
    run = report["run"]
    t = Table(title=f"batch -> {shown(out_dir)}")
    t.add_column("")
    t.add_column("count", justify="right")
    t.add_row("encoded", _fmt_int(run["ok"]))
    t.add_row("skipped (already done)", _fmt_int(run["skipped"]))
    t.add_row("failed", f"[red]{run['failed']}[/]" if run["failed"] else "0")
    for kind, n in sorted(run["failures_by_kind"].items()):
        t.add_row(f"  {kind}", _fmt_int(n))
    t.add_row("token files in folder", _fmt_int(report["files"]))
    t.add_row("output tokens in folder", _fmt_int(report["output_tokens"]))
    ratio = report.get("ratio")
    t.add_row("overall ratio", "-" if ratio is None else f"{ratio:.2f}")
    return t
