"""The options the commands share (flags override the preset, which overrides the defaults in code)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import FLAG_KEYS, Config, parse_hw, resolve_config
from ..errors import ConfigError

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
SampleFpsOpt = Annotated[
    float | None,
    typer.Option(
        help="Sample at this rate instead of a fixed --frames (0: a fixed --frames, undoing a preset's rate)."
    ),
]
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
        help="Frame sampling: centers (segment centres), sf_llava (SlowFast-LLaVA's), linspace (LLaVA-NeXT's), "
        "llava_next (one frame a second, linspace past --frames), arange (the llava-hf model cards')."
    ),
]


LayoutOpt = Annotated[
    str | None,
    typer.Option(help="Token layout: slowfast (slow then fast frames) or frames (every frame pooled by --slow-pool)."),
]
NewlineOpt = Annotated[
    str | None,
    typer.Option(help="Newline tokens (the checkpoint's image_newline): no_token, grid (per row), frame, one_token."),
]
PoolStageOpt = Annotated[
    str | None, typer.Option(help="Pool after the projector (LLaVA-NeXT's get_2dPool) or before it (llava-hf's).")
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


def file_named(text: str) -> Path:
    """A file option's value: as :func:`path_named`, and a name that ends in a separator (``-o out/``) names a
    folder, never the file to write (``Path`` would drop the slash and write a file called ``out``)."""
    if text.endswith(("/", os.sep)):
        raise typer.BadParameter(f"{text} names a folder; give the file's name (e.g. {text.rstrip('/' + os.sep)}/x.pt)")
    return path_named(text)


def path_named(text: str) -> Path:
    """A path option's value; an empty one is a usage error (``Path("")`` would be the current folder), and so is a
    URL (``Path`` would fold ``s3://b/x`` into the local folder ``s3:/b/x``; only ``batch`` takes URLs: cli.urls)."""
    if not text:
        raise typer.BadParameter("an empty name; give a path")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) and not text.startswith("file://"):
        raise typer.BadParameter(f"{text}: a URL; this option takes a local path (URLs: batch IN_DIR -o --files-from)")
    return Path(text.removeprefix("file://"))


ProjectorWeightsOpt = Annotated[
    Path | None,
    typer.Option(
        help="LLaVA mm_projector.bin, a plain state dict, or a (sharded) LLaVA checkpoint folder or index.",
        parser=path_named,
    ),
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


MaxFailuresOpt = Annotated[
    str | None,
    typer.Option(
        help="Exit 0 when at most this many videos fail: a count (10) or a fraction of the run (0.01 or 1%); the "
        "failures are still listed and recorded.",
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
    if not preset:
        raise ConfigError("--config is empty; give a preset name (see `slowfast configs`) or a TOML file")
    if flags.get("fast_size") is not None:
        flags["fast_size"] = parse_hw(flags["fast_size"], "--fast-size")
    if flags.get("projector_weights") is not None:
        flags["projector_weights"] = str(flags["projector_weights"])
    unknown = set(flags) - set(FLAG_KEYS)
    assert not unknown, unknown
    no_rate = flags.get("sample_fps") == 0  # --sample-fps 0: no rate, a fixed --frames (a preset's rate undone)
    if no_rate:
        flags["sample_fps"] = None
    cfg = resolve_config(preset, flags)
    if no_rate:
        if cfg.video.sampling in ("qwen", "llava_next"):  # they sample by rate whatever sample_fps says
            raise ConfigError(
                f"--sample-fps 0 (a fixed --frames) does not apply to --sampling {cfg.video.sampling}, which samples "
                "by rate; pass --sampling centers (or linspace) with it"
            )
        cfg.video.sample_fps = None
    refuse_slowfast_flags(cfg, flags)
    by_rate = cfg.video.sampling == "qwen" or (cfg.video.sampling == "centers" and cfg.video.sample_fps)
    if flags.get("max_frames") is not None and not by_rate:  # qwen: smart_nframes' max_frames
        sampling = cfg.video.sampling + ("" if cfg.video.sample_fps or cfg.video.sampling != "centers" else " alone")
        cap = "--frames caps it" if cfg.video.sampling == "llava_next" else "it takes --frames frames"
        raise ConfigError(
            "--max-frames caps sampling by rate (--sample-fps with --sampling centers, or --sampling qwen) and does "
            "not apply to "
            f"--sampling {sampling}: {cap}; drop --max-frames"
        )
    return cfg


def refuse_slowfast_flags(cfg: Config, flags: dict[str, Any]) -> None:
    """Refuse the slowfast layout's flags given on the line with the frames layout, which would ignore them."""
    unused = [f"--{k.replace('_', '-')}" for k in SLOWFAST_ONLY if flags.get(k) is not None]
    if cfg.aggregator.layout == "frames" and unused:
        one = len(unused) == 1
        raise ConfigError(
            f"{', '.join(unused)} do{'es' if one else ''} not apply to the frames layout (every frame pooled alike "
            f"by --slow-pool, no fast pathway); drop {'it' if one else 'them'}, or pass --layout slowfast"
        )


SLOWFAST_ONLY = ("slow_frames", "fast_size", "slow_index")  # the slowfast layout's settings


def refuse_frames_by_rate(cfg: Config, flags: dict[str, Any]) -> None:
    """``encode`` and ``batch``: refuse ``--frames`` where frames are sampled by rate and T follows each video
    (``--sampling qwen``, or ``centers`` with ``--sample-fps``), which would ignore it. (``budget`` keeps it: there it
    is the count to plan with, as the Qwen presets' own ``frames`` is.)"""
    v = cfg.video
    if flags.get("frames") is not None and (v.sampling == "qwen" or (v.sampling == "centers" and v.sample_fps)):
        rate = v.sample_fps or 2.0
        raise ConfigError(
            f"--frames does not apply to --sampling {v.sampling}, which takes {rate:g} frames a second of each video "
            "(at most --max-frames); drop --frames, pass --max-frames N to cap the count, or --sampling centers "
            "--sample-fps 0 for a fixed --frames"
        )


def at_least(value: int | None, low: int, flag: str) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{flag} must be at least {low}, got {value}")
