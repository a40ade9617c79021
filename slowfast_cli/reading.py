"""Reading the small files users give (lists, indexes, configs) with a bound, and saying what a path is.

A list, an index or a config is never read whole without a limit: ``/dev/zero`` or a multi-gigabyte file named by
mistake ends in one clear line, not in a ``MemoryError``. No torch.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a folder", "a character device", ...)."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def _readable_kind(mode: int, fifo: bool) -> None:
    """Raise ValueError unless ``mode`` is a regular file's (or, with ``fifo``, a pipe's)."""
    if not (stat.S_ISREG(mode) or (fifo and stat.S_ISFIFO(mode))):
        raise ValueError(f"is {kind_of(mode)}, not a file")


def read_bounded(path: str | os.PathLike, limit: int, fifo: bool = False) -> bytes:
    """The bytes of a regular file (or, with ``fifo``, a pipe such as ``<(command)``) of at most ``limit`` bytes.

    Raises:
        OSError: it cannot be opened or read.
        ValueError: it is a folder, a device or another special file, or longer than ``limit`` bytes.
    """
    _readable_kind(os.stat(path).st_mode, fifo)  # before opening: opening a FIFO waits for a writer
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit:,} bytes, too large for what it should hold")
    return data


def lines_bounded(path: str | os.PathLike, max_line: int, fifo: bool = True) -> Iterator[tuple[int, bytes]]:
    """``(number, line)`` of a regular file or a pipe, each line without its ``\\n``, read one at a time.

    Raises:
        OSError: it cannot be opened or read.
        ValueError: a special file other than a pipe, or a line longer than ``max_line`` bytes (naming its number).
    """
    with open(path, "rb") as f:
        _readable_kind(os.fstat(f.fileno()).st_mode, fifo)
        n = 0
        while True:
            line = f.readline(max_line + 2)
            if not line:
                return
            n += 1
            body = line[:-1] if line.endswith(b"\n") else line
            if len(body) > max_line + (1 if body.endswith(b"\r") else 0):
                raise ValueError(f"line {n} is longer than {max_line:,} bytes: not a list of file names")
            yield n, body


def path_kind(p: Path) -> str | None:
    """Why ``p`` is not a regular file, in words, or None when it is one (or a symlink to one)."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return "is a broken symlink" if p.is_symlink() else "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if stat.S_ISREG(mode) else f"is {kind_of(mode)}"


def path_problem(p: Path, noun: str = "file") -> str | None:
    """Why ``p`` cannot be read as a ``noun``, as the words after its name: "does not exist", "is a broken
    symlink", "cannot be read (...)" or, for a folder or a special file, "is a FIFO, not a {noun}"; None when it is
    a regular file (or a link to one)."""
    kind = path_kind(p)
    if kind is None or not kind.startswith("is a ") or kind == "is a broken symlink":
        return kind
    return f"{kind}, not a {noun}"
