"""Frames to patch tokens: ``build_encoder`` (a factory of named stages) and the thin ``Encoder`` it returns.

``build_encoder`` builds just the vision tower of an open_clip model (no text tower), fills it with an open_clip
pretrained tag, a local checkpoint, or seeded random weights (``none``), keeps the blocks up to the requested layer,
and casts it to the runtime dtype and device. ``Encoder.encode`` maps uint8 frames (T, H, W, 3) to the patch
tokens (T, N, D) of one block, the class token dropped (LLaVA takes block -2). The tower's family (open_clip's own
ViT, or a timm ViT that open_clip wraps: SigLIP, EVA, ...) is behind a ``towers.TowerAdapter``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import EncoderCfg
from ..models import block_index
from . import towers
from .packing import Packer
from .preprocess import as_frames, preprocess
from .weights import Weights, load_weights, resolve_weights


@dataclass(eq=False)
class Encoder:
    """A ViT tower cut after block ``block_index``, with its preprocessing."""

    visual: torch.nn.Module  # blocks after block_index, final norm and head pruned
    model_name: str
    pretrained: str  # as given: a tag, a path or "none"
    layer: int  # as given, e.g. -2
    block_index: int  # 0-based block whose output is taken
    image_size: tuple[int, int]  # (Hs, Ws) the ViT takes
    patch_size: tuple[int, int]
    grid: tuple[int, int]  # (Gh, Gw) = image_size // patch_size
    width: int  # D_vision
    device: torch.device
    dtype: torch.dtype
    random_weights: bool  # pretrained == "none"
    quick_gelu: bool  # the tower computes QuickGELU
    activation: str = "gelu"  # what its MLPs compute: quick_gelu | gelu | gelu_tanh (a SigLIP checkpoint's)
    preprocess_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)  # open_clip PreprocessCfg fields
    timm_model: str | None = None  # the timm model of a timm tower (vit_so400m_patch14_siglip_384), else None
    adapter: type[towers.TowerAdapter] = towers.OpenClipViT  # the tower's family

    @property
    def resize_mode(self) -> str:
        """``shortest`` / ``longest`` (resize, then centre crop or pad) or ``squash`` (both sides, no crop)."""
        return self.preprocess_cfg["resize_mode"]

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, Hs, Ws) on ``self.device`` in ``self.dtype``: ``preprocess.preprocess``."""
        return preprocess(frames, self.preprocess_cfg, self.image_size, self.device, self.dtype)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hs, Ws) -> (B, N, D) output of block ``block_index``, prefix tokens (a class token) dropped."""
        return self.adapter.tokens(self.visual, x, self.block_index)

    def encode(
        self, frames: torch.Tensor | np.ndarray, batch_frames: int = 32, progress: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """Patch tokens of block ``layer`` for every frame, in forward passes of exactly ``batch_frames`` frames.

        The last pass is padded with zero frames (``packing.Packer``), so the tokens are bit-identical to the same
        frames packed next to other videos' in ``slowfast batch``. With ``progress``, the frames go in one pass at a
        time (the same passes, so the same tokens) and ``progress`` is told the frames done after each.

        Args:
            frames: uint8 (T, H, W, 3), numpy or torch, on any device.
            batch_frames: frames per ViT forward pass.
            progress: told the frames done after each pass (for a status display).

        Returns:
            (T, N, D) with N = Gh * Gw in row-major order, on ``self.device`` in ``self.dtype``.
        """
        packer = Packer(self, batch_frames)
        pieces = [frames] if progress is None else list(as_frames(frames).split(batch_frames)) or [frames]
        out, finished = [], 0
        for i, piece in enumerate(pieces):
            (done,) = packer.add(i, piece) or packer.flush()
            if done.error is not None:
                raise done.error
            out.append(done.tokens)  # (t, N, D)
            finished += len(piece)
            if progress is not None:
                progress(finished)
        return out[0] if len(out) == 1 else torch.cat(out)


def _quick_gelu(model: str, model_cfg: dict[str, Any], weights: Weights) -> bool:
    """The activation the weights were trained with. A Hugging Face CLIP tower says itself: its ``hidden_act``
    (``config.json``), QuickGELU when no config is there (CLIPVisionConfig's default, and OpenAI's CLIP, which
    LLaVA's towers are); otherwise the model config or the tag (``towers.quick_gelu``)."""
    if weights.hf is not None:
        return weights.hf.quick_gelu
    return towers.quick_gelu(model, model_cfg, weights.tag if weights.kind == "tag" else None)


def build_encoder(cfg: EncoderCfg, device: torch.device, dtype: torch.dtype) -> Encoder:
    """Build the vision tower of ``cfg.model`` with ``cfg.pretrained`` weights, cut after block ``cfg.layer``.

    ``cfg.pretrained`` is one of:
    - an open_clip tag: a cached copy is used without touching the network, otherwise open_clip downloads it
      (unless HF_HUB_OFFLINE is set), once a request of a few seconds has shown that the hub answers;
    - a local ``.safetensors``/``.bin``/``.pt``/``.pth`` file, checkpoint folder or ``*.index.json``, with a full
      CLIP state dict (``visual.*``), the vision tower's own, or a Hugging Face CLIP tower, loaded strictly;
    - ``none``: random weights under seed 0, bit-identical from run to run.
    The activation follows the weights: QuickGELU when the tag (for a file: every tag of the model) was trained
    with it, which open_clip itself only warns about. Mean, std and resize mode follow the tag the same way;
    ``cfg.resize`` ``squash`` overrides the resize mode (see ``preprocess.preprocess``).

    Towers: open_clip's own ViT, or a timm ViT inside open_clip (SigLIP, SigLIP 2, EVA, PE-Core; always GELU, as
    open_clip builds them), whose layers count the same way: -1 is the last block's output, -2 the penultimate's
    (what LLaVA-NeXT's SigLIP tower takes: it deletes the last of the 27 layers and keeps the new last hidden
    state, i.e. block 25 of 0..26, before the post-layernorm), 0..L-1 from the first. The grid is the timm model's
    (27x27 for SO400M/14 at 384) and agrees with ``models``', which is checked here.

    Raises:
        SlowfastError: unknown model, a non-ViT tower, weights that cannot be fetched or read or do not fit, or a
            layer out of range.
    """
    if cfg.model.startswith("hf:"):  # the model's own vision code from transformers (hf_families, encoder.hfvl)
        from .hfvl import build_hf_encoder

        built = build_hf_encoder(cfg, device, dtype)  # Encoder's fields, or an encoder of its own (a grid per video)
        return Encoder(**built) if isinstance(built, dict) else built
    model_cfg = towers.model_config(cfg.model)
    weights = resolve_weights(cfg.model, cfg.pretrained)
    quick_gelu = _quick_gelu(cfg.model, model_cfg, weights)
    # with weights to load, the tower is built on the meta device: no random init that the checkpoint overwrites
    visual, adapter, geometry = towers.build_tower(cfg.model, model_cfg, quick_gelu, dtype, weights.path is None)
    towers.check_geometry(cfg.model, geometry)
    block = block_index(cfg.layer, geometry.blocks, cfg.model)
    activation = "quick_gelu" if quick_gelu and adapter.follows_quick_gelu else "gelu"
    if weights.hf is not None:  # cut first: LLaVA's SigLIP holds 26 of 27 layers, a tiny test checkpoint 2 of 12
        adapter.prune(visual, block)
        if weights.hf.family == "siglip" and adapter is towers.TimmViT:
            adapter.set_activation(visual, weights.hf.activation)  # the checkpoint's, never open_clip's default
            activation = weights.hf.activation
        load_weights(visual.to_empty(device="cpu"), adapter, weights, cfg.model, geometry, block, complete=True)
    else:
        if weights.path is not None:
            load_weights(visual.to_empty(device="cpu"), adapter, weights, cfg.model, complete=True)
        adapter.prune(visual, block)
    visual = adapter.cast(visual, device, dtype)
    preprocess_cfg = towers.preprocess_cfg(
        cfg.model, weights.tag if weights.kind == "tag" else None, geometry.image_size
    )
    if cfg.resize == "squash":  # "shortest" keeps the model's own mode (SigLIP's tags already squash)
        preprocess_cfg["resize_mode"] = "squash"
    return Encoder(
        visual=visual,
        model_name=cfg.model,
        pretrained=cfg.pretrained,
        layer=cfg.layer,
        block_index=block,
        image_size=geometry.image_size,
        patch_size=geometry.patch_size,
        grid=geometry.grid,
        width=geometry.width,
        device=device,
        dtype=dtype,
        random_weights=weights.kind == "none",
        quick_gelu=quick_gelu and adapter.follows_quick_gelu,  # timm towers ignore it (always GELU)
        activation=activation,
        preprocess_cfg=preprocess_cfg,
        timm_model=geometry.timm_model,
        adapter=adapter,
    )
