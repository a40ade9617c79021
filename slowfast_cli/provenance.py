"""What a token file was made with, so that a resumed batch never keeps tokens computed with other settings.

``provenance(config, dtype)`` is stored in every token file's ``meta["provenance"]``; ``slowfast batch`` compares
it with the current run's before it skips an existing output (``differences``). It holds everything that changes
the numbers:

- the resolved config's ``video``, ``encoder`` (model, layer), ``projector`` (kind, llm_dim, random_init, seed)
  and ``aggregator`` sections;
- the dtype the model ran in (``auto`` resolved: bf16 on one CPU is fp32 on another);
- the weights by content, not by path: ``none``, ``tag:MODEL/TAG`` for an open_clip tag, ``sha256:...`` of a
  local weights or projector file (a moved file is the same weights; a replaced one is not), or for a sharded
  checkpoint its index and shard sizes (:func:`checkpoint_identity`);
- the Hugging Face ``config.json`` read with a local tower checkpoint, by content: it decides the tower's
  activation, heads and eps (``weights_config``; absent where there is none; the projector reads none);
- the decoder library and its version (``decoder``, e.g. ``decord 0.6.0``), which decides the frames, and the
  versions of the libraries that decide the pixels and the tower's settings (``libraries``: open_clip, whose tag
  and model configs give mean, std, resize mode and architecture; Pillow, which squashes frames; transformers for
  the ``hf:`` towers, whose code it is);
- ``TOKENS_VERSION``, raised whenever a change to slowfast changes the tokens it computes for the same settings.

Keys added to the record after files were written compare with ``ADDED``'s value for a file that lacks them: what
every slowfast before them used (decord 0.6.0, pinned since the first release) or had (no config.json recorded:
equal only where there is none now), so an upgrade never silently keeps, nor needlessly redoes, a token file. The
``libraries`` versions are compared only where a file records them (those before it cannot say which it had).

Left out on purpose, because they change at most the last bits of the same computation: ``batch_frames`` (the
ViT's batch size), the device, and the preset's name and description; and ``max_frames`` when frames are not
sampled by rate (it is unused then).
No torch here, but for checkpoint folders (``checkpoints.FOLDER_FILES``): hashing and comparing plain dicts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import stat
from pathlib import Path
from typing import Any

from .config import Config
from .reading import path_kind, read_bounded

SECTIONS = ("video", "encoder", "projector", "aggregator")  # the config sections that change the numbers
TOKENS_VERSION = 2  # raise when slowfast's output for the same settings changes
# 2: the fast pathway averages as nn.AdaptiveAvgPool2d does on contiguous features (height, then width), as
#    SlowFast-LLaVA computes it (version 1 divided by the window's area once: up to one float bit apart), and the
#    decode-time size truncates the long side as PIL/HF do (version 1 rounded it half up: a 1-pixel shift)
IGNORED = {"encoder": ("pretrained", "batch_frames"), "projector": ("weights",)}  # replaced by weights / rounding
DECODER = "decord"  # the decoder library (video.decode): its version is part of the record
DECODER_DISTRIBUTIONS = ("decord", "decord2")  # the distributions that install ``import decord``
ADDED = {"decoder": "decord 0.6.0", "weights_config": None, "processor_config": None}  # see the module docstring
LIBRARIES = ("open_clip_torch", "Pillow")  # distributions whose version can change the tokens (module docstring)
FINGERPRINT_BYTES = 1 << 20  # bytes read from each end of a video for its fingerprint
_digests: dict[tuple[str, int, int, int], str] = {}  # (resolved path, size, mtime_ns, inode) -> digest


def file_digest(path: str | Path) -> str:
    """``sha256:HEX`` of a file's content, memoised per (path, size, mtime, inode) within this process; for what is
    not a regular file (a device, a FIFO: reading it would never end), ``not-a-file`` (loading it then says why)."""
    p = Path(path).resolve()
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        return "not-a-file"
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        with p.open("rb") as f:
            _digests[key] = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    return _digests[key]


def file_fingerprint(path: str | Path) -> str | None:
    """``sha256:`` of a file's size and its first and last ``FINGERPRINT_BYTES`` (None when it cannot be read).

    Cheap whatever the file's length, and different for another video (or checkpoint shard) of the same size: the
    container's header and index, the last packets, the first and last tensors differ, which the size alone cannot
    tell. Resume compares a video's when its modification time changed (``batch.plan.existing_output``).
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h = hashlib.sha256(str(size).encode())
            h.update(f.read(FINGERPRINT_BYTES))
            if size > 2 * FINGERPRINT_BYTES:
                f.seek(size - FINGERPRINT_BYTES)
            h.update(f.read(FINGERPRINT_BYTES))
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def checkpoint_identity(path: str | Path) -> str:
    """The identity of weights given as a file, a checkpoint folder or a sharded checkpoint's ``*.index.json``.

    A single file is hashed whole (``sha256:``). A sharded checkpoint (a LLaVA folder holds 14 GB or more, most of
    it the LLM's) is identified by its index (``index:sha256:``): the index file's bytes and, for every shard it
    lists, its name, size and first and last MiB (:func:`file_fingerprint`), so a re-sharded, swapped, truncated or
    retrained checkpoint of the same layout differs; a change in the middle of a shard alone would not be noticed.
    """
    from .checkpoints import FOLDER_FILES  # what a checkpoint folder is read from (imports torch: only here)

    p = Path(path)
    if p.is_dir():
        found = next((p / name for name in FOLDER_FILES if (p / name).is_file()), None)
        if found is None:
            return f"folder:{p.resolve()}"  # checkpoints.files refuses it when loading
        p = found
    if not p.name.endswith(".index.json"):
        return file_digest(p)
    from .checkpoints.files import INDEX_LIMIT

    try:
        data = read_bounded(p, INDEX_LIMIT)
    except (OSError, ValueError):
        return "index:unreadable"  # loading the checkpoint names the problem
    h = hashlib.sha256(data)
    try:
        shards = sorted({str(f) for f in json.loads(data).get("weight_map", {}).values()})
    except (ValueError, AttributeError, TypeError):
        shards = []
    for name in shards:
        shard = p.parent / str(name)
        ends = file_fingerprint(shard) if shard.is_file() else None  # size and both ends: content, not a date
        h.update(f"\0{name}\0{ends}".encode())
    return "index:sha256:" + h.hexdigest()


def weights_identity(model: str, pretrained: str) -> str:
    """``none``, the :func:`checkpoint_identity` of a local file or folder, or ``tag:MODEL/TAG`` (encoder.weights's
    order: a tag is resolved before a path of the same name, which is checked here by the path existing)."""
    if pretrained.lower() == "none":
        return "none"
    if Path(pretrained).exists():
        return checkpoint_identity(pretrained)
    return f"tag:{model}/{pretrained}"


def provenance(config: Config, dtype: str) -> dict[str, Any]:
    """The settings that determine a token file's numbers (see the module docstring), as plain values.

    Args:
        config: the resolved config of the run.
        dtype: the dtype the model runs in, resolved (``fp32``, ``bf16``, ``fp16``), never ``auto``.
    """
    d = config.to_dict()
    settings = {s: {k: v for k, v in d[s].items() if k not in IGNORED.get(s, ())} for s in SECTIONS}
    if config.video.sample_fps is None:
        del settings["video"]["max_frames"]  # a cap on sampling by rate; unused when T is fixed
    p = config.projector
    record = {
        "tokens_version": TOKENS_VERSION,
        "settings": settings,
        "dtype": dtype,
        "weights": weights_identity(config.encoder.model, config.encoder.pretrained),
        "projector_weights": checkpoint_identity(p.weights) if p.weights else None,
        "decoder": decoder_identity(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
    if config.encoder.model.startswith("hf:"):  # the tower is transformers' own code (hf_families)
        record["libraries"]["transformers"] = _version("transformers")
    pretrained = config.encoder.pretrained
    digest = config_identity(pretrained) if pretrained.lower() != "none" and Path(pretrained).exists() else None
    if digest is not None:
        record["weights_config"] = digest
    if config.encoder.model.startswith("hf:"):  # the checkpoint's video processor config (Qwen-VL's resizes by it)
        folder = Path(pretrained) if Path(pretrained).is_dir() else Path(pretrained).parent
        processor = folder / "video_preprocessor_config.json"
        if processor.is_file():
            record["processor_config"] = file_digest(processor)
    return record


def decoder_identity() -> str:
    """``NAME VERSION`` of the distribution that provides ``import decord``: ``decord 0.6.0``, or ``decord2 3.4.0``
    (the same module name with another FFmpeg: docs/decord.md), read from metadata; decord is not imported here."""
    spec = importlib.util.find_spec(DECODER)  # locates the package without running it
    where = Path(spec.origin).parent.parent if spec is not None and spec.origin else None
    for name in DECODER_DISTRIBUTIONS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if where is None or Path(dist.locate_file("")).resolve() == where.resolve():
            return f"{name} {dist.version}"
    return f"{DECODER} {_version(DECODER)}"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def config_identity(checkpoint: str | Path) -> str | None:
    """``sha256:`` of the ``config.json`` read with a local checkpoint (``checkpoints.hf.config_file``), or None."""
    from .checkpoints.hf import config_file  # imports torch: only here

    path = config_file(Path(checkpoint))
    if path is None:
        return None
    if path_kind(path):
        return "not-a-file"  # loading the checkpoint names the problem
    try:
        return file_digest(path)
    except OSError:
        return "unreadable"  # loading the checkpoint names the problem


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(old: Any, new: dict[str, Any]) -> list[str]:
    """What differs between a file's stored provenance and the current one, as ``key: old -> new`` strings.

    A file without a provenance (written by another tool or an older slowfast) differs in everything.
    """
    if not isinstance(old, dict):
        return ["no record of the settings it was made with"]
    a, b = {**ADDED, **_flatten(old)}, {**ADDED, **_flatten(new)}
    out = []
    for key in sorted(set(a) | set(b)):
        if key.startswith("libraries.") and key not in a:
            continue  # recorded since this key exists: older files cannot say, and are not refused for it
        if a.get(key, "(unset)") != b.get(key, "(unset)"):
            name = key.removeprefix("settings.")
            out.append(f"{name}: {_short(a.get(key, '(unset)'))} -> {_short(b.get(key, '(unset)'))}")
    return out


def _short(v: Any) -> str:
    text = str(v)
    return text[:19] + "..." if text.startswith("sha256:") else text
