"""Checkpoints as users have them, read safely: one file, a folder, or a sharded checkpoint's index.

``read_weights`` reads one file (safetensors, or ``torch.load(weights_only=True)``). ``open_checkpoint``
also takes a Hugging Face folder or a sharded checkpoint's ``*.index.json`` and reads tensors on demand, only from
the shards that hold them (safetensors shards tensor by tensor), so the vision tower or the projector of a LLaVA-7B
checkpoint costs a few hundred MB of reading, not 14 GB, and the LLM's shards need not even be there.

Nothing here knows a naming scheme: ``hf.py`` maps keys. The only module that imports safetensors.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import SlowfastError, first_line, load_failure
from ..models import INDEX_SUFFIX, WEIGHT_SUFFIXES
from ..reading import path_problem, read_bounded

STATE_DICT = "a state dict (a mapping of names to tensors) saved with torch.save or safetensors"


TORCHSCRIPT_HINT = (
    "it is a TorchScript archive (like OpenAI's original CLIP .pt); convert it once with "
    "python -c \"import torch; torch.save(torch.jit.load('IN.pt', map_location='cpu').state_dict(), 'OUT.pt')\""
)


INDEX_LIMIT = 64 << 20  # bytes: a sharded checkpoint's index (LLaVA-34B's is about 100 KB)
FOLDER_FILES = (  # what a checkpoint folder is read from, the first one present (Hugging Face's, then open_clip's)
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/")[1:2] == ["code"] for name in zf.namelist())


def _unreadable(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` or safetensors refused a file, never with torch's own advice (to load
    with ``weights_only=False``, which would run code from the file): see ``errors.load_failure``."""
    if "deserializing header" in str(exc):  # safetensors reading another kind of file ("header too large")
        return f"not a safetensors file (its header does not parse: {first_line(exc, 120)})"
    reason = load_failure(exc, STATE_DICT)
    return first_line(exc, 200) if reason.startswith("cannot be loaded") else reason


def few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def read_weights(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a state dict safely: safetensors by suffix, else ``torch.load(weights_only=True)`` on the CPU.

    A ``{"state_dict": ...}`` wrapper is unwrapped, ``module.`` prefixes (DataParallel) are stripped and
    non-tensor entries dropped. torch's zip files are memory-mapped, so a large shard costs no memory beyond the
    tensors that are used.

    Args:
        path: a ``.safetensors``, ``.bin``, ``.pt`` or ``.pth`` file.
        what: what the file holds, for error messages ("projector weights", "vision weights").

    Raises:
        SlowfastError: the file is missing, unreadable, unsafe to unpickle, or holds no tensors; the message says
            which (``_unreadable``), never with torch's advice to load it with ``weights_only=False``.
    """
    p = Path(path)
    problem = path_problem(p, "weights file")
    if problem:
        raise SlowfastError(f"{what} file {p} {problem}")
    if p.suffix != ".safetensors" and _is_torchscript(p):
        raise SlowfastError(f"could not read {what} file {p}: {TORCHSCRIPT_HINT}")
    try:
        if p.suffix == ".safetensors":
            obj = load_file(p)
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise SlowfastError(f"could not read {what} file {p}: {_unreadable(exc)}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    tensors = (
        {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        raise SlowfastError(f"{what} file {p} holds no state dict (a mapping of names to tensors)")
    return tensors


@dataclass
class Checkpoint:
    """A state dict on disk, one file or the shards an index names, whose tensors are read on demand.

    ``keys`` are known without reading tensors for safetensors files and indexes; a ``.bin``/``.pt`` file given
    alone is read whole once (the format cannot list its keys otherwise) and kept.
    """

    path: Path  # as the user named it: a file, a folder or an index
    what: str  # what it holds, for messages: "vision weights", "projector weights"
    where: dict[str, tuple[Path, str]]  # key (``module.`` stripped) -> (the file holding it, its name there)
    model_folder: bool = False  # named as a folder or an index: a whole model, never to be read whole
    _whole: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)  # .bin files read

    @property
    def keys(self) -> list[str]:
        return list(self.where)

    def read(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors of ``keys``, opening only the files that hold them."""
        by_file: dict[Path, dict[str, str]] = {}
        for key in keys:
            file, stored = self.where[key]
            by_file.setdefault(file, {})[stored] = key
        out: dict[str, torch.Tensor] = {}
        for file, names in by_file.items():
            if not file.is_file():
                raise SlowfastError(
                    f"{self.what} {self.path}: {file.name}, which holds {few(names.values(), 3)}, does not exist"
                )
            if file.suffix == ".safetensors":
                out.update(self._read_safetensors(file, names))
            else:
                whole = self._whole.get(file)
                if whole is None:
                    whole = self._whole[file] = read_weights(file, self.what)
                missing = [key for key in names.values() if key not in whole]
                if missing:
                    raise SlowfastError(f"{self.what} file {file} lacks {few(missing, 3)}, which its index names")
                out.update({key: whole[key] for key in names.values()})
        return out

    def read_all(self) -> dict[str, torch.Tensor]:
        return self.read(self.where)

    def _read_safetensors(self, file: Path, names: dict[str, str]) -> dict[str, torch.Tensor]:
        try:
            with safe_open(file, framework="pt", device="cpu") as f:
                return {key: f.get_tensor(stored) for stored, key in names.items()}
        except Exception as exc:  # a damaged header, a key the index names but the shard lacks
            raise SlowfastError(f"could not read {self.what} file {file}: {_unreadable(exc)}") from None


def _open_file(p: Path, what: str, named: Path, model_folder: bool) -> Checkpoint:
    problem = path_problem(p, "weights file")
    if problem:
        raise SlowfastError(f"{what} file {p} {problem}")
    if p.name.endswith(INDEX_SUFFIX):
        return _open_index(p, what, named)
    if p.suffix != ".safetensors":
        state = read_weights(p, what)
        where = {key: (p, key) for key in state}
        return Checkpoint(named, what, where, model_folder, _whole={p: state})
    try:
        with safe_open(p, framework="pt", device="cpu") as f:
            stored = list(f.keys())
    except Exception as exc:
        raise SlowfastError(f"could not read {what} file {p}: {_unreadable(exc)}") from None
    if not stored:
        raise SlowfastError(f"{what} file {p} holds no state dict (a mapping of names to tensors)")
    return Checkpoint(named, what, {k.removeprefix("module."): (p, k) for k in stored}, model_folder)


def _plain_name(name: object) -> bool:
    """A shard named in an index is a file beside it: a plain name, never empty, ``.``, ``..`` or a path."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _open_index(p: Path, what: str, named: Path) -> Checkpoint:
    try:
        index = json.loads(read_bounded(p, INDEX_LIMIT))
    except (OSError, ValueError) as exc:
        raise SlowfastError(f"could not read {what} index {p}: {first_line(exc)}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SlowfastError(f"{what} index {p} has no weight_map (a mapping of keys to shard files)")
    bad = sorted(
        {repr(f) for f in weight_map.values() if not isinstance(f, str) or Path(f).name != f or f in ("", ".", "..")}
    )
    if bad:
        raise SlowfastError(f"{what} index {p} names shards that are not files beside it: {few(bad, 3)}")
    where = {str(k).removeprefix("module."): (p.parent / f, str(k)) for k, f in weight_map.items()}
    return Checkpoint(named, what, where, model_folder=True)


def open_checkpoint(path: str | Path, what: str = "weights") -> Checkpoint:
    """A checkpoint file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``), a sharded checkpoint's ``*.index.json``,
    or a folder holding one of ``FOLDER_FILES`` (a Hugging Face model folder, a LLaVA checkpoint).

    Raises:
        SlowfastError: nothing there, a folder without a checkpoint, an unreadable file or index.
    """
    p = Path(path)
    if p.is_dir():
        found = next((p / name for name in FOLDER_FILES if (p / name).is_file()), None)
        if found is None:
            others = sorted(f.name for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES or f.name.endswith(INDEX_SUFFIX))
            hint = f"; it has {few(others, 3)}: pass one of them" if others else ""
            raise SlowfastError(f"{what} folder {p} holds none of {', '.join(FOLDER_FILES)}{hint}")
        return _open_file(found, what, named=p, model_folder=True)
    return _open_file(p, what, named=p, model_folder=False)
