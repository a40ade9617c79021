"""Token arithmetic without tensors: the budget of a config, and the planner that searches for configs.

``token_budget`` is the single source of the counts; ``aggregate.slow_fast`` asserts against it, and the tests
prove they agree for every pool mode on many shapes. Nothing here imports torch or open_clip, so
``slowfast budget`` runs in the time it takes to start Python.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import SLOW_POOLS
from .errors import ConfigError

OWN_MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"


def _model_config_dirs() -> list[Path]:
    dirs = [OWN_MODEL_CONFIGS]
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    return dirs


def model_config_path(model: str) -> Path | None:
    """The open_clip model-config JSON for ``model`` (ours first, then open_clip's), or None."""
    for d in _model_config_dirs():
        p = d / f"{model}.json"
        if p.is_file():
            return p
    return None


def model_grid(model: str) -> tuple[int, int]:
    """Patch grid (Gh, Gw) of an open_clip ViT: image size // patch size, read from its config JSON."""
    path = model_config_path(model)
    if path is None:
        raise ConfigError(f"unknown model {model!r}: no open_clip config found; pass --grid HxW or a known --model")
    vision = json.loads(path.read_text())["vision_cfg"]
    if "patch_size" not in vision:
        raise ConfigError(f"model {model!r} is not an open_clip ViT with a patch size; pass --grid HxW")
    size, patch = vision["image_size"], vision["patch_size"]
    h, w = (size, size) if isinstance(size, int) else size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return h // ph, w // pw


def slow_tokens_per_frame(grid: tuple[int, int], slow_pool: str) -> int:
    """Tokens one slow frame keeps after spatial pooling of a (Gh, Gw) grid."""
    gh, gw = grid
    if slow_pool == "none":
        return gh * gw
    if slow_pool in ("1d_max", "1d_avg"):
        return gh * gw // 2
    if slow_pool in ("2x2_max", "2x2_avg"):
        return (gh // 2) * (gw // 2)
    raise ConfigError(f"unknown slow pool {slow_pool!r}; valid: {', '.join(SLOW_POOLS)}")


def check_grid(grid: tuple[int, int], slow_pool: str, fast_size: tuple[int, int]) -> None:
    """Raise ConfigError when the pooling settings cannot apply to this patch grid."""
    gh, gw = grid
    if gh <= 0 or gw <= 0:
        raise ConfigError(f"bad grid {gh}x{gw}: both sides must be positive")
    if slow_pool not in SLOW_POOLS:
        raise ConfigError(f"unknown slow pool {slow_pool!r}; valid: {', '.join(SLOW_POOLS)}")
    if slow_pool.startswith("1d") and (gh * gw) % 2:
        raise ConfigError(
            f"slow pool {slow_pool} pairs tokens but the {gh}x{gw} grid has an odd count ({gh * gw}); "
            "use none, 2x2_max or 2x2_avg"
        )
    if slow_pool.startswith("2x2") and (gh < 2 or gw < 2):
        raise ConfigError(f"slow pool {slow_pool} needs a grid of at least 2x2, got {gh}x{gw}; use none or 1d_*")
    h, w = fast_size
    if h <= 0 or w <= 0:
        raise ConfigError(f"bad fast size {h}x{w}: both sides must be positive")
    if h > gh or w > gw:
        raise ConfigError(f"fast size {h}x{w} is larger than the {gh}x{gw} patch grid; pick at most {gh}x{gw}")


@dataclass(frozen=True)
class Budget:
    frames: int  # T, frames the encoder sees
    grid: tuple[int, int]  # (Gh, Gw) patch grid
    tokens_per_frame: int  # N = Gh * Gw
    input_tokens: int  # T * N
    slow_frames: int  # S = min(T, slow_frames)
    slow_pool: str
    slow_tokens_per_frame: int
    slow_tokens: int  # S * slow_tokens_per_frame
    fast_size: tuple[int, int]
    fast_tokens: int  # T * h * w
    output_tokens: int  # L = slow + fast
    ratio: float  # L / (T * N)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["grid"], d["fast_size"] = list(self.grid), list(self.fast_size)
        return d


def token_budget(
    frames: int, grid: tuple[int, int], slow_frames: int, slow_pool: str, fast_size: tuple[int, int]
) -> Budget:
    """Counts of the slow/fast aggregator for T frames of a (Gh, Gw) grid; no tensors involved.

    Example (the seed demo):
        >>> token_budget(64, (14, 14), 32, "none", (4, 4)).output_tokens
        7296
    """
    if frames <= 0:
        raise ConfigError(f"frames must be a positive integer, got {frames}")
    if slow_frames <= 0:
        raise ConfigError(f"slow frames must be a positive integer, got {slow_frames}")
    check_grid(grid, slow_pool, fast_size)
    n = grid[0] * grid[1]
    s = min(frames, slow_frames)
    per = slow_tokens_per_frame(grid, slow_pool)
    fast = frames * fast_size[0] * fast_size[1]
    out = s * per + fast
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
    )


# --- the planner -------------------------------------------------------------------------------------------

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
        return b.frames, b.slow_tokens, b.fast_size[0] * b.fast_size[1]


def _dominates(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and a != b


def plan(
    context: int,
    grid: tuple[int, int],
    min_frames: int = 1,
    max_frames: int = 256,
    reserve: int = 0,
    pools: tuple[str, ...] = ("none", "1d_max", "2x2_max"),
) -> list[PlanEntry]:
    """The Pareto front of aggregator settings whose output fits ``context - reserve`` tokens.

    Candidates: T in PLAN_FRAMES (plus the range ends) within [min_frames, max_frames]; S in {1, 2, 4, ..., T}
    (powers of two and T itself); the slow pools ``pools`` that apply to the grid (the ``*_avg`` twins of the
    ``*_max`` modes cost exactly the same tokens, so they are not listed separately); fast grids k x k from
    PLAN_FAST that fit the grid. A config is kept unless another fits and is at least as good on frames covered
    (T), slow
    detail (slow tokens) and fast detail (tokens per frame in the fast pathway) and better on one. Among configs
    with the same three values the one using fewer tokens is kept. Ranked by frames, then slow detail, then
    fast detail, all descending.
    """
    if context <= 0:
        raise ConfigError(f"context must be a positive integer, got {context}")
    if min_frames <= 0 or max_frames < min_frames:
        raise ConfigError(f"bad frame range {min_frames}..{max_frames}: need 1 <= min <= max")
    limit = context - reserve
    if limit <= 0:
        raise ConfigError(f"reserve {reserve} leaves no room in a context of {context}")
    frame_options = sorted({t for t in PLAN_FRAMES if min_frames <= t <= max_frames} | {min_frames, max_frames})
    gh, gw = grid
    fast_options = [(k, k) for k in PLAN_FAST if k <= gh and k <= gw]
    best: dict[tuple[int, int, int], PlanEntry] = {}
    for t in frame_options:
        slow_options = sorted({2**i for i in range(t.bit_length()) if 2**i <= t} | {t})
        for pool in pools:
            try:
                check_grid(grid, pool, (1, 1))
            except ConfigError:
                continue
            for s in slow_options:
                for fast in fast_options:
                    b = token_budget(t, grid, s, pool, fast)
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
