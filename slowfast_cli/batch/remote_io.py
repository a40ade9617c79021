"""A batch whose IN_DIR, OUT_DIR or ``--files-from`` is a URL (``s3://``, ``gs://``, any fsspec URL; ``remote.py``).

``places`` turns the three into what planning and the engines take, for the length of one run, and cleans up after
it however it ends (Ctrl-C and errors included):

- IN_DIR: a ``remote.RemotePath``, listed by the store; each video is downloaded by the decoding process that
  decodes it, right before, into a temporary folder of the run (``remote.fetched``), and its token file records
  the URL and the object's size, time and fingerprint, so resume works as for local files.
- ``--files-from``: downloaded once, then read as a local list (lines relative to IN_DIR, or full URLs inside it).
- OUT_DIR: a local staging folder that mirrors it (``RemoteOutputs``): the outputs already there are downloaded
  first (resume checks them as it does local ones: CRC-32 of every byte), each new token file is uploaded the
  moment it is written, whole (``UploadingWriter``), and the manifest and report follow (the manifest every
  ``MANIFEST_EVERY`` seconds and at the end; ``Places.save_state``: when the store refuses them at the end, they are
  kept in a local folder the run names). What this does not guarantee is in README "Object storage".

``StoreWatch`` stops a run whose store went away mid-run instead of failing every remaining video in turn.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SlowfastError
from ..formats import is_output
from ..remote import (
    FETCH_DIR,
    RemotePath,
    create,
    download,
    download_all,
    is_url,
    list_files,
    local_path,
    read_bytes,
    remove,
    upload,
)
from .records import MANIFEST
from .run import REPORT

STAGING = "slowfast-remote-"  # + PID: the run's temporary folder (staging, downloads), in the system's temp folder
UNSENT = "slowfast-unsent-"  # + PID: a manifest and report the store refused at the end, kept (never swept)
LOCK = ".slowfast.lock"  # as batch.plan.LOCK
STORE_DOWN = ("the storage endpoint does not answer", "the store refused the credentials")  # remote.store_error
STORE_DOWN_RUN = 8  # videos in a row failing so: the store is gone, the run stops (StoreWatch)
MANIFEST_EVERY = 30.0  # seconds between uploads of manifest.jsonl during a run (and once at its end)
STATE = (MANIFEST,)  # OUT_DIR files besides the outputs that a run continues (report.json is rewritten)


class StoreWatch:
    """Stops a run whose store went away (or whose credentials expired) mid-run: ``STORE_DOWN_RUN`` videos in a row
    that failed because the store does not answer or refuses the credentials raise a SlowfastError saying so (the
    run then ends as one stopped by an error: report written, exit 1, rerun to resume), instead of every remaining
    video failing in turn, a few seconds each. Any other outcome starts the count again."""

    def __init__(self) -> None:
        self.run = 0

    def see(self, record: Any) -> None:
        if record.status != "failed" or not any(text in (record.error or "") for text in STORE_DOWN):
            self.run = 0
            return
        self.run += 1
        if self.run >= STORE_DOWN_RUN:
            raise SlowfastError(f"{self.run} videos in a row failed because the store does not answer or refuses the "
                                f"credentials (the last: {record.error}); the run stopped")  # fmt: skip


class RemoteLock:
    """``OUT_DIR/.slowfast.lock`` as an object created only if absent (a conditional PUT), naming its holder as the
    local lock file does; removed when the run ends. A run killed with kill -9 leaves it: a later run on the same
    machine takes it over when the holder's process is gone, any other says how to remove it."""

    def __init__(self, url: RemotePath):
        self.url = url / LOCK
        self.held = False

    def acquire(self) -> RemoteLock:
        who = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}"
        text = f"{who}: {' '.join(map(os.fsdecode, sys.argv))}"[:900]
        for _ in range(2):
            if create(self.url, text.encode("utf-8", "backslashreplace")):
                self.held = True
                return self
            try:
                holder = read_bytes(self.url).decode("utf-8", "replace").strip() or "another process"
            except ConfigError:  # released between the two requests (it said "does not exist"): try again
                continue
            if not _orphaned(holder):
                raise SlowfastError(
                    f"{self.url.url.rpartition('/')[0]}: another slowfast batch is writing to this folder ({holder}); "
                    f"wait for it to finish, or choose another output folder (if none is running: delete {self.url})"
                )
            remove(self.url)  # its holder was killed on this machine: take it over
        raise SlowfastError(f"{self.url}: another run took the lock at the same moment; try again")

    def release(self) -> None:
        if self.held:
            remove(self.url)
            self.held = False


def _orphaned(holder: str) -> bool:
    """Whether a lock's holder text names a process of this machine that no longer runs."""
    m = re.match(r"pid (\d+) on (\S+) since", holder)
    return bool(m) and m[2] == socket.gethostname() and not _alive(int(m[1]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans() -> None:
    """Remove the staging folders of runs on this machine whose process is gone (kill -9 leaves them)."""
    folder = Path(tempfile.gettempdir())
    for entry in folder.glob(f"{STAGING}*"):
        m = re.match(rf"{STAGING}(\d+)-", entry.name)
        if m and int(m[1]) != os.getpid() and not _alive(int(m[1])):
            shutil.rmtree(entry, ignore_errors=True)


class RemoteOutputs:
    """A remote OUT_DIR through a local staging folder (see the module docstring)."""

    def __init__(self, url: RemotePath, local: Path):
        self.url, self.local = url, local
        self.pushed = time.monotonic()

    def check(self) -> None:
        """Refuse a URL that names an object, or a bucket that does not exist (before the lock is taken)."""
        if self.url.exists() and not self.url.is_dir():
            raise ConfigError(f"{self.url}: exists and is not a folder; -o must name a folder for the token files")
        self.url.check_bucket()

    def pull(self) -> int:
        """Download the outputs and the manifest already at the URL into the staging folder; how many files."""
        self.local.mkdir(parents=True, exist_ok=True)
        wanted = [rel for rel in list_files(self.url) if _ours(rel)]
        download_all(self.url, wanted, self.local)
        return len(wanted)

    def put(self, rel: Path | str) -> None:
        """Upload one staged file (complete: written and renamed into place locally) to its name under the URL."""
        upload(self.local / rel, self.url / rel)

    def drop(self, rel: Path | str) -> None:
        remove(self.url / rel)

    def push_state(self, force: bool = True) -> None:
        """Upload the manifest and the report when they are there (``force=False``: at most every MANIFEST_EVERY s)."""
        if not force and time.monotonic() - self.pushed < MANIFEST_EVERY:
            return
        for name in (*STATE, REPORT):
            if (self.local / name).is_file():
                self.put(name)
        self.pushed = time.monotonic()

    def shown(self, text: str) -> str:
        """``text`` with the staging folder's name replaced by the URL (messages name what the user gave)."""
        return text.replace(str(self.local), str(self.url))


def _ours(rel: str) -> bool:
    name = rel.rpartition("/")[2]
    return not name.startswith(".slowfast") and (is_output(name) or rel in STATE)


class UploadingWriter:
    """A format's writer (``formats.writers``) whose every output, once in place in the staging folder, is uploaded
    whole to the remote OUT_DIR before the video counts as written; a failed upload is that video's ``write``
    failure (the staged copy is removed, so the report never counts it)."""

    def __init__(self, inner: Any, outputs: RemoteOutputs):
        if inner.in_shards:
            raise ConfigError(
                f"{outputs.url}: --format {inner.name} appends to shards in place, which object storage cannot do; "
                "use --format pt or safetensors for a URL, or a local OUT_DIR"
            )
        self.inner, self.outputs = inner, outputs

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "outputs"):  # not yet set (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _upload(self, out_rel: Path) -> None:
        try:
            self.outputs.put(out_rel)
        except SlowfastError as exc:
            with contextlib.suppress(OSError):
                (self.inner.out_dir / out_rel).unlink()
            raise SlowfastError(f"{self.outputs.url / out_rel}: cannot write ({exc})") from None
        with contextlib.suppress(SlowfastError):  # the video is written; the manifest goes again later, and at the end
            self.outputs.push_state(force=False)

    def _staged(self, out_rel: Path, write: Any) -> None:
        """``write()`` of the staged copy; its failure names the URL and the staging folder (on TMPDIR's disk)."""
        try:
            write()
        except (SlowfastError, OSError) as exc:
            why = str(exc) if isinstance(exc, SlowfastError) else exc.strerror or str(exc)
            why = re.sub(r"^.*: cannot write \((.*)\)$", r"\1", why)  # a writer's "STAGED: cannot write (REASON)"
            url, why = self.outputs.url / out_rel, self.outputs.shown(why)
            full = any(os.strerror(code) in why for code in (errno.ENOSPC, errno.EDQUOT))
            raise SlowfastError(f"{url}: cannot write its local copy ({why}) in the staging folder {self.outputs.local}"
                                + ("; TMPDIR chooses that disk" if full else "")) from None  # fmt: skip

    def write(self, tokens: Any, meta: dict, out_rel: Path) -> None:
        self._staged(out_rel, lambda: self.inner.write(tokens, meta, out_rel))
        self._upload(out_rel)

    def commit(self, tmp: str, out_rel: Path) -> None:
        self._staged(out_rel, lambda: self.inner.commit(tmp, out_rel))
        self._upload(out_rel)

    def discard(self, out_rel: Path) -> None:
        self.inner.discard(out_rel)
        self.outputs.drop(out_rel)


@dataclass
class Places:
    """Where one run reads and writes: ``root`` (a Path or a RemotePath), the local ``out_dir`` (the staging folder
    for a URL), a local ``files_from``, and ``outputs`` when OUT_DIR is a URL."""

    root: Any
    out_dir: Path
    files_from: Path | None = None
    outputs: RemoteOutputs | None = None
    names: dict[str, str] = field(default_factory=dict)  # local temporary name -> the URL the user gave
    settled: bool = False  # save_state was called: the end of ``places`` does not upload them again

    @property
    def remote(self) -> bool:
        return bool(self.names) or isinstance(self.root, RemotePath)

    def writer(self, writer: Any) -> Any:
        return UploadingWriter(writer, self.outputs) if self.outputs is not None else writer

    def shown(self, text: str) -> str:
        for local, url in self.names.items():
            text = text.replace(local, url)
        return text

    def save_state(self) -> str | None:
        """Upload a URL OUT_DIR's manifest and report now (once the report is written): None when done or nothing
        to do; else a line saying why not and the local folder they are copied to, since the staging folder goes
        with the run (the bucket's manifest would otherwise lose this run's lines without a word)."""
        self.settled = True
        if self.outputs is None:
            return None
        try:
            self.outputs.push_state()
        except SlowfastError as exc:
            kept = Path(tempfile.mkdtemp(prefix=f"{UNSENT}{os.getpid()}-"))
            for name in (*STATE, REPORT):
                with contextlib.suppress(OSError):
                    shutil.copy2(self.outputs.local / name, kept / name)
            return f"{exc}; this run's manifest.jsonl and report.json are kept in {kept} (upload them by hand)"
        return None


def as_place(text: str | Path) -> str | Path:
    """A command-line IN_DIR, OUT_DIR or list: a URL as it is (``Path`` would fold ``s3://`` into ``s3:/``), a local
    name (``file://`` removed) as a Path."""
    text = str(text)
    return text if is_url(text) else Path(local_path(text))


@contextlib.contextmanager
def places(in_dir: str | Path, output: str | Path, files_from: str | Path | None = None) -> Iterator[Places]:
    """The run's ``Places`` (see the module docstring); the staging and download folders are removed at the end."""
    if not any(is_url(str(p)) for p in (in_dir, output, files_from) if p is not None):
        yield Places(Path(in_dir), Path(output), Path(files_from) if files_from is not None else None)
        return
    if is_url(str(in_dir)) and is_url(str(output)) and RemotePath(str(in_dir)) == RemotePath(str(output)):
        raise ConfigError(f"{output}: is the input folder; token files need a folder of their own "
                          f"(e.g. -o {str(output).rstrip('/')}/tokens)")  # fmt: skip
    sweep_orphans()
    temp = Path(tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-"))
    before = os.environ.get(FETCH_DIR)
    result = Places(Path(in_dir), Path(output))
    lock = None
    try:
        (temp / "fetch").mkdir()
        os.environ[FETCH_DIR] = str(temp / "fetch")  # decoding processes started from here put their copies there
        if is_url(str(in_dir)):
            result.root = RemotePath(str(in_dir))
            if not result.root.is_dir():
                what = "is a file, not a folder" if result.root.exists() else "no such folder (no object under it)"
                raise ConfigError(f"{in_dir}: {what}")
        if files_from is not None and is_url(str(files_from)):
            listed = RemotePath(str(files_from))
            result.files_from = temp / "list" / (listed.name or "files")
            download(listed, result.files_from)
            result.names[str(result.files_from)] = str(files_from)
        elif files_from is not None:
            result.files_from = Path(files_from)
        if is_url(str(output)):
            result.outputs = RemoteOutputs(RemotePath(str(output)), temp / "out")
            result.outputs.check()
            lock = RemoteLock(result.outputs.url).acquire()
            result.outputs.pull()
            result.out_dir = result.outputs.local
            result.names[str(result.out_dir)] = str(output)
        pushed = False
        try:
            yield result
            if result.outputs is not None and not result.settled:
                result.outputs.push_state()
            pushed = True
        finally:
            if not pushed and not result.settled and result.outputs is not None and result.outputs.local.is_dir():
                with contextlib.suppress(SlowfastError):  # a run that stopped early: keep what it recorded
                    result.outputs.push_state()
    except SlowfastError as exc:
        raise type(exc)(result.shown(str(exc))) from None
    finally:
        if lock is not None:
            with contextlib.suppress(SlowfastError):
                lock.release()
        if before is None:
            os.environ.pop(FETCH_DIR, None)
        else:
            os.environ[FETCH_DIR] = before
        shutil.rmtree(temp, ignore_errors=True)
