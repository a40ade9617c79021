"""Token arithmetic without tensors: the budget of a config, and the planner that searches for configs.

``token_budget`` is the single source of the counts; ``aggregate.slow_fast`` asserts against it, and the tests
prove they agree for every pool mode on many shapes. ``preflight`` checks a whole config against its model
before a run builds anything. Nothing here imports torch or open_clip, so ``slowfast budget`` runs in the time
it takes to start Python.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import SLOW_INDICES, SLOW_POOLS, Config, validate
from .errors import ConfigError

OWN_MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")  # a --pretrained with one of these is a file (encoder.py)
VISION_DEFAULTS = {"layers": 12, "width": 768}  # open_clip's CLIPVisionCfg defaults for keys a JSON leaves out
EXAMPLE_MODELS = ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "ViT-SO400M-14-SigLIP-384", "slowfast-tiny-vit")
# The timm ViTs that open_clip configs use as vision towers (SigLIP, SigLIP 2, EVA, PE-Core, ...), keyed by the timm
# model name without its trailing input size: (blocks, width), from timm's model definitions. An open_clip JSON
# names only ``timm_model_name``; patch and input size come from that name (TIMM_VIT_NAME: timm's names spell them
# out, ``vit_so400m_patch14_siglip_384`` is 14-px patches at 384 px, a 27x27 grid), so budget needs neither timm nor
# torch. tests/test_siglip.py builds every open_clip model that names one and checks all four numbers against timm.
TIMM_VITS = {
    "vit_base_patch16_siglip": (12, 768),
    "vit_base_patch32_siglip": (12, 768),
    "vit_large_patch16_siglip": (24, 1024),
    "vit_so400m_patch14_siglip": (27, 1152),
    "vit_so400m_patch16_siglip": (27, 1152),
    "vit_giantopt_patch16_siglip": (40, 1536),
    "vit_large_patch14_clip": (24, 1024),
    "vit_medium_patch16_gap": (12, 512),
    "vit_relpos_medium_patch16_cls": (12, 512),
    "eva_giant_patch14": (40, 1408),
    "eva02_base_patch16_clip": (12, 768),
    "eva02_large_patch14_clip": (24, 1024),
    "eva02_enormous_patch14_clip": (64, 1792),
    "vit_pe_core_tiny_patch16": (12, 192),
    "vit_pe_core_small_patch16": (12, 384),
    "vit_pe_core_base_patch16": (12, 768),
    "vit_pe_core_large_patch14": (24, 1024),
    "vit_pe_core_gigantic_patch14": (50, 1536),
}
TIMM_VIT_NAME = re.compile(r"(?P<base>.+_patch(?P<patch>\d+)(?:_.+)?)_(?P<size>\d+)")  # base name, patch, input size


def _model_config_dirs() -> list[Path]:
    dirs = [OWN_MODEL_CONFIGS]
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    return dirs


def model_config_path(model: str) -> Path | None:
    """The open_clip model-config JSON for ``model`` (ours first, then open_clip's), or None."""
    if not model or "/" in model or os.sep in model:
        return None  # open_clip's registry is keyed by file stem: a name with a separator is never in it
    for d in _model_config_dirs():
        p = d / f"{model}.json"
        if p.is_file():
            return p
    return None


def _grid_of(vision: dict[str, Any], model: str) -> tuple[int, int]:
    if "patch_size" not in vision or "image_size" not in vision:
        raise ConfigError(f"model {model!r} is not an open_clip ViT with a patch size; pass --grid HxW")
    size, patch = vision["image_size"], vision["patch_size"]
    h, w = (size, size) if isinstance(size, int) else size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return h // ph, w // pw


def model_grid(model: str) -> tuple[int, int]:
    """Patch grid (Gh, Gw) of an open_clip ViT: image size // patch size, read from its config JSON (for a timm
    tower, from its timm model name: ``ViT-SO400M-14-SigLIP-384`` is (27, 27))."""
    path = model_config_path(model)
    if path is None:
        raise ConfigError(f"unknown model {model!r}: no open_clip config found; pass --grid HxW or a known --model")
    return _grid_of(_with_timm_geometry(_read_vision_cfg(path)), model)


def _read_vision_cfg(path: Path) -> dict[str, Any]:
    try:
        vision = json.loads(path.read_text(encoding="utf-8"))["vision_cfg"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not an open_clip model config (no vision_cfg)") from None
    if not isinstance(vision, dict):
        raise ConfigError(f"{path}: not an open_clip model config (vision_cfg is not a table)")
    return vision


def _timm_geometry(timm_name: str) -> dict[str, int] | None:
    """``image_size``, ``patch_size``, ``layers`` and ``width`` of a timm ViT in TIMM_VITS, from its name; else None."""
    m = TIMM_VIT_NAME.fullmatch(timm_name)
    if m is None or m["base"] not in TIMM_VITS:
        return None
    layers, width = TIMM_VITS[m["base"]]
    return {"image_size": int(m["size"]), "patch_size": int(m["patch"]), "layers": layers, "width": width}


def _with_timm_geometry(vision: dict[str, Any]) -> dict[str, Any]:
    """``vision`` with the geometry of its timm ViT filled in (timm builds it at its name's size, whatever the
    JSON's ``image_size``); other towers' as they are."""
    geometry = _timm_geometry(str(vision.get("timm_model_name", "")))
    return {**vision, **geometry} if geometry else vision


def _tower_kind(vision: dict[str, Any]) -> str:
    """``vit`` for open_clip's own VisionTransformer, ``timm-vit`` for a timm ViT in TIMM_VITS (SigLIP, EVA, ...),
    else what the tower is (encoder.py builds both kinds of ViT and refuses the others)."""
    if "timm_model_name" in vision:
        name = vision["timm_model_name"]
        return "timm-vit" if _timm_geometry(str(name)) else f"a timm tower ({name})"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "a ResNet tower"
    return "vit"


def vit_models() -> list[str]:
    """Names of the models with a ViT tower (open_clip's own or a timm ViT) whose configs are readable here, sorted."""
    names = set()
    for d in _model_config_dirs():
        for p in d.glob("*.json"):
            try:
                if _tower_kind(_read_vision_cfg(p)) in ("vit", "timm-vit"):
                    names.add(p.stem)
            except ConfigError:
                continue
    return sorted(names)


def vision_config(model: str) -> dict[str, Any]:
    """The ``vision_cfg`` of an open_clip model with a ViT tower, read from its JSON without open_clip.

    Towers: open_clip's own VisionTransformer, or a timm ViT (SigLIP, SigLIP 2, EVA, PE-Core: TIMM_VITS), whose
    ``image_size``, ``patch_size``, ``layers`` and ``width`` are filled in from its timm model name.

    Raises:
        ConfigError: an hf-hub:/local-dir: name, an unknown model (close matches are listed) or a non-ViT tower.
    """
    if ":" in model:
        raise ConfigError(
            f"encoder.model (--model) {model!r}: hf-hub: and local-dir: names are not supported; pass a built-in "
            "--model name and --pretrained PATH to its weights"
        )
    path = model_config_path(model)
    if path is None:
        vits = vit_models()
        close = difflib.get_close_matches(model, vits, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        examples = ", ".join(m for m in EXAMPLE_MODELS if m in vits)
        raise ConfigError(
            f"unknown model {model!r}: {hint}open_clip knows {len(vits)} models with a ViT tower, e.g. {examples} "
            "(encoder.model, --model; all: python -c 'import open_clip; print(open_clip.list_models())')"
        )
    vision = _read_vision_cfg(path)
    kind = _tower_kind(vision)
    if kind not in ("vit", "timm-vit"):
        raise ConfigError(
            f"model {model!r} (encoder.model, --model) has {kind}, not an open_clip ViT: slowfast needs ViT patch "
            "tokens (open_clip's own ViTs, or the timm SigLIP, EVA and PE-Core ViTs); pick a ViT model such as "
            "ViT-B-16, ViT-L-14-336 or ViT-SO400M-14-SigLIP-384"
        )
    return _with_timm_geometry(vision)


def looks_like_path(pretrained: str) -> bool:
    """Whether ``--pretrained`` names a weights file rather than an open_clip tag (encoder.py's rule)."""
    return Path(pretrained).suffix in WEIGHT_SUFFIXES or os.sep in pretrained


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


def check_grid(grid: tuple[int, int], slow_pool: str, fast_size: tuple[int, int]) -> None:
    """Raise ConfigError when the pooling settings cannot apply to this patch grid."""
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
    h, w = fast_size
    if h <= 0 or w <= 0:
        raise ConfigError(f"bad fast size {h}x{w} (--fast-size): both sides must be positive")
    if h > gh or w > gw:
        raise ConfigError(
            f"fast size {h}x{w} (--fast-size) is larger than the {gh}x{gw} patch grid; pick at most {gh}x{gw}"
        )


def preflight(cfg: Config) -> tuple[int, int]:
    """Check everything a run that builds ``cfg``'s model can know without torch; return the patch grid.

    Meant for ``encode`` and ``batch`` right after the config is resolved, before a model is built or a video
    opened, so that settings that cannot work fail at once with one line instead of after decoding. ``budget``,
    ``configs`` and ``aggregate`` build no model and do not call it (a preset like ``llava-l14-336``, whose
    projector weights are given by flag, is valid there). On top of ``config.validate`` it checks:

    - the model is an open_clip model with a ViT tower, open_clip's own or a timm ViT such as SigLIP's (its JSON
      config, as ``model_grid`` reads it; a timm tower's geometry from its timm model name, see TIMM_VITS);
    - the slow pool and the fast size fit its patch grid (``check_grid``, as ``aggregate.slow_fast`` does);
    - ``encoder.layer`` is a block of the tower: -L..-1 from the end or 0..L-1, L = ``vision_cfg.layers`` (for
      a timm tower, its TIMM_VITS entry: 27 for SO400M);
    - ``encoder.pretrained`` that looks like a path (a path separator, or a .bin/.pt/.pth/.safetensors suffix)
      is an existing file; tags (``openai``) and ``none`` are left to the encoder, which needs open_clip;
    - the projector is one ``projector.build_projector`` will build: identity with no weights and with no
      ``llm_dim`` or one equal to the vision width; linear / mlp2x_gelu with an existing weights file, or with
      ``random_init`` and ``llm_dim``.

    Not checked here (they need torch or reading the files): the device, pretrained tags, weights' contents.

    Example:
        >>> preflight(resolve_config("tiny"))  # doctest: +SKIP
        (8, 8)

    Raises:
        ConfigError: naming the setting (TOML key and flag) and how to fix it.
    """
    validate(cfg)
    e, a = cfg.encoder, cfg.aggregator
    vision = vision_config(e.model)
    grid = _grid_of(vision, e.model)
    try:
        check_grid(grid, a.slow_pool, a.fast_size)
    except ConfigError as exc:
        raise ConfigError(f"{e.model}: {exc}") from None
    depth = vision.get("layers", VISION_DEFAULTS["layers"])
    if not -depth <= e.layer < depth:
        raise ConfigError(
            f"layer {e.layer} is out of range for {e.model}, which has {depth} blocks: use -{depth}..-1 "
            f"(from the end; -2 is LLaVA's) or 0..{depth - 1} (encoder.layer, --layer)"
        )
    if looks_like_path(e.pretrained) and not Path(e.pretrained).exists():  # "none" and tags never look like one
        raise ConfigError(
            f"weights file {e.pretrained} does not exist (encoder.pretrained, --pretrained): pass an existing "
            "file or checkpoint folder, an open_clip tag such as openai, or none for random weights"
        )
    _check_projector(cfg, vision.get("width", VISION_DEFAULTS["width"]))
    return grid


def _check_projector(cfg: Config, width: int) -> None:
    """Mirror of the combinations ``projector.build_projector`` refuses, without reading any weights."""
    p, model = cfg.projector, cfg.encoder.model
    if p.kind == "identity":
        if p.weights:
            raise ConfigError(
                f"projector.weights (--projector-weights) {p.weights} is set but projector.kind (--projector) is "
                "identity, which takes no weights; pass --projector linear or mlp2x_gelu, or drop the weights"
            )
        if p.llm_dim is not None and p.llm_dim != width:
            raise ConfigError(
                f"projector.llm_dim (--llm-dim) is {p.llm_dim} but projector.kind (--projector) identity keeps "
                f"{model}'s vision width {width}; drop --llm-dim or pick --projector linear or mlp2x_gelu"
            )
    elif p.weights:
        if not Path(p.weights).exists():
            raise ConfigError(
                f"projector weights file {p.weights} does not exist (projector.weights, --projector-weights): "
                f"pass the path to the {p.kind} weights (a LLaVA mm_projector.bin, or its checkpoint folder)"
            )
    elif not p.random_init:
        dry = (
            f"add --random-projector (projector.random_init) for a dry run with random {p.llm_dim}-wide weights"
            if p.llm_dim is not None
            else "--random-projector with --llm-dim N (projector.random_init, projector.llm_dim) for a dry run"
        )
        raise ConfigError(
            f"projector.kind (--projector) {p.kind} needs weights: pass --projector-weights PATH (projector.weights, "
            f"e.g. a LLaVA mm_projector.bin), or {dry}"
        )
    elif p.llm_dim is None:
        raise ConfigError(
            f"projector.random_init (--random-projector) with projector.kind {p.kind} needs projector.llm_dim "
            "(--llm-dim N), the width of the random projector's output; or pass --projector-weights PATH"
        )


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
) -> Budget:
    """Counts of the slow/fast aggregator for T frames of a (Gh, Gw) grid; no tensors involved.

    S is :func:`slow_frame_count` (min(T, slow_frames), or slow_frames with ``segment_start``); L =
    S * :func:`slow_tokens_per_frame` + T * h * w.

    Example (the seed demo, then SlowFast-LLaVA's 50 frames of a 24x24 grid, and 6 frames of it):
        >>> token_budget(64, (14, 14), 32, "none", (4, 4)).output_tokens
        7296
        >>> token_budget(50, (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start").output_tokens
        3680
        >>> token_budget(6, (24, 24), 10, "1d_max", (4, 4), slow_index="segment_start").output_tokens
        2976
    """
    if frames <= 0:
        raise ConfigError(f"frames must be a positive integer, got {frames}")
    if slow_frames <= 0:
        raise ConfigError(f"slow frames must be a positive integer, got {slow_frames}")
    check_grid(grid, slow_pool, fast_size)
    n = grid[0] * grid[1]
    s = slow_frame_count(frames, slow_frames, slow_index)
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
        slow_index=slow_index,
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
    pools: tuple[str, ...] = ("none", "1d_max", "2x2_max", "2x2_bilinear"),
    slow_index: str = "linspace",
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
                    b = token_budget(t, grid, s, pool, fast, slow_index)
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
