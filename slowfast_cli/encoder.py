"""Frames to patch tokens with an open_clip ViT: the only module that imports open_clip.

``build_encoder`` builds just the vision tower of an open_clip model (no text tower), fills it with an
open_clip pretrained tag, a local weights file, or seeded random weights (``none``), keeps the blocks up to the
requested layer, and casts it to the runtime dtype and device. ``Encoder.encode`` maps uint8 frames
(T, H, W, 3) to the patch tokens (T, N, D) of one block, the class token dropped (LLaVA takes block -2).
The tower is open_clip's own ViT or a timm ViT that open_clip wraps (SigLIP, EVA, ...), tapped the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from huggingface_hub.utils import get_session
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.timm_model import TimmModel
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from open_clip.transformer import VisionTransformer
from PIL import Image

from .budget import OWN_MODEL_CONFIGS, VISION_DEFAULTS, model_grid, vision_config
from .checkpoints import (
    UNUSED_BY_TOKENS,
    WEIGHT_SUFFIXES,
    Checkpoint,
    HFTower,
    describe_tower,
    find_hf_tower,
    hf_clip_to_open_clip,
    open_checkpoint,
)
from .config import EncoderCfg
from .errors import ConfigError, SlowfastError, first_line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512 / AMX; "bf16" is the aarch64 feature name
FETCH_HINT = "pass --pretrained PATH to a local weights file, or --pretrained none for a dry run"
HUB_PREFLIGHT_TIMEOUT_S = 3.0  # one request to the hub before a download, whose retries wait ~50 s offline
OPENAI_URL_CACHE = "~/.cache/clip"  # where open_clip's download_pretrained_from_url stores files
TOWER_BUILDER = "_build_vision_tower"  # open_clip.model's private vision-only builder, used when present
PIXEL_TOLERANCE = 2 / 255  # max |ours - PIL| in pixel units after a shortest/longest resize, measured (preprocess)
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
SQUASH_THREADS = 8  # at most this many frames squashed by PIL at once (it lets go of the GIL while it resizes)
PIECE_ELEMENTS = 1 << 22  # fp32 values per preprocessing temporary (16 MiB), whatever the frame shape
RESIZE_TAPS = {"bicubic": 4, "bilinear": 2}  # filter width in input pixels at scale 1 (PIL, torch antialias)


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


def _model_config(name: str) -> dict[str, Any]:
    """open_clip's config dict for a model name with a ViT vision tower (open_clip's own, or a timm ViT).

    The checks (hf-hub names, unknown models with close matches, non-ViT towers) are ``budget.vision_config``'s,
    which reads the same JSON files without open_clip, so ``slowfast budget``/preflight and the encoder agree.
    """
    vision_config(name)
    register_own_models()
    return open_clip.get_model_config(name)


# --- weights -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Weights:
    kind: str  # "none" | "file" | "tag"
    tag: str | None = None  # the open_clip pretrained tag, for kind "tag"
    path: str | None = None  # the file, checkpoint folder or *.index.json to load, for kinds "file" and "tag"
    source: Checkpoint | None = dataclasses.field(default=None, compare=False, repr=False)  # opened once, for "file"
    hf: HFTower | None = None  # a Hugging Face CLIP tower (CLIPVisionModel, LLaVA) to map; None: open_clip names


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


def _hub_unreachable() -> str | None:
    """Why the Hugging Face endpoint does not answer now, or None when it does.

    One HEAD request to ``HF_ENDPOINT`` (huggingface.co by default) through huggingface_hub's own HTTP client, so
    its proxy, certificate and endpoint settings apply, with a short timeout (``_preflight_timeout``) and no retry.
    huggingface_hub itself retries an unreachable hub with backoff, for each file open_clip tries (safetensors,
    then .bin): about 50 s before the same failure. Any HTTP answer, even an error status, counts as reachable.
    """
    try:
        get_session().head(hf_constants.ENDPOINT, timeout=_preflight_timeout())
    except Exception as exc:  # DNS, refused, timed out, proxy or TLS failure: no answer at all
        return first_line(exc)
    return None


def _preflight_timeout() -> float:
    """``HF_HUB_ETAG_TIMEOUT`` when set (huggingface_hub's wait for a file's metadata, for slow links), else
    ``HUB_PREFLIGHT_TIMEOUT_S``."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_PREFLIGHT_TIMEOUT_S)
    except ValueError:
        return HUB_PREFLIGHT_TIMEOUT_S


def _fetch_tag(model: str, tag: str, tag_cfg: dict[str, Any]) -> str:
    """Path of a pretrained tag's weights: the local cache first (only it when offline), else open_clip's download.

    Before downloading, ``_hub_unreachable`` checks within a few seconds that the hub answers at all, so a machine
    without access gets the error at once instead of after huggingface_hub's retries.
    """
    what = f"pretrained weights {model}/{tag}"
    found = _cached_tag_file(tag_cfg)
    if found is not None:
        return found
    if _hub_offline():
        raise SlowfastError(
            f"{what} could not be fetched (HF_HUB_OFFLINE is set and they are not cached): {FETCH_HINT}"
        )
    unreachable = _hub_unreachable()
    if unreachable is not None:
        raise SlowfastError(
            f"{what} could not be fetched ({hf_constants.ENDPOINT} does not answer: {unreachable}): {FETCH_HINT}"
        )
    try:
        return open_clip.download_pretrained(tag_cfg)
    except Exception as exc:  # network, hub and file errors all mean the same to the user
        raise SlowfastError(f"{what} could not be fetched ({first_line(exc)}): {FETCH_HINT}") from None


def _resolve_weights(model: str, pretrained: str) -> _Weights:
    """Classify ``--pretrained``: ``none``, an open_clip tag (fetched now), or a local checkpoint.

    A local checkpoint is a file, a folder or a sharded checkpoint's ``*.index.json`` (``checkpoints.py``), opened
    now and its naming told from its keys: open_clip's, or a Hugging Face CLIP tower's (a ``CLIPVisionModel``, or
    the tower inside a LLaVA checkpoint), which decides the activation before the tower is built.
    """
    if pretrained.lower() == "none":
        return _Weights("none")
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if tag_cfg:
        return _Weights("tag", tag=pretrained, path=_fetch_tag(model, pretrained, tag_cfg))
    if Path(pretrained).is_file() or Path(pretrained).is_dir():
        source = open_checkpoint(pretrained, "vision weights")
        return _Weights("file", path=pretrained, source=source, hf=find_hf_tower(source))
    looks_like_path = Path(pretrained).suffix in (*WEIGHT_SUFFIXES, ".json") or os.sep in pretrained
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


def _load_visual(visual: VisionTransformer, weights: _Weights, model: str) -> None:
    """Load a checkpoint strictly into the vision tower.

    open_clip names load as they are (``visual.*`` or the tower's own); a Hugging Face CLIP tower is mapped by
    ``checkpoints.hf_clip_to_open_clip`` and may lack ``ln_post``/``proj``, which patch tokens never use (they are
    pruned before the first forward pass).
    """
    path = str(weights.path)
    source = weights.source or open_checkpoint(path, "vision weights")
    if weights.hf is not None:
        block = visual.transformer.resblocks[0]
        heads = getattr(block.attn, "num_heads", weights.hf.heads)
        weights.hf.check(heads, getattr(visual.ln_pre, "eps", weights.hf.eps), path, model)
        state = hf_clip_to_open_clip(source.read(weights.hf.keys), weights.hf, path)
        optional, expected = UNUSED_BY_TOKENS, f"a Hugging Face CLIP vision tower of {model}'s shape"
    else:
        state = _vision_state(source.read_all())
        optional, expected = (), f"an open_clip state dict of {model} (keys visual.* or the vision tower's own)"
    ours, theirs = describe_tower(visual.state_dict()), describe_tower(state)
    shapes = f" (the weights' tower: {theirs}; {model}'s: {ours})" if theirs and ours and theirs != ours else ""
    try:
        result = visual.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise SlowfastError(f"weights {path} do not fit {model}: {detail}{shapes}") from None
    problems = []
    missing = [k for k in result.missing_keys if k not in optional]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_few(result.unexpected_keys)}")
    if problems:
        raise SlowfastError(f"weights {path} do not fit {model}: {'; '.join(problems)}. Expected {expected}{shapes}")


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
    """QuickGELU when the config says so or the weights were trained with it (open_clip only warns).

    A Hugging Face CLIP tower says itself: its ``hidden_act`` (``config.json``), QuickGELU when no config is there
    (CLIPVisionConfig's default, and OpenAI's CLIP, which LLaVA's towers are).
    """
    if weights.hf is not None:
        return weights.hf.quick_gelu
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


def _seeded_tower(name: str, model_cfg: dict[str, Any], quick_gelu: bool, dtype: torch.dtype) -> torch.nn.Module:
    """The fp32 tower with its random init under ``manual_seed(0)``, so ``--pretrained none`` is reproducible:
    an open_clip ``VisionTransformer``, or a ``TimmModel`` around a timm ViT (SigLIP, EVA, ...), whose random
    init is timm's, under the same seed."""
    low_precision = dtype if dtype in (torch.bfloat16, torch.float16) else None  # selects fp32 LayerNorms
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        visual = _vision_tower(name, model_cfg, quick_gelu, low_precision)
    _geometry(visual, name)  # refuses any other tower
    return visual


@dataclass(frozen=True)
class _Geometry:
    blocks: int  # transformer blocks
    image_size: tuple[int, int]  # (Hs, Ws) the tower takes
    patch_size: tuple[int, int]
    grid: tuple[int, int]  # (Gh, Gw) = image_size // patch_size
    width: int  # D_vision
    timm_model: str | None  # the timm model inside a TimmModel, None for open_clip's own ViT


def _geometry(visual: torch.nn.Module, name: str) -> _Geometry:
    """Blocks, sizes and width of a tower whose patch tokens ``forward_intermediates`` gives.

    open_clip's own ``VisionTransformer`` (one class token, which its ``forward_intermediates`` drops), or a
    ``TimmModel`` whose trunk is a timm ViT with a plain patch embedding: timm's ``forward_intermediates`` drops its
    ``num_prefix_tokens`` (0 for SigLIP, which has no class token; 1 for EVA's class token).

    Raises:
        SlowfastError: any other tower (ResNet, ConvNeXt, a hybrid conv stem): they have no patch grid to tap.
    """
    if isinstance(visual, VisionTransformer):
        gh, gw = visual.grid_size
        image, patch = tuple(visual.image_size), tuple(visual.patch_size)
        return _Geometry(len(visual.transformer.resblocks), image, patch, (gh, gw), visual.transformer.width, None)
    trunk = getattr(visual, "trunk", None)
    embed = getattr(trunk, "patch_embed", None)
    grid = tuple(getattr(embed, "grid_size", None) or ())
    if isinstance(visual, TimmModel) and grid and hasattr(trunk, "forward_intermediates"):
        image, patch = tuple(embed.img_size), tuple(embed.patch_size)
        if grid == (image[0] // patch[0], image[1] // patch[1]):  # a hybrid stem's 1x1 "patches" are not a grid
            timm_name = getattr(trunk, "default_cfg", {}).get("architecture") or type(trunk).__name__
            return _Geometry(len(trunk.blocks), image, patch, grid, trunk.embed_dim, timm_name)
    raise SlowfastError(f"model {name!r} did not build a ViT with a patch grid ({type(visual).__name__})")


def _check_geometry(name: str, geometry: _Geometry) -> None:
    """The built tower against ``budget``'s numbers for it, which ``slowfast budget`` and preflight report (for a
    timm tower they come from the timm model name and ``budget.TIMM_VITS``, without timm)."""
    vision = {**VISION_DEFAULTS, **vision_config(name)}
    expected = (model_grid(name), vision["layers"], vision["width"])
    if (geometry.grid, geometry.blocks, geometry.width) != expected:
        raise SlowfastError(
            f"model {name!r} built a tower with grid {geometry.grid}, {geometry.blocks} blocks and width "
            f"{geometry.width}, but slowfast's budget says grid, blocks, width = {expected}: update budget.TIMM_VITS"
        )


def _prune(visual: torch.nn.Module, block: int) -> None:
    """Keep blocks 0..``block``; drop the final norm, the pooling and the head, which patch tokens never use."""
    if isinstance(visual, TimmModel):
        visual.trunk.prune_intermediate_layers([block], prune_norm=True, prune_head=True)
        visual.head = torch.nn.Identity()
    else:
        visual.prune_intermediate_layers([block], prune_norm=True, prune_head=True)


def _block_index(layer: int, depth: int, model: str) -> int:
    """0-based block for ``layer``: -1 is the last block, -2 the penultimate; 0..depth-1 count from the first."""
    if not -depth <= layer < depth:
        raise ConfigError(
            f"layer {layer} is out of range for {model}, which has {depth} blocks: "
            f"use -{depth}..-1 (from the end; -2 is LLaVA's) or 0..{depth - 1}"
        )
    return layer % depth


def _cast(visual: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to ``device``; in bf16/fp16 cast weights like open_clip's ``precision``: for open_clip's own ViT all
    but the LayerNorms (they stay fp32), for a timm tower everything (open_clip casts the whole timm model)."""
    low = dtype in (torch.bfloat16, torch.float16)
    if isinstance(visual, TimmModel):
        visual = visual.to(device=device, dtype=dtype) if low else visual.to(device)
    else:
        visual = visual.to(device)
        if low:
            open_clip.convert_weights_to_lp(visual, dtype=dtype)
    return visual.eval().requires_grad_(False)


def build_encoder(cfg: EncoderCfg, device: torch.device, dtype: torch.dtype) -> Encoder:
    """Build the vision tower of ``cfg.model`` with ``cfg.pretrained`` weights, cut after block ``cfg.layer``.

    ``cfg.pretrained`` is one of:
    - an open_clip tag: a cached copy is used without touching the network, otherwise open_clip downloads it
      (unless HF_HUB_OFFLINE is set), once a request of a few seconds has shown that the hub answers;
    - a local ``.safetensors``/``.bin``/``.pt``/``.pth`` file with a full CLIP state dict (``visual.*``) or the
      vision tower's own, loaded strictly;
    - ``none``: random weights under seed 0, bit-identical from run to run.
    The activation follows the weights: QuickGELU when the tag (for a file: every tag of the model) was trained
    with it, which open_clip itself only warns about. Mean, std and resize mode follow the tag the same way;
    ``cfg.resize`` ``squash`` overrides the resize mode (see ``Encoder.preprocess``).

    Towers: open_clip's own ViT, or a timm ViT inside open_clip (SigLIP, SigLIP 2, EVA, PE-Core; always GELU, as
    open_clip builds them), whose layers count the same way: -1 is the last block's output, -2 the penultimate's
    (what LLaVA-NeXT's SigLIP tower takes: it deletes the last of the 27 layers and keeps the new last hidden
    state, i.e. block 25 of 0..26, before the post-layernorm), 0..L-1 from the first. The grid is the timm model's
    (27x27 for SO400M/14 at 384) and agrees with ``budget``'s, which is checked here.

    Raises:
        SlowfastError: unknown model, a non-ViT tower, weights that cannot be fetched or read or do not fit, or a
            layer out of range.
    """
    model_cfg = _model_config(cfg.model)
    weights = _resolve_weights(cfg.model, cfg.pretrained)
    quick_gelu = _quick_gelu(cfg.model, model_cfg, weights)
    visual = _seeded_tower(cfg.model, model_cfg, quick_gelu, dtype)
    if weights.path is not None:
        _load_visual(visual, weights, cfg.model)
    geometry = _geometry(visual, cfg.model)
    _check_geometry(cfg.model, geometry)
    block = _block_index(cfg.layer, geometry.blocks, cfg.model)
    _prune(visual, block)
    visual = _cast(visual, device, dtype)
    preprocess_cfg = _preprocess_cfg(cfg.model, weights, geometry.image_size)
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
        quick_gelu=quick_gelu and geometry.timm_model is None,  # timm towers ignore it (always GELU)
        preprocess_cfg=preprocess_cfg,
        timm_model=geometry.timm_model,
    )


# --- preprocessing -----------------------------------------------------------------------------------------


def _resized_shape(h: int, w: int, target: tuple[int, int], mode: str) -> tuple[int, int]:
    """(h, w) after open_clip's resize step: torchvision ``Resize`` / ``ResizeKeepRatio`` arithmetic.

    Each side is at least 1 pixel (``longest`` would round a 4000x2 frame's short side to 0, which PIL refuses).
    """
    th, tw = target
    if mode == "squash":
        return th, tw
    if mode == "shortest" and th == tw:
        return (int(th * h / w), th) if w <= h else (th, int(th * w / h))
    ratio = max(h / th, w / tw) if mode == "longest" else min(h / th, w / tw)
    return max(1, round(h / ratio)), max(1, round(w / ratio))


def _crop_window(n: int, target: int) -> tuple[int, int, int, int]:
    """(start, stop, pad_before, pad_after) along one axis of ``n`` resized pixels.

    torchvision's ``center_crop`` (open_clip's ``CenterCropOrPad``) keeps pixels [start, stop) of that axis and
    pads it with the fill colour when it is shorter than ``target``.
    """
    if target > n:
        return 0, n, (target - n) // 2, (target - n + 1) // 2
    start = int(round((n - target) / 2.0))
    return start, start + target, 0, 0


def _aa_filter(x: np.ndarray, interpolation: str) -> np.ndarray:
    """PIL's resampling filters, which torch's ``antialias=True`` copies: Keys' cubic (a = -0.5) or the triangle."""
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=32)
def _aa_window(n_in: int, n_out: int, start: int, stop: int, interpolation: str) -> tuple[int, int, np.ndarray]:
    """Outputs ``start..stop-1`` of an antialiased resize from ``n_in`` to ``n_out`` pixels, as a matrix.

    PIL's ``precompute_coeffs`` (which torch's antialiased kernels follow) in float64, for only the outputs asked
    for. Returns (first, last, weights): the outputs read input pixels [first, last) only, and output ``start + k``
    is ``weights[k] @ input[first:last]``.
    """
    scale = n_in / n_out
    support = RESIZE_TAPS[interpolation] / 2 * max(scale, 1.0)  # in input pixels; wider when downscaling
    spans = []
    for i in range(start, stop):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        w = _aa_filter((np.arange(lo, hi) - center + 0.5) / max(scale, 1.0), interpolation)
        spans.append((lo, w / w.sum()))
    first, last = spans[0][0], max(lo + len(w) for lo, w in spans)
    weights = np.zeros((stop - start, last - first))
    for k, (lo, w) in enumerate(spans):
        weights[k, lo - first : lo - first + len(w)] = w
    return first, last, weights


def _interpolate(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=interpolation, antialias=True, align_corners=False)


def _resize_width(x: torch.Tensor, width: int, cols: tuple[int, int], interpolation: str) -> torch.Tensor:
    """PIL's horizontal pass, (B, 3, R, W) uint8 -> (B, 3, R, C) fp32 8-bit levels, keeping columns [cols).

    Rows are independent in this pass, so it runs on bands of rows of at most ``PIECE_ELEMENTS`` values each and
    keeps only the wanted columns of each band: the same numbers as one call on the whole frame.
    """
    c0, c1 = cols
    if x.shape[-1] == width:
        return x[..., c0:c1].float()
    band = max(1, PIECE_ELEMENTS // (x.shape[0] * 3 * max(x.shape[-1], width)))
    parts = [
        _interpolate(part.float(), (part.shape[-2], width), interpolation)[..., c0:c1].round().clamp_(0, 255)
        for part in x.split(band, dim=2)
    ]
    return torch.cat(parts, dim=2)


def _resize_and_crop(
    frames: torch.Tensor, size: tuple[int, int], target: tuple[int, int], interpolation: str, fill: float
) -> torch.Tensor:
    """PIL-like resize of (T, H, W, 3) uint8 frames to ``size``, then centre crop or pad to ``target``.

    The result, (T, 3, Ht, Wt) fp32 8-bit levels, is what resizing whole frames (a width pass, then a height pass,
    each rounded to 8 bits) and then cropping gives, but only the pixels the crop keeps are kept past each pass,
    and frames go through in groups, so no temporary is much larger than ``PIECE_ELEMENTS`` values whatever the
    aspect ratio (a 4000x2 frame resized whole to a 224 short side would be 224 x 448,000 floats).

    - Width pass: rows are independent, so it runs on bands of rows and keeps the cropped columns: bit-identical.
    - Height pass: columns are independent, so it runs on the cropped columns only. When its whole output for one
      frame fits in ``PIECE_ELEMENTS`` it is torch's own pass over all rows, cropped: bit-identical. Past that (a
      frame more than about 28 times taller than wide for a 224 model, 12 times for a 336 one) it computes only
      the kept rows, from the input rows they read, with PIL's weights in float64 (``_aa_window``), and the width
      pass runs on those input rows only. torch computes its weights in float32, so the two differ by one 8-bit
      level on rare values (measured at 224 on 2 x 4000 photos: 6 in 10,000), and these are closer to PIL
      (there, equal to it, where torch's whole pass is one level off on 3 in 10,000).

    The planes stay channels-last (the layout of a permuted (T, H, W, 3) view, as the whole-frame passes had
    them): torch's antialiased height pass gives wrong numbers on contiguous (N, C, H, 1) tensors (torch 2.14),
    and a ``longest``-mode resize of a very tall frame is one pixel wide.
    """
    t, h, w, _ = frames.shape
    (h1, w1), (th, tw) = size, target
    if t == 0:
        return frames.new_zeros((0, 3, th, tw), dtype=torch.float32)
    r0, r1, pad_top, pad_bottom = _crop_window(h1, th)
    c0, c1, pad_left, pad_right = _crop_window(w1, tw)
    kw = c1 - c0
    whole = h != h1 and 3 * h1 * kw <= PIECE_ELEMENTS  # height pass over all rows, then crop
    windowed = h != h1 and not whole
    rows = (0, h) if whole else (r0, r1)
    if windowed:
        first, last, weights = _aa_window(h, h1, r0, r1, interpolation)
        rows, matrix = (first, last), torch.from_numpy(weights).to(frames.device)  # (r1 - r0, last - first) fp64
    per_frame = 3 * max((rows[1] - rows[0]) * max(w, w1), h1 * kw if whole else 0)
    out = []
    for part in frames[:, rows[0] : rows[1]].split(max(1, PIECE_ELEMENTS // per_frame)):
        x = _resize_width(rearrange(part, "t h w c -> t c h w"), w1, (c0, c1), interpolation)  # (t, 3, rows, kw)
        if whole:
            x = x.contiguous(memory_format=torch.channels_last)  # already so, normally: see the docstring's end
            x = _interpolate(x, (h1, kw), interpolation)[:, :, r0:r1].round().clamp_(0, 255)
        elif windowed:
            x = torch.matmul(matrix, x.double()).round_().clamp_(0, 255).float()
        out.append(x)  # (t, 3, r1 - r0, kw)
    x = torch.cat(out)
    if pad_top or pad_bottom or pad_left or pad_right:
        x = F.pad(x, (pad_left, pad_right, pad_top, pad_bottom), value=fill)
    return x  # (T, 3, Ht, Wt)


def _squash(frames: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Each uint8 frame (T, H, W, 3) resized to exactly ``size`` (Hs, Ws), no crop, by PIL itself, on the CPU.

    PIL is what the references run: open_clip's squash transform (``Resize((Hs, Ws))`` on a PIL image), LLaVA's
    ``image.resize((336, 336))`` before ``CLIPImageProcessor``, LLaVA-NeXT's SigLIP processor. A torch copy of its
    fixed-point passes is exact too, but PIL changes the order of its two passes between versions (Pillow 13 runs
    the vertical one first for some portrait shapes; 12.2 for frames over 100 times taller than wide; earlier
    ones never), which changes up to a few levels; so the pixels are PIL's own, those of the Pillow installed,
    as upstream code in the same environment computes them. PIL lets go of the GIL while it resizes, so up to
    ``SQUASH_THREADS`` frames go at once. Frames already of that size are returned as they are (PIL copies them).

    Returns:
        (T, Hs, Ws, 3) uint8 on the CPU (or ``frames`` itself when no resize is needed).
    """
    h, w = size
    if tuple(frames.shape[1:3]) == (h, w):
        return frames
    if len(frames) == 0:
        return frames.new_zeros((0, h, w, 3), device="cpu")
    resample = PIL_FILTERS[interpolation]

    def one(frame: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((w, h), resample))

    with ThreadPoolExecutor(max_workers=min(SQUASH_THREADS, len(frames))) as pool:
        return torch.from_numpy(np.stack(list(pool.map(one, frames.cpu().numpy()))))  # (T, Hs, Ws, 3)


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
    """An open_clip ViT tower (its own VisionTransformer or a timm ViT) cut after block ``block_index``, with its
    preprocessing."""

    visual: torch.nn.Module  # VisionTransformer or TimmModel; blocks after block_index, final norm and head pruned
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
    timm_model: str | None = None  # the timm model of a timm tower (vit_so400m_patch14_siglip_384), else None

    @property
    def resize_mode(self) -> str:
        """``shortest`` / ``longest`` (resize, then centre crop or pad) or ``squash`` (both sides, no crop)."""
        return self.preprocess_cfg["resize_mode"]

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """open_clip's eval preprocessing, batched on tensors: (T, H, W, 3) uint8 -> (T, 3, Hs, Ws) normalized.

        The same steps as ``open_clip.image_transform(..., is_train=False)`` for ``preprocess_cfg`` (resize by
        ``resize_mode`` with antialiasing, center crop or pad, ``/255``, mean/std in fp32).

        - ``squash`` (SigLIP's tags, ``encoder.resize = squash``): PIL resizes each frame to (Hs, Ws) on the CPU
          (``_squash``), so the result is bit-identical in fp32 to open_clip's own transform, and to LLaVA's PIL
          squash followed by ``CLIPImageProcessor`` (transformers' PIL backend: ``x * (1/255)`` in float64, then
          float32 mean/std; its default torchvision backend folds the 1/255 into mean and std, 1 ulp away).
        - ``shortest`` / ``longest``: computed on ``self.device``; the resize mimics PIL (a width pass and a height
          pass, each rounded to 8 bits) in floating point where PIL uses fixed point, so it differs from open_clip's
          PIL pipeline by at most 1/255 in pixel units when frames are scaled down, 2/255 measured when they are
          scaled up (a 160x120 frame to 336: 0.13% of values), ``PIXEL_TOLERANCE``; bit-identical when no resize
          is needed. Memory does not grow with the aspect ratio: only the pixels the crop keeps are resized, a few
          frames at a time (``_resize_and_crop``), so a 32-frame chunk of 4000x2 frames costs about what a 640x360
          one does.

        Frames whose size already matches the resize target (e.g. resized by the decoder) skip the resize.

        Returns:
            (T, 3, Hs, Ws) on ``self.device`` in ``self.dtype``.
        """
        cfg = self.preprocess_cfg
        if cfg["interpolation"] not in RESIZE_TAPS:
            raise SlowfastError(f"unsupported interpolation {cfg['interpolation']!r} (bicubic or bilinear)")
        frames = _as_frames(frames)  # (T, H, W, 3) uint8
        if cfg["resize_mode"] == "squash":
            squashed = _to_device(_squash(frames, self.image_size, cfg["interpolation"]), self.device)
            x = rearrange(squashed, "t h w c -> t c h w").float()  # (T, 3, Hs, Ws) 8-bit levels
        else:
            frames = _to_device(frames, self.device)
            size = _resized_shape(frames.shape[1], frames.shape[2], self.image_size, cfg["resize_mode"])
            x = _resize_and_crop(frames, size, self.image_size, cfg["interpolation"], float(cfg["fill_color"]))
        mean = torch.tensor(cfg["mean"], device=self.device).view(3, 1, 1)
        std = torch.tensor(cfg["std"], device=self.device).view(3, 1, 1)
        return ((x / 255 - mean) / std).to(self.dtype)  # (T, 3, Hs, Ws)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, Hs, Ws) -> (B, N, D) output of block ``block_index``, prefix tokens (a class token) dropped.

        Both towers' ``forward_intermediates`` (open_clip's, and timm's under ``TimmModel``) return the raw block
        output, before any final norm, without the prefix tokens: open_clip's class token, timm's
        ``num_prefix_tokens`` (none for SigLIP)."""
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
