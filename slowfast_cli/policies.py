"""The named policies of the aggregator and the video sampler, and the token counts they give, without tensors.

Policy names are the valid values of their settings (``config`` validates against them); the counts here are the
single source of the arithmetic that ``budget``, the planner and ``aggregate.slow_fast`` (which asserts against
them) use. No torch.
"""

from __future__ import annotations

from .errors import ConfigError

SLOW_POOLS = ("none", "1d_max", "1d_avg", "2x2_max", "2x2_avg", "2x2_bilinear")  # see aggregate.pool_slow
# frame sampling policies, see video.sampling
SAMPLINGS = ("centers", "sf_llava", "linspace", "llava_next", "arange", "internvl", "qwen")
SLOW_INDICES = ("linspace", "segment_start")  # slow-frame index policies, see aggregate.slow_indices
RESIZES = ("shortest", "squash")  # frame resize policies, see encoder.preprocess
LAYOUTS = ("slowfast", "frames")  # slowfast: S detailed frames then T tiny ones; frames: every frame pooled alike
NEWLINES = ("no_token", "grid", "frame", "one_token")  # LLaVA-NeXT's mm_newline_position, see layout.add_newlines
POOL_STAGES = ("after", "before")  # pool after the projector (LLaVA-NeXT's get_2dPool) or before (llava-hf NeXT-Video)


def slow_tokens_per_frame(grid: tuple[int, int], slow_pool: str) -> int:
    """Tokens one slow frame keeps after spatial pooling of a (Gh, Gw) grid."""
    gh, gw = grid
    if slow_pool == "none":
        return gh * gw
    if slow_pool in ("1d_max", "1d_avg"):
        return gh * gw // 2
    if slow_pool in ("2x2_max", "2x2_avg"):
        return (gh // 2) * (gw // 2)
    if slow_pool == "2x2_bilinear":  # LLaVA-NeXT's get_2dPool: resized to ceil(Gh/2) x ceil(Gw/2)
        return -(-gh // 2) * -(-gw // 2)
    raise ConfigError(f"unknown slow pool {slow_pool!r}; valid: {', '.join(SLOW_POOLS)}")


def slow_frame_count(frames: int, slow_frames: int, slow_index: str = "linspace") -> int:
    """S, the slow frames ``aggregate.slow_indices`` picks among T: min(T, slow_frames) for ``linspace``,
    ``slow_frames`` for ``segment_start`` (SF-LLaVA's, unclamped: T < slow_frames repeats frames).

    Example:
        >>> slow_frame_count(6, 10), slow_frame_count(6, 10, "segment_start")
        (6, 10)
    """
    if slow_index == "linspace":
        return min(frames, slow_frames)
    if slow_index == "segment_start":
        return slow_frames
    raise ConfigError(
        f"unknown slow index {slow_index!r} (aggregator.slow_index, --slow-index); valid: {', '.join(SLOW_INDICES)}"
    )


def check_grid(grid: tuple[int, int], slow_pool: str, fast_size: tuple[int, int], layout: str = "slowfast") -> None:
    """Raise ConfigError when the pooling settings cannot apply to this patch grid (the fast size only matters to
    the ``slowfast`` layout)."""
    gh, gw = grid
    if gh <= 0 or gw <= 0:
        raise ConfigError(f"bad grid {gh}x{gw}: both sides must be positive")
    if slow_pool not in SLOW_POOLS:
        raise ConfigError(f"unknown slow pool {slow_pool!r}; valid: {', '.join(SLOW_POOLS)}")
    if slow_pool.startswith("1d") and (gh * gw) % 2:
        fits = "2x2_bilinear, 2x2_max, 2x2_avg or none" if gh >= 2 and gw >= 2 else "2x2_bilinear or none"
        raise ConfigError(
            f"slow pool {slow_pool} (--slow-pool) pairs consecutive tokens and needs an even token count, but the "
            f"{gh}x{gw} grid has an odd count ({gh * gw}): its last token has no partner (SigLIP towers' 27x27 grids "
            f"are such; LLaVA-NeXT pools them with 2x2_bilinear); use --slow-pool {fits}"
        )
    if slow_pool in ("2x2_max", "2x2_avg") and (gh < 2 or gw < 2):  # 2x2_bilinear resizes any grid
        fits = "2x2_bilinear or none" if (gh * gw) % 2 else "2x2_bilinear, none, 1d_max or 1d_avg"
        raise ConfigError(
            f"slow pool {slow_pool} (--slow-pool) needs a grid of at least 2x2, got {gh}x{gw}; use --slow-pool {fits}"
        )
    if layout == "frames":
        return
    h, w = fast_size
    if h <= 0 or w <= 0:
        raise ConfigError(f"bad fast size {h}x{w} (--fast-size): both sides must be positive")
    if h > gh or w > gw:
        raise ConfigError(
            f"fast size {h}x{w} (--fast-size) is larger than the {gh}x{gw} patch grid; pick at most {gh}x{gw}"
        )


def pooled_grid(grid: tuple[int, int], pool: str) -> tuple[int, int] | None:
    """(rows, columns) of one frame's tokens after ``pool``, or None when the pool keeps no rows: the 1d pools pair
    consecutive tokens, which stay within a row only when Gw is even.

    Example:
        >>> pooled_grid((27, 27), "2x2_bilinear"), pooled_grid((27, 27), "2x2_avg"), pooled_grid((24, 24), "1d_max")
        ((14, 14), (13, 13), (24, 12))
    """
    gh, gw = grid
    if pool == "none":
        return gh, gw
    if pool in ("1d_max", "1d_avg"):
        return (gh, gw // 2) if gw % 2 == 0 else None
    if pool in ("2x2_max", "2x2_avg"):
        return gh // 2, gw // 2
    if pool == "2x2_bilinear":
        return -(-gh // 2), -(-gw // 2)
    raise ConfigError(f"unknown slow pool {pool!r}; valid: {', '.join(SLOW_POOLS)}")


def newlines_per_frame(rows: int | None, newline: str) -> int:
    """Newline tokens after each frame of a group whose frames have ``rows`` rows: ``grid`` one per row, ``frame``
    one per frame, ``one_token`` and ``no_token`` none (``one_token``'s single token ends the whole sequence)."""
    if newline == "grid":
        if rows is None:
            raise ConfigError("grid newlines need frames whose tokens keep rows")
        return rows
    if newline == "frame":
        return 1
    if newline in ("one_token", "no_token"):
        return 0
    valid = ", ".join(NEWLINES)
    raise ConfigError(f"unknown newline position {newline!r} (aggregator.newline, --newline); valid: {valid}")


def check_layout(grid: tuple[int, int], slow_pool: str, layout: str, newline: str) -> None:
    """Raise ConfigError when the layout or its newline tokens cannot apply to this grid and pool."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r} (aggregator.layout, --layout); valid: {', '.join(LAYOUTS)}")
    if newline not in NEWLINES:
        raise ConfigError(
            f"unknown newline position {newline!r} (aggregator.newline, --newline); valid: {', '.join(NEWLINES)}"
        )
    if newline == "grid" and pooled_grid(grid, slow_pool) is None:
        raise ConfigError(
            f"--newline grid puts a newline token after each row of tokens, but slow pool {slow_pool} pairs tokens "
            f"across the rows of the {grid[0]}x{grid[1]} grid (an odd width): use --slow-pool 2x2_bilinear, 2x2_avg, "
            "2x2_max or none, or --newline frame"
        )
