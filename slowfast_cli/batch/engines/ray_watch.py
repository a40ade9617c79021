"""The Ray engine's stall watchdog: a thread on the driver that speaks when the run stops moving (issue 20).

A run stalls when no video has finished for ``warn_after`` seconds while Ray reports resources it cannot grant
(an actor that cannot be placed again after its node was lost, say; Ray itself waits for ever without a word).
The watchdog then hands one line to ``notify`` (the CLI prints it) naming the unmet demand and the alive nodes,
and again every ``warn_after`` seconds while it lasts. With ``stop_after`` (``--stall-timeout``) a stall that
lasts that long stops the run: ``stalled`` holds the line and the main thread is interrupted (as Ctrl-C does),
which the engine turns into that line as its error (exit 1). No demand means the cluster is busy on long videos,
not stalled: nothing is said. A ``ray_*`` module, so it may import ray.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable

import ray

POLL_S = 1.0  # how often the watchdog looks, at most


def demand_text(demands: list[tuple[dict, int]]) -> str:
    """``[({"CPU": 1.0}, 2)]`` -> ``2 x {CPU: 1}``: what Ray waits to grant, per resource shape."""
    parts = []
    for shape, count in demands:
        inner = ", ".join(f"{k}: {v:g}" for k, v in sorted(shape.items()) if not k.startswith("node:"))
        parts.append(f"{count} x {{{inner}}}")
    return "; ".join(parts)


def nodes_text(nodes: list[tuple[str, dict]]) -> str:
    """``[("127.0.0.1/ab12cd34", {"CPU": (1.0, 1.0)})]`` -> ``127.0.0.1/ab12cd34 (CPU 1/1 used)``."""
    if not nodes:
        return "none"
    parts = []
    for name, usage in nodes:
        shown = sorted((k, v) for k, v in usage.items() if k in ("CPU", "GPU"))
        held = ", ".join(f"{k} {used:g}/{total:g} used" for k, (used, total) in shown)
        parts.append(f"{name} ({held})" if held else name)
    return ", ".join(parts)


def stall_line(idle: float, demands: list[tuple[dict, int]], nodes: list[tuple[str, dict]]) -> str:
    """The one line that names a stall."""
    return (
        f"the Ray run has stalled: no video finished for {idle:.0f} s while Ray cannot grant "
        f"{demand_text(demands)} (alive nodes: {nodes_text(nodes)}); a node may have been lost, or the actors need "
        "more than the cluster has"
    )


def cluster_state() -> tuple[list[tuple[dict, int]], list[tuple[str, dict]]]:
    """(unmet demand as (resource shape, count), alive nodes as (host/id, {resource: (used, total)})), from the
    GCS's autoscaler state (no dashboard needed); nodes are named as ``report.json``'s ``run.engine.nodes``."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    demand = status.resource_demands
    demands = [(dict(r.bundle), r.count) for d in demand.ray_task_actor_demand for r in d.bundles_by_count]
    demands += [(dict(r.bundle), r.count) for d in demand.placement_group_demand for r in d.bundles_by_count]
    hosts = {n.get("NodeID"): n.get("NodeManagerHostname") for n in ray.nodes()}
    nodes = []
    for node in [*status.active_nodes, *status.idle_nodes]:
        usage = {u.resource_name: (u.used, u.total) for u in node.resource_usage.usage}
        nodes.append((f"{hosts.get(node.node_id) or node.ip_address}/{(node.node_id or '')[:8]}", usage))
    return demands, nodes


class Watchdog:
    """See the module docstring; ``beat()`` on every video that finishes, use as a context manager around the run."""

    def __init__(self, warn_after: float, stop_after: float | None, notify: Callable[[str], None] | None):
        self.warn_after, self.stop_after, self.notify = warn_after, stop_after, notify
        self.stalled: str | None = None  # the line, once a stall stopped the run
        self.last = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="slowfast-stall-watchdog", daemon=True)

    def beat(self) -> None:
        self.last = time.monotonic()

    def __enter__(self) -> Watchdog:
        self.last = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        said = 0.0  # when the last notice went out
        limit = min(self.warn_after, self.stop_after or self.warn_after)
        while not self._done.wait(min(POLL_S, limit / 4)):
            idle = time.monotonic() - self.last
            if idle < limit:
                continue
            try:
                demands, nodes = cluster_state()
            except Exception:  # the GCS is gone (the head was lost): the run's own error says so
                continue
            if not demands:
                continue
            line = stall_line(idle, demands, nodes)
            if self.stop_after is not None and idle >= self.stop_after:
                self.stalled = f"{line}; stopped after --stall-timeout {self.stop_after:g} s"
                _thread.interrupt_main()  # as Ctrl-C: the engine turns it into self.stalled
                return
            if idle >= self.warn_after and self.notify is not None and time.monotonic() - said >= self.warn_after:
                self.notify(line)
                said = time.monotonic()
