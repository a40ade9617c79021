"""Read a token file's shape and ``meta`` without torch and without reading the tensor data.

A file written by ``torch.save`` is a zip archive: ``data.pkl`` holds the dict with tensors as references to
storage entries ``data/N``. A restricted unpickler that knows only the names torch writes for plain tensors
reads the dict, turns each tensor into a :class:`TensorHeader` and never touches the (large) storage entries;
each entry's size in the zip's directory is checked against the tensor's shape, so a file cut short or
damaged is caught. ``slowfast report`` and the resume check of ``slowfast batch`` use this: they stay fast over
thousands of files and do not import torch. Anything unusual (an old format, other objects) raises
:class:`SlowfastError`, exactly where ``torch.load(..., weights_only=True)`` would refuse too.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SlowfastError, first_line
from .reading import path_problem

META_VALUES = 1_000_000  # values in a token or features file's meta (ours: frame lists, a config: a few thousand)
META_DEPTH = 32  # levels of nesting in it (ours: 4)
PICKLE_LIMIT = 64 << 20  # bytes of data.pkl read from a file that claims to be a token or features file
TMP_PREFIX = ".slowfast-tmp-"  # temporary files of atomic writes (atomic.atomic_open)

FLOAT_STORAGES = ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage")  # what tokens may be stored as
ITEMSIZE = {  # torch's typed storage names -> bytes per element
    "FloatStorage": 4,
    "DoubleStorage": 8,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
}


def check_meta_size(meta: Any, path: str | Path) -> None:
    """Refuse a ``meta`` too large or too deep to walk: one a pickle can make small on disk and enormous in memory by
    sharing one nested object many times, or nested deeper than Python recursion allows. Slowfast's own meta has a
    few hundred values, nested four deep. Walks without recursion and stops at the first limit reached."""
    stack, seen = [(meta, 0)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > META_VALUES or depth > META_DEPTH:
            raise SlowfastError(f"{path}: its meta is larger or deeper than a token file's can be (more than "
                                f"{META_VALUES:,} values or {META_DEPTH} levels)")  # fmt: skip
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)


def _check_pickled(z: zipfile.ZipFile, name: str, path: Path, what: str) -> None:
    pickled = z.getinfo(name).file_size
    if pickled > PICKLE_LIMIT:  # a token file's data.pkl is a few KB: the meta and the tensor's header
        raise SlowfastError(f"{path}: not a {what} (its data.pkl holds {pickled:,} bytes)")


def check_pickle_size(path: str | Path, what: str) -> None:
    """Refuse a torch.save archive whose pickled part (``data.pkl``) is over ``PICKLE_LIMIT`` before anything reads
    it whole; files that are not zip archives are left to the loader, which names them."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is not None:
                _check_pickled(z, name, Path(path), what)
    except (zipfile.BadZipFile, OSError, ValueError):
        return


class ForeignFile(SlowfastError):
    """A readable torch.save archive that holds something else than what was expected (weights, a bare tensor):
    another program's file, not a damaged one of ours."""


def require_file(path: str | Path) -> Path:
    """``path`` as a Path, or SlowfastError saying it does not exist or is not a file."""
    path = Path(path)
    problem = path_problem(path)
    if problem:
        raise SlowfastError(f"{path}: {problem}")
    return path


@dataclass(frozen=True)
class TensorHeader:
    shape: tuple[int, ...]
    dtype: str  # the storage name, e.g. "FloatStorage"
    storage: str  # the zip entry key
    numel: int  # elements in the storage


@dataclass(frozen=True)
class _StorageRef:
    kind: str
    key: str
    numel: int


def _rebuild_tensor(storage: _StorageRef, offset: int, size: tuple, stride: tuple, *args: Any) -> TensorHeader:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    if all(s > 0 for s in size) and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= storage.numel:
        raise pickle.UnpicklingError("tensor larger than its storage")
    return TensorHeader(tuple(int(s) for s in size), storage.kind, storage.key, storage.numel)


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in ITEMSIZE:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a token file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in ITEMSIZE):
            raise pickle.UnpicklingError(f"unsupported storage reference {pid!r:.80}")
        return _StorageRef(pid[1], str(pid[2]), int(pid[4]))


def _check_crc(z: zipfile.ZipFile, name: str, chunk: int = 1 << 20) -> None:
    """Read one entry to its end; zipfile compares its CRC-32 with the directory's and raises BadZipFile."""
    with z.open(name) as f:
        while f.read(chunk):
            pass


def read_header(path: str | Path, key: str = "tokens", what: str = "token file", verify: bool = False) -> dict:
    """``{key: TensorHeader, "meta": dict}`` of a file written by ``torch.save``; the tensor data is not read.

    With ``verify`` every entry of the archive is also read once and checked against the CRC-32 that torch.save
    stored for it, so damage inside the tensor data (zeros written over it, a bad sector) is caught too. That
    reads the whole file; it costs about what reading it from the page cache costs (BENCHMARKS.md §9).

    Raises:
        SlowfastError: not a zip archive written by torch.save, other objects inside, ``key`` missing, a
            storage entry whose size does not match its tensor (a damaged or cut file), or with ``verify`` an
            entry whose CRC-32 does not match.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise SlowfastError(f"{path}: dangling symlink (its target {os.readlink(path)} does not exist)")
    if path.is_dir():
        raise SlowfastError(f"{path}: is a folder, not a {what}")
    path = require_file(path)
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.split("/", 1)[1]: n for n in z.namelist() if "/" in n}
            if "data.pkl" not in names:
                raise SlowfastError(f"{path}: not a {what} (no data.pkl in the archive)")
            _check_pickled(z, names["data.pkl"], path, what)
            obj = _HeaderUnpickler(io.BytesIO(z.read(names["data.pkl"]))).load()
            if isinstance(obj, TensorHeader):
                raise ForeignFile(f"{path}: not a {what} (a bare tensor; expected a dict with {key!r} and 'meta')")
            if not isinstance(obj, dict) or not isinstance(obj.get(key), TensorHeader):
                keys = ", ".join(map(repr, obj)) if isinstance(obj, dict) else f"a {type(obj).__name__}"
                raise ForeignFile(f"{path}: not a {what} (found {keys or 'an empty dict'}; expected a dict with "
                                    f"{key!r} and 'meta')")  # fmt: skip
            header = obj[key]
            entry = names.get(f"data/{header.storage}")
            size = z.getinfo(entry).file_size if entry else -1
            if size != header.numel * ITEMSIZE[header.dtype]:
                raise SlowfastError(f"{path}: damaged {what} (tensor data is {size} bytes, expected "
                                    f"{header.numel * ITEMSIZE[header.dtype]})")  # fmt: skip
            if verify:
                for name in z.namelist():
                    try:
                        _check_crc(z, name)
                    except zipfile.BadZipFile as exc:
                        raise SlowfastError(
                            f"{path}: damaged {what} ({name.split('/', 1)[-1]} fails its CRC-32 check: the bytes on "
                            f"disk are not the ones written; {first_line(exc)})"
                        ) from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as exc:
        raise SlowfastError(f"{path}: not a {what} (cannot be read: {first_line(exc)})") from None
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise SlowfastError(f"{path}: 'meta' is not a dict")
    check_meta_size(meta, path)
    return {key: header, "meta": meta}


def read_token_header(path: str | Path, verify: bool = False) -> dict:
    """Like :func:`read_header`, and the tokens must be (1, L, D)."""
    obj = read_header(path, verify=verify)
    shape = obj["tokens"].shape
    if len(shape) != 3 or shape[0] != 1:
        raise SlowfastError(f"{path}: tokens must have shape (1, L, D), got {shape}")
    if obj["tokens"].dtype not in FLOAT_STORAGES:
        raise SlowfastError(f"{path}: tokens must be floating point, got {obj['tokens'].dtype.removesuffix('Storage')}")
    if shape[2] == 0:
        raise SlowfastError(f"{path}: the tokens have no channels (D=0)")
    return obj


def is_temp_file(path: Path) -> bool:
    return path.name.startswith(TMP_PREFIX)
