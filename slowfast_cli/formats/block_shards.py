"""The webdataset writer of one Ray block: the same shard code as ``WebdatasetWriter``, a shard never spanning blocks.

The encoder actor that runs a block appends its samples to the block's own open shard (a hidden file in
``OUT_DIR/.slowfast-parts``, see ``batch.parts``) and decides itself when a shard is finished: only after every
sample in it is recorded in the block's part (:attr:`full`, then :meth:`finish_shard`). Shards are numbered from
the block's first number on (``first_shard + block * shards_per_block``, planned by the driver), so blocks never
clash; numbers a block does not use (its failures) are skipped. No torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import shards
from .base import OutputFormat
from .writers import WebdatasetWriter


class BlockShardWriter(WebdatasetWriter):
    """``WebdatasetWriter`` into a block's open shard ``open_path``, its finished shards numbered from ``number``.

    An open shard already there holds only recorded samples (an earlier attempt's: ``batch.parts.finish_block``
    cut it back to them): this writer goes on appending to it, ``number`` being its name-to-be.
    """

    auto_finish = False  # the owner finishes a shard once its samples are recorded

    def __init__(self, fmt: OutputFormat, out_dir: Path, open_path: Path, number: int):
        super().__init__(fmt, out_dir)
        self.open_path, self.next_number = Path(open_path), number
        self.finished: list[tuple[str, list[dict]]] = []  # (name, index lines) of shards finished, for the part
        if self.open_path.is_file():
            self.open = {s.key: s for s in shards.recover(self.open_path)}

    def load(self) -> None:
        """Nothing to read: the driver planned the block against the folder's index."""

    @property
    def shard(self) -> str:
        """The name the open shard will get."""
        return shards.shard_name(self.next_number)

    @property
    def end(self) -> int:
        """Where the open shard ends now (after its last sample)."""
        return os.path.getsize(self.open_path) if self.open_path.exists() else 0

    @property
    def full(self) -> bool:
        return len(self.open) >= self.fmt.shard_size

    def finish_shard(self) -> tuple[str, list[dict]] | None:
        """Give the open shard its final name, when it holds samples: ``(name, index lines)``, else None."""
        if not self.open:
            return None
        self._finish_open()
        return self.finished.pop()

    def _finished(self, name: str, rows: list[dict]) -> None:
        self.finished.append((name, rows))  # the part logs them; the driver appends them to the index
