"""Frames to patch tokens with an open_clip ViT: the only module that imports open_clip.

``build_encoder`` builds just the vision tower of an open_clip model (no text tower), fills it with an
open_clip pretrained tag, a local weights file, or seeded random weights (``none``), keeps the blocks up to the
requested layer, and casts it to the runtime dtype and device. ``Encoder.encode`` maps uint8 frames
(T, H, W, 3) to the patch tokens (T, N, D) of one block, the class token dropped (LLaVA takes block -2).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from open_clip.transformer import VisionTransformer

from .budget import OWN_MODEL_CONFIGS
from .config import EncoderCfg
from .errors import ConfigError, SlowfastError, first_line
from .projector import read_weights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512 / AMX; "bf16" is the aarch64 feature name
FETCH_HINT = "pass --pretrained PATH to a local weights file, or --pretrained none for a dry run"
EXAMPLE_MODELS = ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "slowfast-tiny-vit")
OPENAI_URL_CACHE = "~/.cache/clip"  # where open_clip's download_pretrained_from_url stores files
TOWER_BUILDER = "_build_vision_tower"  # open_clip.model's private vision-only builder, used when present
PIXEL_TOLERANCE = 1 / 255  # max |ours - PIL| in pixel units after resizing, measured (see Encoder.preprocess)


# --- device and dtype --------------------------------------------------------------------------------------


@functools.cache
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 / AMX-BF16 on x86, BF16 on Arm).

    Args:
        cpuinfo: text in the format of ``/proc/cpuinfo``; read from there when None (False where it is absent).
    """
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        SlowfastError: CUDA is requested but absent, or ``cuda:N`` names a GPU that does not exist.
        ConfigError: an unknown device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise SlowfastError(f"--device {name} requested but CUDA is not available here; use --device cpu or auto")
        device = torch.device(name)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SlowfastError(f"--device {name} requested but only {count} CUDA device(s) exist (cuda:0..)")
        return device
    raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and on CPUs with native bf16, else fp32; ``fp32``/``bf16``/``fp16`` as named.

    fp16 on a CPU works but is slow; bf16 on a CPU without native support works and is slower than fp32.

    Raises:
        ConfigError: an unknown dtype name.
    """
    if name == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


# --- model lookup ------------------------------------------------------------------------------------------


def register_own_models() -> None:
    """Add slowfast's model configs (``slowfast_cli/model_configs``) to open_clip's registry, once."""
    own = {p.stem for p in OWN_MODEL_CONFIGS.glob("*.json")}
    if not own <= set(open_clip.list_models()):
        open_clip.add_model_config(OWN_MODEL_CONFIGS)


def _tower_kind(model_cfg: dict[str, Any]) -> str:
    vision = model_cfg["vision_cfg"]
    if "timm_model_name" in vision:
        return f"a timm tower ({vision['timm_model_name']})"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "a ResNet tower"
    return "vit"


def _vit_models() -> list[str]:
    return [m for m in open_clip.list_models() if _tower_kind(open_clip.get_model_config(m)) == "vit"]


def _model_config(name: str) -> dict[str, Any]:
    """open_clip's config dict for a model name with a native ViT vision tower."""
    if ":" in name:
        raise ConfigError(
            f"model {name!r}: hf-hub: and local-dir: names are not supported; pass a built-in --model name "
            "and --pretrained PATH to its weights"
        )
    register_own_models()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        vits = _vit_models()
        close = difflib.get_close_matches(name, vits, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        examples = ", ".join(m for m in EXAMPLE_MODELS if m in vits)
        raise ConfigError(
            f"unknown model {name!r}: {hint}open_clip knows {len(vits)} models with a ViT tower, e.g. {examples} "
            "(all: python -c 'import open_clip; print(open_clip.list_models())')"
        )
    kind = _tower_kind(model_cfg)
    if kind != "vit":
        raise ConfigError(
            f"model {name!r} has {kind}, not an open_clip ViT: slowfast needs ViT patch tokens; "
            "pick a ViT model such as ViT-B-16 or ViT-L-14-336"
        )
    return model_cfg


# --- weights -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Weights:
    kind: str  # "none" | "file" | "tag"
    tag: str | None = None  # the open_clip pretrained tag, for kind "tag"
    path: str | None = None  # the file to load, for kinds "file" and "tag"


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub itself reads it once, at import)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in ("1", "ON", "YES", "TRUE") or bool(hf_constants.HF_HUB_OFFLINE)


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names open_clip would try, safetensors first) for a pretrained cfg's ``hf_hub`` entry."""
    repo, filename = os.path.split(hf_hub)
    if not filename:
        return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def _cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
    """The local copy of a pretrained tag's weights in the Hugging Face or open_clip URL cache, or None."""
    if tag_cfg.get("hf_hub"):
        repo, names = _hub_candidates(tag_cfg["hf_hub"])
        for filename in names:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found
    if tag_cfg.get("url"):
        found = Path(OPENAI_URL_CACHE).expanduser() / os.path.basename(tag_cfg["url"])
        if found.is_file():
            return str(found)
    return None


def _fetch_tag(model: str, tag: str, tag_cfg: dict[str, Any]) -> str:
    """Path of a pretrained tag's weights: the local cache first (only it when offline), else open_clip's download."""
    what = f"pretrained weights {model}/{tag}"
    found = _cached_tag_file(tag_cfg)
    if found is not None:
        return found
    if _hub_offline():
        raise SlowfastError(
            f"{what} could not be fetched (HF_HUB_OFFLINE is set and they are not cached): {FETCH_HINT}"
        )
    try:
        return open_clip.download_pretrained(tag_cfg)
    except Exception as exc:  # network, hub and file errors all mean the same to the user
        raise SlowfastError(f"{what} could not be fetched ({first_line(exc)}): {FETCH_HINT}") from None


def _resolve_weights(model: str, pretrained: str) -> _Weights:
    """Classify ``--pretrained``: ``none``, an open_clip tag (fetched now), or a local file."""
    if pretrained.lower() == "none":
        return _Weights("none")
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if tag_cfg:
        return _Weights("tag", tag=pretrained, path=_fetch_tag(model, pretrained, tag_cfg))
    if Path(pretrained).is_file():
        return _Weights("file", path=pretrained)
    looks_like_path = Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors") or os.sep in pretrained
    if looks_like_path:
        raise SlowfastError(f"weights file {pretrained} does not exist; {FETCH_HINT}")
    tags = open_clip.list_pretrained_tags_by_model(model)
    valid = f"valid tags: {', '.join(tags)}" if tags else "open_clip has no pretrained tags for it"
    raise ConfigError(f"unknown pretrained tag {pretrained!r} for {model} ({valid}); {FETCH_HINT}")


def _vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's entries of a full CLIP state dict (``visual.*``), or a vision-only one as is."""
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return visual or state


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load_visual(visual: VisionTransformer, path: str, model: str) -> None:
    """Load a checkpoint strictly into the vision tower."""
    state = _vision_state(read_weights(path, "vision weights"))
    try:
        result = visual.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise SlowfastError(f"weights {path} do not fit {model}: {detail}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_few(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_few(result.unexpected_keys)}")
    if problems:
        raise SlowfastError(
            f"weights {path} do not fit {model}: {'; '.join(problems)}. Expected an open_clip state dict of {model} "
            "(keys visual.* or the vision tower's own)"
        )


# --- building ----------------------------------------------------------------------------------------------


def _tags_agree(model: str, read: Callable[[dict[str, Any]], Any]) -> Any:
    """``read(tag_cfg)`` when every pretrained tag of ``model`` gives the same value, else None."""
    values = [read(open_clip.get_pretrained_cfg(model, t)) for t in open_clip.list_pretrained_tags_by_model(model)]
    return values[0] if values and all(v == values[0] for v in values) else None


def _tag_preprocess(tag_cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in merge_preprocess_dict({}, tag_cfg).items() if k != "size"}


def _preprocess_cfg(model: str, weights: _Weights, image_size: tuple[int, int]) -> dict[str, Any]:
    """open_clip's PreprocessCfg as a dict: the tag's settings, or the ones all of the model's tags share."""
    if weights.kind == "tag":
        overlay = _tag_preprocess(open_clip.get_pretrained_cfg(model, weights.tag))
    else:
        overlay = _tags_agree(model, _tag_preprocess) or {}
    cfg = merge_preprocess_dict(PreprocessCfg(), overlay)
    cfg["size"] = image_size
    return cfg


def _quick_gelu(model: str, model_cfg: dict[str, Any], weights: _Weights) -> bool:
    """QuickGELU when the config says so or the weights were trained with it (open_clip only warns)."""
    if model_cfg.get("quick_gelu", False):
        return True
    if weights.kind == "tag":
        return bool(open_clip.get_pretrained_cfg(model, weights.tag).get("quick_gelu", False))
    return bool(_tags_agree(model, lambda c: c.get("quick_gelu", False)))


def _vision_tower(name: str, model_cfg: dict[str, Any], quick_gelu: bool, cast_dtype: torch.dtype | None):
    """open_clip's vision tower alone; through a whole CLIP (text tower dropped) if the private builder is gone."""
    build = getattr(open_clip.model, TOWER_BUILDER, None)
    if build is not None:
        return build(model_cfg["embed_dim"], model_cfg["vision_cfg"], quick_gelu=quick_gelu, cast_dtype=cast_dtype)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(cast_dtype, "fp32")
    clip = open_clip.create_model(name, pretrained=None, precision=precision, force_quick_gelu=quick_gelu)
    return clip.visual.float()


def _seeded_tower(name: str, model_cfg: dict[str, Any], quick_gelu: bool, dtype: torch.dtype) -> VisionTransformer:
    """The fp32 tower with its random init under ``manual_seed(0)``, so ``--pretrained none`` is reproducible."""
    low_precision = dtype if dtype in (torch.bfloat16, torch.float16) else None  # selects fp32 LayerNorms
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        visual = _vision_tower(name, model_cfg, quick_gelu, low_precision)
    if not isinstance(visual, VisionTransformer):
        raise SlowfastError(f"model {name!r} did not build an open_clip VisionTransformer ({type(visual).__name__})")
    return visual


def _block_index(layer: int, depth: int, model: str) -> int:
    """0-based block for ``layer``: -1 is the last block, -2 the penultimate; 0..depth-1 count from the first."""
    if not -depth <= layer < depth:
        raise ConfigError(
            f"layer {layer} is out of range for {model}, which has {depth} blocks: "
            f"use -{depth}..-1 (from the end; -2 is LLaVA's) or 0..{depth - 1}"
        )
    return layer % depth


def _cast(visual: VisionTransformer, device: torch.device, dtype: torch.dtype) -> VisionTransformer:
    """Move to ``device``; in bf16/fp16 cast weights like open_clip's ``precision`` (LayerNorms stay fp32)."""
    visual = visual.to(device)
    if dtype in (torch.bfloat16, torch.float16):
        open_clip.convert_weights_to_lp(visual, dtype=dtype)
    return visual.eval().requires_grad_(False)


def build_encoder(cfg: EncoderCfg, device: torch.device, dtype: torch.dtype) -> Encoder:
    """Build the vision tower of ``cfg.model`` with ``cfg.pretrained`` weights, cut after block ``cfg.layer``.

    ``cfg.pretrained`` is one of:
    - an open_clip tag: a cached copy is used without touching the network, otherwise open_clip downloads it
      (unless HF_HUB_OFFLINE is set);
    - a local ``.safetensors``/``.bin``/``.pt``/``.pth`` file with a full CLIP state dict (``visual.*``) or the
      vision tower's own, loaded strictly;
    - ``none``: random weights under seed 0, bit-identical from run to run.
    The activation follows the weights: QuickGELU when the tag (for a file: every tag of the model) was trained
    with it, which open_clip itself only warns about. Mean, std and resize mode follow the tag the same way.

    Raises:
        SlowfastError: unknown model, a non-ViT tower, weights that cannot be fetched or read or do not fit, or a
            layer out of range.
    """
    model_cfg = _model_config(cfg.model)
    weights = _resolve_weights(cfg.model, cfg.pretrained)
    quick_gelu = _quick_gelu(cfg.model, model_cfg, weights)
    visual = _seeded_tower(cfg.model, model_cfg, quick_gelu, dtype)
    if weights.path is not None:
        _load_visual(visual, weights.path, cfg.model)
    block = _block_index(cfg.layer, len(visual.transformer.resblocks), cfg.model)
    visual.prune_intermediate_layers([block], prune_norm=True, prune_head=True)
    visual = _cast(visual, device, dtype)
    image_size = tuple(visual.image_size)
    return Encoder(
        visual=visual,
        model_name=cfg.model,
        pretrained=cfg.pretrained,
        layer=cfg.layer,
        block_index=block,
        image_size=image_size,
        patch_size=tuple(visual.patch_size),
        grid=tuple(visual.grid_size),
        width=visual.transformer.width,
        device=device,
        dtype=dtype,
        random_weights=weights.kind == "none",
        quick_gelu=quick_gelu,
        preprocess_cfg=_preprocess_cfg(cfg.model, weights, image_size),
    )


# --- preprocessing -----------------------------------------------------------------------------------------


def _resized_shape(h: int, w: int, target: tuple[int, int], mode: str) -> tuple[int, int]:
    """(h, w) after open_clip's resize step: torchvision ``Resize`` / ``ResizeKeepRatio`` arithmetic."""
    th, tw = target
    if mode == "squash":
        return th, tw
    if mode == "shortest" and th == tw:
        return (int(th * h / w), th) if w <= h else (th, int(th * w / h))
    ratio = max(h / th, w / tw) if mode == "longest" else min(h / th, w / tw)
    return round(h / ratio), round(w / ratio)


def _resize_like_pil(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """PIL's resize on float pixels (B, C, H, W): width pass then height pass, each rounded to uint8 levels."""
    h, w = size
    for shape in ((x.shape[-2], w), (h, w)):
        if tuple(x.shape[-2:]) != shape:
            x = F.interpolate(x, size=shape, mode=interpolation, antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255)
    return x


def _center_crop_or_pad(x: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """torchvision's ``center_crop`` (and open_clip's ``CenterCropOrPad``) on (B, C, H, W)."""
    th, tw = size
    h, w = x.shape[-2:]
    if th > h or tw > w:
        pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top : top + th, left : left + tw]


def _as_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check and wrap uint8 frames (T, H, W, 3)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        raise SlowfastError(f"frames must be uint8 RGB, got {getattr(frames, 'dtype', type(frames).__name__)}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise SlowfastError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    return frames


def _to_device(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move uint8 frames to ``device``; on CUDA through pinned memory with a non-blocking copy (4x less to copy
    than float, and the copy overlaps the previous chunk's compute)."""
    if device.type != "cuda" or frames.device.type == "cuda":
        return frames.to(device)
    return frames.pin_memory().to(device, non_blocking=True)


@dataclass(eq=False)
class Encoder:
    """An open_clip VisionTransformer cut after block ``block_index``, with its preprocessing."""

    visual: VisionTransformer  # blocks after block_index, ln_post and proj pruned
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
    quick_gelu: bool  # the activation the tower was built with
    preprocess_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)  # open_clip PreprocessCfg fields

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """open_clip's eval preprocessing, batched on tensors: (T, H, W, 3) uint8 -> (T, 3, Hs, Ws) normalized.

        The same steps as ``open_clip.image_transform(..., is_train=False)`` for ``preprocess_cfg`` (resize by
        ``resize_mode`` with antialiasing, center crop or pad, ``/255``, mean/std), computed on ``self.device``.
        The resize mimics PIL (a width pass and a height pass, each rounded to 8 bits), so the result differs from
        open_clip's PIL pipeline by at most 1/255 in pixel units (<= 0.0151 after dividing by OpenAI's std),
        on a small fraction of pixels, and is bit-identical when no resize is needed. Frames whose size already
        matches the resize target (e.g. resized by the decoder) skip the resize.

        Returns:
            (T, 3, Hs, Ws) on ``self.device`` in ``self.dtype``.
        """
        cfg = self.preprocess_cfg
        if cfg["interpolation"] not in ("bicubic", "bilinear"):
            raise SlowfastError(f"unsupported interpolation {cfg['interpolation']!r} (bicubic or bilinear)")
        x = rearrange(_to_device(_as_frames(frames), self.device), "t h w c -> t c h w").float()  # (T, 3, H, W)
        shape = _resized_shape(x.shape[-2], x.shape[-1], self.image_size, cfg["resize_mode"])
        x = _resize_like_pil(x, shape, cfg["interpolation"])
        x = _center_crop_or_pad(x, self.image_size, float(cfg["fill_color"]))  # (T, 3, Hs, Ws)
        mean = torch.tensor(cfg["mean"], device=self.device).view(3, 1, 1)
        std = torch.tensor(cfg["std"], device=self.device).view(3, 1, 1)
        return ((x / 255 - mean) / std).to(self.dtype)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hs, Ws) -> (B, N, D) output of block ``block_index``, class token dropped."""
        out = self.visual.forward_intermediates(
            x, indices=[self.block_index], stop_early=True, intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"][0]

    def encode(self, frames: torch.Tensor | np.ndarray, batch_frames: int = 32) -> torch.Tensor:
        """Patch tokens of block ``layer`` for every frame, ``batch_frames`` frames per forward pass.

        Args:
            frames: uint8 (T, H, W, 3), numpy or torch, on any device.
            batch_frames: frames per ViT forward pass.

        Returns:
            (T, N, D) with N = Gh * Gw in row-major order, on ``self.device`` in ``self.dtype``.
        """
        frames = _as_frames(frames)
        if batch_frames <= 0:
            raise SlowfastError(f"batch_frames must be a positive integer, got {batch_frames}")
        if len(frames) == 0:
            n = self.grid[0] * self.grid[1]
            return torch.empty(0, n, self.width, device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            return torch.cat([self._tokens(self.preprocess(chunk)) for chunk in frames.split(batch_frames)])
