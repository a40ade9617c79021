"""Where every output token came from: temporal patch (or frame), row and column of the tower's grid, and time.

A token file of a tower whose grid varies per video (``--model hf:...``) records ``meta["positions"]``, plain
values and compact (a few lists, not one entry per token):

- ``grid_thw``: [T', Gh, Gw], the merged grid of the video (T' temporal patches of Gh x Gw tokens);
- ``temporal_patch``: frames per temporal patch (2): patch p holds sampled frames 2p and 2p + 1;
- ``patch_seconds``: T' floats, the time of each temporal patch (s): the mean of its first and last frame's
  ``index / fps``, Qwen3-VL's ``<t seconds>`` (transformers 5.25.0 processing_qwen3_vl.py:210-221,
  ``_calculate_timestamps``);
- ``deepstack``: K, Qwen3-VL's deepstack features: the tokens are (1 + K) blocks of the LLM's width D side by
  side, the merger's first (0 for Qwen2.5-VL);
- ``second_per_grid_t``: seconds one temporal patch spans (temporal patch size / sampling rate), what Qwen2.5-VL's
  M-RoPE scales its temporal position by;
- ``groups``: in token order, ``{"patches": [...], "cells": [...]}``: the group's tokens are, for each temporal patch
  in ``patches``, one token per entry of ``cells`` (a flat index ``row * Gw + col`` into the Gh x Gw grid).

A pooled token takes the position of the first cell (in row-major order) of the window it pools: ``none`` keeps
every cell; the 1d pools the first of each pair; ``2x2_max``/``2x2_avg`` the top-left of each 2x2 window;
``2x2_bilinear`` and the fast pathway's adaptive pooling (to h x w) the cell ``floor(i * Gh / h)``,
``floor(j * Gw / w)``, where each output's window starts. So a pooled token keeps its place in the video's own
coordinates, and the model's own layout (all tokens) gives exactly the model's positions. :func:`token_positions`
expands the groups to (L, 3). No torch.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .policies import SLOW_POOLS


def _starts(size: int, out: int) -> list[int]:
    """Where each of ``out`` adaptive windows over ``size`` cells starts: floor(i * size / out)."""
    return [i * size // out for i in range(out)]


def pool_cells(grid: tuple[int, int], pool: str) -> list[int]:
    """Flat cell index (row * Gw + col) of each token one frame keeps after ``pool``, in token order.

    Example:
        >>> pool_cells((2, 4), "1d_max"), pool_cells((4, 4), "2x2_avg"), pool_cells((3, 3), "2x2_bilinear")
        ([0, 2, 4, 6], [0, 2, 8, 10], [0, 1, 3, 4])
    """
    gh, gw = grid
    if pool == "none":
        return list(range(gh * gw))
    if pool in ("1d_max", "1d_avg"):
        return list(range(0, gh * gw - 1, 2))
    if pool in ("2x2_max", "2x2_avg"):
        return [2 * r * gw + 2 * c for r in range(gh // 2) for c in range(gw // 2)]
    if pool == "2x2_bilinear":
        h, w = -(-gh // 2), -(-gw // 2)
        return [r * gw + c for r in _starts(gh, h) for c in _starts(gw, w)]
    raise ConfigError(f"unknown slow pool {pool!r}; valid: {', '.join(SLOW_POOLS)}")


def fast_cells(grid: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """Flat cell index where each window of the fast pathway's adaptive pooling to ``size`` starts, row-major."""
    gh, gw = grid
    return [r * gw + c for r in _starts(gh, size[0]) for c in _starts(gw, size[1])]


def position_groups(
    patches: int,
    grid: tuple[int, int],
    slow_indices: list[int],
    slow_pool: str,
    fast_size: tuple[int, int],
    layout: str,
) -> list[dict[str, list[int]]]:
    """The ``groups`` of ``meta["positions"]`` for a layout: ``frames`` one group (every patch, ``slow_pool``'s
    cells); ``slowfast`` the slow patches then every patch at the fast size."""
    if layout == "frames":
        return [{"patches": list(range(patches)), "cells": pool_cells(grid, slow_pool)}]
    return [
        {"patches": [int(i) for i in slow_indices], "cells": pool_cells(grid, slow_pool)},
        {"patches": list(range(patches)), "cells": fast_cells(grid, fast_size)},
    ]


def positions_meta(
    grid_thw: tuple[int, int, int],
    patch_seconds: list[float],
    second_per_grid_t: float,
    groups: list[dict],
    temporal_patch: int = 2,
) -> dict[str, Any]:
    return {
        "grid_thw": [int(v) for v in grid_thw],
        "temporal_patch": int(temporal_patch),
        "patch_seconds": [round(float(s), 6) for s in patch_seconds],
        "second_per_grid_t": float(second_per_grid_t),
        "groups": groups,
    }


def token_positions(positions: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(temporal patch, row, column) of every output token, in token order, from ``meta["positions"]``.

    Example:
        >>> token_positions({"grid_thw": [2, 2, 3], "groups": [{"patches": [1], "cells": [0, 4]}]})
        [(1, 0, 0), (1, 1, 1)]

    Raises:
        ConfigError: positions that are not what a token file records.
    """
    try:
        _, _, gw = positions["grid_thw"]
        groups = positions["groups"]
        return [(int(t), int(c) // gw, int(c) % gw) for g in groups for t in g["patches"] for c in g["cells"]]
    except (KeyError, TypeError, ValueError):
        raise ConfigError("the token file's positions are not grid_thw + groups of patches and cells") from None


def clip_positions(clip: Any, grid: tuple[int, int], patches: int, temporal: int, slow_indices: list[int], a) -> dict:
    """``meta["positions"]`` of one clip whose T frames made ``patches`` temporal patches of ``temporal`` frames.

    The sampling rate is qwen-vl-utils' (``fetch_video``: ``sample_fps = nframes / total_frames * video_fps``), so
    ``second_per_grid_t = temporal / sample_fps`` is what Qwen2.5-VL's processor passes as ``second_per_grid_ts``.
    """
    info, frames = clip.info, len(clip.indices)
    sample_fps = frames / max(info.num_frames, 1e-6) * info.fps if info.fps else 0.0
    last = [min(i * temporal + temporal - 1, frames - 1) for i in range(patches)]
    if info.fps:
        seconds = [(clip.indices[i * temporal] + clip.indices[j]) / 2 / info.fps for i, j in enumerate(last)]
    else:  # no frame rate known: the decoder's times
        seconds = [(clip.timestamps[i * temporal] + clip.timestamps[j]) / 2 for i, j in enumerate(last)]
    groups = position_groups(patches, grid, slow_indices, a.slow_pool, a.fast_size, a.layout)
    return positions_meta((patches, *grid), seconds, temporal / sample_fps if sample_fps else 0.0, groups, temporal)


def check_video_grid(video: Any, grid: tuple[int, int], a) -> None:
    """The layout's pooling against one video's own grid: one line naming the video when it cannot apply."""
    from .policies import check_grid, check_layout

    try:
        check_grid(grid, a.slow_pool, a.fast_size, a.layout)
        check_layout(grid, a.slow_pool, a.layout, a.newline)
    except ConfigError as exc:
        raise ConfigError(f"{video}: this video's merged grid is {grid[0]}x{grid[1]}, and {exc}") from None
