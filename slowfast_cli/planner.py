"""``slowfast budget --plan``: the Pareto front of aggregator settings that fit a context, without tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .budget import Budget, token_budget
from .errors import ConfigError
from .policies import check_grid, check_layout, slow_frame_count

PLAN_FRAMES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
PLAN_FAST = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class PlanEntry:
    budget: Budget
    spare: int  # context tokens left for the prompt and the answer

    @property
    def key(self) -> tuple[int, int, int]:
        """The three things a user trades: frames covered, slow detail, fast detail (all: more is better)."""
        b = self.budget
        return b.frames, b.slow_tokens, b.fast_size[0] * b.fast_size[1] if b.layout != "frames" else 0


def _dominates(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and a != b


def plan(
    context: int,
    grid: tuple[int, int] | Callable[[int], tuple[int, int]],
    min_frames: int = 1,
    max_frames: int = 256,
    reserve: int = 0,
    pools: tuple[str, ...] = ("none", "1d_max", "2x2_max", "2x2_bilinear"),
    slow_index: str = "linspace",
    layout: str = "slowfast",
    newline: str = "no_token",
) -> list[PlanEntry]:
    """The Pareto front of aggregator settings whose output fits ``context - reserve`` tokens.

    Candidates: T in PLAN_FRAMES (plus the range ends) within [min_frames, max_frames]; S in {1, 2, 4, ..., T}
    (powers of two and T itself; S > T only repeats frames, with ``slow_index`` segment_start, so it is never a
    candidate, and for S <= T both slow-index policies cost the same); the slow pools ``pools`` that apply to the
    grid (the ``*_avg`` twins of the ``*_max`` modes cost exactly the same tokens, so they are not listed
    separately; ``2x2_bilinear`` costs what ``2x2_max`` does on even sides, so it is listed where a side is odd,
    as on SigLIP's 27x27 grid, where it keeps 14x14 and ``1d_*`` do not fit); fast grids k x k from
    PLAN_FAST that fit the grid. A config is kept unless another fits and is at least as good on frames covered
    (T), slow detail (slow tokens) and fast detail (tokens per frame in the fast pathway) and better on one.
    Among configs with the same three values the one using fewer tokens is kept (the earlier pool in ``pools``
    on a tie). Ranked by frames, then slow detail, then fast detail, all descending.

    ``layout="frames"`` (every frame pooled alike, no fast pathway) searches T and the pool only; ``newline``
    counts the newline tokens of each candidate, and drops the pools it cannot apply to (``grid`` needs rows).
    ``grid`` may be a function of T (Qwen3-VL, whose pixel bound covers the whole video: more frames, a smaller
    grid); each entry's budget then names its own grid.
    """
    slow_frame_count(1, 1, slow_index)  # an unknown slow_index fails even when nothing would fit
    if context <= 0:
        raise ConfigError(f"context must be a positive integer, got {context}")
    if min_frames <= 0 or max_frames < min_frames:
        raise ConfigError(f"bad frame range {min_frames}..{max_frames}: need 1 <= min <= max")
    limit = context - reserve
    if limit <= 0:
        raise ConfigError(f"reserve {reserve} leaves no room in a context of {context}")
    frame_options = sorted({t for t in PLAN_FRAMES if min_frames <= t <= max_frames} | {min_frames, max_frames})
    grid_of = grid if callable(grid) else (lambda t, g=grid: g)
    best: dict[tuple[int, int, int], PlanEntry] = {}
    for t in frame_options:
        grid = grid_of(t)
        gh, gw = grid
        fast_options = [(k, k) for k in PLAN_FAST if k <= gh and k <= gw] if layout != "frames" else [(1, 1)]
        slow_options = sorted({2**i for i in range(t.bit_length()) if 2**i <= t} | {t}) if layout != "frames" else [t]
        for pool in pools:
            try:
                check_grid(grid, pool, (1, 1))
                check_layout(grid, pool, layout, newline)
            except ConfigError:
                continue
            for s in slow_options:
                for fast in fast_options:
                    b = token_budget(t, grid, s, pool, fast, slow_index, layout, newline)
                    if b.output_tokens > limit:
                        continue
                    entry = PlanEntry(b, limit - b.output_tokens)
                    old = best.get(entry.key)
                    if old is None or b.output_tokens < old.budget.output_tokens:
                        best[entry.key] = entry
    # Sweep in descending lexicographic order: any key that dominates k sorts before k, and if anything
    # dominates k then something already on the front does (domination is transitive).
    front: list[PlanEntry] = []
    for k in sorted(best, reverse=True):
        if not any(_dominates(f.key, k) for f in front):
            front.append(best[k])
    return front
