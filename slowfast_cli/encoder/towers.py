"""Vision towers behind one interface: a ``TowerAdapter`` per family, and open_clip's registry, in this one module.

A family is the kind of module that holds the patch tokens: open_clip's own ``VisionTransformer``
(``OpenClipViT``) or a timm ViT that open_clip wraps in a ``TimmModel`` (SigLIP, SigLIP 2, EVA, PE-Core:
``TimmViT``). Each adapter says, for a tower of its family, its geometry (blocks, sizes, grid, width), how to prune
it to a block, how to cast it, the tokens at a block, and the settings a Hugging Face checkpoint must agree with.
``build_tower`` builds any model's tower (open_clip's builder, seeded) and picks its adapter from ``ADAPTERS``.

Adding a family: an adapter class here, added to ``ADAPTERS``; its checkpoint key map in ``checkpoints/hf.py``;
its geometry without torch in ``models.py``. The only module that imports open_clip: the tag registry
(``pretrained_cfg``, ``pretrained_tags``, ``download``) and the preprocessing settings of a tag are here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import SlowfastError
from ..models import OWN_MODEL_CONFIGS, VISION_DEFAULTS, model_config_path, model_grid, vision_config
from .hidden import later, shallow, without

# open_clip's modules that build a vision tower, without what they do not need (hidden.py): its package __init__
# (the factory, the tokenizer, the losses), torchvision's, timm, transformers and huggingface_hub (for tags only);
# each is imported on first use
with without("transformers", "timm", "huggingface_hub"), shallow("open_clip", "torchvision", "torchvision.ops"):
    import open_clip.model
    import open_clip.pretrained
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.timm_model import TimmModel
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict
    from open_clip.transformer import VisionTransformer
# what open_clip's `try: import timm ...` (timm towers) and `try: import transformers ...` (text towers) bind
later(
    open_clip.timm_model,
    {
        "timm": ("timm", None),
        "RotAttentionPool2d": ("timm.layers", "RotAttentionPool2d"),
        "AbsAttentionPool2d": ("timm.layers", "AttentionPool2d"),
        "Mlp": ("timm.layers", "Mlp"),
        "to_2tuple": ("timm.layers", "to_2tuple"),
    },
)
# open_clip.pretrained's `try: from huggingface_hub import hf_hub_download` (downloads of tags); open_clip wraps it in
# a partial naming itself to the hub (library_name), which only the user agent of a download lacks here
if later(open_clip.pretrained, {"hf_hub_download": ("huggingface_hub", "hf_hub_download")}):
    open_clip.pretrained._has_hf_hub = True  # what the import would have set: installed
later(
    open_clip.hf_model,
    {"transformers": ("transformers", None)}
    | {n: ("transformers", n) for n in ("AutoModel", "AutoTokenizer", "AutoConfig", "PretrainedConfig")}
    | {
        n: ("transformers.modeling_outputs", n)
        for n in ("BaseModelOutput", "BaseModelOutputWithPooling", "BaseModelOutputWithPoolingAndCrossAttentions")
    },
)

TOWER_BUILDER = "_build_vision_tower"  # open_clip.model's private vision-only builder, used when present
HUB_WEIGHT_NAMES = (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)  # what open_clip tries in a hub repo, safetensors first


@dataclass(frozen=True)
class Geometry:
    blocks: int  # transformer blocks
    image_size: tuple[int, int]  # (Hs, Ws) the tower takes
    patch_size: tuple[int, int]
    grid: tuple[int, int]  # (Gh, Gw) = image_size // patch_size
    width: int  # D_vision
    timm_model: str | None  # the timm model inside a TimmModel, None for open_clip's own ViT


class TowerAdapter:
    """What slowfast needs of one family of vision towers; one subclass per family, stateless."""

    family: ClassVar[str]
    follows_quick_gelu: ClassVar[bool] = True  # whether the tower computes QuickGELU when built with it

    @classmethod
    def geometry(cls, visual: torch.nn.Module) -> Geometry | None:
        """Blocks, sizes and width of ``visual``, or None when it is not a tower of this family."""
        raise NotImplementedError

    @classmethod
    def prune(cls, visual: torch.nn.Module, block: int) -> None:
        """Keep blocks 0..``block``; drop the final norm, the pooling and the head, which patch tokens never use."""
        raise NotImplementedError

    @classmethod
    def cast(cls, visual: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """On ``device`` in ``dtype`` (as open_clip's ``precision`` casts it), in eval mode, without gradients."""
        raise NotImplementedError

    @classmethod
    def tokens(cls, visual: torch.nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
        """(B, 3, Hs, Ws) -> (B, N, D) output of block ``block``, before any final norm, prefix tokens dropped.

        Both families' ``forward_intermediates`` (open_clip's, and timm's under ``TimmModel``) return the raw block
        output without the prefix tokens: open_clip's class token, timm's ``num_prefix_tokens`` (none for SigLIP).
        """
        out = visual.forward_intermediates(
            x, indices=[block], stop_early=True, intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"][0]

    @classmethod
    def checkpoint_settings(cls, visual: torch.nn.Module) -> tuple[int | None, float | None]:
        """(attention heads, LayerNorm eps) that a Hugging Face checkpoint's ``config.json`` must agree with."""
        return None, None


class OpenClipViT(TowerAdapter):
    """open_clip's own ``VisionTransformer`` (one class token, which its ``forward_intermediates`` drops)."""

    family = "open_clip ViT"

    @classmethod
    def geometry(cls, visual: torch.nn.Module) -> Geometry | None:
        if not isinstance(visual, VisionTransformer):
            return None
        gh, gw = visual.grid_size
        image, patch = tuple(visual.image_size), tuple(visual.patch_size)
        return Geometry(len(visual.transformer.resblocks), image, patch, (gh, gw), visual.transformer.width, None)

    @classmethod
    def prune(cls, visual: torch.nn.Module, block: int) -> None:
        visual.prune_intermediate_layers([block], prune_norm=True, prune_head=True)

    @classmethod
    def cast(cls, visual: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """All but the LayerNorms in bf16/fp16 (they stay fp32), as open_clip's ``precision`` does."""
        visual = visual.to(device)
        if dtype in (torch.bfloat16, torch.float16):
            open_clip.model.convert_weights_to_lp(visual, dtype=dtype)
        return visual.eval().requires_grad_(False)

    @classmethod
    def checkpoint_settings(cls, visual: torch.nn.Module) -> tuple[int | None, float | None]:
        block = visual.transformer.resblocks[0]
        return getattr(block.attn, "num_heads", None), getattr(visual.ln_pre, "eps", None)


ACTIVATIONS = {"gelu": {}, "gelu_tanh": {"approximate": "tanh"}}  # a timm tower's MLP activation -> nn.GELU's args


class TimmViT(TowerAdapter):
    """A ``TimmModel`` whose trunk is a timm ViT with a plain patch embedding: timm's ``forward_intermediates``
    drops its ``num_prefix_tokens`` (0 for SigLIP, which has no class token; 1 for EVA's class token). Always GELU,
    as open_clip builds them: ``quick_gelu`` does not reach timm."""

    family = "timm ViT"
    follows_quick_gelu = False

    @classmethod
    def geometry(cls, visual: torch.nn.Module) -> Geometry | None:
        trunk = getattr(visual, "trunk", None)
        embed = getattr(trunk, "patch_embed", None)
        grid = tuple(getattr(embed, "grid_size", None) or ())
        if not (isinstance(visual, TimmModel) and grid and hasattr(trunk, "forward_intermediates")):
            return None
        image, patch = tuple(embed.img_size), tuple(embed.patch_size)
        if grid != (image[0] // patch[0], image[1] // patch[1]):  # a hybrid stem's 1x1 "patches" are not a grid
            return None
        timm_name = getattr(trunk, "default_cfg", {}).get("architecture") or type(trunk).__name__
        return Geometry(len(trunk.blocks), image, patch, grid, trunk.embed_dim, timm_name)

    @classmethod
    def prune(cls, visual: torch.nn.Module, block: int) -> None:
        visual.trunk.prune_intermediate_layers([block], prune_norm=True, prune_head=True)
        visual.head = torch.nn.Identity()

    @classmethod
    def checkpoint_settings(cls, visual: torch.nn.Module) -> tuple[int | None, float | None]:
        block = visual.trunk.blocks[0]
        return getattr(block.attn, "num_heads", None), getattr(block.norm1, "eps", None)

    @classmethod
    def set_activation(cls, visual: torch.nn.Module, activation: str) -> None:
        """Make every block's MLP compute ``activation`` (``ACTIVATIONS``): Hugging Face's SigLIP, and so
        LLaVA-OneVision's and LLaVA-Video's tower, uses ``gelu_pytorch_tanh`` where open_clip's timm tower has exact
        GELU (2.3e-4 relative apart at block -2 of SO400M with the same weights)."""
        for block in visual.trunk.blocks:
            block.mlp.act = torch.nn.GELU(**ACTIVATIONS[activation])

    @classmethod
    def cast(cls, visual: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        """Everything in ``dtype`` (open_clip casts the whole timm model)."""
        low = dtype in (torch.bfloat16, torch.float16)
        visual = visual.to(device=device, dtype=dtype) if low else visual.to(device)
        return visual.eval().requires_grad_(False)


ADAPTERS: tuple[type[TowerAdapter], ...] = (OpenClipViT, TimmViT)


def adapter_for(visual: torch.nn.Module, name: str) -> tuple[type[TowerAdapter], Geometry]:
    """The adapter of the family ``visual`` belongs to, and its geometry.

    Raises:
        SlowfastError: any other tower (ResNet, ConvNeXt, a hybrid conv stem): they have no patch grid to tap.
    """
    for adapter in ADAPTERS:
        geometry = adapter.geometry(visual)
        if geometry is not None:
            return adapter, geometry
    raise SlowfastError(f"model {name!r} did not build a ViT with a patch grid ({type(visual).__name__})")


def check_geometry(name: str, geometry: Geometry) -> None:
    """The built tower against ``models``' numbers for it, which ``slowfast budget`` and preflight report (for a
    timm tower they come from the timm model name and ``models.TIMM_VITS``, without timm)."""
    vision = {**VISION_DEFAULTS, **vision_config(name)}
    expected = (model_grid(name), vision["layers"], vision["width"])
    if (geometry.grid, geometry.blocks, geometry.width) != expected:
        raise SlowfastError(
            f"model {name!r} built a tower with grid {geometry.grid}, {geometry.blocks} blocks and width "
            f"{geometry.width}, but slowfast's budget says grid, blocks, width = {expected}: update models.TIMM_VITS"
        )


# --- open_clip's registry: models, tags, preprocessing ---------------------------------------------------------


def register_own_models() -> None:
    """Add slowfast's model configs (``slowfast_cli/model_configs``) to open_clip's registry, once (this imports
    open_clip's factory, which building a tower does not need)."""
    own = {p.stem for p in OWN_MODEL_CONFIGS.glob("*.json")}
    if not own <= set(open_clip.list_models()):
        open_clip.add_model_config(OWN_MODEL_CONFIGS)


def model_config(name: str) -> dict[str, Any]:
    """open_clip's config dict for a model name with a ViT vision tower (open_clip's own, or a timm ViT).

    The checks (hf-hub names, unknown models with close matches, non-ViT towers) are ``models.vision_config``'s,
    which reads the same JSON files without open_clip, so ``slowfast budget``/preflight and the encoder agree. The
    dict is the file's JSON, as ``open_clip.get_model_config`` returns it once ``register_own_models`` has run (its
    registry is those files, keyed by name, ours added last), read here without importing open_clip's factory.
    """
    vision_config(name)
    return json.loads(model_config_path(name).read_text(encoding="utf-8"))


def pretrained_cfg(model: str, tag: str) -> dict[str, Any]:
    """open_clip's settings of a pretrained tag of ``model`` (empty when it is not one)."""
    return open_clip.pretrained.get_pretrained_cfg(model, tag)


def pretrained_tags(model: str) -> list[str]:
    return open_clip.pretrained.list_pretrained_tags_by_model(model)


def download(tag_cfg: dict[str, Any]) -> str:
    """open_clip's own download of a tag's weights (hub or URL); the local path."""
    return open_clip.pretrained.download_pretrained(tag_cfg)


def _tags_agree(model: str, read: Callable[[dict[str, Any]], Any]) -> Any:
    """``read(tag_cfg)`` when every pretrained tag of ``model`` gives the same value, else None."""
    values = [read(pretrained_cfg(model, t)) for t in pretrained_tags(model)]
    return values[0] if values and all(v == values[0] for v in values) else None


def _tag_preprocess(tag_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in merge_preprocess_dict({}, tag_cfg).items() if k != "size"}


def preprocess_cfg(model: str, tag: str | None, image_size: tuple[int, int]) -> dict[str, Any]:
    """open_clip's PreprocessCfg as a dict: the tag's settings, or (``tag`` None) the ones all of the model's tags
    share."""
    overlay = _tag_preprocess(pretrained_cfg(model, tag)) if tag is not None else _tags_agree(model, _tag_preprocess)
    cfg = merge_preprocess_dict(PreprocessCfg(), overlay or {})
    cfg["size"] = image_size
    return cfg


def quick_gelu(model: str, model_cfg: dict[str, Any], tag: str | None) -> bool:
    """QuickGELU when the config says so or the tag was trained with it (open_clip only warns); for weights that
    are not a tag (``tag`` None), when every tag of the model was."""
    if model_cfg.get("quick_gelu", False):
        return True
    if tag is not None:
        return bool(pretrained_cfg(model, tag).get("quick_gelu", False))
    return bool(_tags_agree(model, lambda c: c.get("quick_gelu", False)))


def _vision_tower(name: str, model_cfg: dict[str, Any], quick_gelu: bool, cast_dtype: torch.dtype | None):
    """open_clip's vision tower alone; through a whole CLIP (text tower dropped) if the private builder is gone."""
    build = getattr(open_clip.model, TOWER_BUILDER, None)
    if build is not None:
        return build(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu, cast_dtype=cast_dtype)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(cast_dtype, "fp32")
    register_own_models()
    clip = open_clip.create_model(name, pretrained=None, precision=precision, force_quick_gelu=quick_gelu)
    return clip.visual.float()


def build_tower(
    name: str, model_cfg: dict[str, Any], quick_gelu: bool, dtype: torch.dtype, random_init: bool = True
) -> tuple[torch.nn.Module, type[TowerAdapter], Geometry]:
    """The fp32 tower with its random init under ``manual_seed(0)``, so ``--pretrained none`` is reproducible, with
    its adapter and geometry: an open_clip ``VisionTransformer``, or a ``TimmModel`` around a timm ViT, whose random
    init is timm's, under the same seed. ``dtype`` only selects fp32 LayerNorms for a later bf16/fp16 cast.

    ``random_init=False`` builds it on the meta device (shapes only: SO400M's random init costs about 6 CPU-seconds
    that a checkpoint then overwrites); the caller makes it real with ``to_empty`` and loads every tensor. A tower
    with buffers (EVA-02's and PE-Core's rotary tables: computed at init, not in checkpoints) is built for real all
    the same, so that nothing is left uninitialised.

    Raises:
        SlowfastError: a tower of no family in ``ADAPTERS``.
    """
    low_precision = dtype if dtype in (torch.bfloat16, torch.float16) else None
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            visual = _vision_tower(name, model_cfg, quick_gelu, low_precision)
    else:
        with torch.device("meta"):
            visual = _vision_tower(name, model_cfg, quick_gelu, low_precision)
        if any(True for _ in visual.buffers()):  # EVA's and PE's rotary tables are computed, not loaded: init for real
            return build_tower(name, model_cfg, quick_gelu, dtype, random_init=True)
    adapter, geometry = adapter_for(visual, name)
    return visual, adapter, geometry
