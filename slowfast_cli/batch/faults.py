"""A testing hook for the crash and hang handling of both engines; never active unless a test sets it."""

from __future__ import annotations

import fnmatch
import os
import signal
import time

FAULTS = "SLOWFAST_TEST_FAULTS"


def test_fault(stage: str, path: str) -> None:
    """A testing hook: the tests of crash and hang handling set ``SLOWFAST_TEST_FAULTS`` (never set otherwise) to
    ``STAGE-crash:GLOB`` or ``STAGE-hang:GLOB`` items, comma-separated; a file whose name matches then kills the
    process (SIGKILL) or hangs it where ``stage`` runs (``decode``: the decoding child; ``decode-task`` and
    ``encode``: the Ray engine's task and actor)."""
    spec = os.environ.get(FAULTS)
    if not spec:
        return
    name = os.path.basename(path)
    for item in spec.split(","):
        what, _, pattern = item.partition(":")
        if what.rpartition("-")[0] == stage and fnmatch.fnmatch(name, pattern):
            if what.endswith("-crash"):
                os.kill(os.getpid(), signal.SIGKILL)
            if what.endswith("-hang"):
                time.sleep(1e6)
