"""``slowfast batch``: every video under a folder to a token file, resumable, nothing lost on bad input.

``run_batch`` is a generator of :class:`Record` (one per video attempt) so the CLI can draw progress while the
library never prints. Decoding runs in worker processes (``workers.DecodePool``) while this process runs the
model. Outputs mirror the input tree (``a/b.mp4`` -> ``OUT/a/b.pt``) and are written atomically; every attempt
is one line of ``OUT/manifest.jsonl``, and ``OUT/report.json`` summarises the folder at the end.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .config import Config
from .errors import SlowfastError, first_line
from .header import TMP_PREFIX, read_token_header
from .io import atomic_open, write_json

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
MANIFEST = "manifest.jsonl"
REPORT = "report.json"


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
        return json.dumps(asdict(self), ensure_ascii=False)


@dataclass
class Listing:
    videos: list[Path]  # relative to the root, sorted
    problems: list[str]  # unreadable folders, symlink loops: reported, never fatal


def find_videos(root: Path, pattern: str | None = None) -> Listing:
    """Videos under ``root`` (recursive, following symlinks once per real folder), filtered by ``pattern``.

    ``pattern`` is a glob matched against the path relative to ``root`` and against the file name
    (``*.mp4``, ``clips/**``, ``cam1_*``).
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
            if pattern and not (fnmatch.fnmatch(str(rel), pattern) or fnmatch.fnmatch(name, pattern)):
                continue
            videos.append(rel)
    return Listing(sorted(videos), problems)


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
    ("write", r"cannot write"),
]


def error_kind(message: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, message, re.IGNORECASE):
            return kind
    return "other"


def check_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable, before any work."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(out_dir / ".slowfast-write-check", "wb") as f:
            f.write(b"ok")
        (out_dir / ".slowfast-write-check").unlink()
    except OSError as exc:
        raise SlowfastError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None


def clean_stale_temp_files(out_dir: Path) -> int:
    """Delete temporary files left by an interrupted run (only ours, by their prefix)."""
    n = 0
    for p in out_dir.rglob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def is_complete(path: Path) -> bool:
    """An existing output counts as done only if it reads as a complete token file (its header, and tensor data of
    the right size); a partial or corrupt one is redone."""
    try:
        read_token_header(path)
        return True
    except SlowfastError:
        return False


@dataclass
class BatchPlan:
    root: Path
    out_dir: Path
    todo: list[tuple[Path, Path]]  # (relative source, relative output)
    records: list[Record]  # skipped and collisions, known before any decoding
    problems: list[str]

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.records)


def plan_batch(root: Path, out_dir: Path, pattern: str | None = None, overwrite: bool = False) -> BatchPlan:
    """List the videos, map them to outputs, find what is already done and which outputs collide."""
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise SlowfastError(f"{root}: not a folder")
    check_output_dir(out_dir)
    clean_stale_temp_files(out_dir)
    listing = find_videos(root, pattern)
    if out_dir.resolve().is_relative_to(root.resolve()):
        inside = out_dir.resolve().relative_to(root.resolve())
        listing.videos = [v for v in listing.videos if not v.is_relative_to(inside)] if str(inside) != "." else []
    todo, records, claimed = [], [], {}
    for rel in listing.videos:
        out_rel = output_path(rel)
        key = str(out_rel).lower()  # case-insensitive file systems map A.mp4 and a.mkv to one file too
        if key in claimed:
            msg = f"{rel}: same output {out_rel} as {claimed[key]}; rename one of them"
            records.append(Record(str(rel), str(out_rel), "failed", msg, "collision"))
            continue
        claimed[key] = rel
        if not overwrite and (out_dir / out_rel).exists() and is_complete(out_dir / out_rel):
            records.append(Record(str(rel), str(out_rel), "skipped", "already done (use --overwrite to redo)"))
            continue
        todo.append((rel, out_rel))
    return BatchPlan(root, out_dir, todo, records, listing.problems)


class Manifest:
    """Append-only ``manifest.jsonl``: each record is one complete line written with a single write and fsync."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: Record) -> None:
        self._f.write(record.to_json() + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


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
) -> Iterator[Record]:
    """Encode every video of ``plan``; yields a Record per attempt (also appended to the manifest)."""
    from .pipeline import Pipeline, write_result
    from .workers import DecodePool

    manifest = Manifest(plan.out_dir / MANIFEST)
    try:
        for r in plan.records:
            manifest.write(r)
            yield r
            if fail_fast and r.status == "failed":
                return
        if not plan.todo:
            return
        pipe = pipeline or Pipeline(config)
        threads = 1 if workers > 1 else 0
        with DecodePool(config.video, pipe.image_size, workers, timeout, threads) as pool:
            jobs = iter(plan.todo)
            for _ in range(max(1, workers) * 2):  # keep every worker busy plus one clip ready per worker
                job = next(jobs, None)
                if job is None:
                    break
                pool.submit(job, str(plan.root / job[0]))
            while pool.busy:
                for done in pool.get():
                    rel, out_rel = done.payload
                    record = _finish_one(done, rel, out_rel, plan, pipe, write_result)
                    manifest.write(record)
                    yield record
                    if fail_fast and record.status == "failed":
                        return
                    job = next(jobs, None)
                    if job is not None:
                        pool.submit(job, str(plan.root / job[0]))
    finally:
        manifest.close()


def _finish_one(done, rel: Path, out_rel: Path, plan: BatchPlan, pipe, write_result) -> Record:
    if not done.ok:
        msg = done.error if str(rel) in (done.error or "") else f"{rel}: {done.error}"
        return Record(str(rel), str(out_rel), "failed", msg, done.kind or error_kind(msg), done.seconds)
    t0 = time.perf_counter()
    try:
        result = pipe.encode_clip(done.clip, timings={"decode": done.seconds})
        result.meta["source"] = str(plan.root / rel)
        target = plan.out_dir / out_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_result(result, target)
    except SlowfastError as exc:
        msg = str(exc)
        return Record(str(rel), str(out_rel), "failed", msg, error_kind(msg), done.seconds)
    except OSError as exc:
        msg = f"{out_rel}: cannot write ({exc.strerror or exc})"
        return Record(str(rel), str(out_rel), "failed", msg, "write", done.seconds)
    except RuntimeError as exc:  # torch's errors (out of memory, a kernel failure): this video fails, the batch goes on
        msg = f"{rel}: encoding failed ({type(exc).__name__}: {first_line(exc, 200)})"
        return Record(str(rel), str(out_rel), "failed", msg, "encode", done.seconds)
    m = result.meta
    return Record(str(rel), str(out_rel), "ok", None, None, done.seconds + time.perf_counter() - t0, m["frames"],
                  m["input_tokens"], m["output_tokens"])  # fmt: skip


def write_report(out_dir: Path, records: list[Record], problems: list[str], interrupted: bool = False) -> dict:
    """``report.json``: the folder's token statistics (as ``slowfast report --json``) plus this run's counts."""
    from .report import build_report

    report = build_report(out_dir).to_dict()
    report["run"] = {
        "attempts": len(records),
        "ok": sum(r.status == "ok" for r in records),
        "failed": sum(r.status == "failed" for r in records),
        "skipped": sum(r.status == "skipped" for r in records),
        "failures_by_kind": dict(Counter(r.kind or "other" for r in records if r.status == "failed")),
        "failed_files": [r.source for r in records if r.status == "failed"],
        "listing_problems": problems,
        "interrupted": interrupted,
    }
    write_json(out_dir / REPORT, report)
    return report
