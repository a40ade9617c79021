"""The one writer of token outputs, per format: ``encode``, ``batch`` (local and Ray engines) and ``export`` write
through it, so every format gets the same atomicity, resume and records.

A writer maps a video to its output name (:meth:`output`), reads what is already there for resume
(:meth:`read_existing`), stamps the sample's meta (:meth:`sample_meta`: key, extra columns, stored dtype) and puts
tokens in place in two steps that may run in different processes: :meth:`pending` writes the sample to a temporary
file in OUT_DIR (on any node), :meth:`commit` puts it in place (in the one process that records it, with Ctrl-C
held by the caller). :meth:`write` is both at once. :meth:`finish` ends a complete run (the last shard).

- ``pt`` / ``safetensors``: one file per video, renamed over its target (``atomic``): complete or absent.
- ``webdataset``: samples appended to the hidden open shard (fsynced, so a recorded sample survives a kill -9),
  which becomes ``shard-NNNNNN.tar`` when it holds ``shard_size`` samples (or when a complete run ends), and its
  lines go into ``index.jsonl``. A resumed run continues the open shard after cutting off a torn tail. A redone
  sample that is in a finished shard goes into a new shard; the index names its newest copy.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from ..atomic import sigint_deferred, temp_file
from ..errors import ConfigError, SlowfastError
from . import index, shards
from .base import OutputFormat, OutputHeader, check_shape, read_output_header
from .safetensors_file import check_crc, encode, parse_header


def _cast(tokens: Any, save_dtype: str | None) -> Any:
    if save_dtype is None:
        return tokens
    import torch

    return tokens.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[save_dtype])


def _cannot_write(path: Path, exc: OSError) -> SlowfastError:
    return SlowfastError(f"{path}: cannot write ({exc.strerror or exc})")


class Writer:
    """The interface every format implements (see the module docstring); this base writes one file per video."""

    name = "pt"
    suffix = ".pt"
    in_shards = False  # outputs are files of their own (True: samples inside shards, read by the planning process)

    def __init__(self, fmt: OutputFormat, out_dir: Path):
        self.fmt, self.out_dir = fmt, Path(out_dir)

    @property
    def save_dtype(self) -> str | None:
        return self.fmt.save_dtype

    # --- planning --------------------------------------------------------------------------------------------
    def output(self, rel: Path, key: str | None = None) -> Path:
        """The output of the video at ``rel`` (relative to IN_DIR): ``a/b.mp4`` -> ``a/b.pt``, or ``KEY.pt``."""
        return Path(key + self.suffix) if key is not None else rel.with_suffix(self.suffix)

    def load(self) -> None:
        """Read what OUT_DIR already holds (call with the output lock held, before :meth:`read_existing`)."""

    def read_existing(self, out_rel: Path, verify: bool) -> OutputHeader | None:
        """What the output ``out_rel`` holds now, or None when there is none; raises ``SlowfastError`` for a damaged
        one (``header.ForeignFile`` for another program's file)."""
        target = self.out_dir / out_rel
        if not (target.exists() or target.is_symlink()):
            return None
        return read_output_header(target, verify)

    # --- writing ---------------------------------------------------------------------------------------------
    def sample_meta(self, meta: dict, out_rel: Path, columns: dict | None = None) -> dict:
        """``meta`` with what this output adds: ``key`` and ``columns`` (given by a CSV/JSONL ``--files-from``),
        ``save_dtype`` (``--save-dtype``). Nothing is added to a plain run's meta (``pt`` bytes are unchanged)."""
        meta = dict(meta)
        if columns is not None:
            meta["key"] = self.key_of(out_rel)
            meta["columns"] = columns
        if self.save_dtype is not None:
            meta["save_dtype"] = self.save_dtype
        return meta

    def key_of(self, out_rel: Path) -> str:
        return str(Path(out_rel).with_suffix(""))

    def _bytes_or_object(self, tokens: Any, meta: dict) -> Any:
        from ..tokenfile import token_object

        return token_object(_cast(tokens, self.save_dtype), meta)

    def pending(self, tokens: Any, meta: dict, out_rel: Path) -> str:
        """Write the sample to a new temporary file beside its target; returns its name (see :meth:`commit`)."""
        from ..tokenfile import save_pending

        target = self.out_dir / out_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return save_pending(target, self._bytes_or_object(tokens, meta))

    def commit(self, tmp: str, out_rel: Path) -> None:
        """Put the temporary file of :meth:`pending` in place (raises OSError, FileNotFoundError included)."""
        os.replace(tmp, self.out_dir / out_rel)

    def write(self, tokens: Any, meta: dict, out_rel: Path) -> None:
        """Write the sample in place atomically; a disk error is a ``SlowfastError`` naming the file."""
        from ..tokenfile import save_all

        target = self.out_dir / out_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        save_all([(target, self._bytes_or_object(tokens, meta))])

    def discard(self, out_rel: Path) -> None:
        """Take a written sample back (its manifest line could not be written: a rerun redoes it)."""
        with contextlib.suppress(OSError):
            (self.out_dir / out_rel).unlink()

    def finish(self) -> None:
        """A complete run ends: nothing to do for one file per video."""


class SafetensorsWriter(Writer):
    name = "safetensors"
    suffix = ".safetensors"

    def pending(self, tokens: Any, meta: dict, out_rel: Path) -> str:
        target = self.out_dir / out_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with temp_file(target) as (f, tmp):
                f.writelines(encode(_cast(tokens, self.save_dtype), meta))
        except OSError as exc:
            raise _cannot_write(target, exc) from None
        return tmp

    def write(self, tokens: Any, meta: dict, out_rel: Path) -> None:
        tmp = self.pending(tokens, meta, out_rel)
        try:
            with sigint_deferred():
                self.commit(tmp, out_rel)
        except OSError as exc:
            raise _cannot_write(self.out_dir / out_rel, exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class WebdatasetWriter(Writer):
    name = "webdataset"
    suffix = ""
    in_shards = True
    auto_finish = True  # finish a shard once it holds shard_size samples (a Ray block's writer: its owner does)

    def __init__(self, fmt: OutputFormat, out_dir: Path):
        super().__init__(fmt, out_dir)
        self.open_path = self.out_dir / shards.OPEN
        self.rows: dict[str, dict] = {}  # key -> its index line (finished shards)
        self.open: dict[str, shards.Sample] = {}  # key -> sample in the open shard
        self.next_number = 0
        self._last: tuple[str, int] | None = None  # the last sample appended and where it starts

    def output(self, rel: Path, key: str | None = None) -> Path:
        """A sample's key: ``KEY`` from the list, or ``a/b.mp4`` -> ``a/b`` (dots in the name become ``_``: webdataset
        takes a member's key to end at the first dot of its file name)."""
        if key is not None:
            return Path(key)
        return rel.with_name(rel.with_suffix("").name.replace(".", "_"))

    def key_of(self, out_rel: Path) -> str:
        return str(out_rel)

    def sample_meta(self, meta: dict, out_rel: Path, columns: dict | None = None) -> dict:
        meta = super().sample_meta(meta, out_rel, columns)
        meta["key"] = self.key_of(out_rel)
        return meta

    def load(self) -> None:
        self.rows = index.latest(index.reconcile(self.out_dir))
        numbers = [shards.shard_number(p.name) for p in shards.shards_in(self.out_dir)]
        self.next_number = max(numbers, default=-1) + 1
        if self.open_path.is_file():
            self.open = {s.key: s for s in shards.recover(self.open_path)}

    def has(self, out_rel: Path) -> bool:
        key = self.key_of(out_rel)
        return key in self.open or key in self.rows

    def read_existing(self, out_rel: Path, verify: bool) -> OutputHeader | None:
        key = self.key_of(out_rel)
        if key in self.open:
            m = self.open[key].members["safetensors"]
            where, offset, size = self.open_path, m.data, m.size
        elif key in self.rows:
            r = self.rows[key]
            where, offset, size = self.out_dir / r["shard"], r["offset"], r["size"]
        else:
            return None
        name = f"{where.name}:{key}"
        try:
            with open(where, "rb") as f:
                f.seek(offset)
                h = parse_header(f, size, name)
                if verify:
                    check_crc(f, h, name)
        except OSError as exc:
            raise SlowfastError(f"{name}: cannot be read ({exc.strerror or exc})") from None
        return check_shape(OutputHeader(h.shape, h.dtype, h.meta), name)

    def pending(self, tokens: Any, meta: dict, out_rel: Path) -> str:
        """The sample as a temporary ``.safetensors`` file in OUT_DIR (its meta inside), for :meth:`commit`."""
        try:
            with temp_file(self.out_dir / "sample.safetensors") as (f, tmp):
                f.writelines(encode(_cast(tokens, self.save_dtype), meta))
        except OSError as exc:
            raise _cannot_write(self.out_dir, exc) from None
        return tmp

    def commit(self, tmp: str, out_rel: Path) -> None:
        with open(tmp, "rb") as f:
            data = f.read()
        self._append(self.key_of(out_rel), [data])
        os.unlink(tmp)

    def write(self, tokens: Any, meta: dict, out_rel: Path) -> None:
        try:
            with sigint_deferred():
                self._append(self.key_of(out_rel), encode(_cast(tokens, self.save_dtype), meta))
        except OSError as exc:
            raise _cannot_write(self.open_path, exc) from None

    def _append(self, key: str, data: list[bytes | memoryview]) -> None:
        """Append one sample (a token safetensors file, in parts) to the open shard; finish the shard when full."""
        import io

        meta = parse_header(io.BytesIO(data[0]), sum(len(d) for d in data), key).meta  # the header is in part 0
        if key in self.open:  # redone: its old copy leaves the open shard
            kept = shards.without(self.open_path, list(self.open.values()), key)
            self.open = {s.key: s for s in kept}
        member_data, sample = shards.sample_bytes(key, data, meta)
        start = shards.append(self.open_path, member_data)
        self._last = (key, start)
        self.open[key] = shards.moved(sample, start)
        if self.auto_finish and len(self.open) >= self.fmt.shard_size:
            self._finish_open()

    def _finish_open(self) -> None:
        """Give the open shard its final name and hand its samples' lines to :meth:`_finished`."""
        name = shards.shard_name(self.next_number)
        rows = [{**r, "shard": name} for r in index.shard_rows(self.open_path)]
        shards.finish(self.open_path, self.out_dir / name)
        self.next_number += 1
        self.open, self._last = {}, None
        self._finished(name, rows)

    def _finished(self, name: str, rows: list[dict]) -> None:
        """A shard got its final name: its lines go into the index."""
        index.append(self.out_dir / index.INDEX, rows)
        self.rows.update(index.latest(rows))

    def discard(self, out_rel: Path) -> None:
        key = self.key_of(out_rel)
        if self._last is not None and self._last[0] == key and key in self.open:
            with contextlib.suppress(OSError):
                shards.cut(self.open_path, self._last[1])
                del self.open[key]
            self._last = None

    def finish(self) -> None:
        """A complete run ends: the open shard, however few samples it holds, becomes the last shard."""
        if self.open:
            with sigint_deferred():
                self._finish_open()
        elif self.open_path.exists():
            with contextlib.suppress(OSError):
                self.open_path.unlink()


WRITERS = {"pt": Writer, "safetensors": SafetensorsWriter, "webdataset": WebdatasetWriter}


def check_key(key: str, where: str, fmt: str) -> str:
    """A sample key from a ``--files-from`` table: a relative name without ``..`` (and, for webdataset, no dot in
    its last part: webdataset would cut the key there)."""
    p = Path(key)
    if not key or p.is_absolute() or ".." in p.parts or key.endswith("/") or "\0" in key:
        raise ConfigError(f"{where}: key {key!r} must be a relative name without '..'")
    if fmt == "webdataset" and "." in p.name:
        raise ConfigError(f"{where}: key {key!r} has a dot in its name; webdataset would cut the key there")
    return key
