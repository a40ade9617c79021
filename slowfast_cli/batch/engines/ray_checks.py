"""The checks before a Ray run: the address answers, the actors fit the cluster and every node sees the same inputs,
outputs and model (each video is checked on its node against the driver's size and time: ``ray_plan``,
``ray_tasks.other_file``). A ``ray_*`` module, so it may import ray.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray

from ...config import Config
from ...errors import ConfigError, SlowfastError, first_line
from .ray_tasks import probe_task

REACH_TIMEOUT_S = 5.0  # a HOST:PORT that does not accept a TCP connection in this time is refused (ray.init waits on)


def unreachable(address: str | None) -> str | None:
    """Why the GCS at ``address`` (``--address HOST:PORT``, else ``RAY_ADDRESS``) does not accept a connection
    within ``REACH_TIMEOUT_S``, or None when it does or when the address is not a HOST:PORT (``auto``, none: Ray
    finds or starts a local one). ``ray.init`` itself retries an unreachable address for minutes, silently."""
    address = address or os.environ.get("RAY_ADDRESS")
    host, sep, port = (address or "").strip().rpartition(":")
    if not sep or not host or not port.isdigit() or "://" in address:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Sizing:
    """How the run uses the cluster: ``encoders`` actors, each holding ``cpus`` CPUs (and ``gpus`` GPUs) on one node
    and decoding there with ``decoders`` processes of its own, so that decoded frames never leave their node."""

    gpus: int  # per encoder actor: 1 when the encoders run on GPUs, else 0
    encoders: int
    cpus: int  # per encoder actor
    decoders: int  # decoding processes per encoder actor


def sizing(nodes: list[dict], device: str, encoders: int | None, decoders: int | None) -> Sizing:
    """The run's ``Sizing`` on alive ``nodes`` (each node's Ray resources), or one line when the actors cannot all be
    placed at once. ``encoders``/``decoders`` None: the defaults, one encoder per GPU (else as many actors as nodes,
    each holding its node's CPUs), one decoder per CPU an encoder holds beyond the one that runs the model (at
    least 1); ``decoders`` given is the total over the encoders, shared out evenly (at least 1 each).

    An actor is placed on one node: it holds ``cpus`` CPUs there (and a GPU). An ``--encoders`` that no placement
    fits (more than the cluster's CPUs, or GPUs) would leave actors waiting for ever (issue 20): refused.
    """
    hosts = [(int(n.get("CPU", 0)), int(n.get("GPU", 0))) for n in nodes if n.get("CPU", 0) >= 1]
    cpus, gpus = sum(c for c, _ in hosts), sum(g for _, g in hosts)
    if device.startswith("cuda") and not gpus:
        raise SlowfastError(f"--device {device}: the Ray cluster has no GPUs")
    if not hosts:
        raise SlowfastError("the Ray cluster has no node with a CPU")
    num_gpus = 1 if gpus and device != "cpu" else 0
    if num_gpus:
        hosts = [(c, g) for c, g in hosts if g >= 1]
        per = max(1, min(c // g for c, g in hosts))

        def fits(each: int) -> int:
            return sum(min(g, c // each) for c, g in hosts)
    else:
        per = min(c for c, _ in hosts)

        def fits(each: int) -> int:
            return sum(c // each for c, _ in hosts)

    if encoders is None:
        encoders = gpus if num_gpus else fits(per)
    if num_gpus and encoders > gpus:
        raise ConfigError(
            f"--encoders {encoders}: the Ray cluster has {gpus} GPU{'s' if gpus > 1 else ''} and each encoder "
            f"holds one; use --encoders {gpus} or fewer"
        )
    while per > 1 and fits(per) < encoders:
        per -= 1
    if fits(per) < encoders:
        most = fits(1)
        raise ConfigError(
            f"--encoders {encoders}: the Ray cluster has {cpus} CPU{'s' if cpus != 1 else ''}"
            + (" on its GPU nodes" if num_gpus else "")
            + f" and each encoder holds at least one for the whole run (it decodes there too), so the run could "
            f"never start; use --encoders {most} or fewer, or add CPUs (ray start --num-cpus)"
        )
    each = max(1, math.ceil(decoders / encoders)) if decoders else max(1, per - 1)
    return Sizing(num_gpus, encoders, per, each)


def probe_nodes(num_gpus: int, config: Config, root: Path, mark: Path, token: str) -> dict[str, dict]:
    """``probe_task`` on every alive node with a CPU (pinned to it), at once: node id -> what it resolved.

    Nodes that can run an encoder (all of them, or those with a GPU when encoders take one) build the model;
    the others, which only decode, check IN_DIR and OUT_DIR. A node that joins after the probe is not checked
    here; its decode tasks still compare every file with the driver's (``ray_tasks.other_file``).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    refs = {}
    for node in nodes or [None]:
        model = not num_gpus or (node or {}).get("Resources", {}).get("GPU", 0) >= 1
        options = {"num_cpus": 1, "num_gpus": num_gpus if model else 0, "max_retries": 0}
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        task = ray.remote(probe_task).options(**options)
        refs[(node or {}).get("NodeID", "any")] = task.remote(config.to_dict(), str(root), str(mark), token, model)
    return {node: get(ref) for node, ref in refs.items()}


def agree(infos: dict[str, dict], config: Config) -> dict:
    """The one probe result every node that built the model agrees on, or one line naming the node that differs:
    another dtype for ``--dtype auto`` (a CPU with native bf16 beside one without), other weights at the same path
    (another provenance)."""
    built = [info for info in infos.values() if info.get("provenance") is not None]
    if not built:
        raise SlowfastError("no node of the Ray cluster can run an encoder (none has the GPU the encoders take)")
    first = built[0]
    for info in built:
        if info["dtype"] != first["dtype"]:
            raise ConfigError(
                f"--dtype {config.runtime.dtype}: Ray node {info['node']} computes in {info['dtype']} and "
                f"{first['node']} in {first['dtype']}; pass --dtype fp32 or --dtype bf16 so every node computes alike"
            )
        if info["provenance"] != first["provenance"]:
            keys = sorted(k for k in {*info["provenance"], *first["provenance"]}
                          if info["provenance"].get(k) != first["provenance"].get(k))  # fmt: skip
            raise SlowfastError(
                f"Ray node {info['node']} sees other model files than {first['node']} ({', '.join(keys)} differ); "
                "every node must see the same weights at the same path"
            )
    return first


def get(ref):
    """``ray.get``, with a task's SlowfastError given back as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise SlowfastError(reason(exc)) from None


def reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SlowfastError):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {first_line(cause, 300)}"
    return f"{type(exc).__name__}: {first_line(exc, 300)}"
