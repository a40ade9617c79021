"""Every whole-config check a run can make before it builds anything, once; each rule exists here only.

``preflight`` is what ``encode`` and ``batch`` call right after resolving the config; ``check_projector`` is the
one rule about projector settings, which ``projector.build_projector`` applies too. No torch.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config, ProjectorCfg, validate
from .encoder.hfvl.checks import preflight_hf
from .errors import ConfigError
from .hf_families import hf_preflight, is_hf_model
from .models import VISION_DEFAULTS, block_index, grid_of, looks_like_path, vision_config
from .policies import check_grid, check_layout
from .reading import path_kind, path_problem


def preflight(cfg: Config) -> tuple[int, int] | None:
    """Check everything a run that builds ``cfg``'s model can know without torch; return the patch grid
    (None for a ``hf:`` model, whose grid varies per video: ``encoder.hfvl.checks.preflight_hf``).

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
    if is_hf_model(e.model):  # a transformers family (hf:internvl, hf:qwen2_5_vl): its own rules
        grid = hf_preflight(cfg)
        if grid is None:  # Qwen-VL: a grid per video; the checkpoint's family and the layer (encoder.hfvl.checks)
            preflight_hf(cfg)
        return grid
    vision = vision_config(e.model)
    grid = grid_of(vision, e.model)
    try:
        check_grid(grid, a.slow_pool, a.fast_size, a.layout)
        check_layout(grid, a.slow_pool, a.layout, a.newline)
    except ConfigError as exc:
        raise ConfigError(f"{e.model}: {exc}") from None
    block_index(e.layer, vision.get("layers", VISION_DEFAULTS["layers"]), e.model)
    _weights_path(e.pretrained, "encoder.pretrained, --pretrained")
    if looks_like_path(e.pretrained) and not Path(e.pretrained).exists():  # "none" and tags never look like one
        problem = path_kind(Path(e.pretrained))  # "does not exist", or "is a broken symlink"
        raise ConfigError(
            f"weights file {e.pretrained} {problem} (encoder.pretrained, --pretrained): pass an existing "
            "file or checkpoint folder, an open_clip tag such as openai, or none for random weights"
        )
    check_projector(cfg.projector, vision.get("width", VISION_DEFAULTS["width"]), e.model)
    if a.newline != "no_token" and cfg.projector.kind == "identity":
        raise ConfigError(
            f"aggregator.newline (--newline) {a.newline} places the checkpoint's image_newline, which lives beside its "
            "projector, but projector.kind (--projector) is identity; pass --projector mlp2x_gelu --projector-weights "
            "CHECKPOINT (or --random-projector --llm-dim N for a dry run), or --newline no_token"
        )
    return grid


def _weights_path(path: str, where: str) -> None:
    """Refuse weights given as something that is neither a file nor a folder (a device, a FIFO): reading one would
    never end (its hash for the settings record), and it is never weights."""
    p = Path(path)
    problem = path_problem(p, "weights file or checkpoint folder") if p.exists() and not p.is_dir() else None
    if path.lower() != "none" and problem:
        raise ConfigError(f"weights {path} {problem} ({where})")


def check_projector(p: ProjectorCfg, width: int, model: str) -> None:
    """The projector settings that can be built for a ``width``-wide tower, without reading any weights: identity
    with no weights and with no ``llm_dim`` or one equal to ``width``; linear / mlp2x_gelu with an existing weights
    file, or with ``random_init`` and ``llm_dim``. ``preflight`` and ``projector.build_projector`` both apply it.

    Raises:
        ConfigError: naming the settings (TOML keys and flags) and how to fix them.
    """
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
        _weights_path(p.weights, "projector.weights, --projector-weights")
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
