"""``slowfast batch``: every video under a folder to a token file, resumable, nothing lost on bad input.

``run_batch`` is a generator of :class:`Record` (one per video attempt) so the CLI can draw progress while the
library never prints. Decoding runs in worker processes (``workers.DecodePool``) while this process runs the
model. Outputs mirror the input tree (``a/b.mp4`` -> ``OUT/a/b.pt``) and are written atomically; every attempt
is one line of ``OUT/manifest.jsonl``, and ``OUT/report.json`` summarises the folder at the end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import re
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .config import Config
from .errors import ConfigError, SlowfastError, first_line
from .header import TMP_PREFIX, read_token_header
from .io import json_text, sigint_deferred
from .provenance import differences

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
MANIFEST = "manifest.jsonl"
REPORT = "report.json"
LOCK = ".slowfast.lock"


@dataclass
class Record:
    source: str  # path relative to the input folder
    output: str | None  # path relative to the output folder
    status: str  # ok | failed | skipped
    error: str | None = None
    kind: str | None = None  # error kind, for the failure counts in report.json
    seconds: float = 0.0
    frames: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        """One JSON line; file names that are not valid UTF-8 survive as ``\\udcXX`` escapes (``io.json_text``)."""
        return json_text(asdict(self))


@dataclass
class Listing:
    videos: list[Path]  # relative to the root, sorted
    problems: list[str]  # unreadable folders, symlink loops: reported, never fatal


def matches(rel: Path, pattern: str) -> bool:
    """``pattern`` (a glob) matches the relative path or the file name, in any case, like the extensions do."""
    pattern = pattern.lower()
    return fnmatch.fnmatchcase(str(rel).lower(), pattern) or fnmatch.fnmatchcase(rel.name.lower(), pattern)


def find_videos(root: Path, pattern: str | None = None) -> Listing:
    """Videos under ``root`` (recursive, following symlinks once per real folder), filtered by ``pattern``.

    ``pattern`` is a glob matched against the path relative to ``root`` and against the file name
    (``*.mp4``, ``clips/**``, ``cam1_*``), in any case (``*.mov`` matches ``s2.MOV``), as the extensions are.
    """
    root = Path(root)
    videos, problems, seen = [], [], set()

    def onerror(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot be listed ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            problems.append(f"{dirpath}: already visited (symlink loop), skipped")
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(TMP_PREFIX) or not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            rel = Path(dirpath, name).relative_to(root)
            if pattern and not matches(rel, pattern):
                continue
            videos.append(rel)
    return Listing(sorted(videos, key=lambda p: p.parts), problems)  # as Path order, compared in C


def output_path(rel: Path) -> Path:
    """``a/b.mp4`` -> ``a/b.pt``."""
    return rel.with_suffix(".pt")


KINDS = [  # (kind, pattern in the message), first match wins
    ("missing", r"does not exist|no such file"),
    ("empty", r"is empty|zero bytes|0 bytes"),
    ("no_video_stream", r"no video stream|audio only|audio-only"),
    ("truncated", r"damaged video data"),  # before not_a_video: its decoder's reason may say "invalid data"
    ("not_a_video", r"not a (readable )?video|cannot open|invalid data|not readable|unsupported"),
    ("truncated", r"truncat|decodable|corrupt|damaged"),
    ("timeout", r"--timeout"),
    ("crash", r"crashed"),
    ("collision", r"same output"),
    ("encode", r"non-finite tokens"),
    ("write", r"cannot write"),
]


def error_kind(message: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, message, re.IGNORECASE):
            return kind
    return "other"


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
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def existing_output(
    path: Path, current: dict | None, source: Path | None = None, verify: bool = True
) -> tuple[str, str | None]:
    """What an existing output is for resume: ``("done", None)``, ``("damaged", why)``, ``("stale", why)`` or
    ``("other", what differs)``.

    Done means it reads as a complete token file whose every byte passes the zip's CRC-32 check, was made from
    ``source`` as it is now (same file name, same size in bytes), and (when ``current`` is given) with the same
    provenance (see ``provenance.py``). Stale means it was made from another video, or from this one before it
    changed: it is redone. ``verify=False`` reads the header only and skips the CRC-32 check of every byte (the
    Ray engine runs that check in its tasks, on the nodes, not on the driver).
    """
    try:
        meta = read_token_header(path, verify=verify)["meta"]
    except SlowfastError as exc:
        return "damaged", str(exc)
    if source is not None:
        made_from = meta.get("source")
        recorded = meta.get("video", {}).get("bytes") if isinstance(meta.get("video"), dict) else None
        if not isinstance(made_from, str) or Path(made_from).name != source.name:
            return "stale", f"{path}: made from another video ({made_from!r}), not {source.name!r}"
        try:
            size = source.stat().st_size
        except OSError:
            size = None
        if recorded is not None and size is not None and recorded != size:
            return "stale", f"{path}: made from an earlier version of {source.name} ({recorded} bytes, now {size})"
    if current is not None:
        diff = differences(meta.get("provenance"), current)
        if diff:
            return "other", "; ".join(diff)
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
) -> BatchPlan:
    """Lock ``out_dir``, list the videos, map them to outputs, find what is already done and which outputs collide.

    Resume rules: an existing output is skipped only if it is complete, intact (CRC-32) and made with the same
    ``provenance`` (when given); a damaged one is redone and reported in ``problems``. Outputs made with other
    settings are not silently kept nor silently replaced: without ``overwrite`` planning stops with a
    ``ConfigError`` that names what differs, ``--overwrite`` and a new output folder.
    The returned plan holds the lock on ``out_dir``; release it (``with plan_batch(...) as plan``) when done.

    ``files_from`` names a list of inputs (see :func:`read_files_from`) used instead of walking ``root``.
    ``verify=False`` leaves the CRC-32 check of outputs that look done to the engine: they stay in ``todo``, listed
    in ``plan.unverified``, and the engine skips each one that passes (the Ray engine checks them on the nodes).
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise SlowfastError(f"{root}: not a folder")
    listing = read_files_from(files_from, root) if files_from is not None else None  # its errors come first
    prepare_output_dir(root, out_dir)
    lock = OutputLock(out_dir).acquire()
    try:
        plan = _plan(root, out_dir, pattern, overwrite, provenance, listing, verify)
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
) -> BatchPlan:
    clean_stale_temp_files(out_dir)
    if listing is None:
        listing = find_videos(root, pattern)
    elif pattern:
        listing.videos = [v for v in listing.videos if matches(v, pattern)]
    if out_dir.resolve().is_relative_to(root.resolve()):
        inside = out_dir.resolve().relative_to(root.resolve())
        listing.videos = [v for v in listing.videos if not v.is_relative_to(inside)]
    fold = case_insensitive(out_dir)
    todo, records, claimed, problems, other, unverified = [], [], {}, list(listing.problems), [], set()
    for rel in listing.videos:
        out_rel = output_path(rel)
        key = str(out_rel).lower() if fold else str(out_rel)  # A.mp4 and a.mkv: one file only where case folds
        if key in claimed:
            msg = f"{rel}: same output {out_rel} as {claimed[key]}; rename one of them"
            records.append(Record(str(rel), str(out_rel), "failed", msg, "collision"))
            continue
        claimed[key] = rel
        target = out_dir / out_rel
        if not overwrite and (target.exists() or target.is_symlink()):
            state, why = existing_output(target, current, root / rel, verify)
            if state == "done" and verify:
                records.append(skipped_record(rel, out_rel))
                continue
            if state == "done":
                unverified.add(rel)  # the engine checks it and skips it
            elif state in ("damaged", "stale"):
                problems.append(f"{why}; it is redone")
            else:
                other.append((out_rel, why))
        todo.append((rel, out_rel))
    if other:
        first, why = other[0]
        raise ConfigError(
            f"{out_dir}: {len(other)} existing token file(s) were made with other settings than this run's (e.g. "
            f"{first}: {why}); pass --overwrite to redo them with these settings, or choose a new output folder"
        )
    return BatchPlan(root, out_dir, todo, records, problems, unverified=unverified)


def skipped_record(rel: Path, out_rel: Path) -> Record:
    return Record(str(rel), str(out_rel), "skipped", "already done (use --overwrite to redo)")


def read_files_from(path: Path, root: Path) -> Listing:
    """``--files-from``: the inputs listed in a file, one path per line, relative to ``root`` (absolute paths
    inside ``root`` are accepted too), instead of walking the folder, which is how a list of millions is given.

    Lines are taken as bytes, so any file name the file system allows works (non-UTF-8 ones included); only the
    line end (``\n`` or ``\r\n``) is cut, not spaces. Empty lines and lines starting with ``#`` are skipped,
    a path listed twice counts once, and the list's order does not matter (outputs are planned sorted). A listed
    file that does not exist is that video's ``missing`` failure, as any unreadable video is; its extension is
    not checked (a listed file is meant). A path outside ``root`` is a usage error naming its line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read --files-from ({exc.strerror or exc})") from None
    root_abs = Path(os.path.abspath(root))
    videos: set[Path] = set()
    for n, raw in enumerate(data.split(b"\n"), 1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw
        if not raw or raw.startswith(b"#"):
            continue
        name = os.fsdecode(raw)
        p = Path(name)
        if p.is_absolute():
            absolute = Path(os.path.abspath(p))
            if not absolute.is_relative_to(root_abs):
                raise ConfigError(f"{path}:{n}: {name!r} is not inside {root}; list paths relative to IN_DIR")
            p = absolute.relative_to(root_abs)
        if ".." in p.parts or not p.parts or p == Path("."):
            raise ConfigError(f"{path}:{n}: {name!r} is not a file inside {root}; list paths relative to IN_DIR")
        videos.add(p)
    return Listing(sorted(videos, key=lambda p: p.parts), [])


class Manifest:
    """Append-only ``manifest.jsonl``: each record is one complete line, written with one append and fsynced.

    A line that cannot be written whole (a full disk) is cut back off, so the file never ends in a torn line,
    and the failure is a ``SlowfastError`` naming the manifest and the reason: the batch stops there.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            why = "is a symlink; slowfast does not write through it" if exc.errno == errno.ELOOP else exc.strerror
            raise SlowfastError(f"{path}: cannot write ({why or exc})") from None
        try:
            self._cut_torn_line()
        except OSError as exc:
            os.close(self._fd)
            raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None

    def _cut_torn_line(self) -> None:
        """A run killed mid-append leaves a last line without its newline: cut it off before appending."""
        size = os.fstat(self._fd).st_size
        if size == 0 or os.pread(self._fd, 1, size - 1) == b"\n":
            return
        start = max(0, size - (1 << 16))
        tail = os.pread(self._fd, size - start, start)
        keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
        if keep == 0 and start > 0:  # a line longer than 64 KiB: find its start the slow way
            with open(self.path, "rb") as f:
                keep = f.read(size).rfind(b"\n") + 1
        os.ftruncate(self._fd, keep)

    def write(self, record: Record) -> None:
        data = (record.to_json() + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise SlowfastError(f"{self.path}: cannot write ({exc.strerror or exc}); the batch stopped here") from None

    def close(self) -> None:
        os.close(self._fd)


def read_manifest(path: Path) -> list[dict]:
    """All complete lines of a manifest (a torn last line from a killed run is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def run_batch(
    plan: BatchPlan,
    config: Config,
    workers: int = 2,
    timeout: float = 120.0,
    fail_fast: bool = False,
    pipeline=None,
    engine=None,
) -> Iterator[Record]:
    """Encode every video of ``plan``; yields a Record per attempt (also appended to the manifest).

    ``engine`` is None for the local engine (``engine_local``: decoding processes here, the model in this
    process) or a connected ``engine_ray.RayEngine``. Both give the same records and files; see
    :func:`record_all` for what an interrupt leaves.
    """
    if engine is None:
        from .engine_local import local_outcomes

        outcomes = local_outcomes(plan, config, workers, timeout, pipeline)
    else:
        outcomes = engine.outcomes(plan, config, timeout)
    return record_all(plan, outcomes, fail_fast)


def record_all(plan: BatchPlan, outcomes: Iterator, fail_fast: bool = False) -> Iterator[Record]:
    """Write the plan's known records, then finish each engine outcome; yield every record once it is recorded.

    An outcome is a callable that puts its video's token file in place (or does nothing, for a failure) and
    returns its Record. Ctrl-C is held while an outcome is finished and its manifest line appended, so an
    interrupt leaves either both or neither; the generator then yields that record and raises KeyboardInterrupt.
    A manifest line that cannot be written takes its token file back (a rerun redoes it) and stops the batch.
    """
    manifest = Manifest(plan.out_dir / MANIFEST)
    try:
        for r in plan.records:
            manifest.write(r)
            yield r
            if fail_fast and r.status == "failed":
                return
        for finish in outcomes:
            with sigint_deferred(reraise=False) as held:
                record = finish()
                try:
                    manifest.write(record)
                except SlowfastError:  # written but not recorded: take it back, a rerun redoes it
                    if record.status == "ok":
                        with contextlib.suppress(OSError):
                            (plan.out_dir / record.output).unlink()
                    raise
            yield record
            if held.pending:
                raise KeyboardInterrupt
            if fail_fast and record.status == "failed":
                return
    finally:
        close = getattr(outcomes, "close", None)
        try:
            if close is not None:
                close()  # the engine stops its workers
        finally:
            manifest.close()


def decode_failure(done, rel: Path, out_rel: Path) -> Record:
    """The failure Record of a video that did not decode (``workers.Done`` with ``ok`` False)."""
    msg = done.error if str(rel) in (done.error or "") else f"{rel}: {done.error}"
    return Record(str(rel), str(out_rel), "failed", msg, done.kind or error_kind(msg), done.seconds)


def encode_one(done, rel: Path, out_rel: Path, root: Path, pipe):
    """The EncodeResult of a decoded video, or the failure Record of one that did not decode or encode."""
    if not done.ok:
        return decode_failure(done, rel, out_rel)
    try:
        result = pipe.encode_clip(done.clip, timings={"decode": done.seconds})
    except SlowfastError as exc:
        return Record(str(rel), str(out_rel), "failed", str(exc), error_kind(str(exc)))
    except Exception as exc:  # torch's errors (out of memory, a kernel), any bug: this video fails, the batch goes on
        msg = f"{rel}: encoding failed ({type(exc).__name__}: {first_line(exc, 200)})"
        return Record(str(rel), str(out_rel), "failed", msg, "encode")
    result.meta["source"] = str(root / rel)
    return result


def write_failure(exc: BaseException, rel: Path, out_rel: Path) -> Record:
    msg = str(exc) if isinstance(exc, SlowfastError) else f"{out_rel}: cannot write ({exc.strerror or exc})"
    return Record(str(rel), str(out_rel), "failed", msg, "write")


def ok_record(meta: dict, rel: Path, out_rel: Path) -> Record:
    m = meta
    return Record(str(rel), str(out_rel), "ok", None, None, 0.0, m["frames"], m["input_tokens"], m["output_tokens"])


def write_one(result, rel: Path, out_rel: Path, out_dir: Path) -> Record:
    """Write one token file in place; a failure of the disk is this video's ``write`` failure."""
    from .pipeline import write_result

    target = out_dir / out_rel
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_result(result, target)
    except (SlowfastError, OSError) as exc:
        return write_failure(exc, rel, out_rel)
    return ok_record(result.meta, rel, out_rel)


def batch_report(
    out_dir: Path,
    records: list[Record],
    problems: list[str],
    interrupted: bool = False,
    folder: bool = True,
    engine: dict | None = None,
) -> dict:
    """What ``report.json`` holds: the folder's token statistics (as ``slowfast report --json``) plus this run's
    counts. ``folder=False`` leaves the statistics empty (``run.folder_counted: false``), for a run interrupted while
    they were being counted. ``engine`` describes the engine (``run.engine``)."""
    from .report import Report, build_report

    # outputs were verified when planned, or just written: headers are enough here
    report = (build_report(out_dir, verify=False) if folder else Report()).to_dict()
    report["run"] = {
        "attempts": len(records),
        "ok": sum(r.status == "ok" for r in records),
        "failed": sum(r.status == "failed" for r in records),
        "skipped": sum(r.status == "skipped" for r in records),
        "failures_by_kind": dict(Counter(r.kind or "other" for r in records if r.status == "failed")),
        "failed_files": [r.source for r in records if r.status == "failed"],
        "listing_problems": problems,
        "interrupted": interrupted,
        "folder_counted": folder,
        "engine": engine or {"name": "local"},  # which engine ran, and for Ray the work done per node
    }
    return report
