"""Token arithmetic without tensors: the budget of one config.

``token_budget`` is the single source of the counts; ``aggregate.slow_fast`` asserts against it, and the tests
prove they agree for every pool mode on many shapes. Nothing here imports torch or open_clip, so ``slowfast
budget`` runs in the time it takes to start Python. The planner that searches configs is ``planner.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ConfigError
from .policies import check_grid, check_layout, newlines_per_frame, pooled_grid, slow_frame_count, slow_tokens_per_frame


@dataclass(frozen=True)
class Budget:
    frames: int  # T, frames the encoder sees
    grid: tuple[int, int]  # (Gh, Gw) patch grid
    tokens_per_frame: int  # N = Gh * Gw
    input_tokens: int  # T * N
    slow_frames: int  # S: min(T, slow_frames) for slow_index linspace, slow_frames for segment_start
    slow_pool: str
    slow_tokens_per_frame: int
    slow_tokens: int  # S * slow_tokens_per_frame
    fast_size: tuple[int, int]
    fast_tokens: int  # T * h * w
    output_tokens: int  # L = slow + fast
    ratio: float  # L / (T * N)
    slow_index: str = "linspace"  # how the S slow frames are picked (config.SLOW_INDICES)
    layout: str = "slowfast"  # slowfast, or frames: every frame pooled by slow_pool, no fast pathway (S = T)
    newline: str = "no_token"  # newline tokens (config.NEWLINES): grid, frame, one_token or no_token
    newline_tokens: int = 0  # of output_tokens, the newline tokens (the checkpoint's image_newline)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"], d["fast_size"] = list(self.grid), list(self.fast_size)
        return d


def token_budget(
    frames: int,
    grid: tuple[int, int],
    slow_frames: int,
    slow_pool: str,
    fast_size: tuple[int, int],
    slow_index: str = "linspace",
    layout: str = "slowfast",
    newline: str = "no_token",
) -> Budget:
    """Counts of the aggregator for T frames of a (Gh, Gw) grid; no tensors involved.

    ``slowfast`` layout: S is :func:`slow_frame_count` (min(T, slow_frames), or slow_frames with
    ``segment_start``); L = S * :func:`slow_tokens_per_frame` + T * h * w. ``frames`` layout (the LLaVA-Video /
    OneVision / NeXT-Video input): every one of the T frames pooled by ``slow_pool``, no fast pathway, S = T.
    Newline tokens add one per row of every frame (``grid``), one per frame (``frame``) or one in all
    (``one_token``), see ``layout.add_newlines``.

    Example (the seed demo, then SlowFast-LLaVA's 50 frames of a 24x24 grid, and 6 frames of it):
        >>> token_budget(64, (14, 14), 32, "none", (4, 4)).output_tokens
        7296
        >>> token_budget(50, (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start").output_tokens
        3680
        >>> token_budget(6, (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start").output_tokens
        2976

    LLaVA-Video-7B: 64 frames of SigLIP's 27x27 grid, bilinear to 14x14, a newline after each row: 64 x 210.
        >>> token_budget(64, (27, 27), 64, "2x2_bilinear", (4, 4), layout="frames", newline="grid").output_tokens
        13440
    """
    if frames <= 0:
        raise ConfigError(f"frames must be a positive integer, got {frames}")
    if slow_frames <= 0:
        raise ConfigError(f"slow frames must be a positive integer, got {slow_frames}")
    check_grid(grid, slow_pool, fast_size, layout)
    check_layout(grid, slow_pool, layout, newline)
    n = grid[0] * grid[1]
    s = frames if layout == "frames" else slow_frame_count(frames, slow_frames, slow_index)
    per = slow_tokens_per_frame(grid, slow_pool)
    fast = 0 if layout == "frames" else frames * fast_size[0] * fast_size[1]
    rows = pooled_grid(grid, slow_pool)
    lines = s * newlines_per_frame(rows[0] if rows else None, newline)
    if layout == "slowfast":
        lines += frames * newlines_per_frame(fast_size[0], newline)
    lines += newline == "one_token"
    out = s * per + fast + lines
    return Budget(
        frames=frames,
        grid=tuple(grid),
        tokens_per_frame=n,
        input_tokens=frames * n,
        slow_frames=s,
        slow_pool=slow_pool,
        slow_tokens_per_frame=per,
        slow_tokens=s * per,
        fast_size=tuple(fast_size),
        fast_tokens=fast,
        output_tokens=out,
        ratio=out / (frames * n),
        slow_index=slow_index,
        layout=layout,
        newline=newline,
        newline_tokens=lines,
    )


def aggregator_budget(frames: int, grid: tuple[int, int], a) -> Budget:
    """:func:`token_budget` for the settings of a ``config.AggregatorCfg``."""
    return token_budget(frames, grid, a.slow_frames, a.slow_pool, a.fast_size, a.slow_index, a.layout, a.newline)
