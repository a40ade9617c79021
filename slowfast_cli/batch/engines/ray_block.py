"""What one Ray encoder actor writes for one block of the plan: its outputs and its part (``batch.parts``).

The actor owns the block while it runs it. Each output goes through the format's writer (``formats``, the one the
local engine writes through, so the bytes are the same): a ``pt``/``safetensors`` file is written to a temporary
file beside its target and renamed into place once its record is durable in the part; a webdataset sample is
appended to the block's own open shard (``formats.block_shards``), which becomes ``shard-NNNNNN.tar`` once it holds
``--shard-size`` samples, all recorded, or when the block ends. :meth:`BlockOutput.flush` makes the records so far
durable (one fsync): the actor calls it before each answer to the driver, so a row the driver sees is recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...errors import SlowfastError
from ...formats import make_writer
from ...formats.shards import shard_number
from ..parts import Part, PartError, finish_block, open_shard, part_path
from ..records import Record


class BlockOutput:
    """The outputs and the part of ``block``, for the job (``ray_tasks.encoder_class``)."""

    def __init__(self, job: dict, block: int):
        """Raises PartError: the part, or the block's open shard, cannot be made (a full disk, a file where the
        parts folder goes): the run stops with that line, as when a record cannot be written later."""
        try:
            self._open(job, block)
        except OSError as exc:
            where = part_path(job["out_dir"], block)
            raise PartError(f"{where}: cannot write ({exc.strerror or exc}); the batch stopped here") from None

    def _open(self, job: dict, block: int) -> None:
        self.out_dir = Path(job["out_dir"])
        path = part_path(self.out_dir, block)
        if path.exists():  # a rerun after its actor died: what it recorded is finished first (its open shard cut)
            finish_block(self.out_dir, path, keep_open=True)
        self.part = Part(self.out_dir, block)
        self.writer = make_writer(job.get("format"), self.out_dir)
        if self.writer.in_shards:
            from ...formats.block_shards import BlockShardWriter

            log = self.part.log
            finished = [shard_number(name) for name in log.finished]
            number = finished[-1] + 1 if finished else job["first_shard"] + block * job["shards_per_block"]
            if log.shard is not None and open_shard(self.out_dir, block).is_file():  # its recorded samples: go on
                number, self.part.end = shard_number(log.shard), log.end
            self.writer = BlockShardWriter(self.writer.fmt, self.out_dir, open_shard(self.out_dir, block), number)
            if self.writer.full:  # its samples recorded, then killed before the shard was finished
                self.finish_shard()

    @property
    def recorded(self) -> dict[str, dict]:
        """source -> Record (as a dict) of the videos an earlier attempt of the block recorded."""
        return self.part.log.records

    def deaths(self, source: str) -> int:
        """Deaths of an actor while this video was in hand (earlier attempts of the block)."""
        return self.part.log.deaths.get(source, 0)

    def hold(self, sources) -> None:
        self.part.hold(list(sources))

    def record(self, record: Record) -> None:
        """A video with nothing to write (a failure, a skip)."""
        self.part.add(record)

    def write(self, tokens: Any, meta: dict, out_rel: Path, record: Record) -> Record:
        """Write one video's output (see the module docstring) and buffer its record; a disk that refuses it gives
        the video's ``write`` failure (recorded) instead."""
        try:
            if not self.writer.in_shards:
                tmp = self.writer.pending(tokens, meta, out_rel)
                self.part.add(record, tmp=tmp)
                return record
            self.writer.write(tokens, meta, out_rel)
        except (SlowfastError, OSError) as exc:
            failed = Record.write_failed(exc, Path(record.source), out_rel)
            failed.seconds = record.seconds
            self.part.add(failed)
            return failed
        self.part.add(record, shard=self.writer.shard, end=self.writer.end)
        if self.writer.full:
            self.finish_shard()
        return record

    def finish_shard(self) -> None:
        """The open shard's samples recorded, then the shard finished and logged with its index lines."""
        self.part.flush()
        done = self.writer.finish_shard()
        if done is not None:
            self.part.shard(*done)

    def flush(self) -> None:
        """Make the buffered records durable (and their files visible). A part that cannot be written (a full disk)
        takes the unrecorded outputs back and raises ``PartError``."""
        try:
            self.part.flush()
        except PartError:
            self.part.undo()
            if self.writer.in_shards and self.writer.open_path.exists():
                os.truncate(self.writer.open_path, self.part.end)
            raise

    def close(self) -> None:
        """The block is done: records flushed, its last shard finished, nothing in hand."""
        try:
            self.flush()
            if self.writer.in_shards:
                self.finish_shard()
            self.part.hold([])
        finally:
            self.part.close()
