"""A token file in the safetensors format, written and read by hand (the format is an 8-byte length, a JSON header,
then the raw tensor bytes: https://github.com/huggingface/safetensors#format), so that ``report`` reads it without
torch and without the ``safetensors`` package.

One tensor, ``tokens`` (1, L, D), little-endian; ``__metadata__`` (string values only, as the format requires)
holds ``meta``, the token file's meta as JSON (``atomic.json_text``: file names that are not UTF-8 stay lossless),
and ``crc32``, the CRC-32 of the tensor bytes as 8 hex digits, which ``verify`` checks (the format has no checksum
of its own). ``safetensors.torch.load_file`` reads these files; torch is imported only to turn bytes into a tensor.
"""

from __future__ import annotations

import contextlib
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..atomic import json_text
from ..errors import SlowfastError, first_line

SUFFIX = ".safetensors"
HEADER_LIMIT = 64 << 20  # bytes of JSON header read from a file that claims to be ours (a token file's: a few KB)
DTYPES = {"F32": ("fp32", 4), "F16": ("fp16", 2), "BF16": ("bf16", 2), "F64": ("fp64", 8)}  # code -> (name, bytes)
CODES = {name: code for code, (name, _) in DTYPES.items()}


@dataclass(frozen=True)
class SafetensorsHeader:
    """What the header of one token safetensors says; ``data`` is where the tensor bytes start in the file."""

    shape: tuple[int, ...]
    dtype: str  # fp32 | fp16 | bf16 | fp64
    meta: dict
    crc32: str | None
    data: int  # offset of the tensor bytes from the start of the file (or of the tar member)
    nbytes: int


def encode(tokens: Any, meta: dict) -> list[bytes | memoryview]:
    """The bytes of a token safetensors file for ``tokens`` (a (1, L, D) floating-point torch tensor) and ``meta``,
    as two parts to write one after the other: the length and JSON header, and a view of the tensor's own memory
    (no copy of a tensor of many megabytes)."""
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
    if tokens.dtype not in names:
        raise ValueError(f"tokens must be floating point, got {tokens.dtype}")
    data = memoryview(tokens.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    header = {
        "tokens": {"dtype": CODES[names[tokens.dtype]], "shape": list(tokens.shape), "data_offsets": [0, len(data)]},
        "__metadata__": {"meta": json_text(meta), "crc32": f"{zlib.crc32(data):08x}"},
    }
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
    return [struct.pack("<Q", len(text)) + text, data]


def parse_header(f: IO[bytes], size: int, name: str) -> SafetensorsHeader:
    """The header of the token safetensors that starts at ``f``'s position and is ``size`` bytes long.

    Raises:
        SlowfastError: naming ``name``, when it is not a token file in this format (or is cut short).
    """
    start = f.tell()
    try:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(HEADER_LIMIT, size - 8):
            raise ValueError(f"its header claims {n:,} bytes")
        header = json.loads(f.read(n))
        entry, info = header["tokens"], header.get("__metadata__") or {}
        code, shape, (lo, hi) = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
        meta = json.loads(info.get("meta", "{}"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SlowfastError(f"{name}: not a token safetensors file (cannot be read: {first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise SlowfastError(f"{name}: its safetensors metadata 'meta' is not a JSON object")
    if code not in DTYPES:
        raise SlowfastError(f"{name}: tokens must be floating point, got {code}")
    dtype, itemsize = DTYPES[code]
    numel = 1
    for s in shape:
        numel *= s
    data = start + 8 + n
    if lo != 0 or hi != numel * itemsize or data - start + hi != size:
        raise SlowfastError(
            f"{name}: damaged token safetensors file (tensor data is {size - (data - start):,} bytes, expected "
            f"{numel * itemsize:,})"
        )
    return SafetensorsHeader(tuple(shape), dtype, meta, info.get("crc32"), data, hi)


def _crc_failed(name: str) -> SlowfastError:
    return SlowfastError(f"{name}: damaged token safetensors file (its tensor bytes fail their CRC-32 check: the bytes "
                         "on disk are not the ones written)")  # fmt: skip


def check_crc(f: IO[bytes], header: SafetensorsHeader, name: str, chunk: int = 1 << 20) -> None:
    """Read the tensor bytes and compare their CRC-32 with the one recorded in the metadata (when there is one)."""
    if header.crc32 is None:
        return
    f.seek(header.data)
    crc, left = 0, header.nbytes
    while left:
        block = f.read(min(chunk, left))
        if not block:
            break
        crc, left = zlib.crc32(block, crc), left - len(block)
    if left or f"{crc:08x}" != header.crc32:
        raise _crc_failed(name)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tuple[IO[bytes], SafetensorsHeader]]:
    """The open file and its parsed header; an OSError while it is open is one line naming the file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            yield f, parse_header(f, size, str(path))
    except OSError as exc:
        raise SlowfastError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_header(path: str | Path, verify: bool = False) -> SafetensorsHeader:
    """The header of a token safetensors file (the tensor bytes are read only for ``verify``'s CRC-32 check)."""
    with _opened(Path(path)) as (f, header):
        if verify:
            check_crc(f, header, str(path))
    return header


def read_tokens(f: IO[bytes], header: SafetensorsHeader, name: str, verify: bool = False) -> Any:
    """The tokens tensor (1, L, D) of the file (or tar member) ``f`` whose ``header`` was parsed, read with one copy
    into memory the tensor then owns; ``verify`` checks the CRC-32 of those bytes."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
    f.seek(header.data)
    raw = bytearray(header.nbytes)  # writable, as torch.frombuffer wants
    if f.readinto(raw) != header.nbytes:
        raise SlowfastError(f"{name}: damaged token safetensors file (its tensor bytes are cut short)")
    if verify and header.crc32 is not None and f"{zlib.crc32(raw):08x}" != header.crc32:
        raise _crc_failed(name)
    if not raw:
        return torch.zeros(header.shape, dtype=dtypes[header.dtype])
    return torch.frombuffer(raw, dtype=dtypes[header.dtype]).reshape(header.shape)


def load(path: str | Path, verify: bool = True) -> dict:
    """``{"tokens": (1, L, D), "meta": {...}}`` of a token safetensors file, its CRC-32 checked (``verify``)."""
    with _opened(Path(path)) as (f, header):
        return {"tokens": read_tokens(f, header, str(path), verify), "meta": header.meta}
