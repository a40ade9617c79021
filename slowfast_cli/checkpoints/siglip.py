"""A Hugging Face SigLIP vision tower's keys in the names of open_clip's timm SigLIP tower (``TimmModel.trunk``).

Where the tower sits (``checkpoints.hf.find_hf_tower`` finds it under any prefix):

| checkpoint | the tower's prefix |
| --- | --- |
| ``SiglipVisionModel`` (google/siglip-so400m-patch14-384 and the like) | ``vision_model.`` |
| an original LLaVA-OneVision / LLaVA-Video checkpoint | ``model.vision_tower.vision_tower.vision_model.`` |
| a llava-hf checkpoint (``LlavaOnevisionForConditionalGeneration``), transformers 5 | ``model.vision_tower.`` |

The map (HF -> timm): ``embeddings.patch_embedding`` -> ``trunk.patch_embed.proj``; ``embeddings.position_embedding
.weight`` (N, D) -> ``trunk.pos_embed`` (1, N, D); per layer ``layer_norm{1,2}`` -> ``norm{1,2}``, ``self_attn.
{q,k,v}_proj`` concatenated (q, k, v) -> ``attn.qkv``, ``self_attn.out_proj`` -> ``attn.proj``, ``mlp.fc{1,2}`` ->
``mlp.fc{1,2}``. Only the layers up to the block whose tokens are taken are read: LLaVA-NeXT deletes SigLIP's last
layer (its checkpoints hold 26 of 27) and takes the new last one, block 25; ``post_layernorm`` and the attention-
pooling ``head`` come after every block patch tokens use and are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import SlowfastError
from .files import few

_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
GLOBAL = {
    "embeddings.patch_embedding.weight": "trunk.patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "trunk.patch_embed.proj.bias",
    "embeddings.position_embedding.weight": "trunk.pos_embed",
}
LAYER = {
    "layer_norm1.weight": "norm1.weight",
    "layer_norm1.bias": "norm1.bias",
    "self_attn.out_proj.weight": "attn.proj.weight",
    "self_attn.out_proj.bias": "attn.proj.bias",
    "layer_norm2.weight": "norm2.weight",
    "layer_norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
QKV = {
    "attn.qkv.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.qkv.bias": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
}
UNUSED = ("post_layernorm.", "head.", "embeddings.position_ids")  # after the blocks tokens use, or no weights


def siglip_layers(keys: list[str], prefix: str) -> list[int]:
    """The layer numbers a SigLIP tower's keys hold, ascending."""
    return sorted({int(m[1]) for k in keys if (m := _LAYER.fullmatch(k.removeprefix(prefix)))})


def needed_keys(keys: list[str], prefix: str, block: int, name: str) -> list[str]:
    """The checkpoint keys the tower cut after ``block`` needs, after checking that the checkpoint has every
    layer 0..``block`` and nothing that is not a SigLIP tower's.

    Raises:
        SlowfastError: a missing layer (named), or keys that map to nothing.
    """
    layers = siglip_layers(keys, prefix)
    missing = [i for i in range(block + 1) if i not in layers]
    if missing:
        held = f"layers {layers[0]}..{layers[-1]}" if layers else "no layers"
        raise SlowfastError(
            f"vision weights {name}: the SigLIP tower at {prefix or 'the top'} holds {held} but block {block} "
            f"(--layer) needs layers 0..{block}: missing layer{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}"
        )
    parts = set(LAYER) | {part for qkv in QKV.values() for part in qkv}
    needed, left = [], []
    for key in keys:
        rel = key.removeprefix(prefix)
        m = _LAYER.fullmatch(rel)
        if rel in GLOBAL or (m and m[2] in parts and int(m[1]) <= block):
            needed.append(key)
        elif not (rel.startswith(UNUSED) or (m and m[2] in parts)):
            left.append(key)
    if left:
        raise SlowfastError(
            f"vision weights {name} hold a Hugging Face SigLIP tower (at {prefix or 'the top level'}) with keys that "
            f"map to nothing in it: {few(left)}"
        )
    return needed


def hf_siglip_to_timm(state: Mapping[str, torch.Tensor], prefix: str, block: int, name: str) -> dict[str, torch.Tensor]:
    """The tensors of layers 0..``block`` and the embeddings (from :func:`needed_keys`) in ``TimmModel`` names.

    Raises:
        SlowfastError: a key the tower needs is absent (named), or q, k and v of different shapes.
    """
    want = list(GLOBAL) + [f"encoder.layers.{i}.{part}" for i in range(block + 1) for part in LAYER]
    want += [f"encoder.layers.{i}.{part}" for i in range(block + 1) for qkv in QKV.values() for part in qkv]
    missing = [prefix + k for k in want if prefix + k not in state]
    if missing:
        raise SlowfastError(f"vision weights {name}: the SigLIP tower lacks {few(missing)}")
    out = {dst: state[prefix + src] for src, dst in GLOBAL.items()}
    out["trunk.pos_embed"] = out["trunk.pos_embed"].unsqueeze(0)  # (1, N, D): timm's table has a batch axis
    for i in range(block + 1):
        here = f"{prefix}encoder.layers.{i}."
        for src, dst in LAYER.items():
            out[f"trunk.blocks.{i}.{dst}"] = state[here + src]
        for dst, qkv in QKV.items():
            parts = [state[here + p] for p in qkv]
            if len({tuple(p.shape) for p in parts}) != 1:
                shapes = ", ".join(f"{p.split('.')[1]} {tuple(t.shape)}" for p, t in zip(qkv, parts))
                raise SlowfastError(f"vision weights {name}: layer {i}'s q, k and v differ in shape ({shapes})")
            out[f"trunk.blocks.{i}.{dst}"] = torch.cat(parts)  # (3 * D, ...): timm's fused qkv, in q, k, v order
    return out
