"""Small pieces of ``batch.parts``: which lines of a Ray block's part are slowfast's own (the rest is skipped when a
part is read), the latest line of each video in a JSON-lines file, a file cut back to a size."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import fields
from pathlib import Path

from ..formats.shards import shard_number
from .records import Record

RECORD_KEYS = frozenset(f.name for f in fields(Record))


def _inside(rel) -> bool:
    """A path relative to OUT_DIR that stays inside it."""
    return isinstance(rel, str) and bool(rel) and not os.path.isabs(rel) and ".." not in Path(rel).parts


def _record(e: dict) -> bool:
    r = e["record"]
    if not (isinstance(r, dict) and set(r) <= RECORD_KEYS and isinstance(r.get("source"), str)):
        return False
    if not (isinstance(r.get("status"), str) and isinstance(r.get("output"), (str, type(None)))):
        return False
    if e.get("tmp"):  # renamed into place by recovery: both paths inside OUT_DIR
        return _inside(e["tmp"]) and _inside(r["output"])
    return not e.get("shard") or (_shard(e["shard"]) and isinstance(e.get("end"), int))


def _shard(name) -> bool:
    return isinstance(name, str) and shard_number(name) is not None


def valid(e) -> bool:
    """Whether a part's line is one slowfast writes: a line that is not (a hand-edited or damaged part) is skipped
    like a torn one, so it can neither stop recovery with a traceback nor rename a file outside OUT_DIR."""
    if not isinstance(e, dict):
        return False
    if "record" in e:
        return _record(e)
    if "attempt" in e:
        return isinstance(e["attempt"], int)
    if "hold" in e:
        return isinstance(e["hold"], list) and all(isinstance(x, str) for x in e["hold"])
    if "shard" in e:
        return _shard(e["shard"]) and isinstance(e.get("rows"), list) and all(isinstance(r, dict) for r in e["rows"])
    return False


def cut(path: Path, size: int) -> None:
    """Cut a file back to ``size`` bytes where it is longer (never through a symlink)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
        finally:
            os.close(fd)


def latest(path: Path, field: str) -> dict:
    """``field``'s value -> the text of the last line with it, in a JSON-lines file (manifest, index)."""
    latest = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                latest[json.loads(line).get(field)] = line
    return latest
