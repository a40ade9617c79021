"""The commands other than ``batch``: ``budget``, ``configs``, ``report``, ``aggregate``, ``encode``.

Each builds a config, calls one library function and shows the result; heavy libraries (torch, open_clip, decord)
are imported inside the commands that need them, so ``--help`` and ``budget`` start in the time typer takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..budget import aggregator_budget
from ..config import list_presets, load_preset, parse_hw
from ..encoder.hfvl.checks import budget_grid
from ..encoder.hfvl.families import family_of
from ..errors import ConfigError, SlowfastError
from ..hf_families import family as hf_family
from ..hf_families import is_hf_model
from ..models import model_grid
from ..planner import plan
from ..preflight import preflight
from .formats import FormatOpt, SaveDtypeOpt, check_suffix, output_format
from .options import (
    BatchFramesOpt,
    ConfigOpt,
    DecodeResizeOpt,
    DeviceOpt,
    DtypeOpt,
    FastSizeOpt,
    FramesOpt,
    JsonOpt,
    LayerOpt,
    LayoutOpt,
    LlmDimOpt,
    MaxFailuresOpt,
    MaxFramesOpt,
    ModelOpt,
    NewlineOpt,
    OverwriteOpt,
    PoolStageOpt,
    PretrainedOpt,
    ProjectorOpt,
    ProjectorWeightsOpt,
    RandomProjectorOpt,
    ResizeOpt,
    SampleFpsOpt,
    SamplingOpt,
    SlowFramesOpt,
    SlowIndexOpt,
    SlowPoolOpt,
    at_least,
    build_config,
    file_named,
    flags_of,
    path_named,
    refuse_frames_by_rate,
    refuse_slowfast_flags,
)
from .output import Table, handles_errors, out, print_json, shown, warn
from .progress import Stages
from .tables import budget_table, budget_warnings, encode_summary, plan_hint, plan_table, report_table


def _video_size(text: str) -> tuple[int, int]:
    """``--size WxH``: the video's width and height (parse_hw's message says HxW, the order of a grid)."""
    try:
        return parse_hw(text, "--size")
    except ConfigError:
        raise ConfigError(f"bad --size {text!r}: expected WxH, the video's width x height, e.g. 1280x720") from None


def _parse_range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise ConfigError(f"bad --frames-range {text!r}: expected MIN:MAX, e.g. 8:128") from None
    if not 1 <= lo_i <= hi_i:
        raise ConfigError(f"bad --frames-range {text!r}: expected 1 <= MIN <= MAX, e.g. 8:128")
    return lo_i, hi_i


@handles_errors
def budget(
    config: ConfigOpt = "default",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    grid: Annotated[str | None, typer.Option(help="Patch grid HxW (default: from the model).")] = None,
    size: Annotated[str | None, typer.Option(help="Video size WxH, for hf: models (their grid follows it).")] = None,
    frames: FramesOpt = None,
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    layout: LayoutOpt = None,
    newline: NewlineOpt = None,
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
    cfg = build_config(config, model=model, pretrained=pretrained, frames=frames, slow_frames=slow_frames,
                       slow_pool=slow_pool, fast_size=fast_size, slow_index=slow_index, layout=layout,
                       newline=newline)  # fmt: skip
    at_least(context, 1, "--context")
    at_least(reserve, 0, "--reserve")
    at_least(top, 1, "--top")
    hf_notes: list[str] = []
    grid_of = None  # Qwen3-VL: the grid as a function of the frame count (budget_grid)
    if is_hf_model(cfg.encoder.model) and hf_family(cfg.encoder.model).grid is None and not grid:  # Qwen-VL
        g, cfg.video.frames, hf_notes, grid_of = budget_grid(cfg, _video_size(size) if size else None, cfg.video.frames)
    else:
        g = parse_hw(grid, "--grid") if grid else model_grid(cfg.encoder.model)
    if plan_:
        if context is None:
            raise ConfigError("--plan needs --context N (the LLM's context length)")
        lo, hi = _parse_range(frames_range)
        a = cfg.aggregator
        entries = plan(context, grid_of or g, lo, hi, reserve, slow_index=a.slow_index, layout=a.layout,
                       newline=a.newline)  # fmt: skip
        for n in hf_notes:  # the grid of --size, and that frames count temporal patches
            warn(n)
        v = cfg.video
        step = family_of(cfg.encoder.model).temporal_patch if hf_notes else 1  # planned frames: temporal patches
        hint = {"per_step": step, "by_rate": v.sampling == "qwen" or v.sample_fps is not None}
        show_plan(entries, context, reserve, g, top, json_, **hint)
        return
    a = cfg.aggregator
    b = aggregator_budget(cfg.video.frames, g, a)
    notes = hf_notes + budget_warnings(b)
    v = cfg.video
    if v.sampling == "llava_next" or v.sample_fps is not None:  # the count depends on the video's length
        cap = v.frames if v.sampling == "llava_next" else v.max_frames
        notes.append(
            f"T varies with the video ({v.sampling}, {v.sample_fps or 1:g} fps, at most {cap}): this is the "
            f"{b.frames}-frame case; a shorter video gets fewer frames and tokens"
        )
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


def show_plan(entries, context: int, reserve: int, grid, top: int, as_json: bool, **hint) -> None:
    if as_json:
        print_json([{**e.budget.to_dict(), "spare": e.spare, "rank": i + 1} for i, e in enumerate(entries)])
    if not entries:  # exit 1 in both forms (the JSON form prints its empty list first)
        raise SlowfastError(
            f"nothing fits a context of {context} tokens (reserve {reserve}) on a {grid[0]}x{grid[1]} grid"
        )
    if not as_json:
        out.print(plan_table(entries, context, reserve, grid, top))
        out.print(plan_hint(entries, **hint))


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
        frames_layout = a.layout == "frames"  # every frame pooled alike: no slow count, no fast pathway
        rows[-1]["summary"] = (c.encoder.model, c.encoder.pretrained, c.video.frames,
                               "all" if frames_layout else a.slow_frames, a.slow_pool,
                               "-" if frames_layout else f"{a.fast_size[0]}x{a.fast_size[1]}", a.newline,
                               c.projector.kind)  # fmt: skip
    if json_:
        for r in rows:
            r.pop("summary")
        print_json(rows)
        return
    t = Table(title="presets (--config NAME)")
    for col in ("name", "model", "pretrained", "frames", "slow", "pool", "fast", "newline", "projector"):
        t.add_column(col, justify="right" if col in ("frames", "slow") else "left")
    for r in rows:
        t.add_row(shown(r["name"]), *[shown(v) for v in r["summary"]])
    out.print(t)
    for r in rows:
        out.print(f"[bold]{shown(r['name'])}[/]: {shown(r['description'])}  [dim]({shown(r['path'])})[/]")


@handles_errors
def report(
    path: Annotated[Path, typer.Argument(help="A token file or a folder of them.", exists=True)],
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Check every file's bytes against its CRC-32s (reads whole files)."),
    ] = True,
    json_: JsonOpt = False,
) -> None:
    """Summarise token files: counts, token totals, ratio distribution. Exits 1 if any file is skipped.

    Example: slowfast report tokens/
    """
    from ..report import build_report

    r = build_report(path, verify)
    if json_:
        print_json(r.to_dict())
    else:
        out.print(report_table(r, f"report: {shown(path)}"))
    for s in r.skipped:
        warn(f"skipped {s['error']}")
    if r.files == 0:
        raise SlowfastError(f"{path}: no token files found")
    if r.skipped:  # a damaged or malformed file is a finding, not a footnote: a script checking a dataset must see it
        n = len(r.skipped)
        what = "entry" if n == 1 else "entries"
        raise SlowfastError(f"{path}: {n} {what} skipped: damaged, not token files or unreadable (listed above)")


@handles_errors
def aggregate(
    features: Annotated[
        Path,
        typer.Argument(
            help="Features file from `encode --save-features`, or a folder of them (`batch --save-features`).",
            exists=True,
        ),
    ],  # fmt: skip
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Token file to write (a folder for a folder).", parser=path_named)
    ],
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="Take the slow/fast settings from this preset, not the features file's."),
    ] = None,
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    layout: LayoutOpt = None,
    newline: NewlineOpt = None,
    overwrite: OverwriteOpt = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Folder: stop at the first failed file.")] = False,
    max_failures: MaxFailuresOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Re-compress saved features with other slow/fast settings; no video or model needed.

    Without flags the settings are the ones the features file records (its encode's): the same tokens again.

    Example: slowfast aggregate clip.features.pt -o clip.2x2.pt --slow-pool 2x2_max
    """
    from ..reaggregate import features_meta, reaggregation_config

    if config is not None and not config:
        raise ConfigError("--config is empty; give a preset name (see `slowfast configs`) or a TOML file")
    flags = {"slow_frames": slow_frames, "slow_pool": slow_pool, "fast_size": fast_size, "slow_index": slow_index,
             "layout": layout, "newline": newline}  # fmt: skip
    if fast_size is not None:
        flags["fast_size"] = parse_hw(fast_size, "--fast-size")
    if features.is_dir():
        from .reaggregate import aggregate_folder

        aggregate_folder(features, output, config, flags, overwrite, fail_fast, max_failures, json_)
        return
    check_suffix(output, "pt")  # aggregate writes .pt token files (export converts them)
    cfg = reaggregation_config(features_meta(features), config, flags)
    refuse_slowfast_flags(cfg, flags)
    from ..pipeline import aggregate_file

    result = aggregate_file(features, output, cfg, overwrite=overwrite)
    for w in result.warnings:
        warn(w)
    m = result.meta
    if json_:
        print_json({"output": str(output), **{k: m[k] for k in SUMMARY_KEYS if k in m}})
    else:
        out.print(
            f"{shown(features)} -> [bold]{shown(output)}[/]: {m['input_tokens']:,} -> {m['output_tokens']:,} tokens "
            f"(slow {m['slow_tokens']:,} + fast {m['fast_tokens']:,}), ratio {m['ratio']:.2f}"
        )


SUMMARY_KEYS = ("source", "frames", "grid", "input_tokens", "slow_tokens", "fast_tokens", "newline_tokens", "layout",
                "newline", "output_tokens", "ratio",
                "dim", "dtype", "device", "model", "pretrained", "layer", "projector", "timings")  # fmt: skip


@handles_errors
def encode(
    video: Annotated[Path, typer.Argument(help="Video file.", exists=True, dir_okay=False)],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Token file (default: VIDEO.tokens.pt, .safetensors).", parser=file_named),
    ] = None,
    save_features: Annotated[
        Path | None, typer.Option(help="Also write pre-aggregation features here.", parser=file_named)
    ] = None,
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
    layout: LayoutOpt = None,
    newline: NewlineOpt = None,
    pool_stage: PoolStageOpt = None,
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
    format_: FormatOpt = "pt",
    save_dtype: SaveDtypeOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Encode one video into a token file.

    Example: slowfast encode clip.mp4 --config tiny -o clip.pt
    """
    cfg = build_config(config, **flags_of(locals()))
    refuse_frames_by_rate(cfg, flags_of(locals()))
    fmt = output_format(format_, save_dtype=save_dtype, files=True)
    check_suffix(output, fmt.name)
    preflight(cfg)  # settings that cannot work fail here, before the model loads or the video opens
    with Stages() as stage:  # a spinner with the stage and its time, on a terminal
        stage("importing torch")
        from ..pipeline import default_output, encode_to_file

        target = output or default_output(video).with_suffix(".safetensors" if fmt.name == "safetensors" else ".pt")
        result = encode_to_file(video, target, cfg, features_out=save_features, overwrite=overwrite, fmt=fmt,
                                stage=stage)  # fmt: skip
    for w in result.warnings:
        warn(w)
    m = result.meta
    if json_:
        print_json({"output": str(target), "features": str(save_features) if save_features else None,
                    **{k: m[k] for k in SUMMARY_KEYS if k in m}})  # fmt: skip
        return
    out.print(encode_summary(m, target, save_features))
