"""Checkpoint key maps, one function per tower family, in this one place: every key inside a tower is placed or named.

open_clip's ``VisionTransformer`` names are the tower's own (``conv1.weight``, ``positional_embedding``,
``transformer.resblocks.{i}.attn.in_proj_weight``, ...). ``find_hf_tower`` finds a Hugging Face ``CLIPVisionModel``
tower among a checkpoint's keys, wherever it sits, and ``hf_clip_to_open_clip`` maps it:

| checkpoint | the tower's prefix |
| --- | --- |
| transformers 5 ``CLIPVisionModel.state_dict()`` | none |
| transformers 4 ``CLIPVisionModel``, a ``CLIPModel`` (openai/clip-vit-* on the hub) | ``vision_model.`` |
| an original LLaVA checkpoint (1.5, 1.6 / NeXT, SlowFast-LLaVA) | ``model.vision_tower.vision_tower.vision_model.`` |
| a llava-hf checkpoint | ``vision_tower.vision_model.`` (``model.`` before it in transformers 5) |

Every key inside the tower is mapped, or the error names it, with the keys the tower needs and lacks. Keys outside
the tower (a text tower, an LLM, a projector) are other modules' weights and are left alone. ``projector_keys``
does the same for LLaVA's projector (``mm_projector.*``, llava-hf's ``multi_modal_projector.*``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SlowfastError, first_line
from ..reading import read_bounded
from .files import Checkpoint, few

CONFIG_LIMIT = 4 << 20  # bytes: a Hugging Face config.json (a few KB)
TOWER_KEYS = {"hidden_act", "num_attention_heads", "layer_norm_eps"}  # what a config.json may say of a tower
HF_MARK = "embeddings.patch_embedding.weight"  # the key every Hugging Face ViT tower (CLIP, SigLIP) has
HF_TOWER = "vision_model."  # CLIPModel's / CLIPVisionModelWithProjection's tower, beside visual_projection
HF_PROJECTION = "visual_projection.weight"  # (embed_dim, width), no bias; open_clip's proj is its transpose


HF_GLOBAL = {
    "embeddings.patch_embedding.weight": "conv1.weight",  # (width, 3, p, p), no bias in either
    "embeddings.class_embedding": "class_embedding",  # (width,)
    "embeddings.position_embedding.weight": "positional_embedding",  # (1 + grid cells, width)
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}


HF_BLOCK = {  # encoder.layers.{i}.X -> transformer.resblocks.{i}.Y
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}


HF_QKV = {  # concatenated in this order (nn.MultiheadAttention's packed layout) into attn.in_proj_{weight,bias}
    "attn.in_proj_weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.in_proj_bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
}


HF_NO_WEIGHTS = ("embeddings.position_ids",)  # an arange buffer that transformers < 4.31 saved
HF_OPTIONAL = ("post_layernorm.weight", "post_layernorm.bias")  # ln_post comes after the blocks patch tokens use
UNUSED_BY_TOKENS = ("ln_post.weight", "ln_post.bias", "proj")  # open_clip keys past the last block: pruned anyway
HF_ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # hidden_act -> QuickGELU; the two open_clip's towers compute
# A SigLIP tower's hidden_act -> the activation slowfast builds (towers.ACTIVATIONS). Without a config.json (an original
# LLaVA-OneVision / LLaVA-Video checkpoint, whose config names only mm_vision_tower) it is gelu_pytorch_tanh: the
# default of transformers' SiglipVisionConfig and of LLaVA-NeXT's own copy (llava/model/multimodal_encoder/
# siglip_encoder.py, SigLipVisionConfig), and what google/siglip-so400m-patch14-384's config.json says.
SIGLIP_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
VISION_MODEL_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
_BLOCK_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_RESBLOCK_KEY = re.compile(r"transformer\.resblocks\.(\d+)\.")
LLAVA_PROJECTOR = "mm_projector."  # LLaVA's model.mm_projector.{0,2}.* (or .weight/.bias for a linear one)
HF_PROJECTOR = {"multi_modal_projector.linear_1.": "0.", "multi_modal_projector.linear_2.": "2."}  # llava-hf's


@dataclass(frozen=True)
class HFTower:
    """A Hugging Face CLIP vision tower inside a checkpoint: where its keys are, and how it computes."""

    prefix: str  # before every tower key: "", "vision_model.", "model.vision_tower.vision_tower.vision_model."
    keys: tuple[str, ...]  # the tower's keys, and its projection's when the checkpoint has one
    ignored: int  # keys outside the tower (text tower, LLM, projector): other modules' weights
    quick_gelu: bool = True  # hidden_act: quick_gelu (CLIPVisionConfig's default, OpenAI's CLIP) or gelu
    heads: int | None = None  # num_attention_heads, when a config.json says (the weights cannot tell)
    eps: float = 1e-5  # layer_norm_eps (CLIPVisionConfig's default, and open_clip's)
    config: Path | None = None  # the config.json these settings came from
    family: str = "clip"  # clip (a class token, open_clip's VisionTransformer) | siglip (none; a timm ViT)
    activation: str = "quick_gelu"  # what the tower computes: quick_gelu | gelu | gelu_tanh
    shape: tuple[tuple[str, int], ...] = ()  # (hidden_size, image_size, patch_size) as the config.json states them

    @property
    def projection(self) -> str:
        return self.prefix.removesuffix(HF_TOWER) + HF_PROJECTION

    def check(self, heads: int, eps: float, name: str, model: str) -> None:
        """Refuse a tower built with other attention heads or LayerNorm eps than the config.json states: the
        weights load either way but compute other numbers."""
        if self.heads is not None and self.heads != heads:
            raise SlowfastError(
                f"vision weights {name}: {self.config} says {self.heads} attention heads but {model} has {heads}; "
                "pick the --model with the checkpoint's architecture"
            )
        if not math.isclose(self.eps, eps, rel_tol=1e-6):
            source = self.config or f"a {self.family.upper()} tower without a config.json (default eps)"
            raise SlowfastError(
                f"vision weights {name}: {source} says layer_norm_eps {self.eps} but {model}'s tower uses {eps}"
            )

    def check_shape(self, geometry: dict[str, int], name: str, model: str) -> None:
        """Refuse a config.json whose width, input size or patch size is not the tower's (``geometry`` has the
        same keys): the weights might even load (position tables aside) and compute something else."""
        for key, value in self.shape:
            if key in geometry and geometry[key] != value:
                raise SlowfastError(
                    f"vision weights {name}: {self.config} says {key} {value} but {model}'s tower has {geometry[key]}; "
                    "pick the --model with the checkpoint's architecture"
                )


def config_file(checkpoint: Path) -> Path | None:
    """The ``config.json`` read with a checkpoint (in its folder, or beside its file), or None when there is none.
    It decides the tower's activation, heads and eps, so the settings record includes it (``provenance``)."""
    path = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "config.json"
    return path if path.exists() or path.is_symlink() else None


def _setting(vision: dict, key: str, default, ok, what: str, config: Path, name: Path):
    """``vision[key]`` (``default`` when absent) when ``ok(value)``; else one line naming the file, key and value."""
    value = vision.get(key, default)
    if not ok(value):
        raise SlowfastError(f"vision weights {name}: {config} has {key} {value!r}; expected {what}")
    return value


def _hf_vision_config(checkpoint: Path) -> tuple[dict, Path] | None:
    """The vision settings of the Hugging Face ``config.json`` in a checkpoint folder (or beside a file), if any.

    A ``CLIPVisionModel``'s config is its own; a ``CLIPModel``'s or a llava-hf model's has ``vision_config``. An
    original LLaVA config has neither (its ``hidden_act`` is the LLM's) and says nothing about the tower.
    """
    path = config_file(checkpoint)
    if path is None:
        return None
    try:
        cfg = json.loads(read_bounded(path, CONFIG_LIMIT))
    except (OSError, ValueError) as exc:  # there, but not readable JSON: never taken as absent (it decides the tower)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        raise SlowfastError(f"{path}: cannot be read as a Hugging Face config.json ({why})") from None
    if isinstance(cfg, dict) and "model_type" not in cfg and TOWER_KEYS & set(cfg):
        raise SlowfastError(
            f"{path}: has {', '.join(sorted(TOWER_KEYS & set(cfg)))} but no model_type, so it cannot be told whether "
            'it describes this tower; add "model_type": "clip_vision_model" (or remove the file)'
        )
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        return None  # not a Hugging Face config
    vision = cfg.get("vision_config")
    if isinstance(vision, dict):
        return vision, path
    return (cfg, path) if cfg.get("model_type") in VISION_MODEL_TYPES else None


def find_hf_tower(checkpoint: Checkpoint) -> HFTower | None:
    """The Hugging Face CLIP vision tower among a checkpoint's keys (and its ``config.json``), or None when the keys
    are not in Hugging Face naming (open_clip's ``visual.*`` or the tower's own).

    Raises:
        SlowfastError: several towers; a config.json that describes another tower than the weights hold, or an
            activation slowfast's towers cannot compute.
    """
    name = checkpoint.path
    prefixes = sorted({k.removesuffix(HF_MARK) for k in checkpoint.keys if k == HF_MARK or k.endswith("." + HF_MARK)})
    if not prefixes:
        return None
    if len(prefixes) > 1:
        raise SlowfastError(f"vision weights {name} hold {len(prefixes)} vision towers ({', '.join(prefixes)})")
    prefix = prefixes[0]
    family = "clip" if prefix + "embeddings.class_embedding" in checkpoint.where else "siglip"
    projection = prefix.removesuffix(HF_TOWER) + HF_PROJECTION
    keys = tuple(k for k in checkpoint.keys if k.startswith(prefix) or (family == "clip" and k == projection))
    found = _hf_vision_config(checkpoint.path)
    vision, config = found if found is not None else ({}, None)
    declared = VISION_MODEL_TYPES.get(vision.get("model_type", f"{family}_vision_model"))
    if declared != family:
        what = vision.get("model_type")
        raise SlowfastError(
            f"vision weights {name}: {config} describes a {what} tower, but the weights at {prefix or 'the top'} are a "
            f"Hugging Face {family.upper()} tower ({'a' if family == 'clip' else 'no'} class token); only CLIP and "
            "SigLIP towers are mapped from Hugging Face naming"
        )
    if family == "clip":
        act = vision.get("hidden_act", "quick_gelu")
        if not isinstance(act, str) or act not in HF_ACTIVATIONS:
            raise SlowfastError(
                f"vision weights {name}: {config} says hidden_act {act!r}; open_clip's towers compute "
                f"{' or '.join(HF_ACTIVATIONS)} only"
            )
        activation, eps_default = act, 1e-5
    else:
        act = vision.get("hidden_act", "gelu_pytorch_tanh")
        if not isinstance(act, str) or act not in SIGLIP_ACTIVATIONS:
            raise SlowfastError(
                f"vision weights {name}: {config} says hidden_act {act!r}; SigLIP towers are built with "
                f"{' or '.join(SIGLIP_ACTIVATIONS)} only"
            )
        activation, eps_default = SIGLIP_ACTIVATIONS[act], 1e-6

    def positive_int(v):
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0)

    def positive_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    heads = _setting(vision, "num_attention_heads", None, positive_int, "a positive integer", config, name)
    eps = _setting(vision, "layer_norm_eps", eps_default, positive_number, "a positive finite number", config, name)
    shape = tuple(
        (key, _setting(vision, key, None, positive_int, "a positive integer", config, name))
        for key in ("hidden_size", "image_size", "patch_size")
        if key in vision
    )
    return HFTower(prefix, keys, len(checkpoint.where) - len(keys), quick_gelu=activation == "quick_gelu", heads=heads,
                   eps=float(eps), config=config, family=family, activation=activation, shape=shape)  # fmt: skip


def hf_clip_to_open_clip(state: Mapping[str, torch.Tensor], tower: HFTower, name: str) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP vision tower's tensors in open_clip ``VisionTransformer`` names.

    ``encoder.layers.{i}.self_attn.{q,k,v}_proj`` are concatenated into ``transformer.resblocks.{i}.attn.in_proj_*``
    (q, k, v: nn.MultiheadAttention's layout), ``visual_projection.weight`` (when there) is transposed into ``proj``,
    the rest are renamed (``HF_GLOBAL``, ``HF_BLOCK``). ``post_layernorm`` may be absent (``ln_post`` is not used
    for patch tokens); ``embeddings.position_ids`` holds no weights and is dropped.

    Args:
        state: the tower's tensors under their checkpoint names (``tower.keys``).
        tower: where they sit (``find_hf_tower``).
        name: the checkpoint, for messages.

    Raises:
        SlowfastError: naming every key of the tower that maps to nothing, and every key the tower needs but lacks.
    """
    out: dict[str, torch.Tensor] = {}
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    block_parts = set(HF_BLOCK) | {part for parts in HF_QKV.values() for part in parts}
    left = []
    for key, value in state.items():
        rel = key.removeprefix(tower.prefix)
        m = _BLOCK_KEY.fullmatch(rel)
        if key == tower.projection:
            out["proj"] = value.T.contiguous()  # (width, embed_dim): open_clip computes x @ proj
        elif rel in HF_GLOBAL:
            out[HF_GLOBAL[rel]] = value
        elif rel in HF_NO_WEIGHTS:
            continue
        elif m is not None and m[2] in block_parts:
            blocks.setdefault(int(m[1]), {})[m[2]] = value
        else:
            left.append(key)
    depth = max(blocks, default=0) + 1
    needed = [k for k in HF_GLOBAL if k not in HF_OPTIONAL]
    needed += [f"encoder.layers.{i}.{part}" for i in range(depth) for part in sorted(block_parts)]
    missing = [tower.prefix + k for k in needed if tower.prefix + k not in state]
    if left or missing:
        problems = [f"unexpected {few(left)}"] if left else []
        problems += [f"missing {few(missing)}"] if missing else []
        where = f"at {tower.prefix}" if tower.prefix else "at the top level"
        raise SlowfastError(
            f"vision weights {name} hold a Hugging Face CLIP vision tower ({where}) that does not map to open_clip's: "
            f"{'; '.join(problems)}"
        )
    for i, parts in sorted(blocks.items()):
        for src, dst in HF_BLOCK.items():
            out[f"transformer.resblocks.{i}.{dst}"] = parts[src]
        for dst, qkv in HF_QKV.items():
            out[f"transformer.resblocks.{i}.{dst}"] = torch.cat([parts[p] for p in qkv])  # (3 * width, ...)
    return out


def describe_tower(state: Mapping[str, torch.Tensor]) -> str | None:
    """An open_clip tower's shape in words, from its state dict (blocks, width, patch, input), or None when the
    state dict lacks the keys that tell."""
    try:
        blocks = 1 + max(int(m[1]) for k in state if (m := _RESBLOCK_KEY.match(k)))
        width = state["class_embedding"].shape[-1]
        patch = state["conv1.weight"].shape[-1]
        cells = state["positional_embedding"].shape[0] - 1
    except (KeyError, ValueError, IndexError):
        return None
    side = math.isqrt(cells)
    size = f"{side * patch}-pixel input" if side * side == cells else f"{cells} patches"
    return f"{blocks} blocks of width {width}, {patch}-pixel patches, {size}"


def projector_keys(keys: Iterable[str], name: str = "projector weights") -> dict[str, str]:
    """Checkpoint key -> projector module key (``0.weight``..., or ``weight``/``bias``) for LLaVA's
    ``mm_projector.*`` under any prefix (``model.mm_projector.0.weight`` -> ``0.weight``) or llava-hf's
    ``multi_modal_projector.linear_{1,2}.*`` (-> ``0.*``, ``2.*``); empty when the checkpoint has neither.

    Raises:
        SlowfastError: two keys that give the same module key (two projectors in one checkpoint).
    """
    out: dict[str, str] = {}
    for key in keys:
        if LLAVA_PROJECTOR in key:
            out[key] = key.rsplit(LLAVA_PROJECTOR, 1)[1]
            continue
        for prefix, index in HF_PROJECTOR.items():
            if prefix in key:
                out[key] = index + key.rsplit(prefix, 1)[1]
    seen: dict[str, str] = {}
    for key, module_key in out.items():
        if module_key in seen:
            raise SlowfastError(f"{name} hold two projectors: {seen[module_key]} and {key} are both {module_key}")
        seen[module_key] = key
    return out


NEWLINE = "image_newline"  # LLaVA-NeXT's learned newline token: model.image_newline (llava-hf: image_newline too)


def newline_keys(keys: Iterable[str]) -> list[str]:
    """The keys of a checkpoint that hold LLaVA-NeXT's ``image_newline`` (under any prefix)."""
    return [k for k in keys if k == NEWLINE or k.endswith("." + NEWLINE)]
