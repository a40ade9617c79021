"""The slow/fast aggregator: a pure function and a thin ``nn.Module`` over it (timm's pattern).

Input ``x`` (T, N, D) with N = Gh * Gw patch tokens per frame in row-major order. Output (1, L, D):
- slow pathway: S frames picked by ``slow_index`` (:func:`slow_indices`: the seed's ``linspace(0, T-1, S).long()``
  with S = min(T, slow_frames), or SF-LLaVA's ``segment_start``), each pooled by ``slow_pool``;
- fast pathway: all T frames, adaptive-average-pooled to ``fast_size`` (h, w);
- slow tokens first, then fast; L = S * N_slow + T * h * w (see ``budget.token_budget``).
No Python loop over frames; dtype and device of ``x`` are preserved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .budget import Budget, token_budget
from .errors import ConfigError
from .layout import Group, add_newlines
from .policies import check_grid, check_layout, pooled_grid, slow_frame_count


@dataclass
class Aggregated:
    tokens: torch.Tensor  # (1, L, D)
    slow_indices: list[int]  # which of the T frames the slow pathway kept
    budget: Budget  # the counts, equal to token_budget() for the same settings


def linspace_slow_indices(frames: int, slow_frames: int) -> torch.Tensor:
    """``linspace`` (the seed's): (S,) int64 ``linspace(0, T-1, S)`` truncated, S = min(T, slow_frames), no repeats."""
    s = min(frames, slow_frames)
    return torch.linspace(0, frames - 1, s).long()


def segment_start_slow_indices(frames: int, slow_frames: int) -> torch.Tensor:
    """``segment_start`` (SlowFast-LLaVA's): (S,) int64, the start of each of S equal segments of T, S = slow_frames.

    As ``prepare_slowfast`` (apple/ml-slowfast-llava bea0f73, ``slowfast_llava/llava/model/llava_arch.py``:208-210):
    ``torch.linspace(0, T, S + 1)`` in float32, truncated by ``.to(torch.int32)``, the last one dropped. Not
    clamped: T < S repeats frames (T=6, S=10: 0, 0, 1, 1, 2, 3, 3, 4, 4, 5).
    """
    edges = torch.linspace(0, frames, slow_frames + 1, dtype=torch.float32, device="cpu")  # (S+1,)
    return edges.to(torch.int32)[:-1].long()


SLOW_INDEX = {"linspace": linspace_slow_indices, "segment_start": segment_start_slow_indices}  # config.SLOW_INDICES


def slow_indices(frames: int, slow_frames: int, policy: str = "linspace") -> torch.Tensor:
    """Indices (S,) int64 on the CPU of the slow frames among T, by ``policy`` (one of ``SLOW_INDEX``).

    S is ``policies.slow_frame_count(frames, slow_frames, policy)``.

    Example:
        >>> slow_indices(64, 32)[-3:].tolist(), slow_indices(50, 10, "segment_start").tolist()
        ([58, 60, 63], [0, 5, 10, 15, 20, 25, 30, 35, 40, 45])
    """
    slow_frame_count(frames, slow_frames, policy)  # raises the ConfigError for an unknown policy
    return SLOW_INDEX[policy](frames, slow_frames)


def pool_slow(x: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """Spatially pool slow frames.

    Args:
        x: (S, N, D) patch tokens, N = Gh * Gw row-major.
        grid: (Gh, Gw).
        mode: none | 1d_max | 1d_avg (consecutive token pairs) | 2x2_max | 2x2_avg (stride-2 windows, floor) |
            2x2_bilinear (LLaVA-NeXT's ``get_2dPool`` bilinear mode, :func:`bilinear_half`).

    Returns:
        (S, N_slow, D).
    """
    gh, gw = grid
    if mode == "none":
        return x
    if mode in ("1d_max", "1d_avg"):
        pairs = rearrange(x, "s (n two) d -> s n two d", two=2)  # (S, N/2, 2, D)
        return pairs.amax(dim=2) if mode == "1d_max" else pairs.mean(dim=2)
    if mode in ("2x2_max", "2x2_avg"):
        img = rearrange(x, "s (h w) d -> s d h w", h=gh, w=gw)  # (S, D, Gh, Gw)
        pooled = F.max_pool2d(img, 2, 2) if mode == "2x2_max" else F.avg_pool2d(img, 2, 2)  # (S, D, Gh/2, Gw/2)
        return rearrange(pooled, "s d h w -> s (h w) d")
    if mode == "2x2_bilinear":
        return bilinear_half(x, grid)
    raise ConfigError(f"unknown slow pool {mode!r}")


def bilinear_half(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of each frame's grid to ceil(Gh/2) x ceil(Gw/2), as LLaVA-NeXT's ``get_2dPool``.

    LLaVA-VL/LLaVA-NeXT ``llava/model/llava_arch.py`` ``get_2dPool`` with ``mm_spatial_pool_mode="bilinear"``:
    ``F.interpolate(size=[ceil(h/2), ceil(w/2)], mode="bilinear")`` with the defaults ``align_corners=False``
    (pixel-centre sampling, the source coordinate ``(i + 0.5) * Gh / h - 0.5``) and no antialiasing. A 27x27
    SigLIP grid becomes 14x14 = 196 tokens.

    Args:
        x: (S, N, D), N = Gh * Gw row-major.
        grid: (Gh, Gw).

    Returns:
        (S, ceil(Gh/2) * ceil(Gw/2), D), row-major per frame.
    """
    gh, gw = grid
    img = rearrange(x, "s (h w) d -> s d h w", h=gh, w=gw).contiguous()  # (S, D, Gh, Gw), get_2dPool's layout
    size = (-(-gh // 2), -(-gw // 2))
    pooled = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=False)  # (S, D, h, w)
    return rearrange(pooled, "s d h w -> s (h w) d")


def pool_fast(x: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of every frame: (T, N, D) -> (T, h*w, D), row-major per frame.

    Each window is summed in row-major order and divided by its height, then by its width: what
    ``nn.AdaptiveAvgPool2d`` computes on a contiguous tensor, and so what SlowFast-LLaVA's ``prepare_slowfast``
    computes on its (D, T, Gh, Gw) view. The (T, D, Gh, Gw) view of ``x`` is channels-last, whose CPU kernel
    divides once by the window's area instead, which differs in the last bit for windows such as 6x6; hence the
    copy to a contiguous tensor.
    """
    gh, gw = grid
    img = rearrange(x, "t (h w) d -> t d h w", h=gh, w=gw).contiguous()  # (T, D, Gh, Gw)
    pooled = F.adaptive_avg_pool2d(img, size)  # (T, D, h, w)
    return rearrange(pooled, "t d h w -> t (h w) d")


def pooled_groups(
    x: torch.Tensor,
    grid: tuple[int, int],
    slow_frames: int = 32,
    slow_pool: str = "1d_max",
    fast_size: tuple[int, int] = (4, 4),
    slow_index: str = "linspace",
    layout: str = "slowfast",
) -> tuple[list[Group], torch.Tensor]:
    """The pooled frame groups of a layout and the slow-frame indices, before any newline token.

    ``slowfast``: the S slow frames picked by ``slow_index`` pooled by ``slow_pool``, then all T frames pooled to
    ``fast_size``. ``frames``: all T frames pooled by ``slow_pool`` (indices 0..T-1), no fast pathway.

    Args:
        x: (T, N, D) with N = Gh * Gw row-major.

    Returns:
        ([Group (F, n, D), ...], (S,) int64 indices of the detailed frames among T).

    Raises:
        ConfigError: if ``x`` is not (T, N, D) with N = Gh * Gw, or the pooling does not fit the grid.
    """
    if x.ndim != 3:
        raise ConfigError(f"expected features of shape (T, N, D), got {tuple(x.shape)}")
    t, n, _ = x.shape
    if t == 0:
        raise ConfigError("expected at least one frame, got T=0")
    if grid[0] * grid[1] != n:
        raise ConfigError(f"grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} tokens but the features have N={n}")
    check_grid(grid, slow_pool, fast_size, layout)
    pooled = pooled_grid(grid, slow_pool)
    rows = pooled[0] if pooled else None  # a 1d pool of an odd width keeps no rows
    if layout == "frames":
        return [Group(pool_slow(x, grid, slow_pool), rows)], torch.arange(t)
    idx = slow_indices(t, slow_frames, slow_index)  # (S,)
    slow = pool_slow(x[idx.to(x.device)], grid, slow_pool)  # (S, N_slow, D)
    fast = pool_fast(x, grid, fast_size)  # (T, h*w, D)
    return [Group(slow, rows), Group(fast, fast_size[0])], idx


def slow_fast(
    x: torch.Tensor,
    grid: tuple[int, int],
    slow_frames: int = 32,
    slow_pool: str = "1d_max",
    fast_size: tuple[int, int] = (4, 4),
    slow_index: str = "linspace",
    layout: str = "slowfast",
    newline: str = "no_token",
    newline_token: torch.Tensor | None = None,
    project=None,
) -> Aggregated:
    """Aggregate (T, N, D) patch tokens into (1, L, D): slow tokens, then fast tokens (or, with ``layout="frames"``,
    every frame pooled by ``slow_pool``), with newline tokens placed by ``newline`` (``layout.add_newlines``).

    With ``slow_index="segment_start"``, ``slow_pool="1d_max"``, ``fast_size=(4, 4)`` and ``slow_frames=10`` this is
    SlowFast-LLaVA's ``prepare_slowfast`` (bit for bit, tests/sf_llava_reference.py); on T=50 frames of a 24x24
    grid, L = 10 * 288 + 50 * 16 = 3680.

    Args:
        newline_token: (D_out,) the checkpoint's ``image_newline``, needed unless ``newline`` is ``no_token``.
        project: applied to each pooled group, (F, n, D) -> (F, n, D_out), before the newlines go in: pooling
            before the projector (llava-hf's LlavaNextVideo); None when ``x`` is already projected.

    Raises:
        ConfigError: if ``x`` is not (T, N, D) with N = Gh * Gw, or the pooling or the layout does not fit the grid.
    """
    check_layout(grid, slow_pool, layout, newline)
    groups, idx = pooled_groups(x, grid, slow_frames, slow_pool, fast_size, slow_index, layout)
    if project is not None:
        groups = [Group(project(g.tokens), g.rows) for g in groups]
    tokens = add_newlines(groups, newline, newline_token)  # (1, L, D)
    t = x.shape[0]
    budget = token_budget(t, grid, slow_frames, slow_pool, fast_size, slow_index, layout=layout, newline=newline)
    assert tokens.shape[1] == budget.output_tokens, (tokens.shape, budget)
    return Aggregated(tokens=tokens, slow_indices=idx.tolist(), budget=budget)


class SlowFastAggregator(nn.Module):
    """Thin module over :func:`slow_fast`; stores the settings, has no parameters."""

    def __init__(
        self,
        slow_frames: int = 32,
        slow_pool: str = "1d_max",
        fast_size: tuple[int, int] = (4, 4),
        slow_index: str = "linspace",
    ):
        super().__init__()
        self.slow_frames, self.slow_pool, self.fast_size = slow_frames, slow_pool, tuple(fast_size)
        self.slow_index = slow_index

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(T, N, D) -> (1, L, D)."""
        return slow_fast(x, grid, self.slow_frames, self.slow_pool, self.fast_size, self.slow_index).tokens

    def extra_repr(self) -> str:
        return (
            f"slow_frames={self.slow_frames}, slow_pool={self.slow_pool}, fast_size={self.fast_size}, "
            f"slow_index={self.slow_index}"
        )
