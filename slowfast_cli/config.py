"""Typed settings for every stage, presets in ``configs/``, and their resolution.

Precedence is defaults (this file) < preset file (TOML) < overrides (command-line flags). Raw dicts become
dataclasses here and nowhere else; every bad key or value raises :class:`ConfigError` naming the valid choices.
This module imports neither torch nor any model library, so ``slowfast budget`` stays instant.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .policies import LAYOUTS, NEWLINES, POOL_STAGES, RESIZES, SAMPLINGS, SLOW_INDICES, SLOW_POOLS
from .reading import path_problem, read_bounded

PRESET_LIMIT = 1 << 20  # bytes: a preset file (ours are under 2 KB)
MAX_FRAMES = 100_000  # frames, slow frames and frames per pass: an hour at 25 fps is 90,000
INT_LIMIT = 2**31  # every integer setting (frames, sizes, widths, seeds) stays far below it; torch takes int64
PROJECTORS = ("identity", "linear", "mlp2x_gelu")
DTYPES = ("auto", "fp32", "bf16", "fp16")
PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"  # the checkout's (an editable install)
PACKAGED_PRESET_DIR = Path(__file__).resolve().parent / "configs"  # the same files inside an installed wheel


@dataclass
class VideoCfg:
    frames: int = 64  # T frames sampled uniformly over the whole video: the seed design's 64
    sample_fps: float | None = None  # centers: sample at this rate, not a fixed T (max_frames caps it); llava_next's
    max_frames: int = 256  # upper bound on T when sampling by fps, so a 2-hour video stays bounded
    decode_resize: bool = True  # let the decoder scale to the model's size (fast); False decodes full size
    sampling: str = "centers"  # centers | sf_llava (SF-LLaVA) | linspace (LLaVA-NeXT) | llava_next (fps, else linspace)


@dataclass
class EncoderCfg:
    model: str = "ViT-B-16"  # any open_clip model name with a ViT vision tower
    pretrained: str = "openai"  # open_clip tag, a local weights file, or "none" for random weights
    layer: int = -2  # LLaVA takes the penultimate block's patch tokens
    batch_frames: int = 0  # frames per ViT forward pass (several videos' frames share one); 0: by device, 16 on a
    # CPU, 128 on CUDA (encoder.packing.pass_frames; measured in BENCHMARKS.md §17)
    resize: str = "shortest"  # shortest: the model's own (CLIP: short side + centre crop; SigLIP: squash) | squash


@dataclass
class ProjectorCfg:
    kind: str = "identity"  # identity keeps the vision width; linear / mlp2x_gelu map to llm_dim
    llm_dim: int | None = None  # output width of linear / mlp2x_gelu (taken from weights when they are given)
    weights: str | None = None  # path to a LLaVA mm_projector.bin or a plain state dict
    random_init: bool = False  # allow random projector weights (seeded, flagged in meta) when no file is given
    seed: int = 0  # seed for random projector weights


@dataclass
class AggregatorCfg:
    slow_frames: int = 32  # S frames kept in detail; the seed design's 32 of 64
    slow_pool: str = "1d_max"  # spatial pooling of slow frames, one of SLOW_POOLS
    fast_size: tuple[int, int] = (4, 4)  # (h, w) every frame is average-pooled to; integers only (4.0 is refused)
    slow_index: str = "linspace"  # linspace: S = min(T, slow_frames) spread over T | segment_start: SF-LLaVA's
    layout: str = "slowfast"  # slowfast | frames: every frame pooled by slow_pool, no fast pathway (LLaVA-Video's)
    newline: str = "no_token"  # newline tokens: no_token | grid (per row) | frame | one_token (LLaVA-NeXT's)
    pool_stage: str = "after"  # pool after the projector (LLaVA-NeXT) | before it (llava-hf LlavaNextVideo)


@dataclass
class RuntimeCfg:
    device: str = "auto"  # auto picks CUDA when present
    dtype: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16, else fp32


@dataclass
class Config:
    name: str = "default"
    description: str = ""
    video: VideoCfg = field(default_factory=VideoCfg)
    encoder: EncoderCfg = field(default_factory=EncoderCfg)
    projector: ProjectorCfg = field(default_factory=ProjectorCfg)
    aggregator: AggregatorCfg = field(default_factory=AggregatorCfg)
    runtime: RuntimeCfg = field(default_factory=RuntimeCfg)

    def to_dict(self) -> dict[str, Any]:
        """Plain-value dict (lists, not tuples) for ``meta`` and JSON output."""
        d = dataclasses.asdict(self)
        d["aggregator"]["fast_size"] = list(self.aggregator.fast_size)
        return d


SECTIONS = {
    "video": VideoCfg,
    "encoder": EncoderCfg,
    "projector": ProjectorCfg,
    "aggregator": AggregatorCfg,
    "runtime": RuntimeCfg,
}

# flag name (as the CLI spells it, with underscores) -> (section, field)
FLAG_KEYS = {
    "frames": ("video", "frames"),
    "sample_fps": ("video", "sample_fps"),
    "max_frames": ("video", "max_frames"),
    "decode_resize": ("video", "decode_resize"),
    "sampling": ("video", "sampling"),
    "model": ("encoder", "model"),
    "pretrained": ("encoder", "pretrained"),
    "layer": ("encoder", "layer"),
    "batch_frames": ("encoder", "batch_frames"),
    "resize": ("encoder", "resize"),
    "projector": ("projector", "kind"),
    "llm_dim": ("projector", "llm_dim"),
    "projector_weights": ("projector", "weights"),
    "random_projector": ("projector", "random_init"),
    "projector_seed": ("projector", "seed"),
    "slow_frames": ("aggregator", "slow_frames"),
    "slow_pool": ("aggregator", "slow_pool"),
    "fast_size": ("aggregator", "fast_size"),
    "slow_index": ("aggregator", "slow_index"),
    "layout": ("aggregator", "layout"),
    "newline": ("aggregator", "newline"),
    "pool_stage": ("aggregator", "pool_stage"),
    "device": ("runtime", "device"),
    "dtype": ("runtime", "dtype"),
}


HW_PATTERN = re.compile(r"\s*([0-9]+)\s*(?:[x*]\s*([0-9]+)\s*)?")  # "4x4", "4*4", "4"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that an error stays one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_hw(text: str | int | list | tuple, what: str = "fast size") -> tuple[int, int]:
    """Parse ``"4x4"``, ``"4"``, ``4`` or ``[4, 4]`` into a positive ``(h, w)``.

    Sides are integers: bools and floats are refused, ``4.0`` included, as for every integer setting (TOML
    writes integers without a point, and a side of 4.5 must not quietly become 4).
    """
    if _is_int(text):
        h = w = text
    elif isinstance(text, (list, tuple)) and len(text) == 2 and all(_is_int(v) for v in text):
        h, w = text
    elif isinstance(text, str) and (m := HW_PATTERN.fullmatch(text.lower())):
        h, w = int(m[1]), int(m[2] or m[1])
    else:
        raise ConfigError(f"bad {what} {_show(text)}: expected HxW with positive integers, e.g. 4x4 or [4, 4]")
    if h <= 0 or w <= 0:
        raise ConfigError(f"bad {what} {_show(text)}: both sides must be positive, e.g. 4x4")
    return h, w


def _check_type(section: str, key: str, value: Any, annotation: str) -> Any:
    """Coerce a raw TOML/flag value to the field's type or raise a ConfigError naming it."""
    where = f"{section}.{key}"
    if key == "fast_size":
        return parse_hw(value, where)
    if "bool" in annotation:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for {where}: {_show(value)} (expected true or false)")
    if value is None and "None" in annotation:
        return None
    if "int" in annotation and "float" not in annotation:
        if not _is_int(value):
            raise ConfigError(f"bad value for {where}: {_show(value)} (expected an integer)")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"bad value for {where}: {_show(value)} (out of range: |value| < 2**31)")
        return value
    if "float" in annotation:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"bad value for {where}: {_show(value)} (expected a number)")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"bad value for {where}: {_show(value)} (expected a finite number)")
        return number
    if "str" in annotation:
        if not isinstance(value, str):
            raise ConfigError(f"bad value for {where}: {_show(value)} (expected a string)")
        return value
    return value


def _apply(cfg: Config, section: str, values: Any) -> None:
    """Set the keys of one section from a raw table; errors name ``section.key`` (callers add the source)."""
    cls = SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table of settings ({', '.join(fields)}), got {_show(values)}")
    target = getattr(cfg, section)
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {section}.{key!r}; valid keys: {', '.join(fields)}")
        f = fields[key]
        setattr(target, key, _check_type(section, key, value, str(f.type)))


def _apply_all(cfg: Config, raw: Any) -> Config:
    """Overlay a whole raw table (a preset file's, or ``Config.to_dict()``'s) on ``cfg``; unknown keys are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a table of settings, got {_show(raw)}")
    for key, value in raw.items():
        if key in ("name", "description"):
            if not isinstance(value, str):
                raise ConfigError(f"bad value for {key}: {_show(value)} (expected a string)")
            setattr(cfg, key, value)
        elif key in SECTIONS:
            _apply(cfg, key, value)
        else:
            valid = ", ".join(["name", "description", *SECTIONS])
            raise ConfigError(f"unknown key {key!r}; valid top-level keys: {valid}")
    return cfg


def _normalise_types(cfg: Config) -> None:
    """Run every field through ``_check_type`` (a Config may be built in code, bypassing the parsers)."""
    for key in ("name", "description"):
        if not isinstance(getattr(cfg, key), str):
            raise ConfigError(f"bad value for {key}: {_show(getattr(cfg, key))} (expected a string)")
    for section, cls in SECTIONS.items():
        target = getattr(cfg, section)
        if not isinstance(target, cls):
            raise ConfigError(f"bad value for {section}: {_show(target)} (expected a {cls.__name__})")
        for f in dataclasses.fields(cls):
            setattr(target, f.name, _check_type(section, f.name, getattr(target, f.name), str(f.type)))


def validate(cfg: Config) -> Config:
    """Check values that do not depend on the model (see ``preflight.preflight`` for those); normalises types in place.

    Types are checked first (so a Config built in code gets the same messages as a preset), then ranges.
    """
    _normalise_types(cfg)
    v, e, p, a, r = cfg.video, cfg.encoder, cfg.projector, cfg.aggregator, cfg.runtime
    counts = [("video.frames (--frames)", v.frames), ("video.max_frames (--max-frames)", v.max_frames)]
    if e.batch_frames != 0:  # 0: chosen by device (encoder.packing.pass_frames)
        counts.append(("encoder.batch_frames (--batch-frames)", e.batch_frames))
    for where, value in [*counts, ("aggregator.slow_frames (--slow-frames)", a.slow_frames)]:
        if value <= 0:
            raise ConfigError(f"{where} must be a positive integer, got {value}")
        if value > MAX_FRAMES:  # beyond it, index lists alone would take gigabytes (--frames 2e9: killed, no word)
            raise ConfigError(f"{where} is {value:,}; at most {MAX_FRAMES:,} frames are supported")
    if v.sample_fps is not None and v.sample_fps <= 0:
        raise ConfigError(f"video.sample_fps (--sample-fps) must be positive, got {v.sample_fps}")
    if v.sampling not in SAMPLINGS:
        raise ConfigError(
            f"unknown frame sampling {v.sampling!r} (video.sampling, --sampling); valid: {', '.join(SAMPLINGS)}"
        )
    if v.sample_fps is not None and v.sampling not in ("centers", "llava_next", "qwen"):
        raise ConfigError(
            "video.sample_fps (--sample-fps) works only with sampling centers, llava_next or qwen, not "
            f"{v.sampling!r}: "
            f"{v.sampling} takes a fixed number of frames (video.frames, --frames)"
        )
    if e.resize not in RESIZES:
        raise ConfigError(f"unknown resize {e.resize!r} (encoder.resize, --resize); valid: {', '.join(RESIZES)}")
    if a.slow_pool not in SLOW_POOLS:
        raise ConfigError(f"unknown slow pool {a.slow_pool!r}; valid: {', '.join(SLOW_POOLS)}")
    if a.slow_index not in SLOW_INDICES:
        raise ConfigError(
            f"unknown slow index {a.slow_index!r} (aggregator.slow_index, --slow-index); "
            f"valid: {', '.join(SLOW_INDICES)}"
        )
    for what, where, value, valid in [
        ("layout", "aggregator.layout, --layout", a.layout, LAYOUTS),
        ("newline position", "aggregator.newline, --newline", a.newline, NEWLINES),
        ("pool stage", "aggregator.pool_stage, --pool-stage", a.pool_stage, POOL_STAGES),
    ]:
        if value not in valid:
            raise ConfigError(f"unknown {what} {value!r} ({where}); valid: {', '.join(valid)}")
    if p.kind not in PROJECTORS:
        raise ConfigError(f"unknown projector {p.kind!r}; valid: {', '.join(PROJECTORS)}")
    if p.llm_dim is not None and p.llm_dim <= 0:
        raise ConfigError(f"projector.llm_dim (--llm-dim) must be positive, got {p.llm_dim}")
    if r.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {r.dtype!r}; valid: {', '.join(DTYPES)}")
    dev = r.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"unknown device {dev!r}; valid: auto, cpu, cuda, cuda:N")
    if not e.model:
        raise ConfigError("encoder.model (--model) must not be empty")
    if not e.pretrained:
        raise ConfigError("encoder.pretrained (--pretrained) must not be empty; use none for random weights")
    return cfg


def preset_dirs() -> list[Path]:
    """Where presets are looked up by name: ``slowfast_cli/configs`` in an installed wheel (pyproject.toml ships the
    top-level ``configs/`` there), else the checkout's ``configs/`` (an editable install or the source tree). Never
    both: in a wheel, the folder beside the package is site-packages' own ``configs`` (any other project's)."""
    return [d for d in (PACKAGED_PRESET_DIR if PACKAGED_PRESET_DIR.is_dir() else PRESET_DIR,) if d.is_dir()]


def list_presets() -> dict[str, Path]:
    """Preset name -> file, first directory wins."""
    found: dict[str, Path] = {}
    for d in preset_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def find_preset(name_or_path: str) -> Path:
    """A preset by name (``tiny``) or a path to a TOML file. A bare preset name is the preset even where the
    working folder holds a file or folder of that name (pass ``./tiny`` for that one)."""
    p = Path(name_or_path)
    presets = list_presets()
    if p.suffix != ".toml" and "/" not in name_or_path and name_or_path in presets:
        return presets[name_or_path]
    if p.suffix == ".toml" or p.exists() or "/" in name_or_path:
        problem = path_problem(p)
        if problem:
            raise ConfigError(f"config file {name_or_path} {problem}")
        return p
    if name_or_path not in presets:
        raise ConfigError(f"unknown preset {name_or_path!r}; valid: {', '.join(presets) or '(none found)'}")
    return presets[name_or_path]


def load_preset(name_or_path: str) -> Config:
    """Defaults overlaid with one preset file; every error starts with the file's path."""
    path = find_preset(name_or_path)
    try:
        raw = tomllib.loads(read_bounded(path, PRESET_LIMIT).decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except ValueError as exc:  # a folder, a device, or far too large for a preset
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return validate(_apply_all(Config(name=path.stem), raw))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve_config(preset: str | None = "default", overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < preset < overrides. ``overrides`` maps flag names (see FLAG_KEYS) to values; None means unset.

    Example:
        >>> resolve_config("tiny", {"frames": 8, "slow_pool": "none"}).video.frames
        8
    """
    cfg = load_preset(preset) if preset else Config()
    for key, value in (overrides or {}).items():
        if value is None:
            continue  # "not given" never overrides (timm's factories do the same)
        if key not in FLAG_KEYS:
            raise ConfigError(f"unknown setting {key!r}; valid: {', '.join(FLAG_KEYS)}")
        section, name = FLAG_KEYS[key]
        try:
            _apply(cfg, section, {name: value})
        except ConfigError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None
    return validate(cfg)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a token file's ``meta['config']``).

    Missing keys keep their defaults. The same rules as for a preset file apply: a section that is not a dict,
    an unknown key or a value of the wrong type raises. ``config_from_dict(cfg.to_dict()) == cfg`` for every
    valid ``cfg``.

    Raises:
        ConfigError: the dict is malformed; the message names the key but not the source, which callers add.
    """
    return validate(_apply_all(Config(), d))
