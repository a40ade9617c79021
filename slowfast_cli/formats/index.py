"""The index of a webdataset folder: ``index.jsonl``, one JSON line per sample, saying where it is.

Columns: ``key``, ``shard`` (file name), ``source`` (the video), ``output_tokens``, ``timestamps`` (seconds, one
per sampled frame), ``columns`` (the extra columns of a CSV/JSONL ``--files-from`` row, ``{}`` without), and where
the sample's members are in the shard: ``offset``/``size`` of ``KEY.safetensors``, ``json_offset``/``json_size``
of ``KEY.json`` (a reader seeks there; no tar parsing needed). Lines are appended when a shard is finished; a key
that appears again (a redone sample) supersedes its earlier lines (:func:`latest`). The index is derived from the
shards: :func:`reconcile` rebuilds the lines of any shard it lacks. No torch.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from ..atomic import atomic_open, json_text
from ..errors import SlowfastError
from .shards import Sample, scan, shards_in

INDEX = "index.jsonl"
COLUMNS = ("key", "shard", "source", "output_tokens", "timestamps", "columns", "offset", "size", "json_offset",
           "json_size")  # fmt: skip


def row(shard: str, sample: Sample, meta: dict) -> dict:
    """The index line of ``sample`` (in the shard named ``shard``), from its ``meta``."""
    st, js = sample.members["safetensors"], sample.members["json"]
    return {
        "key": sample.key,
        "shard": shard,
        "source": meta.get("source"),
        "output_tokens": meta.get("output_tokens"),
        "timestamps": meta.get("timestamps"),
        "columns": meta.get("columns", {}),
        "offset": st.data,
        "size": st.size,
        "json_offset": js.data,
        "json_size": js.size,
    }


def read_index(path: Path, lines: list[int] | None = None) -> list[dict]:
    """The index's lines; a torn or foreign line (a run killed while appending) is left out. ``lines``, when given,
    gets the number of lines read, good or not, appended."""
    rows, n = [], 0
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            n += 1
            with contextlib.suppress(ValueError):
                r = json.loads(line)
                if isinstance(r, dict) and all(k in r for k in COLUMNS) and line.endswith("\n"):
                    rows.append(r)
    if lines is not None:
        lines.append(n)
    return rows


def latest(rows: list[dict]) -> dict[str, dict]:
    """key -> its last line (a redone sample's newest copy)."""
    return {r["key"]: r for r in rows}


def append(path: Path, rows: list[dict]) -> None:
    """Append lines to the index, fsynced; a disk error is a ``SlowfastError`` naming it."""
    data = "".join(json_text(r) + "\n" for r in rows).encode("utf-8")
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None


def shard_rows(shard: Path) -> list[dict]:
    """The index lines of a finished shard, read from its ``KEY.json`` members."""
    samples, _, _ = scan(shard)
    rows = []
    with open(shard, "rb") as f:
        for s in samples:
            if not s.complete:
                continue
            m = s.members["json"]
            f.seek(m.data)
            try:
                meta = json.loads(f.read(m.size))
            except ValueError:
                meta = {}
            rows.append(row(shard.name, s, meta if isinstance(meta, dict) else {}))
    return rows


def reconcile(folder: Path) -> list[dict]:
    """The index of ``folder`` made to agree with its shards, rewritten when it did not; returns its lines.

    A shard the index lacks (a run killed between finishing it and appending its lines) gets its lines; lines of a
    shard that is gone are dropped; a torn last line is dropped.
    """
    path, lines = folder / INDEX, []
    rows = read_index(path, lines)
    on_disk = [p.name for p in shards_in(folder)]
    known = {r["shard"] for r in rows}
    kept = [r for r in rows if r["shard"] in on_disk]
    for name in on_disk:
        if name not in known:
            kept += shard_rows(folder / name)
    if kept == rows and lines == [len(rows)]:  # every line good, every shard in it
        return rows
    if kept or path.exists():
        with atomic_open(path, "w") as f:
            f.write("".join(json_text(r) + "\n" for r in kept))
    return kept
