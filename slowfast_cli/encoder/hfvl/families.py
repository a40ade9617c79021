"""The Qwen-VL families (``--model hf:qwen2_5_vl``, ``hf:qwen3_vl``; see ``hf_families``), without torch.

A family is named by the ``model_type`` of a transformers checkpoint's ``config.json``. What ``budget``, preflight
and the planner need to know of it beyond ``hf_families`` is here and reads only JSON:
its geometry (patch, spatial merge, temporal patch), how a frame of a given size is resized
(:func:`smart_resize`), and so the merged grid a video of that size gets (:func:`video_grid`). The model code that
needs torch and transformers lives beside this module (``qwen.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, SlowfastError
from ...hf_families import HF_PREFIX

CONFIG_LIMIT = 1 << 20  # bytes: a config.json or preprocessor config (Qwen2.5-VL-7B's are under 2 KB)


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    title: str  # for messages
    patch: int  # pixels per side of one ViT patch
    merge: int  # the merger's spatial merge: merge x merge patches make one output token
    temporal_patch: int  # frames per temporal patch (the Conv3d's depth)
    min_pixels: int  # pixel bounds of the model's own video processor when the checkpoint names none (see FAMILIES)
    max_pixels: int
    processor: str  # transformers' video processor class (in transformers.models.<module>.video_processing_*)
    vision_prefixes: tuple[str, ...]  # where a checkpoint keeps the vision tower with its merger
    tokens_per_second: bool  # whether M-RoPE's temporal position counts seconds (Qwen2.5-VL) or patches
    pixels_per_video: bool  # min/max_pixels bound the whole video (Qwen3-VL's smart_resize), not each frame

    @property
    def factor(self) -> int:
        """Pixels per side of one output token: the resized frame's sides are multiples of it."""
        return self.patch * self.merge


# Qwen2.5-VL: transformers 5.25.0 models/qwen2_vl/video_processing_qwen2_vl.py:116-127 (Qwen2VLVideoProcessor:
# size shortest_edge 128*28*28, longest_edge 28*28*768 per frame, patch 14, temporal patch 2, merge 2), which
# processing_qwen2_5_vl.py uses for videos, and qwen-vl-utils' VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS (the same);
# Qwen2.5-VL-7B-Instruct ships no video processor config (its preprocessor_config.json's min/max_pixels bound
# images, 3136..12845056, and are not used for videos here). The checkpoint keeps the tower under visual.*
# (model.visual.* when saved in transformers 5's own layout). Qwen3-VL: models/qwen3_vl/video_processing_qwen3_vl.py
# (patch 16, temporal 2, merge 2, bounds on the whole video); the bounds are Qwen3-VL-8B-Instruct's
# video_preprocessor_config.json (size shortest_edge 4096, longest_edge 25165824), not the class defaults.
FAMILIES = {
    "qwen2_5_vl": Family(
        "qwen2_5_vl", "Qwen2.5-VL", 14, 2, 2, 128 * 28 * 28, 768 * 28 * 28, "Qwen2VLVideoProcessor",
        ("visual.", "model.visual."), True, False,
    ),
    "qwen3_vl": Family(
        "qwen3_vl", "Qwen3-VL", 16, 2, 2, 4096, 25165824, "Qwen3VLVideoProcessor",
        ("model.visual.", "visual."), False, True,
    ),
}  # fmt: skip


def family_of(model: str) -> Family:
    """The family of ``hf:MODEL_TYPE``.

    Raises:
        ConfigError: a model type slowfast does not run, listing the ones it does.
    """
    name = model.removeprefix(HF_PREFIX)
    if name not in FAMILIES:
        valid = ", ".join(HF_PREFIX + k for k in FAMILIES)
        raise ConfigError(f"unknown transformers model {model!r} (encoder.model, --model); valid: {valid}")
    return FAMILIES[name]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(H', W') a frame of (height, width) is resized to: both multiples of ``factor``, about the same aspect, with
    min_pixels <= H' * W' <= max_pixels.

    The rule of transformers' ``smart_resize`` (5.25.0 models/qwen2_vl/video_processing_qwen2_vl.py:44-71, the
    same as qwen-vl-utils' ``vision_process.smart_resize``): round each side to the factor, then scale both by
    sqrt(pixels / bound) and floor (too many) or ceil (too few). tests/test_qwen_models.py checks it against
    transformers' own on many sizes.

    Example:
        >>> smart_resize(720, 1280, 28, 128 * 28 * 28, 768 * 28 * 28)
        (560, 1008)

    Raises:
        SlowfastError: a frame smaller than ``factor`` on a side, or more than 200 times as long as wide (the
            model's processor refuses both).
    """
    if height < factor or width < factor:
        raise SlowfastError(
            f"a {width}x{height} video is smaller than the model's {factor}x{factor} pixels per token on a side "
            "(qwen-vl-utils refuses it too)"
        )
    if max(height, width) / min(height, width) > 200:
        raise SlowfastError(f"a {width}x{height} frame is more than 200 times as long as it is wide")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_video(
    frames: int, height: int, width: int, temporal: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(H', W') for Qwen3-VL, whose bounds hold for the whole video: T_bar * H' * W' within them (T_bar is T
    rounded to the temporal patch), and a frame smaller than ``factor`` is first scaled up to it.

    transformers 5.25.0 models/qwen3_vl/video_processing_qwen3_vl.py:75-109 (``smart_resize``).

    Example:
        >>> smart_resize_video(16, 720, 1280, 2, 32, 128 * 32 * 32, 768 * 32 * 32)
        (160, 288)
    """
    if frames < temporal:
        raise SlowfastError(f"{frames} frame(s) is fewer than the model's {temporal} frames per temporal patch")
    video = f"a {width}x{height} frame"  # the messages name the video's own size, not the scaled one
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:  # on the scaled size, as transformers checks it
        raise SlowfastError(f"{video} is more than 200 times as long as it is wide")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_grid(
    family: Family, frames: int, width: int, height: int, pixels: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(Gh, Gw): the merged grid of every temporal patch of a ``width`` x ``height`` video of ``frames`` sampled
    frames, H'/factor x W'/factor (H', W' from :func:`smart_resize`, or :func:`smart_resize_video` for Qwen3-VL).

    ``pixels``: (min_pixels, max_pixels) of the checkpoint's processor, the family's defaults when None.
    """
    lo, hi = pixels or (family.min_pixels, family.max_pixels)
    if family.pixels_per_video:
        h, w = smart_resize_video(frames, height, width, family.temporal_patch, family.factor, lo, hi)
    else:
        h, w = smart_resize(height, width, family.factor, lo, hi)
    return h // family.factor, w // family.factor


def temporal_patches(frames: int, family: Family) -> int:
    """T' = ceil(T / temporal_patch): the processor repeats the last frame to fill the last temporal patch."""
    return -(-frames // family.temporal_patch)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(CONFIG_LIMIT + 1)
        if len(raw) > CONFIG_LIMIT:
            raise ValueError("far too large for a config")
        obj = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise SlowfastError(f"{path}: cannot be read as a {what} ({exc})") from None
    if not isinstance(obj, dict):
        raise SlowfastError(f"{path}: not a {what} (expected a JSON object)")
    return obj


def checkpoint_folder(pretrained: str, model: str) -> Path:
    """The folder holding ``config.json`` for ``--pretrained`` (a folder, its ``*.index.json`` or one weights file).

    Raises:
        ConfigError: ``none`` (these models are never run with random weights) or a path without config.json.
    """
    if pretrained.lower() == "none":
        raise ConfigError(
            f"{model} needs a checkpoint: pass --pretrained FOLDER (a transformers checkpoint folder with config.json, "
            "or its *.index.json); random weights (none) are not offered for transformers models"
        )
    p = Path(pretrained)
    folder = p if p.is_dir() else p.parent
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{pretrained}: no config.json {'in it' if p.is_dir() else 'beside it'}; pass a transformers checkpoint "
            f"folder (encoder.pretrained, --pretrained) for {model}"
        )
    return folder


def checkpoint_config(pretrained: str, model: str) -> dict[str, Any]:
    """The checkpoint's ``config.json``, checked to be of ``model``'s family.

    Raises:
        ConfigError: no config.json, or a checkpoint of another family.
    """
    family = family_of(model)
    path = checkpoint_folder(pretrained, model) / "config.json"
    config = _read_json(path, "transformers config")
    found = config.get("model_type")
    if found != family.model_type:
        raise ConfigError(
            f"{path}: a checkpoint of model_type {found!r}, not {family.model_type!r} ({family.title}); pass "
            f"--model hf:{found} if slowfast runs it, or a {family.title} checkpoint"
        )
    return config


def processor_pixels(pretrained: str, model: str) -> tuple[int, int]:
    """(min_pixels, max_pixels) that the checkpoint's video processor resizes to: its
    ``video_preprocessor_config.json`` (``size`` shortest/longest_edge, or ``min_pixels``/``max_pixels``), else the
    family's defaults (an image processor's ``preprocessor_config.json`` bounds images, not videos)."""
    family = family_of(model)
    folder = checkpoint_folder(pretrained, model)
    for name in ("video_preprocessor_config.json",):
        if (folder / name).is_file():
            cfg = _read_json(folder / name, "preprocessor config")
            size = cfg.get("size") if isinstance(cfg.get("size"), dict) else {}
            lo = cfg.get("min_pixels", size.get("shortest_edge", family.min_pixels))
            hi = cfg.get("max_pixels", size.get("longest_edge", family.max_pixels))
            return _pixel_bounds(lo, hi, folder / name)
    return family.min_pixels, family.max_pixels


def _pixel_bounds(lo: Any, hi: Any, path: Path) -> tuple[int, int]:
    """(min_pixels, max_pixels) read from ``path``, checked: whole numbers, 1 <= min <= max (transformers would
    resize to a size outside the bounds, or divide by zero, without a word)."""
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) and 1 <= lo <= hi
    if not ok:
        raise SlowfastError(
            f"{path}: min_pixels {lo!r} / max_pixels {hi!r} (or size shortest_edge / longest_edge) must be whole "
            "numbers with 1 <= min <= max"
        )
    return lo, hi
