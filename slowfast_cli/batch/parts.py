"""Per-block manifest parts: the Ray engine's encoder actors record their blocks, the driver merges (issue 20).

A Ray run cuts its plan into blocks of up to 1,000 videos (``engines.ray_plan``). The actor that runs a block owns
it: it puts each output in place itself and logs the block in its *part*, ``OUT_DIR/.slowfast-parts/
block-BBBBBB.jsonl``; the driver merges the parts into ``manifest.jsonl`` (and the finished shards' lines into
``index.jsonl``) every ``MERGE_S`` seconds and at the end, one append and one fsync per merge, never per video.

A part is a log of JSON lines, appended (``Part``):
- ``{"attempt": N}``: attempt N of the block starts (Ray runs a block again after its actor died);
- ``{"hold": [SOURCE, ...]}``: the videos in hand now (decoded and waiting for, or in, a forward pass); not synced;
- ``{"record": {...}}``: a video's ``records.Record``, plus ``tmp`` (a ``pt``/``safetensors`` output's temporary
  file, relative to OUT_DIR, renamed into place once this line is durable) or ``shard`` and ``end`` (a webdataset
  sample: the shard it goes into, and where it ends in the block's open shard ``open-BBBBBB.tar`` in this folder);
- ``{"shard": NAME, "rows": [...]}``: a shard that got its final name, with its index lines.

**Record first, then visible**: record lines are fsynced in batches (``Part.flush``) and only then are their
temporary files renamed into place; a webdataset shard is finished (renamed to ``shard-NNNNNN.tar``) only after all
its samples are recorded. Whatever stops a run (kill -9 of an actor or of the driver, Ctrl-C, a full disk), every
output under its final name is recorded in a part; a sample or file written but not yet recorded stays hidden and
is cut off or removed. A rerun of a block reads its part (``BlockLog``): recorded videos are not done again, the open
shard is cut back to its last recorded sample, and each death of an actor counts for the videos it had in hand.

**Exact merges**: ``merged.json`` in the parts folder says how far the manifest and the index reach and how many
bytes of each part are merged; it is written after each merge. :func:`recover` (at the start of every run, under the
output lock, and at the end of a complete Ray run) cuts the manifest and the index back to those sizes (a merge cut
short), finishes what the parts recorded (renames, open shards), merges the rest and removes the folder (renamed
to ``.slowfast-parts.done`` first: a kill mid-removal leaves nothing to merge twice). Without a readable
``merged.json`` a part's line is merged unless it is its video's latest line already; lines slowfast does not write
(a part edited by hand or damaged) are skipped like a torn line (``part_lines``). No torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import json_text, write_json
from ..errors import SlowfastError
from ..formats import index, shards
from .part_lines import cut, latest, valid
from .records import MANIFEST, Manifest, Record

PARTS = ".slowfast-parts"  # in OUT_DIR: the parts, the blocks' open shards, the merge state
DONE = PARTS + ".done"  # the parts folder once merged, renamed at once and then removed (a kill mid-removal: inert)
STATE = "merged.json"
MERGE_S = 5.0  # the driver merges the parts at least this often while rows arrive


class PartError(SlowfastError):
    """A part that cannot be written (a full disk): the batch stops there."""


def part_path(out_dir: str | Path, block: int) -> Path:
    return Path(out_dir) / PARTS / f"block-{block:06d}.jsonl"


def open_shard(out_dir: str | Path, block: int) -> Path:
    """The open (unfinished) webdataset shard of ``block``: hidden in the parts folder."""
    return Path(out_dir) / PARTS / f"open-{block:06d}.tar"


def read_lines(path: Path, start: int = 0) -> tuple[list[dict], int]:
    """The complete JSON lines of a part from byte ``start`` on, and the offset after the last of them (a torn last
    line, from a process killed mid-write, is not read)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return [], start
    end = data.rfind(b"\n") + 1
    entries = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if valid(entry):
                entries.append(entry)
    return entries, start + end


@dataclass
class BlockLog:
    """What a block's part says: recorded videos, deaths per video, the webdataset shards."""

    records: dict[str, dict] = field(default_factory=dict)  # source -> its recorded Record (as a dict)
    deaths: Counter = field(default_factory=Counter)  # source -> deaths of an actor while it was in hand
    attempts: int = 0
    renames: list[str] = field(default_factory=list)  # recorded temporary files (relative), in order
    shard: str | None = None  # the open shard's name-to-be, when recorded samples are in it
    end: int = 0  # where its last recorded sample ends
    finished: list[str] = field(default_factory=list)  # shards finished, in order

    @classmethod
    def of(cls, entries: list[dict]) -> BlockLog:
        log, held = cls(), []
        for e in entries:
            if "attempt" in e:
                for src in held:  # the attempt before died with these in hand
                    if src not in log.records:
                        log.deaths[src] += 1
                log.attempts, held = e["attempt"], []
            elif "hold" in e:
                held = e["hold"]
            elif "record" in e:
                log.records[e["record"]["source"]] = e["record"]
                if e.get("tmp"):
                    log.renames.append(e["tmp"])
                if e.get("shard"):
                    log.shard, log.end = e["shard"], e["end"]
            elif "shard" in e:
                log.finished.append(e["shard"])
                if log.shard == e["shard"]:
                    log.shard, log.end = None, 0
        for src in held:  # the last attempt, which ended without finishing (this one starts after it)
            if src not in log.records:
                log.deaths[src] += 1
        return log


class Part:
    """A block's part, opened by the actor that runs the block (see the module docstring).

    Opening it reads what earlier attempts recorded (:attr:`log`: their deaths counted) and starts a new attempt.
    :meth:`add` buffers a record line, :meth:`flush` writes the buffered lines with one write and one fsync and then
    renames their temporary files into place; a line that cannot be written is cut off again and raises
    ``SlowfastError`` (the caller takes its outputs back: see :meth:`undo`).
    """

    def __init__(self, out_dir: str | Path, block: int):
        self.out_dir, self.path = Path(out_dir), part_path(out_dir, block)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries, good = read_lines(self.path)
        self.log = BlockLog.of(entries)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        if os.fstat(self.fd).st_size > good:
            os.ftruncate(self.fd, good)  # a torn last line: the next line must start on a line of its own
        self.buffer: list[dict] = []
        self.end = 0  # where the open shard's last durably recorded sample ends
        self._write([{"attempt": self.log.attempts + 1}])

    def _write(self, entries: list[dict], sync: bool = True) -> None:
        data = "".join(json_text(e) + "\n" for e in entries).encode("utf-8")
        size = os.fstat(self.fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            if sync:
                os.fsync(self.fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, size)
            raise PartError(f"{self.path}: cannot write ({exc.strerror or exc}); the batch stopped here") from None

    def hold(self, sources: list[str]) -> None:
        """Log the videos now in hand (before anything that could kill this process runs on them); not synced."""
        with contextlib.suppress(PartError):
            self._write([{"hold": sources}], sync=False)

    def add(self, record: Record, **more) -> None:
        """Buffer a video's record (``tmp``: its temporary file, absolute; ``shard``/``end``: a webdataset sample)."""
        entry = {"record": asdict(record), **more}
        if more.get("tmp"):
            entry["tmp"] = os.path.relpath(more["tmp"], self.out_dir)
        self.buffer.append(entry)

    def flush(self) -> None:
        """Make the buffered records durable, then put their temporary files in place."""
        if not self.buffer:
            return
        entries, self.buffer = self.buffer, []
        try:
            self._write(entries)
        except PartError:
            self.buffer = entries  # for undo()
            raise
        for e in entries:
            self.log.records[e["record"]["source"]] = e["record"]
            if e.get("tmp"):
                rename(self.out_dir, e["tmp"], e["record"]["output"])
            if e.get("end") is not None:
                self.end = e["end"]

    def undo(self) -> None:
        """Remove the temporary files of records that could not be written (a full disk)."""
        for e in self.buffer:
            if e.get("tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.out_dir / e["tmp"])
        self.buffer = []

    def shard(self, name: str, rows: list[dict]) -> None:
        """Log a finished shard with its index lines (synced)."""
        self._write([{"shard": name, "rows": rows}])
        self.log.finished.append(name)
        self.end = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def rename(out_dir: Path, tmp: str, output: str) -> None:
    """Put a recorded temporary file in place (done already when it is gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(out_dir / tmp, out_dir / output)


class Merger:
    """The driver's side: merges the parts into ``manifest.jsonl`` and ``index.jsonl`` (see the module docstring).

    Created at the start of a Ray run (after :func:`recover`, with the output lock held): it makes the parts folder
    and writes the merge state. :meth:`merge` returns the records it merged, as dicts."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.dir = Path(out_dir), Path(out_dir) / PARTS
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SlowfastError(f"{self.dir}: cannot create the folder of the parts ({exc.strerror or exc})") from None
        self.manifest = Manifest(self.out_dir / MANIFEST)
        self.offsets: dict[str, int] = {}
        self.merged_at = time.monotonic()
        self.known: tuple[dict, dict] | None = None  # see _know
        state = _state(self.dir)
        if state is not None:  # recover() left it: go on from it
            self.offsets = state["parts"]
        elif any(self.dir.glob("block-*.jsonl")):  # parts without a (readable) state: merged up to where, unknown
            self._know()
        self._save()

    def _know(self) -> None:
        """Merged up to where is not known (merged.json lost or damaged, a part cut shorter since): the parts are
        merged from their start, leaving out each line that is already the latest one of its video (sample)."""
        if self.known is None:
            self.known = (latest(self.out_dir / MANIFEST, "source"), latest(self.out_dir / index.INDEX, "key"))

    def _sizes(self) -> dict[str, int]:
        return {"manifest": _size(self.out_dir / MANIFEST), "index": _size(self.out_dir / index.INDEX)}

    def _save(self) -> None:
        write_json(self.dir / STATE, {**self._sizes(), "parts": self.offsets})

    def write(self, records: list[Record]) -> None:
        """Append the driver's own records (planned ones, rows that never came back), 10,000 lines a write."""
        for start in range(0, len(records), 10_000):
            self.manifest.write_all([r.to_json() for r in records[start : start + 10_000]])
        if records:
            self._save()

    def due(self) -> bool:
        return time.monotonic() - self.merged_at >= MERGE_S

    def merge(self) -> list[dict]:
        """Append every part's new complete record lines to the manifest and its shards' lines to the index."""
        self.merged_at = time.monotonic()
        records, rows, offsets = [], [], dict(self.offsets)
        for path in sorted(self.dir.glob("block-*.jsonl")):
            start = self.offsets.get(path.name, 0)
            if start > _size(path):  # cut shorter than what was merged (by hand): read again, see _know
                start = 0
                self._know()
            entries, offsets[path.name] = read_lines(path, start)
            for e in entries:
                if "record" in e:
                    records.append(e["record"])
                elif "rows" in e:
                    rows += e["rows"]
        if offsets == self.offsets:
            return []
        if self.known is not None:  # merged before, or not: what the manifest and the index hold is not added again
            records = [r for r in records if self.known[0].get(r["source"]) != json_text(r)]
            rows = [r for r in rows if self.known[1].get(r.get("key")) != json_text(r)]
        sizes = self._sizes()
        try:
            self.manifest.write_all([json_text(r) for r in records])
            if rows:
                index.append(self.out_dir / index.INDEX, rows)
        except BaseException:  # a full disk: both cut back, so a later merge of the same lines adds them once
            for name, key in ((MANIFEST, "manifest"), (index.INDEX, "index")):
                cut(self.out_dir / name, sizes[key])
            raise
        self.offsets = offsets
        self._save()
        return records

    def recorded(self) -> dict[str, dict]:
        """source -> Record (as a dict) of every record in the parts (read whole: for the few rows that never came)."""
        return {e["record"]["source"]: e["record"] for p in self.dir.glob("block-*.jsonl")
                for e in read_lines(p)[0] if "record" in e}  # fmt: skip

    def close(self, complete: bool = False) -> None:
        """Stop merging; ``complete`` (every block ran to its end): :func:`recover` finishes and removes the parts."""
        self.manifest.close()
        if complete:
            recover(self.out_dir)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _state(folder: Path) -> dict | None:
    """``merged.json``, or None where it is missing or damaged (then merges compare lines: ``Merger.known``)."""
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and isinstance(state.get("parts"), dict)
    ok = ok and all(isinstance(state.get(k), int) and state[k] >= 0 for k in ("manifest", "index"))
    ok = ok and all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in state["parts"].items())
    return state if ok else None


def finish_block(out_dir: Path, path: Path, keep_open: bool = False) -> None:
    """What a block's part recorded and its actor did not finish (a killed actor or driver): recorded temporary
    files renamed into place, the open shard cut back to its last recorded sample and finished (its line logged),
    a shard finished without its line given one. Call only when no actor works on the block.

    ``keep_open`` (a rerun of the block, by the actor that goes on with it): the open shard is only cut back and
    stays open, so the rerun appends to it under the same name. A block so never uses more shard numbers than its
    samples fill (``ceil(rows / shard_size)``), whatever its deaths, and cannot reach the next block's numbers."""
    entries, _ = read_lines(path)
    log = BlockLog.of(entries)
    for e in entries:
        if "record" in e and e.get("tmp"):
            rename(out_dir, e["tmp"], e["record"]["output"])
    block = int(path.stem.rpartition("-")[2])
    opened, name = open_shard(out_dir, block), log.shard
    rows = None
    if name is not None and opened.is_file():
        with open(opened, "r+b") as f:
            if f.seek(0, 2) > log.end:
                f.truncate(log.end)  # samples written after the last recorded one are not trusted
        if keep_open:
            return
        rows = [{**r, "shard": name} for r in index.shard_rows(opened)]
        shards.finish(opened, out_dir / name)
    elif name is not None and (out_dir / name).is_file():  # finished, then killed before its line
        rows = index.shard_rows(out_dir / name)
    if rows is not None:
        with open(path, "ab") as f:
            f.write((json_text({"shard": name, "rows": rows}) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    with contextlib.suppress(FileNotFoundError):
        opened.unlink()  # nothing recorded in it


def recover(out_dir: str | Path) -> bool:
    """Merge what a Ray run left in ``OUT_DIR/.slowfast-parts`` and remove the folder (call with the output lock
    held, before planning); whether there was anything. A merge cut short is cut off first (``merged.json``)."""
    out_dir = Path(out_dir)
    folder = out_dir / PARTS
    _remove(out_dir / DONE)  # merged already: a removal cut short
    if not folder.is_dir():
        return False
    state = _state(folder)
    if state is not None:
        for name, key in ((MANIFEST, "manifest"), (index.INDEX, "index")):
            cut(out_dir / name, state[key])
    try:
        for path in sorted(folder.glob("block-*.jsonl")):
            finish_block(out_dir, path)
        merger = Merger(out_dir)
        try:
            merger.merge()
        finally:
            merger.manifest.close()
        os.replace(folder, out_dir / DONE)  # at once: a part left behind would be merged a second time
    except OSError as exc:
        raise SlowfastError(f"{folder}: cannot finish the parts a Ray run left ({exc.strerror or exc})") from None
    _remove(out_dir / DONE)
    return True


def _remove(path: Path) -> None:
    """Remove a folder, or a file or symlink in its place (never what a symlink points to)."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
