"""The model registry without torch: which open_clip models have a ViT tower, their grid, depth and width.

Read from open_clip's model-config JSON files (ours first, then open_clip's, located without importing it); a timm
tower's geometry comes from its timm model name (``TIMM_VITS``). ``slowfast budget``, preflight and the encoder all
ask here, so they agree; the encoder checks the tower it builds against these numbers. Also the two rules about
a model that every caller shares: whether ``--pretrained`` names a path (``looks_like_path``) and which blocks
``--layer`` may name (``block_index``).
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError

OWN_MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # weights files (checkpoints lists a folder's by them)
INDEX_SUFFIX = ".index.json"  # a sharded checkpoint's index: {"weight_map": {key: shard file name}}
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


def grid_of(vision: dict[str, Any], model: str) -> tuple[int, int]:
    if "patch_size" not in vision or "image_size" not in vision:
        raise ConfigError(f"model {model!r} is not an open_clip ViT with a patch size; pass --grid HxW")
    size, patch = vision["image_size"], vision["patch_size"]
    h, w = (size, size) if isinstance(size, int) else size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return h // ph, w // pw


def model_grid(model: str) -> tuple[int, int]:
    """Patch grid (Gh, Gw) of an open_clip ViT: image size // patch size, read from its config JSON (for a timm
    tower, from its timm model name: ``ViT-SO400M-14-SigLIP-384`` is (27, 27)); for a transformers family
    (``hf:internvl``), its tokens per frame (``hf_families``)."""
    if model.startswith("hf:"):
        from .hf_families import hf_grid  # a torch-free table

        return hf_grid(model)
    path = model_config_path(model)
    if path is None:
        raise ConfigError(f"unknown model {model!r}: no open_clip config found; pass --grid HxW or a known --model")
    return grid_of(_with_timm_geometry(_read_vision_cfg(path)), model)


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
    else what the tower is (encoder.towers builds both kinds of ViT and refuses the others)."""
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
    """Whether ``--pretrained`` names a local checkpoint rather than an open_clip tag or ``none``: a path separator,
    a weights suffix, or ``.json`` (a sharded checkpoint's ``*.index.json``). Preflight and the encoder both ask
    here: one that does not exist is an error, never a tag lookup."""
    return Path(pretrained).suffix in (*WEIGHT_SUFFIXES, ".json") or os.sep in pretrained


def block_index(layer: int, depth: int, model: str) -> int:
    """0-based block for ``layer``: -1 is the last block, -2 the penultimate; 0..depth-1 count from the first.

    Example:
        >>> block_index(-2, 12, "ViT-B-16"), block_index(3, 12, "ViT-B-16")
        (10, 3)

    Raises:
        ConfigError: a layer the model does not have.
    """
    if not -depth <= layer < depth:
        raise ConfigError(
            f"layer {layer} is out of range for {model}, which has {depth} blocks: use -{depth}..-1 "
            f"(from the end; -2 is LLaVA's) or 0..{depth - 1} (encoder.layer, --layer)"
        )
    return layer % depth
