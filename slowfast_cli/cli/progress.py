"""Feedback while a command works: plain progress lines where stderr is not a terminal (Slurm, nohup, ``| tee``),
and a status for the stages of one video (loading the model, decoding, encoding).

On a terminal ``batch`` draws a rich bar (``output.progress_bar``); elsewhere :class:`ProgressLines` writes one line
every ``SLOWFAST_PROGRESS_SECONDS`` seconds (default 30): done/total, failures, videos/s and frames/s over the
videos attempted (resumed ones done at planning are not a rate), elapsed time and the time left at that rate.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from .output import err, shown, stage_spinner

PROGRESS_SECONDS = 30.0  # between two progress lines, where stderr is not a terminal (SLOWFAST_PROGRESS_SECONDS)


def progress_seconds() -> float:
    """``SLOWFAST_PROGRESS_SECONDS`` when set to a number >= 0, else the default."""
    try:
        value = float(os.environ.get("SLOWFAST_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS
    return value if value >= 0 else PROGRESS_SECONDS


def clock(seconds: float) -> str:
    """``H:MM:SS``."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLines:
    """Plain progress lines on stderr, at most one per ``every`` seconds (see the module docstring)."""

    def __init__(self, total: int, what: str = "videos", every: float | None = None):
        self.total, self.what = total, what
        self.every = progress_seconds() if every is None else every
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, attempted: int, failed: int, frames: int) -> None:
        """``done`` of ``total`` finished (skipped included), ``attempted`` of them worked on, ``frames`` decoded."""
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = attempted / elapsed if elapsed > 0 else 0.0
        eta = clock((self.total - done) / rate) if rate > 0 else "?"
        pct = 100 * done / self.total if self.total else 100.0
        fps = frames / elapsed if elapsed > 0 else 0.0
        err.print(f"progress: {done:,}/{self.total:,} {self.what} ({pct:.0f}%), {failed:,} failed, {rate:.2f} "
                  f"{self.what}/s, {fps:.1f} frames/s, elapsed {clock(elapsed)}, ETA {eta}", markup=False,
                  highlight=False)  # fmt: skip


@contextlib.contextmanager
def loading(what: str) -> Iterator[None]:
    """``loading WHAT …``: a transient spinner on a terminal; elsewhere a line before and one with the time after."""
    if err.is_terminal:
        with err.status(f"loading {shown(what)} …"):
            yield
        return
    t0 = time.monotonic()
    err.print(f"loading {what} …", markup=False, highlight=False)
    yield
    err.print(f"loaded {what} in {time.monotonic() - t0:.1f} s", markup=False, highlight=False)


class Stages:
    """The stage one ``encode`` is in, as a transient status with elapsed time (and frames done of all while
    encoding); only on a terminal (a script's stderr keeps only warnings and errors)."""

    def __init__(self) -> None:
        self.progress = stage_spinner() if err.is_terminal else None
        self.task = None

    def __enter__(self) -> Stages:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, text: str, done: int | None = None, total: int | None = None) -> None:
        """A new stage (``text``), or ``done`` of ``total`` within the current one (its time goes on)."""
        if self.progress is None:
            return
        if done is not None and self.task is not None:
            self.progress.update(self.task, description=f"{shown(text)}: {done}/{total}")
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(shown(text))
