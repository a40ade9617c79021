"""The Ray engine's plan as an Arrow table, handed to Ray Data in blocks of up to ``BLOCK_MAX`` videos (issue 20).

One row per video of ``plan.todo``: its paths as the file system's bytes, whether its existing output awaits the
CRC check, its size and modification time as the driver sees them (the node refuses another file), and its row of a
CSV/JSONL list. Building it is a few columns of plain values (no Python object per video in the object store: one
``ray.put`` per block), so the driver's cost is the table itself (BENCHMARKS.md section 21).

Blocks: ``block_rows`` gives every encoder actor at least ``BLOCKS_PER_ENCODER`` blocks (work is spread, and a
lost actor costs a share, not the run) and at most ``BLOCK_MAX`` videos a block: blocks of 100-1,000 videos from
400 videos an encoder on, smaller below that (a run of 6 videos on 2 nodes still gives each node work). A ``ray_*``
module, so it may import ray.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data

BLOCK_MAX = 1000  # videos in one block at most (one map task of the encode stage)
BLOCKS_PER_ENCODER = 4  # blocks per encoder actor at least, where there are videos enough
CHUNK = 1 << 16  # rows of the plan table built at a time
SCHEMA = pa.schema(
    [
        ("source", pa.binary()),  # path relative to IN_DIR (os.fsencode: any name survives)
        ("output", pa.binary()),  # path relative to OUT_DIR
        ("unverified", pa.bool_()),  # its existing output awaits the CRC check, on the node
        ("size", pa.int64()),  # bytes, as the driver sees the file; -1: the driver cannot stat it
        ("mtime_ns", pa.int64()),  # modification time in ns, as the driver sees it
        ("columns", pa.binary()),  # its row of a CSV/JSONL --files-from, pickled; null when none
    ]
)


@dataclass(frozen=True)
class Planned:
    """One video of the plan, as a node reads it from its block."""

    source: bytes
    output: bytes
    unverified: bool
    expect: tuple[int, int] | None  # (size, mtime_ns) the driver saw, or None when it saw no file
    columns: dict | None
    block: int = 0  # the block it belongs to (its part and shards are named by it: batch.parts)


def plan_table(root, todo, unverified, columns) -> pa.Table:
    """The plan's Arrow table (``SCHEMA``) for ``todo`` (pairs of relative source and output paths).

    ``unverified``: the sources whose outputs still await their CRC check; ``columns``: a CSV/JSONL list's rows by
    source. Each source is stat'ed here, once: the identity the node checks (``ray_tasks.other_file``). Built
    ``CHUNK`` rows at a time, so the Python lists in between stay small next to the table.
    """
    url = not isinstance(root, (str, bytes, os.PathLike))  # remote.RemotePath: sizes and times from its listing
    base = b"" if url else os.fsencode(root)
    chunks = []
    for start in range(0, len(todo), CHUNK):
        part = todo[start : start + CHUNK]
        n = len(part)
        sources, outputs, flags = [None] * n, [None] * n, [False] * n
        sizes, mtimes, rows = [-1] * n, [-1] * n, [None] * n
        for i, (rel, out_rel) in enumerate(part):
            src = sources[i] = os.fsencode(rel)
            outputs[i] = os.fsencode(out_rel)
            try:
                st = (root / rel).stat() if url else os.stat(os.path.join(base, src))
                sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
            except OSError:
                pass
            if unverified and rel in unverified:
                flags[i] = True
            if columns and rel in columns:
                rows[i] = pickle.dumps(columns[rel])
        arrays = [sources, outputs, flags, sizes, mtimes, rows]
        chunks.append(pa.record_batch([pa.array(a, f.type) for a, f in zip(arrays, SCHEMA, strict=True)], SCHEMA))
    return pa.Table.from_batches(chunks, SCHEMA)


def block_rows(videos: int, encoders: int) -> int:
    """Videos per block: ``BLOCKS_PER_ENCODER`` blocks per encoder at least, ``BLOCK_MAX`` videos at most."""
    return max(1, min(BLOCK_MAX, math.ceil(videos / (BLOCKS_PER_ENCODER * max(1, encoders)))))


def plan_dataset(table: pa.Table, encoders: int) -> ray.data.Dataset:
    """The table as a Ray Dataset of ``block_rows`` blocks: one ``ray.put`` each, with each block's metadata
    computed here (``from_arrow`` sends one Ray task per block to compute it: 6.7 s for 100 blocks on a loaded
    2-core machine, BENCHMARKS.md section 21). Built as ``ray.data.from_arrow_refs`` builds it, through Ray 2.60's
    internal classes (the version pinned); if they are gone, ``from_arrow`` itself."""
    step = block_rows(table.num_rows, encoders)
    blocks = [_numbered(table.slice(i, step), i // step) for i in range(0, table.num_rows, step)]
    try:
        from ray.data._internal.logical.interfaces import LogicalPlan
        from ray.data._internal.logical.operators import FromArrow
        from ray.data._internal.stats import DatasetStats
        from ray.data._internal.util import get_table_block_metadata_schema
        from ray.data.context import DataContext
        from ray.data.dataset import MaterializedDataset
    except ImportError:
        return ray.data.from_arrow(blocks)
    meta = [get_table_block_metadata_schema(b) for b in blocks]
    refs = [ray.put(b) for b in blocks]
    context = DataContext.get_current().copy()
    stats = DatasetStats(metadata={"FromArrow": meta}, parent=None)
    return MaterializedDataset(LogicalPlan(FromArrow(refs, meta), context), context, stats)


def _numbered(block: pa.Table, number: int) -> pa.Table:
    """A block with its number in a ``block`` column (stable for the run: Ray runs a block again under it)."""
    return block.append_column("block", pa.array(np.full(block.num_rows, number, dtype=np.int32)))


def planned(batch: dict) -> Iterator[Planned]:
    """The videos of one Ray batch of the table (numpy columns, as ``map_batches`` gives them)."""
    blocks = batch["block"] if "block" in batch else np.zeros(len(batch["source"]), dtype=np.int32)
    for src, out, flag, size, mtime, cols, block in zip(
        batch["source"], batch["output"], batch["unverified"], batch["size"], batch["mtime_ns"], batch["columns"],
        blocks, strict=True,
    ):  # fmt: skip
        expect = (int(size), int(mtime)) if size >= 0 else None
        cols = pickle.loads(cols) if cols is not None else None
        yield Planned(bytes(src), bytes(out), bool(flag), expect, cols, int(block))
