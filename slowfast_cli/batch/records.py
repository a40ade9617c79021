"""What a batch records: one ``Record`` per video attempt, its failure kind, and the append-only manifest."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..atomic import json_text
from ..errors import SlowfastError

MANIFEST = "manifest.jsonl"


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
        """One JSON line; file names that are not valid UTF-8 survive as ``\\udcXX`` escapes (``atomic.json_text``)."""
        return json_text(asdict(self))

    @classmethod
    def ok(cls, meta: dict, rel: Path, out_rel: Path, seconds: float = 0.0) -> Record:
        """A video written: its counts from the token file's ``meta``."""
        return cls(str(rel), str(out_rel), "ok", seconds=seconds, frames=meta["frames"],
                   input_tokens=meta["input_tokens"], output_tokens=meta["output_tokens"])  # fmt: skip

    @classmethod
    def skipped(cls, rel: Path, out_rel: Path) -> Record:
        """A video whose output is already done (resume)."""
        return cls(str(rel), str(out_rel), "skipped", "already done (use --overwrite to redo)")

    @classmethod
    def failed(cls, rel: Path, out_rel: Path, error: str, kind: str | None = None, seconds: float = 0.0) -> Record:
        """A failed video; ``kind`` defaults to the one its message names (:func:`error_kind`)."""
        return cls(str(rel), str(out_rel), "failed", error, kind or error_kind(error), seconds)

    @classmethod
    def write_failed(cls, exc: BaseException, rel: Path, out_rel: Path) -> Record:
        """A video whose token file the disk refused (full, read-only, name too long): a ``write`` failure."""
        msg = str(exc) if isinstance(exc, SlowfastError) else f"{out_rel}: cannot write ({exc.strerror or exc})"
        return cls.failed(rel, out_rel, msg, "write")

    @classmethod
    def decode_failed(cls, done, rel: Path, out_rel: Path) -> Record:
        """A video that did not decode (``workers.Done`` with ``ok`` False), named in its message."""
        msg = done.error if str(rel) in (done.error or "") else f"{rel}: {done.error}"
        return cls.failed(rel, out_rel, msg, done.kind, done.seconds)


KINDS = [  # (kind, pattern in the message), first match wins
    ("mismatch", r"sees another file"),  # before missing: a Ray node that sees another copy of IN_DIR
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


class Manifest:
    """Append-only ``manifest.jsonl``: each record is one complete line, written with one append and fsynced (a
    batch of lines at once: :meth:`write_all`).

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
        self.write_all([record.to_json()])

    def write_all(self, lines: list[str]) -> None:
        """Append JSON lines (``Record.to_json``) with one write and one fsync (the Ray driver's merges)."""
        if not lines:
            return
        data = "".join(line + "\n" for line in lines).encode("utf-8")
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
