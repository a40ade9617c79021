"""What the ``slowfast`` process sets for itself: OpenMP threads that sleep when they wait, and a cyclic garbage
collector that does not walk torch's objects over and over.

The command line owns its process, so it sets these; the library (``slowfast_cli.api``) never does, because they
are global to a process that is the caller's (docs/contributing.md, "Performance": what a program of yours can set
itself). Measured in BENCHMARKS.md §28.

- ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it): torch's OpenMP threads (libgomp) otherwise spin for
  a while at every barrier of every parallel operator, burning a core with no work. In ``slowfast batch`` the decode
  workers, or any other process, take cores from them, and the spinning then costs more than the work: per
  CPU-second, ``batch`` made 1.6x (fp32) and 2.0x (bf16) the frames with passive waiting, and finished sooner, on the
  2-core build machine under load. It is read once, when libgomp loads with torch, so it is set before any torch
  import (``begin``). The thread count stays torch's default (the cores): with passive waiting a core that a
  decoder takes costs little, and on an idle core the encoder still computes (docs/design.md).
- The collector: after ``slowfast encode`` has loaded torch and its model, about 230,000 objects are tracked, and
  every full collection walks them all, during the imports and again at the interpreter's exit (0.4-0.6 of the
  2.5-3 CPU-seconds ``slowfast encode --config tiny`` took). While the modules load, collections are rare
  (``START_THRESHOLD``: gen 0 every 100,000 allocations, still bounded); once a command has loaded its model,
  ``loaded`` moves every object there is into the permanent generation (``gc.freeze``), so later collections skip
  them, and restores the thresholds; ``end`` freezes again before the exit. Frozen objects are never collected as
  garbage, which for objects alive until the exit changes nothing.
"""

from __future__ import annotations

import gc
import os

WAIT_POLICY = "PASSIVE"  # libgomp's OMP_WAIT_POLICY for torch's threads, unless the environment sets one
START_THRESHOLD = (100_000, 20, 20)  # gc thresholds while the modules and the model load

_saved: list[tuple[int, int, int]] = []  # the thresholds ``begin`` replaced


def begin() -> None:
    """At the start of the process, before torch is imported: the wait policy and start-up thresholds."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    if not _saved:
        _saved.append(gc.get_threshold())
    gc.set_threshold(*START_THRESHOLD)


def loaded() -> None:
    """Once the model is loaded: everything alive now is frozen (never walked again) and the usual thresholds are
    back, for a long run's own garbage."""
    gc.freeze()
    if _saved:
        gc.set_threshold(*_saved.pop())


def end() -> None:
    """When the command has finished: freeze everything, so the interpreter's exit does not walk it again."""
    gc.freeze()
