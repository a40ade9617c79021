"""``--pretrained``: an open_clip tag (from the local cache, else downloaded after a quick reachability check), a
local checkpoint (file, folder or sharded index), or ``none``; and loading a checkpoint strictly into a tower.

The only module that imports huggingface_hub, and only for a tag (``--pretrained none`` and local files never do:
0.06 CPU-seconds of the start, BENCHMARKS.md §28). The checkpoint's naming (open_clip's, or a Hugging Face CLIP tower's)
is told from its keys by ``checkpoints``; a Hugging Face tower decides the activation before the tower is built.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import (
    UNUSED_BY_TOKENS,
    Checkpoint,
    HFTower,
    describe_tower,
    find_hf_tower,
    hf_clip_to_open_clip,
    open_checkpoint,
)
from ..checkpoints.siglip import hf_siglip_to_timm, needed_keys
from ..errors import ConfigError, SlowfastError, first_line
from ..models import looks_like_path
from ..tensors import check_tensors
from . import towers

FETCH_HINT = "pass --pretrained PATH to a local weights file, or --pretrained none for a dry run"
HUB_PREFLIGHT_TIMEOUT_S = 3.0  # one request to the hub before a download, whose retries wait ~50 s offline
OPENAI_URL_CACHE = "~/.cache/clip"  # where open_clip's download_pretrained_from_url stores files


@dataclass(frozen=True)
class Weights:
    kind: str  # "none" | "file" | "tag"
    tag: str | None = None  # the open_clip pretrained tag, for kind "tag"
    path: str | None = None  # the file, checkpoint folder or *.index.json to load, for kinds "file" and "tag"
    source: Checkpoint | None = dataclasses.field(default=None, compare=False, repr=False)  # opened once, for "file"
    hf: HFTower | None = None  # a Hugging Face CLIP tower (CLIPVisionModel, LLaVA) to map; None: open_clip names


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub itself reads it once, at import)."""
    from huggingface_hub import constants as hf_constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in ("1", "ON", "YES", "TRUE") or bool(hf_constants.HF_HUB_OFFLINE)


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names open_clip would try, safetensors first) for a pretrained cfg's ``hf_hub`` entry."""
    repo, filename = os.path.split(hf_hub)
    if not filename:
        return repo, list(towers.HUB_WEIGHT_NAMES)
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def _cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
    """The local copy of a pretrained tag's weights in the Hugging Face or open_clip URL cache, or None."""
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

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
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.utils import get_session

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
        from huggingface_hub import constants as hf_constants

        raise SlowfastError(
            f"{what} could not be fetched ({hf_constants.ENDPOINT} does not answer: {unreachable}): {FETCH_HINT}"
        )
    try:
        return towers.download(tag_cfg)
    except Exception as exc:  # network, hub and file errors all mean the same to the user
        raise SlowfastError(f"{what} could not be fetched ({first_line(exc)}): {FETCH_HINT}") from None


def resolve_weights(model: str, pretrained: str) -> Weights:
    """Classify ``--pretrained``: ``none``, an open_clip tag (fetched now), or a local checkpoint.

    A local checkpoint is a file, a folder or a sharded checkpoint's ``*.index.json`` (``checkpoints``), opened
    now and its naming told from its keys: open_clip's, or a Hugging Face CLIP tower's (a ``CLIPVisionModel``, or
    the tower inside a LLaVA checkpoint), which decides the activation before the tower is built.
    """
    if pretrained.lower() == "none":
        return Weights("none")
    tag_cfg = towers.pretrained_cfg(model, pretrained)
    if tag_cfg:
        return Weights("tag", tag=pretrained, path=_fetch_tag(model, pretrained, tag_cfg))
    if Path(pretrained).exists() or Path(pretrained).is_symlink():  # a device or a dangling link: says what it is
        source = open_checkpoint(pretrained, "vision weights")
        return Weights("file", path=pretrained, source=source, hf=find_hf_tower(source))
    if looks_like_path(pretrained):
        raise SlowfastError(f"weights file {pretrained} does not exist; {FETCH_HINT}")
    tags = towers.pretrained_tags(model)
    valid = f"valid tags: {', '.join(tags)}" if tags else "open_clip has no pretrained tags for it"
    raise ConfigError(f"unknown pretrained tag {pretrained!r} for {model} ({valid}); {FETCH_HINT}")


def _vision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's entries of a full CLIP state dict (``visual.*``), or a vision-only one as is."""
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    return visual or state


def _block_of(key: str) -> int:
    """The block an open_clip tower key belongs to (-1 for the embeddings and the norms around the blocks)."""
    parts = key.split(".")
    return int(parts[2]) if key.startswith("transformer.resblocks.") and parts[2].isdigit() else -1


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(
    visual: torch.nn.Module,
    adapter: type[towers.TowerAdapter],
    weights: Weights,
    model: str,
    geometry: towers.Geometry | None = None,
    block: int | None = None,
    complete: bool = False,
) -> None:
    """Load a checkpoint strictly into the vision tower.

    open_clip names load as they are (``visual.*`` or the tower's own); a Hugging Face CLIP tower is mapped by
    ``checkpoints.hf_clip_to_open_clip`` and may lack ``ln_post``/``proj``, which patch tokens never use (they are
    pruned before the first forward pass). A Hugging Face SigLIP tower (``checkpoints.siglip``) goes into a timm
    tower already cut after ``block``, from the layers 0..``block`` alone. ``complete``: the tower was built without
    an init (``towers.build_tower(random_init=False)``), so every one of its tensors must come from the checkpoint.
    """
    path = str(weights.path)
    source = weights.source or open_checkpoint(path, "vision weights")
    hf = weights.hf
    if hf is not None and hf.family == "siglip":
        if adapter is not towers.TimmViT or geometry is None or block is None:
            raise SlowfastError(
                f"vision weights {path} hold a SigLIP tower but {model} is not a SigLIP model; pass --model "
                "ViT-SO400M-14-SigLIP-384 (LLaVA-OneVision, LLaVA-Video) or the SigLIP model of the checkpoint"
            )
        heads, eps = adapter.checkpoint_settings(visual)
        hf.check(hf.heads if heads is None else heads, eps, path, model)
        shape = {
            "hidden_size": geometry.width,
            "image_size": geometry.image_size[0],
            "patch_size": geometry.patch_size[0],
        }
        hf.check_shape(shape, path, model)
        hf_state = source.read(needed_keys(list(hf.keys), hf.prefix, block, path))
        check_tensors(hf_state, f"vision weights {path}")
        state = hf_siglip_to_timm(hf_state, hf.prefix, block, path)
        optional, expected = (), f"a Hugging Face SigLIP tower of {model}'s shape, layers 0..{block}"
    elif hf is not None:
        if adapter is not towers.OpenClipViT:
            raise SlowfastError(
                f"vision weights {path} hold a CLIP tower (a class token) but {model} is a SigLIP or other timm "
                "model; pass the CLIP --model of the checkpoint (ViT-L-14-336 for LLaVA-1.5/1.6, ViT-B-16, ...)"
            )
        heads, eps = adapter.checkpoint_settings(visual)
        weights.hf.check(
            weights.hf.heads if heads is None else heads, weights.hf.eps if eps is None else eps, path, model
        )
        hf_state = source.read(weights.hf.keys)
        check_tensors(hf_state, f"vision weights {path}")
        try:
            state = hf_clip_to_open_clip(hf_state, weights.hf, path)
        except RuntimeError as exc:  # q, k and v of other shapes cannot be packed into one projection
            raise SlowfastError(f"weights {path} do not fit {model}: {first_line(exc)}") from None
        optional, expected = UNUSED_BY_TOKENS, f"a Hugging Face CLIP vision tower of {model}'s shape"
        if block is not None:  # the tower is already cut after ``block``: later layers are never computed
            state = {k: v for k, v in state.items() if k not in UNUSED_BY_TOKENS and _block_of(k) <= block}
    else:
        state = _vision_state(source.read_all())
        check_tensors(state, f"vision weights {path}")
        optional, expected = (), f"an open_clip state dict of {model} (keys visual.* or the vision tower's own)"
    ours, theirs = describe_tower(visual.state_dict()), describe_tower(state)
    shapes = f" (the weights' tower: {theirs}; {model}'s: {ours})" if theirs and ours and theirs != ours else ""
    try:
        result = visual.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise SlowfastError(f"weights {path} do not fit {model}: {detail}{shapes}") from None
    problems = []
    missing = [k for k in result.missing_keys if complete or k not in optional]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_few(result.unexpected_keys)}")
    if problems:
        raise SlowfastError(f"weights {path} do not fit {model}: {'; '.join(problems)}. Expected {expected}{shapes}")
    if any(v.dtype == torch.float64 for v in state.values()):  # the one dtype whose values float32 cannot hold
        loaded = {k: v for k, v in visual.state_dict().items() if k in state}
        check_tensors(loaded, f"vision weights {path}, once in the tower's float32 (too large for it)")
