"""The ``slowfast`` command line: a thin typer layer that builds a config, calls one library function, shows it.

Only this module imports typer and rich, prints, and decides exit codes: 0 success, 1 a runtime failure (bad
video, bad weights, any failed video in a batch), 2 a usage error (bad flag, bad preset value). Heavy libraries
(torch, open_clip, decord) are imported inside the commands that need them, so ``--help`` and ``budget`` start
in the time typer itself takes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .budget import Budget, model_grid, plan, preflight, token_budget
from .config import FLAG_KEYS, Config, list_presets, load_preset, parse_hw, resolve_config
from .errors import ConfigError, SlowfastError

app = typer.Typer(
    name="slowfast",
    help="Turn videos into short, fixed-budget SlowFast token sequences for video LLMs.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rendering rich help panels imports rich.markdown (+50 ms)
)


class _LazyConsole:
    """A rich Console created on first use: `--help` and `--json` never pay for importing rich."""

    def __init__(self, **kwargs: Any):
        self._kwargs, self._console = kwargs, None

    def get(self):
        """The real ``rich.console.Console`` (for rich objects that need one, e.g. ``Progress``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


def Table(*args: Any, **kwargs: Any):  # noqa: N802 - stands in for rich.table.Table, imported on use
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


def printable(text: str) -> str:
    """``text`` with what a terminal would hide or act on shown as escapes: control characters (a newline in a
    file name cannot forge a log line: it shows as ``\\n``), and the lone surrogates that stand for bytes of a
    name that is not valid UTF-8 (shown as ``\\xe9``, the byte itself)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def shown(text: Any) -> str:
    """A user string (a path, an error naming one) made safe to print through rich: :func:`printable`, then every
    ``[`` escaped so that rich never reads it as markup (``[/]`` in a file name, ``[final] take.mp4``)."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(str(text)))


# Not a terminal (a pipe, a file, CliRunner): rich would assume 80 columns and squash the tables.
out = _LazyConsole(highlight=False, width=None if sys.stdout.isatty() else 120)
err = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": bool(os.environ.get("SLOWFAST_DEBUG"))}


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red error line (``message`` is shown literally, see :func:`shown`); the Exit to raise."""
    err.print(f"[bold red]error:[/] {shown(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {shown(message)}")


def handles_errors(fn):
    """Turn SlowfastError into one red line on stderr and exit 1 (ConfigError: exit 2); --debug adds the traceback.

    An OSError that reaches here (a name too long for the file system, a folder that vanished) is reported the
    same way, as ``FILE: reason``, exit 1: the library names its files in its own errors, and this is the net for
    the ones it did not foresee.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlowfastError as exc:
            if _state["debug"]:
                traceback.print_exc()
            raise fail(str(exc), 2 if isinstance(exc, ConfigError) else 1) from None
        except OSError as exc:
            if _state["debug"]:
                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}", 1) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


# --- shared options -------------------------------------------------------------------------------------------
ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Preset name (see `slowfast configs`) or a TOML file.")]
ModelOpt = Annotated[str | None, typer.Option(help="open_clip model name, e.g. ViT-B-16, ViT-L-14-336.")]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        help="open_clip tag (openai), a weights file (open_clip or Hugging Face CLIP), a Hugging Face or LLaVA "
        "checkpoint folder or *.index.json, or 'none' for random weights."
    ),
]
LayerOpt = Annotated[int | None, typer.Option(help="ViT block whose patch tokens are taken; -2 = penultimate.")]
FramesOpt = Annotated[int | None, typer.Option("--frames", "-t", help="Frames T sampled uniformly from the video.")]
SampleFpsOpt = Annotated[float | None, typer.Option(help="Sample at this rate instead of a fixed --frames.")]
MaxFramesOpt = Annotated[int | None, typer.Option(help="Cap on frames when sampling with --sample-fps.")]
SlowFramesOpt = Annotated[int | None, typer.Option(help="Frames S kept in detail by the slow pathway.")]
SlowPoolOpt = Annotated[
    str | None,
    typer.Option(help="Slow pooling: none, 1d_max, 1d_avg, 2x2_max, 2x2_avg, 2x2_bilinear.", show_default=False),
]
FastSizeOpt = Annotated[str | None, typer.Option(help="Fast pathway grid per frame, HxW (e.g. 4x4).")]
SamplingOpt = Annotated[
    str | None,
    typer.Option(
        help="Frame sampling: centers (segment centres), sf_llava (SlowFast-LLaVA's), linspace (LLaVA-NeXT's)."
    ),
]
SlowIndexOpt = Annotated[
    str | None,
    typer.Option(
        help="Slow frames: linspace (min(T, S) spread over T) or segment_start (SlowFast-LLaVA's, unclamped)."
    ),
]
ResizeOpt = Annotated[
    str | None, typer.Option(help="Frame resize: shortest (side to the model size, centre crop) or squash (no crop).")
]
ProjectorOpt = Annotated[str | None, typer.Option(help="identity, linear or mlp2x_gelu.")]
ProjectorWeightsOpt = Annotated[
    Path | None,
    typer.Option(help="LLaVA mm_projector.bin, a plain state dict, or a (sharded) LLaVA checkpoint folder or index."),
]
LlmDimOpt = Annotated[int | None, typer.Option(help="Output width of a linear / mlp2x_gelu projector.")]
RandomProjectorOpt = Annotated[
    bool | None, typer.Option("--random-projector", help="Allow seeded random projector weights (testing only).")
]
DeviceOpt = Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str | None, typer.Option(help="auto, fp32, bf16 or fp16.")]
BatchFramesOpt = Annotated[int | None, typer.Option(help="Frames per ViT forward pass.")]
DecodeResizeOpt = Annotated[
    bool | None,
    typer.Option(
        "--decode-resize/--no-decode-resize",
        help="Let the decoder scale large videos to the model's size (fast) or preprocess exactly like open_clip.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]


def flags_of(values: dict[str, Any]) -> dict[str, Any]:
    """The command's arguments that are config settings (see ``config.FLAG_KEYS``), from its ``locals()``."""
    return {k: v for k, v in values.items() if k in FLAG_KEYS}


def build_config(preset: str, **flags: Any) -> Config:
    """defaults < preset < flags; flags that are None were not given."""
    if flags.get("fast_size") is not None:
        flags["fast_size"] = parse_hw(flags["fast_size"], "--fast-size")
    if flags.get("projector_weights") is not None:
        flags["projector_weights"] = str(flags["projector_weights"])
    unknown = set(flags) - set(FLAG_KEYS)
    assert not unknown, unknown
    return resolve_config(preset, flags)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"slowfast {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """Turn videos into short, fixed-budget SlowFast token sequences for video LLMs."""
    _state["debug"] = debug or bool(os.environ.get("SLOWFAST_DEBUG"))  # per invocation: CliRunner reuses the app


# --- budget ---------------------------------------------------------------------------------------------------
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
    how = "min(T, slow frames), linspace" if b.slow_index == "linspace" else "slow frames, segment_start"
    t.add_row("slow frames (S)", _fmt_int(b.slow_frames), how)
    t.add_row("slow tokens", _fmt_int(b.slow_tokens), f"S * {b.slow_tokens_per_frame} ({b.slow_pool})")
    t.add_row("fast tokens", _fmt_int(b.fast_tokens), f"T * {b.fast_size[0]}x{b.fast_size[1]}")
    t.add_row("output tokens (L)", f"[bold]{_fmt_int(b.output_tokens)}[/]", "slow + fast")
    t.add_row("ratio", f"{b.ratio:.2f}", "L / input")
    if context is not None:
        spare = context - b.output_tokens
        t.add_row("context", _fmt_int(context), "--context")
        verdict = f"[green]fits, {spare:,} spare[/]" if spare >= 0 else f"[red]over by {-spare:,}[/]"
        t.add_row("fits", verdict, "context - L")
    return t


def _parse_range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ConfigError(f"bad --frames-range {text!r}: expected MIN:MAX, e.g. 8:128") from None
    if not 1 <= lo_i <= hi_i:
        raise ConfigError(f"bad --frames-range {text!r}: expected 1 <= MIN <= MAX, e.g. 8:128")
    return lo_i, hi_i


def _at_least(value: int | None, low: int, flag: str) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{flag} must be at least {low}, got {value}")


@app.command()
@handles_errors
def budget(
    config: ConfigOpt = "default",
    model: ModelOpt = None,
    grid: Annotated[str | None, typer.Option(help="Patch grid HxW (default: from the model).")] = None,
    frames: FramesOpt = None,
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    context: Annotated[int | None, typer.Option(help="LLM context length to check the fit against.")] = None,
    plan_: Annotated[bool, typer.Option("--plan", help="List the best settings that fit --context.")] = False,
    frames_range: Annotated[str, typer.Option(help="Frame range MIN:MAX the planner may use.")] = "8:128",
    reserve: Annotated[int, typer.Option(help="Tokens the planner keeps free for the prompt and answer.")] = 0,
    top: Annotated[int, typer.Option(help="Rows the planner shows.")] = 20,
    json_: JsonOpt = False,
) -> None:
    """Compute the token budget of a config, without a model or a video.

    Example: slowfast budget --frames 64 --grid 14x14 --slow-pool none --context 8192
    """
    cfg = build_config(config, model=model, frames=frames, slow_frames=slow_frames, slow_pool=slow_pool,
                       fast_size=fast_size, slow_index=slow_index)  # fmt: skip
    _at_least(context, 1, "--context")
    _at_least(reserve, 0, "--reserve")
    _at_least(top, 1, "--top")
    g = parse_hw(grid, "--grid") if grid else model_grid(cfg.encoder.model)
    if plan_:
        if context is None:
            raise ConfigError("--plan needs --context N (the LLM's context length)")
        lo, hi = _parse_range(frames_range)
        entries = plan(context, g, lo, hi, reserve, slow_index=cfg.aggregator.slow_index)
        _show_plan(entries, context, reserve, g, top, json_)
        return
    a = cfg.aggregator
    b = token_budget(cfg.video.frames, g, a.slow_frames, a.slow_pool, a.fast_size, slow_index=a.slow_index)
    notes = budget_warnings(b)
    if json_:
        d = b.to_dict()
        if context is not None:
            d.update(context=context, fits=b.output_tokens <= context, spare=context - b.output_tokens)
        d["warnings"] = notes
        print_json(d)
    else:
        out.print(budget_table(b, context))
    for n in notes:
        warn(n)


def _show_plan(entries, context: int, reserve: int, grid, top: int, as_json: bool) -> None:
    if as_json:
        print_json([{**e.budget.to_dict(), "spare": e.spare, "rank": i + 1} for i, e in enumerate(entries)])
        return
    if not entries:
        raise SlowfastError(
            f"nothing fits a context of {context} tokens (reserve {reserve}) on a {grid[0]}x{grid[1]} grid"
        )
    t = Table(
        title=f"settings that fit {context:,} tokens ({grid[0]}x{grid[1]} grid, reserve {reserve:,}): Pareto front",
        caption=f"{len(entries)} non-dominated settings; ranked by frames, then slow detail, then fast detail",
    )
    for name in ("#", "frames", "slow", "pool", "fast", "slow tok", "fast tok", "total", "spare"):
        t.add_column(name, justify="right" if name not in ("pool",) else "left")
    for i, e in enumerate(entries[:top]):
        b = e.budget
        fast = f"{b.fast_size[0]}x{b.fast_size[1]}"
        t.add_row(str(i + 1), str(b.frames), str(b.slow_frames), b.slow_pool, fast, _fmt_int(b.slow_tokens),
                  _fmt_int(b.fast_tokens), _fmt_int(b.output_tokens), _fmt_int(e.spare))  # fmt: skip
    out.print(t)
    b = entries[0].budget
    out.print(
        f"use #1 with: --frames {b.frames} --slow-frames {b.slow_frames} --slow-pool {b.slow_pool} "
        f"--fast-size {b.fast_size[0]}x{b.fast_size[1]} --slow-index {b.slow_index}  (the *_avg pools cost the "
        "same as *_max)"
    )


# --- configs --------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def configs(json_: JsonOpt = False) -> None:
    """List the presets in configs/ with their key settings.

    Example: slowfast configs
    """
    rows = []
    for name, path in list_presets().items():
        c = load_preset(str(path))
        a = c.aggregator
        rows.append({"name": name, "path": str(path), "description": c.description, **c.to_dict()})
        rows[-1]["summary"] = (c.encoder.model, c.encoder.pretrained, c.video.frames, a.slow_frames, a.slow_pool,
                               f"{a.fast_size[0]}x{a.fast_size[1]}", c.projector.kind)  # fmt: skip
    if json_:
        for r in rows:
            r.pop("summary")
        print_json(rows)
        return
    t = Table(title="presets (--config NAME)")
    for col in ("name", "model", "pretrained", "frames", "slow", "pool", "fast", "projector"):
        t.add_column(col, justify="right" if col in ("frames", "slow") else "left")
    for r in rows:
        t.add_row(shown(r["name"]), *[shown(v) for v in r["summary"]])
    out.print(t)
    for r in rows:
        out.print(f"[bold]{shown(r['name'])}[/]: {shown(r['description'])}  [dim]({shown(r['path'])})[/]")


# --- report ---------------------------------------------------------------------------------------------------
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
    if r.skipped:
        t.add_row("skipped (not token files)", f"[yellow]{len(r.skipped)}[/]")
    return t


@app.command()
@handles_errors
def report(
    path: Annotated[Path, typer.Argument(help="A token file or a folder of them.", exists=True)],
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Check every file's bytes against its CRC-32s (reads whole files)."),
    ] = True,
    json_: JsonOpt = False,
) -> None:
    """Summarise token files: counts, token totals, ratio distribution.

    Example: slowfast report tokens/
    """
    from .report import build_report

    r = build_report(path, verify)
    if json_:
        print_json(r.to_dict())
    else:
        out.print(report_table(r, f"report: {shown(path)}"))
    for s in r.skipped:
        warn(f"skipped {s['error']}")
    if r.files == 0:
        raise SlowfastError(f"{path}: no token files found")


# --- aggregate ------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def aggregate(
    features: Annotated[
        Path, typer.Argument(help="Features file from `encode --save-features`.", exists=True, dir_okay=False)
    ],  # fmt: skip
    output: Annotated[Path, typer.Option("--output", "-o", help="Token file to write.")],
    config: ConfigOpt = "default",
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Re-compress saved features with other slow/fast settings; no video or model needed.

    Example: slowfast aggregate clip.features.pt -o clip.2x2.pt --slow-pool 2x2_max
    """
    from .pipeline import aggregate_file

    cfg = build_config(config, slow_frames=slow_frames, slow_pool=slow_pool, fast_size=fast_size, slow_index=slow_index)
    result = aggregate_file(features, output, cfg, overwrite=overwrite)
    m = result.meta
    if json_:
        print_json({"output": str(output), **{k: m[k] for k in SUMMARY_KEYS if k in m}})
    else:
        out.print(
            f"{shown(features)} -> [bold]{shown(output)}[/]: {m['input_tokens']:,} -> {m['output_tokens']:,} tokens "
            f"(slow {m['slow_tokens']:,} + fast {m['fast_tokens']:,}), ratio {m['ratio']:.2f}"
        )


SUMMARY_KEYS = ("source", "frames", "grid", "input_tokens", "slow_tokens", "fast_tokens", "output_tokens", "ratio",
                "dim", "dtype", "device", "model", "pretrained", "layer", "projector", "timings")  # fmt: skip


# --- encode ---------------------------------------------------------------------------------------------------
@app.command()
@handles_errors
def encode(
    video: Annotated[Path, typer.Argument(help="Video file.", exists=True, dir_okay=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Token file (default: VIDEO.tokens.pt).")
    ] = None,
    save_features: Annotated[Path | None, typer.Option(help="Also write pre-aggregation features here.")] = None,
    config: ConfigOpt = "default",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    layer: LayerOpt = None,
    frames: FramesOpt = None,
    sample_fps: SampleFpsOpt = None,
    max_frames: MaxFramesOpt = None,
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    sampling: SamplingOpt = None,
    resize: ResizeOpt = None,
    projector: ProjectorOpt = None,
    projector_weights: ProjectorWeightsOpt = None,
    llm_dim: LlmDimOpt = None,
    random_projector: RandomProjectorOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_frames: BatchFramesOpt = None,
    decode_resize: DecodeResizeOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Encode one video into a token file.

    Example: slowfast encode clip.mp4 --config tiny -o clip.pt
    """
    cfg = build_config(config, **flags_of(locals()))
    preflight(cfg)  # settings that cannot work fail here, before the model loads or the video opens
    from .pipeline import default_output, encode_to_file

    target = output or default_output(video)
    result = encode_to_file(video, target, cfg, features_out=save_features, overwrite=overwrite)
    for w in result.warnings:
        warn(w)
    m = result.meta
    if json_:
        print_json({"output": str(target), "features": str(save_features) if save_features else None,
                    **{k: m[k] for k in SUMMARY_KEYS if k in m}})  # fmt: skip
        return
    out.print(encode_summary(m, target, save_features))


def encode_summary(m: dict, target: Path, features: Path | None) -> Table:
    t = Table(title=f"encoded {shown(m['source'])}", show_header=False)
    t.add_column("k", style="bold")
    t.add_column("v")
    v = m["video"]
    t.add_row(
        "video", f"{v['num_frames']} frames, {v['fps']:.2f} fps, {v['duration']:.2f} s, {v['width']}x{v['height']}"
    )
    note = " (the video has fewer frames than --frames)" if m.get("short_video") else ""
    t.add_row("sampled", f"{m['frames']} frames{note}")
    t.add_row("model", shown(f"{m['model']} ({m['pretrained']}), layer {m['layer']}, {m['dtype']} on {m['device']}"))
    t.add_row("grid", f"{m['grid'][0]}x{m['grid'][1]} = {m['tokens_per_frame']} tokens per frame")
    t.add_row(
        "tokens",
        f"{m['input_tokens']:,} -> [bold]{m['output_tokens']:,}[/] (slow {m['slow_tokens']:,} + fast "
        f"{m['fast_tokens']:,}), ratio {m['ratio']:.2f}, width {m['dim']}",
    )
    tm = m.get("timings", {})
    t.add_row("time", ", ".join(f"{k} {v:.2f}s" for k, v in tm.items()))
    t.add_row("written", shown(str(target) + (f" and features {features}" if features else "")))
    return t


# --- batch ----------------------------------------------------------------------------------------------------
def default_workers() -> int:
    """One decoder per core, minus one for the process that runs the model; at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@app.command()
@handles_errors
def batch(
    in_dir: Annotated[
        Path, typer.Argument(help="Folder of videos (searched recursively).", exists=True, file_okay=False)
    ],  # fmt: skip
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the token files.")],
    pattern: Annotated[
        str | None, typer.Option(help="Only videos whose relative path or name match this glob.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes of the local engine (default: cores - 1).")
    ] = None,
    files_from: Annotated[
        Path | None,
        typer.Option(
            "--files-from",
            help="Encode the videos listed in this file (one path per line, relative to IN_DIR) instead of "
            "searching IN_DIR.",
            dir_okay=False,
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local (this machine) or ray (a Ray cluster; needs the ray extra: pip install 'slowfast[ray]'). "
            "With ray, IN_DIR and OUT_DIR must be on a file system every node sees at the same path."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster: auto, or HOST:PORT (default: RAY_ADDRESS, else a cluster on this machine, else a "
            "new local one). Not ray://: Ray Data does not run over Ray Client."
        ),
    ] = None,
    decoders: Annotated[
        int | None, typer.Option(help="Ray decode tasks at once (default: the cluster's CPUs minus the encoders).")
    ] = None,
    encoders: Annotated[int | None, typer.Option(help="Ray encoder actors (default: one per GPU, else 1).")] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds one video may take to decode before it counts as failed.")
    ] = 300.0,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed video.")] = False,
    config: ConfigOpt = "default",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    layer: LayerOpt = None,
    frames: FramesOpt = None,
    sample_fps: SampleFpsOpt = None,
    max_frames: MaxFramesOpt = None,
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    sampling: SamplingOpt = None,
    resize: ResizeOpt = None,
    projector: ProjectorOpt = None,
    projector_weights: ProjectorWeightsOpt = None,
    llm_dim: LlmDimOpt = None,
    random_projector: RandomProjectorOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_frames: BatchFramesOpt = None,
    decode_resize: DecodeResizeOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Encode every video under a folder into token files, resumably.

    Example: slowfast batch videos/ -o tokens/ --config tiny
    """
    from .batch import plan_batch, prepare_output_dir

    cfg = build_config(config, **flags_of(locals()))
    for flag, value in (("--workers", workers), ("--decoders", decoders), ("--encoders", encoders)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and (address or decoders or encoders):
        raise ConfigError("--address, --decoders and --encoders are for --engine ray")
    preflight(cfg)
    if engine == "ray":
        with _ray_engine(address, decoders, encoders) as ray_engine:
            prepare_output_dir(in_dir, output)
            cfg, current, warnings = ray_engine.probe(cfg, in_dir, output)
            # outputs that look done are CRC-checked in the Ray tasks, on the nodes, not here (verify=False)
            with plan_batch(in_dir, output, pattern, overwrite, current, files_from, verify=False) as plan:
                _run_batch(plan, cfg, in_dir, output, pattern, workers, timeout, fail_fast, json_, ray_engine, warnings)
        return
    from .pipeline import run_provenance

    current = run_provenance(cfg)  # what resume compares existing token files with
    with plan_batch(in_dir, output, pattern, overwrite, current, files_from) as plan:
        _run_batch(plan, cfg, in_dir, output, pattern, workers, timeout, fail_fast, json_)


ENGINES = ("local", "ray")


def _ray_engine(address: str | None, decoders: int | None, encoders: int | None):
    """A ``RayEngine`` (not yet connected), or the usage error that says why not."""
    if address and address.strip().lower().startswith("ray://"):
        raise ConfigError(
            f"--address {address}: Ray Client (ray://) is not supported by Ray Data (ray-project/ray#48682: "
            "'Worker' object has no attribute 'core_worker'); run slowfast on a cluster node with --address auto, "
            "or through ray job submit"
        )
    try:
        from .engine_ray import RayEngine
    except ImportError as exc:
        raise ConfigError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); install the ray extra: "
            "pip install 'slowfast[ray]' (or pip install -e '.[ray]' in a checkout)"
        ) from None
    return RayEngine(address, decoders, encoders)


def _run_batch(
    plan,
    cfg: Config,
    in_dir: Path,
    output: Path,
    pattern,
    workers,
    timeout,
    fail_fast,
    json_,
    ray_engine=None,
    warnings: list[str] | None = None,
) -> None:
    """The rest of ``batch``, with the output folder locked: run, report, summary, exit code."""
    from .batch import REPORT, batch_report, run_batch
    from .io import sigint_deferred, write_json

    for p in plan.problems:
        warn(p)
    warned = len(plan.problems)
    if plan.total == 0:
        raise SlowfastError(f"{in_dir}: no videos found" + (f" matching {pattern!r}" if pattern else ""))
    records, interrupted, stopped = [], False, []
    show_bar = err.is_terminal and not json_
    try:
        pipe = None
        if plan.todo and ray_engine is None:
            from .pipeline import Pipeline

            pipe = Pipeline(cfg)  # built here, before the bar, so its warnings come first
            warnings = pipe.warnings
        for w in (warnings or []) if plan.todo else []:
            warn(w)
        with _progress(show_bar) as progress:
            task = progress.add_task("videos", total=plan.total, failed=0, fps=0.0)
            frames_done, t0 = 0, time.monotonic()
            nworkers = workers or default_workers()
            gen = run_batch(plan, cfg, nworkers, timeout, fail_fast, pipeline=pipe, engine=ray_engine)
            try:
                for rec in gen:
                    records.append(rec)
                    frames_done += rec.frames or 0
                    nfail = sum(r.status == "failed" for r in records)
                    rate = frames_done / max(1e-9, time.monotonic() - t0)
                    progress.update(task, advance=1, failed=nfail, fps=rate)
                    if rec.status == "failed":
                        progress.console.print(f"[red]failed[/] {shown(rec.error or rec.source)}")
                    while warned < len(plan.problems):  # the Ray engine finds damaged outputs as it goes
                        progress.console.print(f"[yellow]warning:[/] {shown(plan.problems[warned])}")
                        warned += 1
            finally:
                gen.close()
    except KeyboardInterrupt:
        interrupted = True
    except SlowfastError as exc:  # the manifest cannot be written (a full disk): stop, but still summarise
        stopped.append(str(exc))
    engine = ray_engine.summary() if ray_engine else {"name": "local", "workers": workers or default_workers()}
    try:
        report = batch_report(output, records, plan.problems, interrupted, engine=engine)
    except KeyboardInterrupt:  # while counting the folder's files: the run's own counts are still known
        interrupted = True
        report = batch_report(output, records, plan.problems, interrupted, folder=False, engine=engine)
    try:
        with sigint_deferred(reraise=False) as held:
            write_json(output / REPORT, report)
        interrupted = interrupted or held.pending
    except SlowfastError as exc:
        stopped.append(str(exc))
    run = report["run"]
    if json_:
        print_json(report)
    else:
        out.print(batch_table(report, output))
        if run["failed_files"]:
            out.print("[bold red]failed files:[/]")
            for r in records:
                if r.status == "failed":
                    out.print(f"  {shown(r.error or r.source)}")
    if interrupted:
        raise fail(f"interrupted after {len(records)} of {plan.total} videos; rerun the same command to resume", 130)
    if stopped:
        for msg in stopped[:-1]:
            err.print(f"[bold red]error:[/] {shown(msg)}")
        raise fail(f"{stopped[-1]} (after {len(records)} of {plan.total} videos; rerun to resume)", 1)
    if run["failed"]:
        raise fail(f"{run['failed']} of {plan.total} videos failed; see {output / 'manifest.jsonl'}", 1)


def _progress(show: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.1f} frames/s"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err.get(),
        disable=not show,
    )


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


def main() -> None:
    """Console-script entry point.

    SIGTERM is handled as Ctrl-C (see :func:`_terminated`). Once the command has finished (click ends it with
    SystemExit), both are ignored: there is nothing left to interrupt, and a KeyboardInterrupt during the
    interpreter's shutdown would kill the process by the signal (exit status -2) instead of giving the
    command's own exit code.
    """
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err.print("[red]interrupted[/]")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _terminated(signum, frame) -> None:
    """SIGTERM (``kill PID``, a job scheduler's stop) stops the command as Ctrl-C does: cleanly, exit 130."""
    raise KeyboardInterrupt
