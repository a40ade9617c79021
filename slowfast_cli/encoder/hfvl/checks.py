"""The settings a run of a transformers family (``--model hf:...``) can check before it builds anything. No torch.

``preflight_hf`` is ``preflight.preflight`` for these models; ``budget_grid`` is the grid ``budget`` and the planner
count with, from a video size (``--size WxH``), since the grid of these models varies per video.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, SlowfastError
from .families import checkpoint_config, family_of, processor_pixels, temporal_patches, video_grid


def preflight_hf(cfg) -> None:
    """What ``hf_families.hf_preflight`` leaves to a Qwen-VL family: ``--pretrained``'s ``config.json`` is of that
    family, and layer -1 (the merger's output is the only tap).

    Raises:
        ConfigError: naming the setting and how to fix it.
    """
    e = cfg.encoder
    family = family_of(e.model)
    checkpoint_config(e.pretrained, e.model)
    if e.layer != -1:
        raise ConfigError(
            f"{e.model}: encoder.layer (--layer) must be -1, the merger's output (the tokens {family.title}'s LLM "
            f"takes); got {e.layer}"
        )


REFERENCE_SIZE = (1280, 720)  # (width, height) budget counts with when no --size is given, and says so


def budget_grid(cfg, size: tuple[int, int] | None, frames: int) -> tuple[tuple[int, int], int, list[str], Any]:
    """(merged grid, temporal patches T', notes, grid of T') for ``budget`` of a video ``size`` = (width, height)
    with ``frames`` sampled frames; the checkpoint's processor bounds when ``--pretrained`` is its folder.

    The last is for ``--plan``, which tries other frame counts: None where the grid does not depend on them
    (Qwen2.5-VL bounds each frame), else a function of the temporal patches T' (Qwen3-VL bounds the whole video,
    so more frames make a smaller grid).

    Without ``size`` the count cannot be known (the grid is the video's, and budget has no video): it is counted for
    a 1280x720 video (``REFERENCE_SIZE``), and the first note says so and how to give the size.
    """
    e = cfg.encoder
    family = family_of(e.model)
    notes = []
    if size is None:
        size = REFERENCE_SIZE
        notes.append(
            f"{e.model}: {family.title}'s grid follows each video's size (smart_resize to multiples of "
            f"{family.factor} px), so budget cannot know the token count without it: counted for a "
            f"{size[0]}x{size[1]} video; pass --size WxH (the video's width x height) or --grid HxW (the merged grid)"
        )
    if e.pretrained.lower() == "none":  # no checkpoint at hand (the presets): the family's defaults
        pixels, where = (family.min_pixels, family.max_pixels), f"{family.title}'s default processor"
    else:  # a folder named: its processor's bounds, and a wrong path is an error, not the defaults
        pixels, where = processor_pixels(e.pretrained, e.model), f"{e.pretrained}'s processor"
    width, height = size
    try:
        grid = video_grid(family, frames, width, height, pixels)
    except SlowfastError as exc:  # a size the model refuses is a bad --size (or --frames): a usage error
        raise ConfigError(f"--size {width}x{height} with {frames} frames: {exc}") from None
    patches = temporal_patches(frames, family)
    notes += [
        f"{width}x{height} video, {frames} frames -> {patches} temporal patches of a {grid[0]}x{grid[1]} merged grid "
        f"(min/max pixels {pixels[0]}/{pixels[1]} from {where}); frames below count temporal patches"
    ]
    if not family.pixels_per_video:
        return grid, patches, notes, None
    return grid, patches, notes, lambda t: video_grid(family, t * family.temporal_patch, width, height, pixels)
