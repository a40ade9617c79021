"""Which lines of a Ray block's part (``batch.parts``) are slowfast's own: the rest is skipped when a part is read."""

from __future__ import annotations

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
