"""The core of the output formats, without torch: the user's choice (``OutputFormat``) and reading what an output
holds (``read_output_header``, ``shard_headers``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, SlowfastError
from ..header import read_token_header

FORMATS = ("pt", "safetensors", "webdataset")
SAVE_DTYPES = ("fp32", "fp16", "bf16")
STORAGE_DTYPES = {"FloatStorage": "fp32", "HalfStorage": "fp16", "BFloat16Storage": "bf16", "DoubleStorage": "fp64"}
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class OutputFormat:
    """How token files are stored (never part of what they hold: any format gives the same tensors)."""

    name: str = "pt"  # pt | safetensors | webdataset
    shard_size: int = DEFAULT_SHARD_SIZE  # webdataset: samples per shard
    save_dtype: str | None = None  # fp32 | fp16 | bf16; None keeps the dtype the model computed in

    def __post_init__(self) -> None:
        if self.name not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.name!r}")
        if self.save_dtype is not None and self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ConfigError(f"--shard-size must be a positive number of samples, got {self.shard_size!r}")

    def to_dict(self) -> dict:
        return {"name": self.name, "shard_size": self.shard_size, "save_dtype": self.save_dtype}


@dataclass(frozen=True)
class OutputHeader:
    """What an existing output holds, read without its tensor: shape (1, L, D), stored dtype, meta."""

    shape: tuple[int, ...]
    dtype: str  # fp32 | fp16 | bf16 | fp64
    meta: dict


def check_shape(header: OutputHeader, name: str) -> OutputHeader:
    shape = header.shape
    if len(shape) != 3 or shape[0] != 1:
        raise SlowfastError(f"{name}: tokens must have shape (1, L, D), got {shape}")
    if shape[2] == 0:
        raise SlowfastError(f"{name}: the tokens have no channels (D=0)")
    return header


def read_output_header(path: str | Path, verify: bool = False) -> OutputHeader:
    """The header of a ``.pt`` or ``.safetensors`` token file (by its suffix); no torch, no tensor data read unless
    ``verify`` (CRC-32 of every byte). Raises ``SlowfastError`` (``header.ForeignFile`` for another program's
    ``.pt``) as ``header.read_token_header`` does."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from .safetensors_file import read_header

        if path.is_dir():
            raise SlowfastError(f"{path}: is a folder, not a token file")
        h = read_header(path, verify)
        return check_shape(OutputHeader(h.shape, h.dtype, h.meta), str(path))
    obj = read_token_header(path, verify=verify)
    t = obj["tokens"]
    return OutputHeader(t.shape, STORAGE_DTYPES.get(t.dtype, t.dtype), obj["meta"])


def is_output(name: str) -> bool:
    """Whether a file name is one a token output can have: ``*.pt``, ``*.safetensors`` or ``shard-NNNNNN.tar``."""
    from .shards import shard_number

    return name.endswith((".pt", ".safetensors")) or shard_number(name) is not None


def shard_headers(shard: Path, verify: bool = False) -> list[tuple[str, OutputHeader | SlowfastError]]:
    """``(SHARD:KEY, header or the error that makes it unreadable)`` for every sample of a webdataset shard, without
    torch; a sample without its ``KEY.safetensors`` or ``KEY.json``, or a shard cut short, is an error entry."""
    from .safetensors_file import check_crc, parse_header
    from .shards import scan

    shard = Path(shard)
    try:
        samples, _, problem = scan(shard)
    except OSError as exc:
        return [(str(shard), SlowfastError(f"{shard}: cannot be read ({exc.strerror or exc})"))]
    found: list[tuple[str, OutputHeader | SlowfastError]] = []
    with open(shard, "rb") as f:
        for s in samples:
            name = f"{shard}:{s.key}"
            if not s.complete:
                missing = "KEY.json" if "safetensors" in s.members else "KEY.safetensors"
                found.append((name, SlowfastError(f"{name}: an incomplete sample (no {missing})")))
                continue
            m = s.members["safetensors"]
            try:
                f.seek(m.data)
                h = parse_header(f, m.size, name)
                if verify:
                    check_crc(f, h, name)
                found.append((name, check_shape(OutputHeader(h.shape, h.dtype, h.meta), name)))
            except SlowfastError as exc:
                found.append((name, exc))
    if problem:
        found.append((str(shard), SlowfastError(f"{shard}: damaged shard ({problem})")))
    return found
