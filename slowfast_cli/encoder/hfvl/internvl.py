"""InternVL 2.5 / 3 through transformers' own vision code: InternViT, class token dropped, pixel shuffle, mlp1.

``build_internvl_encoder`` reads a checkpoint's ``config.json`` (transformers' ``internvl``, e.g.
OpenGVLab/InternVL3-8B-hf, or the original ``internvl_chat``, OpenGVLab/InternVL3-8B), builds transformers'
``InternVLVisionModel`` with only the blocks up to the one taken and ``InternVLMultiModalProjector`` on the meta
device, and fills them from the shards that hold them (the LLM is never read). The tokens of one frame are
``InternVLModel.get_image_features`` (transformers 5.25.0, models/internvl/modeling_internvl.py:542-584): the
block's output (the last block's after the tower's final norm, an identity in InternVL 3), the class token
dropped, ``InternVLModel.pixel_shuffle`` (0.5: 32x32 patches -> 16x16 tokens of 4x the width, row-major) and the
projector, i.e. (T, 256, D_llm) for T frames at 448.

Preprocessing is the original model card's ``load_video`` with ``max_num=1``: each frame squashed to 448x448 by
PIL's bicubic filter, ``/255``, ImageNet mean and std. (transformers' video processor resizes with torchvision
instead: the pixels can differ by one level of 255, as for the LLaVA models.)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from transformers import InternVLConfig, InternVLVisionConfig
from transformers.models.internvl.modeling_internvl import (
    InternVLModel,
    InternVLMultiModalProjector,
    InternVLVisionModel,
)

from ...checkpoints import open_checkpoint
from ...checkpoints.files import few
from ...checkpoints.hf import CONFIG_LIMIT, config_file
from ...config import EncoderCfg
from ...errors import SlowfastError, first_line
from ...hf_families import family
from ...models import block_index
from ...reading import read_bounded
from ...tensors import check_tensors
from ..towers import TowerAdapter

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the model card's build_transform (torchvision Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)
# original (OpenGVLab) vision key -> transformers' name, as transformers' convert_internvl_weights_to_hf.py maps it
ORIGINAL_VISION = [
    (r"^embeddings\.class_embedding$", "embeddings.cls_token"),
    (r"^embeddings\.position_embedding$", "embeddings.position_embeddings"),
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"^encoder\.layers\.(\d+)\.ls(\d)$", r"encoder.layer.\1.lambda_\2"),
    (r"^encoder\.layers\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.projection_layer."),
    (r"^encoder\.layers\.(\d+)\.attn\.", r"encoder.layer.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.norm1\.", r"encoder.layer.\1.layernorm_before."),
    (r"^encoder\.layers\.(\d+)\.norm2\.", r"encoder.layer.\1.layernorm_after."),
    (r"^encoder\.layers\.(\d+)\.", r"encoder.layer.\1."),
]
ORIGINAL_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}  # mlp1.{i} -> multi_modal_projector.*
# the vision tower's and projector's prefixes in a checkpoint: transformers' (with or without "model.") / original
PREFIXES = (("model.vision_tower.", "model.multi_modal_projector."), ("vision_tower.", "multi_modal_projector."))
ORIGINAL_PREFIXES = ("vision_model.", "mlp1.")


class InternVLTower(torch.nn.Module):
    """InternViT cut after one block, then InternVL's pixel shuffle and projector: frames -> LLM-wide tokens."""

    def __init__(self, vision: torch.nn.Module, projector: torch.nn.Module, ratio: float, final_norm: bool):
        super().__init__()
        self.vision, self.projector, self.ratio, self.final_norm = vision, projector, ratio, final_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 448, 448) -> (B, 256, D_llm): ``InternVLModel.get_image_features`` at this block."""
        h = self.vision.embeddings(x)  # (B, 1 + 1024, D_vision)
        for layer in self.vision.encoder.layer:
            h = layer(h)
        if self.final_norm:  # the last block: last_hidden_state, after the tower's norm
            h = self.vision.layernorm(h)
        h = h[:, 1:]  # the class token dropped ("default" feature select strategy)
        b, n, d = h.shape
        side = math.isqrt(n)
        h = InternVLModel.pixel_shuffle(None, h.reshape(b, side, side, d), scale_factor=self.ratio)  # the model's own
        return self.projector(h.reshape(b, -1, h.shape[-1]))  # (B, 256, D_llm)


class InternVLAdapter(TowerAdapter):
    """The ``TowerAdapter`` of an ``InternVLTower``: already cut and cast when built, so only ``tokens`` is used."""

    family = "InternVL (transformers)"
    follows_quick_gelu = False

    @classmethod
    def tokens(cls, visual: torch.nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
        return visual(x)


def _read_config(pretrained: str, model: str) -> tuple[dict[str, Any], Path]:
    """The checkpoint's ``config.json`` as a dict, checked to be an InternVL one."""
    path = config_file(Path(pretrained))
    if path is None:
        raise SlowfastError(
            f"vision weights {pretrained}: no config.json beside them; {model} needs the checkpoint's config.json "
            "(it decides the tower): pass the model's folder"
        )
    try:
        raw = json.loads(read_bounded(path, CONFIG_LIMIT))
    except (OSError, ValueError) as exc:
        raise SlowfastError(f"{path}: cannot be read as a Hugging Face config.json ({first_line(exc)})") from None
    kind = raw.get("model_type") if isinstance(raw, dict) else None
    if kind not in family(model).model_types:
        raise SlowfastError(
            f"{path}: model_type {kind!r} is not an InternVL checkpoint ({', '.join(family(model).model_types)}), "
            f"which --model {model} reads; pass an InternVL 2.5/3 folder, or the --model of that checkpoint's family"
        )
    return raw, path


def _original_config(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """An original ``internvl_chat`` config in transformers' ``InternVLConfig`` terms (as its converter does)."""
    if raw.get("ps_version", "v2") != "v2":
        version = raw.get("ps_version")
        raise SlowfastError(f"{path}: ps_version {version!r}; only InternVL's v2 pixel shuffle is supported")
    vision = dict(raw.get("vision_config") or {})
    renames = {"qkv_bias": "attention_bias", "qk_normalization": "use_qk_norm", "attention_probs_dropout_prob": None}
    keep = set(InternVLVisionConfig().to_dict())
    out = {(renames.get(k) or k): v for k, v in vision.items() if renames.get(k, k) and (renames.get(k) or k) in keep}
    llm = raw.get("llm_config") or {}
    return {
        "model_type": "internvl",
        "vision_config": {**out, "use_absolute_position_embeddings": True},
        "text_config": {"model_type": "qwen2", "hidden_size": llm.get("hidden_size")},
        "downsample_ratio": raw.get("downsample_ratio", 0.5),
        "vision_feature_layer": raw.get("select_layer", -1),
        "projector_hidden_act": "gelu",  # mlp1's nn.GELU()
    }


def _source_keys(keys: list[str], original: bool, pretrained: str) -> tuple[str, str]:
    """The vision tower's and projector's prefixes among ``keys``."""
    candidates = (ORIGINAL_PREFIXES,) if original else PREFIXES
    for vision, projector in candidates:
        if any(k.startswith(vision) for k in keys) and any(k.startswith(projector) for k in keys):
            return vision, projector
    wanted = " and ".join(candidates[0])
    raise SlowfastError(
        f"vision weights {pretrained}: no InternVL vision tower and projector ({wanted}*) among its keys "
        f"(e.g. {few(keys, 3)})"
    )


def _target_name(key: str, original: bool) -> str | None:
    """transformers' name of an original vision key (``qkv`` is split later); a transformers key is its own."""
    if not original:
        return key
    for pattern, repl in ORIGINAL_VISION:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def _layer_of(name: str) -> int | None:
    m = re.match(r"encoder\.layer\.(\d+)\.", name)
    return int(m[1]) if m else None


def _vision_state(ckpt, prefix: str, original: bool, block: int, width: int) -> dict[str, torch.Tensor]:
    """The tower's tensors up to ``block`` in transformers' names, read only from the shards that hold them."""
    names = {}
    for key in ckpt.keys:
        if not key.startswith(prefix):
            continue
        name = _target_name(key[len(prefix) :], original)
        layer = _layer_of(name) if name else None
        if name is None or (layer is not None and layer > block):
            continue
        names[key] = name
    tensors = ckpt.read(names)
    state = {}
    for key, name in names.items():
        t = tensors[key]
        if original and ".attention.qkv." in name:  # (3 D, D) / (3 D,) -> q, k, v
            for part, piece in zip("qkv", (t[:width], t[width : 2 * width], t[-width:])):
                state[name.replace(".qkv.", f".{part}_proj.")] = piece
        else:
            state[name] = t
    return state


def _projector_state(ckpt, prefix: str, original: bool) -> dict[str, torch.Tensor]:
    keys = [k for k in ckpt.keys if k.startswith(prefix)]
    tensors = ckpt.read(keys)
    state = {}
    for key in keys:
        rest = key[len(prefix) :]
        if original:
            index, _, param = rest.partition(".")
            if index not in ORIGINAL_PROJECTOR:
                raise SlowfastError(f"vision weights {ckpt.path}: unexpected projector key {key}")
            rest = f"{ORIGINAL_PROJECTOR[index]}.{param}"
        state[rest] = tensors[key]
    return state


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, pretrained: str) -> None:
    expected = dict(module.state_dict())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"lacks {few(missing, 3)}"] if missing else []
        parts += [f"has {few(unexpected, 3)}"] if unexpected else []
        raise SlowfastError(f"vision weights {pretrained}: the {what} {' and '.join(parts)} (not this config's model)")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise SlowfastError(
                f"vision weights {pretrained}: {what} tensor {name} is {tuple(t.shape)} but the config makes it "
                f"{tuple(expected[name].shape)}"
            )
    module.load_state_dict(state, strict=True, assign=True)


def build_internvl_encoder(cfg: EncoderCfg, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The ``encoder.Encoder`` fields of an InternVL checkpoint (``cfg.pretrained``) for ``cfg.model`` ``hf:internvl``.

    ``cfg.layer`` counts InternViT's blocks as for every tower (-1: the last, as InternVL 3 takes it, after the
    tower's final norm; -2 the penultimate's raw output). Everything is cast to ``dtype`` (transformers casts a bf16
    model whole).

    Raises:
        SlowfastError: no or another family's config.json, a feature strategy other than dropping the class token,
            a geometry other than 16x16 tokens, missing or misshapen tensors.
    """
    raw, path = _read_config(cfg.pretrained, cfg.model)
    original = raw.get("model_type") != "internvl"
    settings = _original_config(raw, path) if original else raw
    try:
        config = InternVLConfig(**{k: v for k, v in settings.items() if k != "model_type"})
    except Exception as exc:  # transformers' strict config: a bad value or type
        raise SlowfastError(f"{path}: not a valid InternVL config ({first_line(exc)})") from None
    if config.vision_feature_select_strategy != "default":
        raise SlowfastError(f"{path}: vision_feature_select_strategy {config.vision_feature_select_strategy!r}; "
                            "only 'default' (class token dropped, a square grid) is supported")  # fmt: skip
    vision_cfg = config.vision_config
    image, patch = tuple(vision_cfg.image_size), tuple(vision_cfg.patch_size)
    side = image[0] // patch[0]
    grid = (int(side * config.downsample_ratio),) * 2
    if image[0] != image[1] or grid != family(cfg.model).grid:
        raise SlowfastError(
            f"{path}: a {image[0]}x{image[1]} tower with {patch[0]}-pixel patches and downsample_ratio "
            f"{config.downsample_ratio} gives {grid[0]}x{grid[1]} tokens per frame; {cfg.model} is "
            f"{family(cfg.model).grid[0]}x{family(cfg.model).grid[1]}"
        )
    depth = vision_cfg.num_hidden_layers
    block = block_index(cfg.layer, depth, cfg.model)
    vision_cfg.num_hidden_layers = block + 1  # build only the blocks used; their weights are all that is read
    try:
        with torch.device("meta"):
            vision = InternVLVisionModel(vision_cfg)
            projector = InternVLMultiModalProjector(config)
    except Exception as exc:  # a config transformers accepts but cannot build (heads not dividing the width, ...)
        raise SlowfastError(f"{path}: not a valid InternVL config ({first_line(exc)})") from None
    ckpt = open_checkpoint(cfg.pretrained, "vision weights")
    vision_prefix, projector_prefix = _source_keys(ckpt.keys, original, cfg.pretrained)
    blocks = {_layer_of(_target_name(k[len(vision_prefix) :], original) or "") for k in ckpt.keys
              if k.startswith(vision_prefix)} - {None}  # fmt: skip
    if blocks != set(range(depth)):  # a config.json that lies about the depth: never a silently shorter tower
        held = few([str(b) for b in sorted(blocks)], 3)
        raise SlowfastError(f"vision weights {cfg.pretrained}: the vision tower has blocks {held}, but {path} says "
                            f"num_hidden_layers = {depth}")  # fmt: skip
    state = _vision_state(ckpt, vision_prefix, original, block, vision_cfg.hidden_size)
    if block < depth - 1 or isinstance(vision.layernorm, torch.nn.Identity):
        state = {k: v for k, v in state.items() if not k.startswith("layernorm.")}  # the final norm: last block only
    proj_state = _projector_state(ckpt, projector_prefix, original)
    check_tensors({**state, **proj_state}, f"vision weights {cfg.pretrained}")
    _load(vision, state, "vision tower", cfg.pretrained)
    _load(projector, proj_state, "projector", cfg.pretrained)
    tower = InternVLTower(vision, projector, config.downsample_ratio, final_norm=block == depth - 1)
    tower = tower.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return dict(
        visual=tower,
        model_name=cfg.model,
        pretrained=cfg.pretrained,
        layer=cfg.layer,
        block_index=block,
        image_size=image,
        patch_size=(int(patch[0] / config.downsample_ratio),) * 2,  # pixels per output token
        grid=grid,
        width=config.text_config.hidden_size,
        device=device,
        dtype=dtype,
        random_weights=False,
        quick_gelu=False,
        activation=str(vision_cfg.hidden_act),
        preprocess_cfg={
            "resize_mode": "squash",
            "interpolation": "bicubic",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "fill_color": 0,
            "size": image,
        },
        adapter=InternVLAdapter,
    )
