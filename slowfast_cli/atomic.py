"""Files that appear whole or not at all, and Ctrl-C held while they do.

``atomic_open`` writes a temporary file in the target's folder (named with ``header.TMP_PREFIX``, mode from the
umask), fsyncs it and renames it into place; ``sigint_deferred`` holds SIGINT/SIGTERM over "write a file, then
record it"; ``json_text``/``write_json`` write JSON that keeps any file name lossless. No torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import SlowfastError
from .header import TMP_PREFIX


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder, with the mode a plain ``open(path, "w")`` would give it.

    ``mkstemp`` creates files 0600; token files are read by training jobs under other accounts, so the mode is
    set from the umask like any file the user writes (0644 under umask 022).
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def temp_file(path: Path, mode: str = "wb") -> Iterator[tuple[IO, str]]:
    """``(file, name)`` of a new temporary file beside ``path``, flushed and fsynced when the block ends; deleted
    if the block fails."""
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``, else delete it."""
    path = Path(path)
    with temp_file(path, mode) as (f, tmp):
        yield f
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class _Held:
    pending: bool = False  # a SIGINT arrived while held


_held: list[_Held] = []  # the active sigint_deferred blocks, outermost first
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the CLI turns both into KeyboardInterrupt


@contextlib.contextmanager
def sigint_deferred(reraise: bool = True) -> Iterator[_Held]:
    """Hold Ctrl-C (SIGINT, and SIGTERM, which the CLI treats alike) until the block ends; then raise
    KeyboardInterrupt if one came (``reraise``), or leave that to the caller, who reads ``.pending`` of the
    yielded object.

    Used around "write a file, then record it": an interrupt then finds either nothing done or everything done,
    never a file without its manifest line. Nests (the outermost block decides); a no-op outside the main thread,
    which is where Python delivers signals anyway.
    """
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    outermost = not _held
    if outermost:

        def hold(signum, frame):
            held.pending = True  # the outermost block's own, also in the moment after it left _held (below)
            for h in _held:
                h.pending = True

        previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    _held.append(held)
    try:
        yield held
    finally:
        _held.pop()
        if outermost:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if held.pending and reraise and outermost:
        raise KeyboardInterrupt


def json_text(obj: Any, **kwargs: Any) -> str:
    """JSON that keeps non-ASCII text readable and file names that are not valid UTF-8 lossless.

    A name the file system gave as bytes that are not UTF-8 reaches Python as a str with lone surrogates
    (``os.fsdecode``); those, and only those, are written as ``\\udcXX`` escapes, which ``json.loads`` turns back into
    the same str, and ``os.fsencode`` into the original bytes. The output is always valid UTF-8.
    """
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (see :func:`json_text`); a disk error is a ``SlowfastError`` naming the file."""
    path = Path(path)
    try:
        with atomic_open(path, "w") as f:
            f.write(json_text(obj, indent=2) + "\n")
    except OSError as exc:
        raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path
