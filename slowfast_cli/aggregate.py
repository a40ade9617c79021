"""The slow/fast aggregator: a pure function and a thin ``nn.Module`` over it (timm's pattern).

Input ``x`` (T, N, D) with N = Gh * Gw patch tokens per frame in row-major order. Output (1, L, D):
- slow pathway: S = min(T, slow_frames) frames at ``linspace(0, T-1, S).long()``, each pooled by ``slow_pool``;
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

from .budget import Budget, check_grid, token_budget
from .errors import ConfigError


@dataclass
class Aggregated:
    tokens: torch.Tensor  # (1, L, D)
    slow_indices: list[int]  # which of the T frames the slow pathway kept
    budget: Budget  # the counts, equal to token_budget() for the same settings


def slow_indices(frames: int, slow_frames: int) -> torch.Tensor:
    """Indices (S,) of the slow frames among T: ``linspace(0, T-1, S)`` truncated to integers."""
    s = min(frames, slow_frames)
    return torch.linspace(0, frames - 1, s).long()


def pool_slow(x: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """Spatially pool slow frames.

    Args:
        x: (S, N, D) patch tokens, N = Gh * Gw row-major.
        grid: (Gh, Gw).
        mode: none | 1d_max | 1d_avg (consecutive token pairs) | 2x2_max | 2x2_avg (stride-2 windows, floor).

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
    raise ConfigError(f"unknown slow pool {mode!r}")


def pool_fast(x: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of every frame: (T, N, D) -> (T, h*w, D), row-major per frame."""
    gh, gw = grid
    img = rearrange(x, "t (h w) d -> t d h w", h=gh, w=gw)  # (T, D, Gh, Gw)
    pooled = F.adaptive_avg_pool2d(img, size)  # (T, D, h, w)
    return rearrange(pooled, "t d h w -> t (h w) d")


def slow_fast(
    x: torch.Tensor,
    grid: tuple[int, int],
    slow_frames: int = 32,
    slow_pool: str = "1d_max",
    fast_size: tuple[int, int] = (4, 4),
) -> Aggregated:
    """Aggregate (T, N, D) patch tokens into (1, L, D): slow tokens, then fast tokens.

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
    check_grid(grid, slow_pool, fast_size)
    idx = slow_indices(t, slow_frames)
    slow = pool_slow(x[idx.to(x.device)], grid, slow_pool)  # (S, N_slow, D)
    fast = pool_fast(x, grid, fast_size)  # (T, h*w, D)
    tokens = torch.cat([slow.flatten(0, 1), fast.flatten(0, 1)], dim=0).unsqueeze(0)  # (1, L, D)
    budget = token_budget(t, grid, slow_frames, slow_pool, fast_size)
    assert tokens.shape[1] == budget.output_tokens, (tokens.shape, budget)
    return Aggregated(tokens=tokens, slow_indices=idx.tolist(), budget=budget)


class SlowFastAggregator(nn.Module):
    """Thin module over :func:`slow_fast`; stores the settings, has no parameters."""

    def __init__(self, slow_frames: int = 32, slow_pool: str = "1d_max", fast_size: tuple[int, int] = (4, 4)):
        super().__init__()
        self.slow_frames, self.slow_pool, self.fast_size = slow_frames, slow_pool, tuple(fast_size)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(T, N, D) -> (1, L, D)."""
        return slow_fast(x, grid, self.slow_frames, self.slow_pool, self.fast_size).tokens

    def extra_repr(self) -> str:
        return f"slow_frames={self.slow_frames}, slow_pool={self.slow_pool}, fast_size={self.fast_size}"
