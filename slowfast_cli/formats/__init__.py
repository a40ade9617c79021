"""Output formats of token files: ``pt`` (today's ``torch.save`` file, the default), ``safetensors`` (one file per
video) and ``webdataset`` (tar shards of ``KEY.safetensors`` + ``KEY.json`` with an ``index.jsonl``).

``OutputFormat`` is the user's choice (format, shard size, stored dtype); ``make_writer`` gives the one writer
``encode``, ``batch`` (both engines) and ``export`` write through (``writers.py``); ``read_output_header`` reads what
an output holds without torch (``report`` and the resume check). No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import (
    DEFAULT_SHARD_SIZE,
    FORMATS,
    SAVE_DTYPES,
    OutputFormat,
    OutputHeader,
    check_shape,
    is_output,
    read_output_header,
    shard_headers,
)

if TYPE_CHECKING:
    from .writers import Writer

__all__ = ["DEFAULT_SHARD_SIZE", "FORMATS", "SAVE_DTYPES", "OutputFormat", "OutputHeader", "check_shape", "is_output",
           "make_writer", "read_output_header", "shard_headers"]  # fmt: skip


def make_writer(fmt: OutputFormat | dict | None, out_dir: str | Path) -> Writer:
    """The writer of ``fmt`` (default: ``pt``) into ``out_dir``."""
    from .writers import WRITERS

    fmt = OutputFormat(**fmt) if isinstance(fmt, dict) else fmt or OutputFormat()
    return WRITERS[fmt.name](fmt, Path(out_dir))
