"""Qwen2.5-VL's and Qwen3-VL's own vision towers (with their merger, which is the projector) from a checkpoint.

``build_qwen_encoder`` reads the checkpoint's ``config.json``, builds transformers' vision model from its
``vision_config`` without a random init, loads only the vision tensors (``visual.*`` or ``model.visual.*``) from
the shards that hold them, and casts it. ``QwenEncoder.encode`` runs the model's own video processor (transformers'
``Qwen2VLVideoProcessor`` / ``Qwen3VLVideoProcessor``: smart_resize, normalise, patchify to
(T' * h * w, C * 2 * P * P)) and the tower's forward, and returns the merged tokens as a grid per temporal patch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...checkpoints.files import few, open_checkpoint
from ...errors import SlowfastError
from ...tensors import check_tensors
from .families import (
    Family,
    checkpoint_config,
    checkpoint_folder,
    family_of,
    processor_pixels,
    smart_resize,
    smart_resize_video,
)

try:
    import transformers
    from transformers.initialization import no_init_weights
except ImportError:  # the hf extra is not installed: build_qwen_encoder says so in one line
    transformers = None

VISION_CLASSES = {  # family -> (transformers module, vision model class, its config class)
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VisionTransformerPretrainedModel", "Qwen2_5_VLConfig"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLVisionModel", "Qwen3VLConfig"),
}
PROCESSOR_MODULES = {"Qwen2VLVideoProcessor": "qwen2_vl", "Qwen3VLVideoProcessor": "qwen3_vl"}


def require_transformers(model: str) -> None:
    if transformers is None:
        raise SlowfastError(
            f'{model} runs through transformers, which is not installed: pip install "slowfast-cli[hf]"'
        )


@dataclass(eq=False)
class QwenEncoder:
    """A Qwen-VL vision tower with its merger and its own video processor; grids vary per video."""

    visual: torch.nn.Module
    processor: Any  # transformers' video processor, configured from the checkpoint
    family: Family
    model_name: str  # hf:qwen2_5_vl
    pretrained: str
    config: dict[str, Any]  # the checkpoint's config.json
    width: int  # (1 + K) * D: the merger's output (the LLM's hidden size D) and K deepstack mergers' (Qwen3-VL)
    device: torch.device
    dtype: torch.dtype
    layer: int = -1  # the merger's output: the only tap these towers offer
    random_weights: bool = False
    activation: str = "model's own"
    resize_mode: str = "dynamic"  # smart_resize per video: the decoder gives full-size frames
    image_size: tuple[int, int] | None = None
    grid: tuple[int, int] | None = None  # varies per video: each encode's output carries its own
    whole_videos: bool = True  # encoder.packing: one video per forward pass, never packed with others

    def preprocess(self, frames: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, H, W, 3) uint8 -> (pixel_values (T' * h * w, C * 2 * P * P), grid_thw (1, 3)) by the model's own
        video processor on the CPU; T' = ceil(T / 2) (the last frame repeated to fill the last temporal patch)."""
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames).cpu()
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise SlowfastError(f"expected uint8 frames (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        self.check_frames("frames", *frames.shape[:3])
        out = self.processor(
            videos=[frames], return_tensors="pt", input_data_format="channels_last", cap_pixels_per_frame=False,
            do_sample_frames=False,
        )  # fmt: skip
        return out["pixel_values_videos"], out["video_grid_thw"]

    def check_frames(self, video: Any, frames: int, height: int, width: int) -> None:
        """One line naming ``video`` for frames the model refuses: smaller than a token on a side (Qwen2.5-VL:
        qwen-vl-utils refuses them, transformers would blow them up), more than 200 times as long as wide, or
        fewer than a temporal patch (Qwen3-VL; Qwen2.5-VL's processor repeats the frame)."""
        f = self.family
        try:
            if f.pixels_per_video:  # Qwen3-VL scales a small frame up first
                smart_resize_video(int(frames), int(height), int(width), f.temporal_patch, f.factor, 1, 1 << 62)
            else:
                smart_resize(int(height), int(width), f.factor, 1, 1 << 62)
        except SlowfastError as exc:
            raise SlowfastError(f"{video}: {exc}") from None

    @property
    def deepstack(self) -> int:
        """K: Qwen3-VL's deepstack mergers (features of intermediate blocks that its LLM adds to the video tokens'
        hidden states in its first K layers); 0 for Qwen2.5-VL."""
        return len(getattr(self.visual, "deepstack_merger_list", ()))

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """The tower and merger: (T' * h * w, C * 2 * P * P) -> (T' * h/2 * w/2, (1 + K) * D), row-major per temporal
        patch (the processor orders the patches so that each 2x2 merge group is contiguous): the merger's tokens,
        then each of the K deepstack mergers' (Qwen3-VL) side by side in the channels, so that every pooling treats
        them alike (``qwen_positions.qwen3_inputs`` splits them again)."""
        out = self.visual(pixel_values.to(self.device, self.dtype), grid_thw=grid_thw.to(self.device))
        return torch.cat([out.pooler_output, *(getattr(out, "deepstack_features", None) or [])], dim=-1)

    def encode(
        self, frames: torch.Tensor | np.ndarray, batch_frames: int = 0, progress: Callable[[int], None] | None = None
    ) -> torch.Tensor:
        """Merged tokens of every temporal patch: (T', Gh, Gw, D), Gh = h / merge, Gw = w / merge; one forward pass
        for the whole video (its attention spans each frame, so splitting it would change nothing but is not
        needed). ``batch_frames`` is ignored; ``progress`` is told all frames done at the end."""
        pixel_values, grid_thw = self.preprocess(frames)
        t, h, w = (int(v) for v in grid_thw[0])
        tokens = self.forward(pixel_values, grid_thw)  # (T' * Gh * Gw, D)
        if progress is not None:
            progress(len(frames))
        m = self.family.merge
        return tokens.reshape(t, h // m, w // m, -1)  # (T', Gh, Gw, D)


def _processor(family: Family, pretrained: str, model: str, vision: Any) -> Any:
    """The family's video processor: the checkpoint's ``video_preprocessor_config.json`` when it has one (what
    ``AutoVideoProcessor`` would load), else the class defaults with the family's video pixel bounds
    (``families.FAMILIES``: Qwen2.5-VL-7B-Instruct ships only an image processor config) and the tower's
    geometry."""
    name = PROCESSOR_MODULES[family.processor]
    cls = getattr(importlib.import_module(f"transformers.models.{name}.video_processing_{name}"), family.processor)
    folder = checkpoint_folder(pretrained, model)
    lo, hi = processor_pixels(pretrained, model)  # bounds checked first: transformers takes min > max silently
    if (folder / "video_preprocessor_config.json").is_file():
        try:
            return cls.from_pretrained(str(folder), do_sample_frames=False)
        except Exception as exc:  # a damaged or foreign processor config
            raise SlowfastError(f"{folder / 'video_preprocessor_config.json'}: cannot be loaded ({exc})") from None
    return cls(
        size={"shortest_edge": lo, "longest_edge": hi},
        patch_size=getattr(vision, "patch_size", family.patch),
        temporal_patch_size=getattr(vision, "temporal_patch_size", family.temporal_patch),
        merge_size=getattr(vision, "spatial_merge_size", family.merge),
        do_sample_frames=False,
    )


def _vision_tensors(pretrained: str, family: Family, expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The vision tower's tensors, named as the vision model names them, read from the shards holding them."""
    ckpt = open_checkpoint(pretrained, f"{family.title} weights")
    for prefix in family.vision_prefixes:
        names = {k.removeprefix(prefix): k for k in ckpt.keys if k.startswith(prefix)}
        if names:
            break
    else:
        raise SlowfastError(
            f"{family.title} weights {pretrained}: no vision tower (no key starts with "
            f"{' or '.join(family.vision_prefixes)}); is it a {family.title} checkpoint?"
        )
    missing, unexpected = sorted(set(expected) - set(names)), sorted(set(names) - set(expected))
    if missing or unexpected:
        raise SlowfastError(
            f"{family.title} weights {pretrained}: the vision tower does not fit its config.json"
            + (f"; missing {few(missing, 3)}" if missing else "")
            + (f"; unexpected {few(unexpected, 3)}" if unexpected else "")
        )
    read = ckpt.read(names.values())
    tensors = {name: read[key] for name, key in names.items()}
    for name, t in tensors.items():  # a config.json that lies about widths: one line, not load_state_dict's dump
        if tuple(t.shape) != expected[name]:
            raise SlowfastError(
                f"{family.title} weights {pretrained}: tensor {names[name]} is {tuple(t.shape)} but its config.json "
                f"makes it {expected[name]}"
            )
    check_tensors(tensors, f"{family.title} weights {pretrained}")
    return tensors


def build_qwen_encoder(model: str, pretrained: str, device: torch.device, dtype: torch.dtype) -> QwenEncoder:
    """The vision tower and merger of a Qwen2.5-VL / Qwen3-VL checkpoint (folder, ``*.index.json`` or one
    safetensors file beside its config.json), on ``device`` in ``dtype``, in eval mode.

    Raises:
        SlowfastError: transformers missing, no config.json or one of another family, tensors missing or extra.
    """
    require_transformers(model)
    family = family_of(model)
    raw = checkpoint_config(pretrained, model)
    module_name, vision_cls, config_cls = VISION_CLASSES[family.model_type]
    module = importlib.import_module(f"transformers.models.{module_name}")
    try:  # transformers' strict config (a bad value or type) and the model built from it
        config = getattr(module, config_cls).from_dict(raw)
        vision = config.vision_config
        with no_init_weights():  # no random init: every parameter is loaded below; computed buffers stay real
            visual = getattr(module, vision_cls)._from_config(vision)
    except Exception as exc:
        path = checkpoint_folder(pretrained, model) / "config.json"
        raise SlowfastError(f"{path}: not a valid {family.title} config ({' '.join(str(exc).split())[:200]})") from None
    if vision.hidden_size % vision.num_heads:  # the tensors fit, the attention would fail at the first video
        raise SlowfastError(
            f"{checkpoint_folder(pretrained, model) / 'config.json'}: vision_config.hidden_size {vision.hidden_size} "
            f"is not a multiple of num_heads {vision.num_heads}"
        )
    expected = {name: tuple(t.shape) for name, t in visual.state_dict().items()}
    tensors = _vision_tensors(pretrained, family, expected)
    visual.load_state_dict(tensors, strict=True)
    visual = visual.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return QwenEncoder(
        visual=visual,
        processor=_processor(family, pretrained, model, vision),
        family=family,
        model_name=model,
        pretrained=pretrained,
        config=raw,
        width=int(vision.out_hidden_size) * (1 + len(getattr(vision, "deepstack_visual_indexes", None) or [])),
        device=device,
        dtype=dtype,
    )
