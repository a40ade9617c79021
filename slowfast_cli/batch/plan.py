"""Planning a batch: the output folder and its lock, the resume rules, and the plan both engines run.

An existing output is skipped only when it is complete, intact (CRC-32) and made from the same video with the same
settings (``provenance``); what differs is reported, never silently kept or replaced. See ``plan_batch``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, SlowfastError
from ..formats import OutputHeader, make_writer, read_output_header
from ..header import TMP_PREFIX, ForeignFile
from ..provenance import differences, file_fingerprint
from .listing import Listing, find_videos, matches, read_files_from
from .parts import recover
from .records import Record
from .table import read_table

if TYPE_CHECKING:
    from ..formats.writers import Writer

RESERVED = ".slowfast"  # OUT_DIR names slowfast keeps for itself: temporary files, the lock, the Ray run's parts
TEMP_SUFFIXES = (".pt", ".json", ".safetensors", ".tar", ".jsonl")  # what atomic writes leave when interrupted
LOCK = ".slowfast.lock"


class OutputLock:
    """An exclusive ``flock`` on ``OUT_DIR/.slowfast.lock``, held for a whole batch run.

    A second run into the same folder stops at once with a message naming the first (its PID, host, start time
    and command, which the holder writes into the lock file); stale temporary files are removed only while the
    lock is held, so a run never deletes another's file in flight. The lock is released when the process ends,
    however it ends (kill -9 included); the file stays. ``flock`` is local to one machine on many network file
    systems: two machines writing one OUT_DIR are not protected.
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SlowfastError(f"{self.path}: is a symlink; slowfast does not write through it") from None
            raise SlowfastError(f"{self.path.parent}: output folder is not writable ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1000, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise SlowfastError(
                f"{self.path.parent}: another slowfast batch is writing to this folder ({holder}); wait for it to "
                "finish, or choose another output folder"
            ) from None
        try:
            who = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}"
            text = f"{who}: {' '.join(map(os.fsdecode, sys.argv))}"[:900]
            os.ftruncate(fd, 0)
            os.pwrite(fd, text.encode("utf-8", "backslashreplace") + b"\n", 0)
        except OSError as exc:
            os.close(fd)
            raise SlowfastError(f"{self.path.parent}: output folder is not writable ({exc.strerror or exc})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def prepare_output_dir(root: Path, out_dir: Path) -> None:
    """Create ``out_dir``, refusing what cannot be an output folder: the input folder itself, or a file."""
    try:
        out_dir.exists()
    except OSError as exc:  # ENAMETOOLONG and the like: Path.exists raises them on Python 3.11
        raise ConfigError(f"{out_dir}: not a usable output folder name ({exc.strerror or exc})") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder; -o must name a folder for the token files")
    if out_dir.is_dir() and out_dir.resolve() == root.resolve():
        raise ConfigError(
            f"{out_dir}: is the input folder; token files need a folder of their own (e.g. -o {out_dir}/tokens)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlowfastError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None


def case_insensitive(folder: Path) -> bool:
    """Whether ``folder``'s file system folds case (the lock file is then also found under its upper-case name)."""
    return (folder / LOCK.upper()).exists()


def clean_stale_temp_files(out_dir: Path) -> int:
    """Delete temporary files left by an interrupted run (only ours, by their prefix). Call with the lock held."""
    n = 0
    for p in out_dir.rglob(f"{TMP_PREFIX}*"):
        if p.suffix not in TEMP_SUFFIXES:  # ours end as the file they stand for; a video so named is not ours
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def existing_output(
    path: Path, current: dict | None, source: Path | None = None, verify: bool = True
) -> tuple[str, str | None]:
    """What an existing output file (``.pt`` or ``.safetensors``) is for resume; see :func:`judge_output`."""
    return judge_output(lambda: read_output_header(path, verify), path, current, source)


def judge_output(
    read: Callable[[], OutputHeader],
    path: Path | str,
    current: dict | None,
    source: Path | None = None,
    stored: str | None = None,
) -> tuple[str, str | None]:
    """What an existing output is for resume: ``("done", None)``, ``("damaged", why)``, ``("stale", why)``,
    ``("foreign", why)`` (a readable archive of something else, such as weights: never replaced unasked) or
    ``("other", what differs)``. ``read`` gives its header (``formats.read_output_header`` or a shard's sample).

    Done means it reads as a complete token file whose every byte passes its CRC-32 check (when ``read`` verifies),
    was made from ``source`` as it is now (same file name, same size in bytes), and (when ``current`` is given) with
    the same provenance (see ``provenance.py``) and stored in the dtype ``stored`` (``--save-dtype``, else the one
    computed in). Stale means it was made from another video, or from this one before it changed: it is redone.
    """
    try:
        header = read()
    except ForeignFile as exc:  # someone's weights or tensors where an output goes: never replaced unasked
        return "foreign", str(exc)
    except SlowfastError as exc:
        return "damaged", str(exc)
    meta = header.meta
    if source is not None:
        made_from = meta.get("source")
        video = meta["video"] if isinstance(meta.get("video"), dict) else {}
        recorded = video.get("bytes")
        if not isinstance(made_from, str) or Path(made_from).name != source.name:
            return "stale", f"{path}: made from another video ({made_from!r}), not {source.name!r}"
        try:
            st = source.stat()
        except OSError:
            st = None
        size = st.st_size if st else None
        if recorded is not None and size is not None and recorded != size:
            return "stale", f"{path}: made from an earlier version of {source.name} ({recorded} bytes, now {size})"
        fingerprint = video.get("fingerprint")
        touched = st and isinstance(fingerprint, str) and video.get("mtime_ns") != st.st_mtime_ns  # or replaced
        read_fingerprint = getattr(source, "fingerprint", None) or (lambda: file_fingerprint(source))  # URL: ranged
        if touched and read_fingerprint() != fingerprint:
            return "stale", f"{path}: made from another video of the same size as {source.name} (its bytes differ)"
    if current is not None:
        diff = differences(meta.get("provenance"), current)
        if diff:
            return "other", "; ".join(diff)
        wanted = stored or current.get("dtype")
        if wanted and header.dtype != wanted:
            return "other", f"stored dtype: {header.dtype} -> {wanted}"
    return "done", None


@dataclass
class BatchPlan:
    root: Path
    out_dir: Path
    todo: list[tuple[Path, Path]]  # (relative source, relative output)
    records: list[Record]  # skipped and collisions, known before any decoding
    problems: list[str]  # listing problems and damaged outputs that will be redone: reported, never fatal
    lock: OutputLock | None = None  # held from planning to the end of the run
    unverified: set[Path] = field(default_factory=set)  # sources in todo whose existing output awaits its CRC check
    writer: Writer | None = None  # the output format's writer (``formats``), loaded under the lock
    columns: dict[Path, dict] = field(default_factory=dict)  # extra columns per source, from a CSV/JSONL list

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.records)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> BatchPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def plan_batch(
    root: Path,
    out_dir: Path,
    pattern: str | None = None,
    overwrite: bool = False,
    provenance: dict | None = None,
    files_from: Path | None = None,
    verify: bool = True,
    writer: Writer | None = None,
) -> BatchPlan:
    """Lock ``out_dir``, list the videos, map them to outputs, find what is already done and which outputs collide.

    Resume rules: an existing output is skipped only if it is complete, intact (CRC-32) and made with the same
    ``provenance`` (when given); a damaged one is redone and reported in ``problems``. Outputs made with other
    settings are not silently kept nor silently replaced: without ``overwrite`` planning stops with a
    ``ConfigError`` that names what differs, ``--overwrite`` and a new output folder.
    The returned plan holds the lock on ``out_dir``; release it (``with plan_batch(...) as plan``) when done.

    ``files_from`` names a list of inputs (see :func:`read_files_from`) used instead of walking ``root``.
    ``writer`` (``formats.make_writer``; default ``pt``) names the outputs and reads the existing ones.
    ``verify=False`` leaves the CRC-32 check of outputs that look done to the engine: they stay in ``todo``, listed
    in ``plan.unverified``, and the engine skips each one that passes (the Ray engine checks them on the nodes).
    """
    root = Path(root) if isinstance(root, (str, os.PathLike)) else root  # or a URL: remote.RemotePath
    out_dir = Path(out_dir)
    if not root.is_dir():
        raise SlowfastError(f"{root}: not a folder")
    writer = writer or make_writer(None, out_dir)
    listing = None
    if files_from is not None:  # its errors come first
        table = Path(files_from).suffix.lower() in (".csv", ".jsonl")
        listing = read_table(files_from, root, writer) if table else read_files_from(files_from, root)
    prepare_output_dir(root, out_dir)
    lock = OutputLock(out_dir).acquire()
    try:
        plan = _plan(root, out_dir, pattern, overwrite, provenance, listing, verify, writer)
    except BaseException:
        lock.release()
        raise
    plan.lock = lock
    return plan


def _plan(
    root: Path,
    out_dir: Path,
    pattern: str | None,
    overwrite: bool,
    current: dict | None,
    listing: Listing | None = None,
    verify: bool = True,
    writer: Writer | None = None,
) -> BatchPlan:
    recover(out_dir)  # what a Ray run left in its parts is merged first (its temporary files renamed into place)
    clean_stale_temp_files(out_dir)
    writer = writer or make_writer(None, out_dir)
    writer.load()
    verify = verify or writer.in_shards  # a shard's samples are read here, by the process that holds the shards
    problems: list[str] = []
    if listing is None:
        listing = find_videos(root, pattern)
    elif pattern:
        listing.videos = [v for v in listing.videos if matches(v, pattern)]
    if isinstance(root, Path) and out_dir.resolve().is_relative_to(root.resolve()):
        inside = out_dir.resolve().relative_to(root.resolve())
        kept = [v for v in listing.videos if not v.is_relative_to(inside)]
        if len(kept) < len(listing.videos):  # never re-encoded, and never silently
            problems.append(f"{len(listing.videos) - len(kept)} video(s) under the output folder {out_dir} "
                            "(inside IN_DIR) are not encoded")  # fmt: skip
        listing.videos = kept
    fold = case_insensitive(out_dir)
    mixed = other_format(writer, out_dir, listing.videos, listing.keys) if not overwrite else None
    if mixed is not None:
        raise ConfigError(
            f"{out_dir}: holds {mixed} from a run in another format; --format {writer.name} would mix formats in one "
            "folder (report and the Dataset would count videos twice): use that run's --format, or a new output folder"
        )
    todo, records, claimed, other, unverified = [], [], {}, [], set()
    problems = list(listing.problems) + problems
    foreign: list[str] = []
    for rel in listing.videos:
        out_rel = writer.output(rel, listing.keys.get(rel))
        if any(part.startswith(RESERVED) for part in out_rel.parts):  # cleanup would take it for one of ours
            msg = f"{rel}: its output {out_rel} would be named like slowfast's own files ({RESERVED}*); rename it"
            records.append(Record.failed(rel, out_rel, msg, "collision"))
            continue
        key = str(out_rel).lower() if fold else str(out_rel)  # A.mp4 and a.mkv: one file only where case folds
        if key in claimed:
            msg = f"{rel}: same output {out_rel} as {claimed[key]}; rename one of them"
            records.append(Record.failed(rel, out_rel, msg, "collision"))
            continue
        claimed[key] = rel
        if not overwrite and _exists(writer, out_rel):
            read = functools.partial(writer.read_existing, out_rel, verify)  # what is there now
            state, why = judge_output(read, out_dir / out_rel, current, root / rel, writer.save_dtype)
            if state == "done" and verify:
                records.append(Record.skipped(rel, out_rel))
                continue
            if state == "done":
                unverified.add(rel)  # the engine checks it and skips it
            elif state in ("damaged", "stale"):
                problems.append(f"{why}; it is redone")
            elif state == "foreign":
                foreign.append(why)
            else:
                other.append((out_rel, why))
        todo.append((rel, out_rel))
    if foreign:
        raise ConfigError(
            f"{out_dir}: {len(foreign)} file(s) where token files would go are another program's (e.g. {foreign[0]});"
            " slowfast does not replace them: move them away, pass --overwrite, or choose a new output folder"
        )
    if other:
        first, why = other[0]
        raise ConfigError(
            f"{out_dir}: {len(other)} existing token file(s) were made with other settings than this run's (e.g. "
            f"{first}: {why}); pass --overwrite to redo them with these settings, or choose a new output folder"
        )
    columns = {rel: listing.columns[rel] for rel, _ in todo if rel in listing.columns}
    return BatchPlan(root, out_dir, todo, records, problems, unverified=unverified, writer=writer, columns=columns)


FILE_FORMATS = {".pt": "pt", ".safetensors": "safetensors"}


def other_format(writer: Writer, out_dir: Path, videos: list[Path], keys: dict) -> str | None:
    """What in ``out_dir`` another format's run left for these videos (a shard, or a token file under the other
    suffix), or None: the first one found, in words."""
    if not out_dir.is_dir():
        return None
    if not writer.in_shards:
        shard = next(out_dir.glob("shard-*.tar"), None)
        if shard is not None:
            return f"webdataset shards ({shard.name})"
    suffixes = [s for s in FILE_FORMATS if s != writer.suffix]
    for rel in videos:
        key = keys.get(rel)
        for suffix in suffixes:
            other = out_dir / (Path(key + suffix) if key is not None else rel.with_suffix(suffix))
            if _there(other):
                return f"{FILE_FORMATS[suffix]} token files ({other.relative_to(out_dir)})"
    return None


def _there(path: Path) -> bool:
    """``path.exists()``, False for a name the file system cannot hold (a 250-character video name is a 262-character
    ``.safetensors`` name): such an output cannot be there, and writing it is that video's own ``write`` failure."""
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return False


def _exists(writer: Writer, out_rel: Path) -> bool:
    """Whether an output (a file, a link, or a sample in a shard) is there for ``out_rel``."""
    if writer.in_shards:
        return writer.has(out_rel)
    return _there(writer.out_dir / out_rel)
