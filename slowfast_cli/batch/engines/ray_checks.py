"""The checks before a Ray run: the address answers, the actors fit the cluster, every node sees the same inputs,
outputs and model, and each video is the file the driver planned. A ``ray_*`` module, so it may import ray.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray

from ...config import Config
from ...errors import ConfigError, SlowfastError, first_line
from .ray_tasks import probe_task


def identity(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a video as the driver sees it, which the decoding node must see too (``ray_tasks``);
    None when the driver cannot stat it (the node then says what it sees)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


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


def sizing(resources: dict, device: str, encoders: int | None, decoders: int | None) -> tuple[int, int, int]:
    """(GPUs per encoder, encoders, decoders) for the cluster's ``resources``, or one line when they cannot all run at
    once (``encoders``/``decoders`` None: the defaults, one encoder per GPU or 1, the other CPUs decode).

    Every encoder actor holds a CPU (and a GPU when the cluster has GPUs and ``--device`` is not cpu) for the
    whole run, and each decode task needs a CPU of its own: ``--encoders`` at or above the cluster's CPUs (or
    above its GPUs) would leave the actors or every decode task waiting for ever (issue 20: 0 of 5 after 150 s).
    """
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if device.startswith("cuda") and not gpus:
        raise SlowfastError(f"--device {device}: the Ray cluster has no GPUs")
    num_gpus = 1 if gpus and device != "cpu" else 0
    if encoders is None:
        encoders = max(1, gpus) if num_gpus else 1
    if num_gpus and encoders > gpus:
        raise ConfigError(
            f"--encoders {encoders}: the Ray cluster has {gpus} GPU{'s' if gpus > 1 else ''} and each encoder "
            f"holds one; use --encoders {gpus} or fewer"
        )
    if encoders >= cpus:
        raise ConfigError(
            f"--encoders {encoders}: the Ray cluster has {cpus} CPU{'s' if cpus != 1 else ''}; each encoder "
            "holds one for the whole run and the decode tasks need at least one more, so the run could never "
            f"start; use --encoders {max(cpus - 1, 1)} or fewer, or add CPUs (ray start --num-cpus)"
            if cpus > 1
            else f"--encoders {encoders}: the Ray cluster has {cpus} CPU; an encoder and a decode task need "
            "one each: start Ray with at least 2 CPUs (ray start --num-cpus 2)"
        )
    if decoders is None:
        cpu_encoders = 0 if num_gpus else encoders
        decoders = max(1, cpus - cpu_encoders)
    return num_gpus, encoders, decoders


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
