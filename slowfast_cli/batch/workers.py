"""Decoding worker processes for ``slowfast batch`` (both engines: the Ray engine runs one inside each task).

Design: the main process owns the model; N worker processes (spawned, so none inherits torch's threads) each
decode one video at a time and send back uint8 frames (not floats: 4x less to copy), through a shared memory block
(``SharedFrames``; the pipe carries its name) when they are large and /dev/shm has room, else pickled through the
pipe. Every worker has its own
pair of pipes (a killed worker can only break its own), and a worker gets its next video only when its last
one was read, so at most N + 1 decoded clips exist at once. A worker that runs past the per-video timeout is
killed and replaced, and so is one that dies (a decoder crash); in both cases that video becomes a recorded
failure and the batch goes on. Workers ignore
SIGINT: Ctrl-C reaches the main process, which stops them. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait as wait_any
from typing import Any

from ..errors import SlowfastError
from ..remote import load_any
from .faults import test_fault

SHM_MIN_BYTES = 1 << 20  # frames smaller than this go through the pipe: a shared block costs two page-fault runs
SHM_ROOM = 4  # a block only when /dev/shm has this many times its size free (a full tmpfs kills with SIGBUS)
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class SharedFrames:
    """A clip's uint8 frames (``shape``) left by a decode worker in the shared memory block ``name``: the main
    process copies them out and removes the block (``take_frames``): less of the main process's CPU than unpickling
    them from the pipe (BENCHMARKS.md section 17)."""

    name: str
    shape: tuple[int, ...]


def share_frames(clip):
    """``clip`` with its frames moved into a new shared memory block, or ``clip`` itself when the frames are small,
    /dev/shm is short of room (or absent) or the block cannot be made: the pipe then carries them."""
    from multiprocessing import shared_memory

    import numpy as np

    frames = clip.frames
    try:
        st = os.statvfs(SHM_DIR)
        if frames.nbytes < SHM_MIN_BYTES or st.f_bavail * st.f_frsize < SHM_ROOM * frames.nbytes:
            return clip
        shm = shared_memory.SharedMemory(create=True, size=frames.nbytes)
    except OSError:
        return clip
    try:
        np.ndarray(frames.shape, np.uint8, buffer=shm.buf)[...] = frames
    except BaseException:
        shm.close()
        shm.unlink()
        raise
    shm.close()
    return replace(clip, frames=SharedFrames(shm.name, tuple(frames.shape)))


def take_frames(clip):
    """``clip`` with its frames copied out of their shared memory block, which is removed; any other clip as it is.
    A block that is gone (a cleanup of /dev/shm) raises SlowfastError: that video's failure."""
    shared = clip.frames
    if not isinstance(shared, SharedFrames):
        return clip
    from multiprocessing import shared_memory

    import numpy as np

    try:
        shm = shared_memory.SharedMemory(name=shared.name)
    except OSError as exc:
        raise SlowfastError(f"{clip.info.path}: its decoded frames were lost ({exc.strerror or exc})") from None
    try:
        frames = np.ndarray(shared.shape, np.uint8, buffer=shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()
    return replace(clip, frames=frames)


def _worker_main(inbox, outbox, video_cfg, image_size: int | None, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # decord's C++ logs "ERROR opening ..." itself; the error we send back says it once
    from ..video.decode import DECODE_RESIZE_MIN, load_clip

    while True:
        try:
            job = inbox.recv()
        except EOFError:
            return
        if job is None:
            return
        job_id, path = job
        t0 = time.perf_counter()
        test_fault("decode", path)
        try:
            clip = load_any(path, lambda p: load_clip(p, video_cfg, image_size, num_threads=threads,
                                                      min_scale=DECODE_RESIZE_MIN))  # fmt: skip
            outbox.send((job_id, "ok", share_frames(clip), time.perf_counter() - t0))
        except SlowfastError as exc:
            outbox.send((job_id, "error", str(exc), time.perf_counter() - t0))
        except Exception as exc:  # a decoder bug must not take the batch down; report it as this video's failure
            outbox.send((job_id, "error", f"{path}: decoding failed ({type(exc).__name__}: {exc})", 0.0))


@dataclass
class _Worker:
    process: Any
    inbox: Any  # main's sending end
    outbox: Any  # main's receiving end
    job: tuple[int, Any] | None = None  # (job id, payload) being decoded
    started: float = 0.0


@dataclass
class Done:
    job_id: int
    payload: Any  # what was submitted
    ok: bool
    clip: Any = None  # video.Clip when ok
    error: str | None = None
    kind: str | None = None  # "timeout" / "crash" for failures the pool itself detected
    seconds: float = 0.0


@dataclass
class DecodePool:
    """A small process pool with per-job timeouts and crash replacement; see the module docstring."""

    video_cfg: Any
    image_size: int | None
    workers: int = 2
    timeout: float = 120.0
    threads: int = 1
    _ctx: Any = field(default=None, init=False)
    _pool: list[_Worker] = field(default_factory=list, init=False)
    _pending: list[tuple[int, Any, str]] = field(default_factory=list, init=False)
    _next_id: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._pool = [self._spawn() for _ in range(max(1, self.workers))]

    def _spawn(self) -> _Worker:
        in_recv, in_send = self._ctx.Pipe(duplex=False)
        out_recv, out_send = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(
            target=_worker_main,
            args=(in_recv, out_send, self.video_cfg, self.image_size, self.threads),
            daemon=True,
        )
        p.start()
        in_recv.close()
        out_send.close()
        return _Worker(p, in_send, out_recv)

    def submit(self, payload: Any, path: str) -> int:
        """Queue one video; returns its job id."""
        job_id = self._next_id
        self._next_id += 1
        self._pending.append((job_id, payload, path))
        self._dispatch()
        return job_id

    @property
    def busy(self) -> int:
        return sum(w.job is not None for w in self._pool) + len(self._pending)

    def _dispatch(self) -> None:
        for w in self._pool:
            if w.job is None and self._pending:
                job_id, payload, path = self._pending.pop(0)
                w.job, w.started = (job_id, payload), time.monotonic()
                w.inbox.send((job_id, path))

    def _replace(self, w: _Worker) -> None:
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=5)
        w.inbox.close()
        w.outbox.close()
        i = self._pool.index(w)
        self._pool[i] = self._spawn()

    def get(self, wait: float = 0.2) -> list[Done]:
        """Collect finished jobs (blocking up to ``wait`` seconds for the first), detect timeouts and crashes."""
        done: list[Done] = []
        busy = {w.outbox: w for w in self._pool if w.job is not None}
        for conn in wait_any(list(busy), timeout=wait) if busy else []:
            w = busy[conn]
            try:
                job_id, status, value, seconds = conn.recv()
            except (EOFError, OSError):
                continue  # the worker died mid-answer: found dead just below
            done.append(self._finish(w, job_id, status, value, seconds))
        if not busy:
            time.sleep(min(wait, 0.05))
        now = time.monotonic()
        for w in list(self._pool):
            if w.job is None:
                continue
            job_id, payload = w.job
            if not w.process.is_alive():
                code = w.process.exitcode
                why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                done.append(Done(job_id, payload, False, error=f"decoder process crashed ({why})", kind="crash"))
                w.job = None
                self._replace(w)
            elif now - w.started > self.timeout:
                msg = f"decoding took longer than --timeout {self.timeout:g}s; the worker was stopped"
                done.append(Done(job_id, payload, False, error=msg, kind="timeout", seconds=now - w.started))
                w.job = None
                self._replace(w)
        self._dispatch()
        return done

    def _finish(self, w: _Worker, job_id: int, status: str, value: Any, seconds: float) -> Done:
        payload = w.job[1]
        w.job = None
        if seconds > self.timeout:  # came back, but slower than allowed: the same verdict as a hung decode
            msg = f"decoding took {seconds:.2f}s, longer than --timeout {self.timeout:g}s"
            return Done(job_id, payload, False, error=msg, kind="timeout", seconds=seconds)
        if status == "ok":
            try:
                return Done(job_id, payload, True, clip=take_frames(value), seconds=seconds)
            except SlowfastError as exc:
                return Done(job_id, payload, False, error=str(exc), seconds=seconds)
        return Done(job_id, payload, False, error=value, seconds=seconds)

    def close(self) -> None:
        for w in self._pool:
            if w.job is not None and w.process.is_alive():
                w.process.kill()  # mid-decode: its answer is no longer wanted
            else:
                with contextlib.suppress(OSError):
                    w.inbox.send(None)
        deadline = time.monotonic() + 2
        for w in self._pool:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout=5)
            w.inbox.close()
            w.outbox.close()
        self._pool.clear()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
