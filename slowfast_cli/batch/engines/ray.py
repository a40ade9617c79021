"""The Ray engine of ``slowfast batch`` (``--engine ray``): the same plan, records and token files on a Ray cluster.

The driver (the ``slowfast batch`` process) plans as the local engine does, then runs one Ray Data pipeline:

    from_items(planned videos, one per block)
      -> decode:  map_batches(TaskPoolStrategy(size=decoders), num_cpus=1, memory=DECODE_MEMORY, batch_size=1)
      -> encode:  map_batches(encoder actor, ActorPoolStrategy(size=encoders), num_cpus=1 [num_gpus=1],
                              batch_size=videos_per_batch: enough videos to fill a forward pass)
      -> iter_rows() on the driver: one small record per video

- **Decode** runs in a child process of the Ray task (``batch.workers.DecodePool``, the local engine's worker, one per
  task process), under the same ``--timeout``: a hung or crashing decoder costs its video, never the task.
  A resumed output that still awaits its CRC-32 check is checked here, on the node, not on the driver.
- **Encode**: each actor loads the model once and encodes the videos of a Ray batch together, their frames packed
  into forward passes of ``encoder.batch_frames`` (``encoder.packing``: tokens never depend on which node or batch
  a video landed in). It writes the token file to a temporary file beside its target in OUT_DIR and
  returns only the record; tokens never travel to the driver. The driver renames the file into place and appends
  its manifest line with Ctrl-C held, as the local engine writes both: an interrupt leaves both or neither, and
  temporary files of an interrupted run are removed by the next run (under the output lock).
- The two stages ask for different resources (``memory=`` on decode, the actor's GPU), so Ray Data does not
  fuse them into one operator (which would decode serially inside the actor).
- **Failures are records.** Every exception is caught per video in the stages. Ray retries a task whose process
  died, and restarts a dead actor, without end; each attempt on a video is counted in ``OUT_DIR/.slowfast-attempts``
  (on the shared file system), and the attempt after ``MAX_ATTEMPTS`` deaths gives up on it with a ``crash``
  record. A planned video whose row never comes back is a ``crash`` record too.
- The driver sends the resolved config (``Config.to_dict()``) with device and dtype pinned for the whole cluster
  (:meth:`RayEngine.probe`), never a preset name: ``configs/`` need not exist on the nodes.

IN_DIR and OUT_DIR must be on a file system that every node sees at the same path. Ray Client (``ray://``) is
not supported by Ray Data (ray-project/ray#48682); it is refused. ray is imported in this module and in
``ray_tasks.py`` (what runs on the nodes) only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import ray.data

from ...config import Config, config_from_dict
from ...errors import ConfigError, SlowfastError, first_line
from ...video.files import stderr_quiet
from ..plan import BatchPlan, prepare_output_dir
from ..records import Record
from ..run import EngineOptions, Outcome, Prepared
from .ray_tasks import ATTEMPTS, SHARED, RayRow, decode_batch, encoder_class, probe_task, videos_per_batch

DECODE_MEMORY = 1 << 30  # logical memory a decode task asks for: one decoder and one clip, with room


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


class RayEngine:
    """A connection to a Ray cluster for ``slowfast batch``; use as a context manager.

    ``address``: None connects as ``ray.init()`` does (``RAY_ADDRESS`` when set, as under ``ray job submit``,
    else a cluster running on this machine, else a new local instance just for this run), ``auto`` requires a
    running cluster, ``HOST:PORT`` names one. ``decoders`` (default: the cluster's CPUs minus one per CPU
    encoder, at least 1) decode tasks and ``encoders`` (default: one per GPU, else 1) model actors.
    """

    name = "ray"
    verifies_outputs = False  # outputs that look done are CRC-checked in the decode tasks, on the nodes

    def __init__(self, options: EngineOptions):
        address = options.address
        if address and address.strip().lower().startswith("ray://"):
            raise ConfigError(
                f"--address {address}: Ray Client (ray://) is not supported by Ray Data (ray-project/ray#48682: "
                "'Worker' object has no attribute 'core_worker'); run slowfast on a cluster node with --address "
                "auto, or through ray job submit"
            )
        self.address = address
        self.decoders = options.decoders
        self.encoders = options.encoders
        self.timeout = options.timeout
        self.warnings: list[str] = []  # the probe's Pipeline warnings
        self.num_gpus = 0
        self.image_size: int | None = None  # the decode-time size (``Pipeline.image_size``), from the probe
        self.nodes: dict[str, Counter] = {}
        self._owned = False

    # --- connection ------------------------------------------------------------------------------------------
    def __enter__(self) -> RayEngine:
        previous = signal.getsignal(signal.SIGTERM)
        if not ray.is_initialized():
            why = unreachable(self.address)
            if why is not None:
                where = self.address or f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
                raise SlowfastError(
                    f"cannot connect to the Ray cluster at {where}: it does not accept a connection ({why}; waited at "
                    f"most {REACH_TIMEOUT_S:g} s); "
                    "check the head node's address and port (ray start --head prints it) and the firewall"
                )
            # Ray's C++ side logs an "E" line on stderr for every encoder actor (its constructor arguments live
            # in the object store, ray-project/ray#53727), which is Ray Data's own doing and harmless here: keep
            # the terminal to slowfast's one-line messages unless the user chose a Ray log level
            quiet = "RAY_BACKEND_LOG_LEVEL" not in os.environ
            if quiet:
                os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
            try:
                with stderr_quiet() if quiet else contextlib.nullcontext():  # Ray's C++ logger says it was set
                    ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "RAY_ADDRESS / a local instance"
                raise SlowfastError(f"cannot connect to the Ray cluster at {where}: {first_line(exc, 300)}") from None
            finally:
                if quiet:
                    del os.environ["RAY_BACKEND_LOG_LEVEL"]
            self._owned = True
        with contextlib.suppress(ValueError):  # ray.init sets its own SIGTERM handler: keep the CLI's (exit 130)
            signal.signal(signal.SIGTERM, previous)
        _quiet_driver_errors()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI draws its own bar from the records
        ctx.print_on_execution_start = False
        ctx.max_errored_blocks = -1  # a block lost to a bug costs its video (a crash record), not the run
        ctx.execution_options.preserve_order = False
        with contextlib.suppress(AttributeError):
            ctx.issue_detectors_config.detectors = []
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc) -> None:
        if self._owned:
            ray.shutdown()
            self._owned = False

    def resources(self) -> dict[str, float]:
        return ray.cluster_resources()

    # --- probe: what the workers will compute ----------------------------------------------------------------
    def prepare(self, config: Config, root: Path, out_dir: Path) -> Prepared:
        """Size the actors and tasks to the cluster (:meth:`size`), create OUT_DIR and :meth:`probe` the cluster: the
        config pinned for it and the provenance to resume by."""
        self.size(config)
        prepare_output_dir(root, out_dir)
        pinned, provenance, self.warnings = self.probe(config, root, out_dir)
        return Prepared(pinned, provenance)

    def start(self, plan: BatchPlan, config: Config) -> list[str]:
        """Nothing to load here (each actor loads the model); the probe's warnings."""
        return self.warnings

    def size(self, config: Config) -> None:
        """Encoders and decoders for the cluster's resources, or one line when they cannot all run at once.

        Every encoder actor holds a CPU (and a GPU when the cluster has GPUs and ``--device`` is not cpu) for the
        whole run, and each decode task needs a CPU of its own: ``--encoders`` at or above the cluster's CPUs (or
        above its GPUs) would leave the actors or every decode task waiting for ever (issue 20: 0 of 5 after 150 s).
        """
        resources = self.resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        device = config.runtime.device
        if device.startswith("cuda") and not gpus:
            raise SlowfastError(f"--device {device}: the Ray cluster has no GPUs")
        self.num_gpus = 1 if gpus and device != "cpu" else 0
        if self.encoders is None:
            self.encoders = max(1, gpus) if self.num_gpus else 1
        if self.num_gpus and self.encoders > gpus:
            raise ConfigError(
                f"--encoders {self.encoders}: the Ray cluster has {gpus} GPU{'s' if gpus > 1 else ''} and each encoder "
                f"holds one; use --encoders {gpus} or fewer"
            )
        if self.encoders >= cpus:
            raise ConfigError(
                f"--encoders {self.encoders}: the Ray cluster has {cpus} CPU{'s' if cpus != 1 else ''}; each encoder "
                "holds one for the whole run and the decode tasks need at least one more, so the run could never "
                f"start; use --encoders {max(cpus - 1, 1)} or fewer, or add CPUs (ray start --num-cpus)"
                if cpus > 1
                else f"--encoders {self.encoders}: the Ray cluster has {cpus} CPU; an encoder and a decode task need "
                "one each: start Ray with at least 2 CPUs (ray start --num-cpus 2)"
            )
        if self.decoders is None:
            cpu_encoders = 0 if self.num_gpus else self.encoders
            self.decoders = max(1, cpus - cpu_encoders)

    def probe(self, config: Config, root: Path, out_dir: Path) -> tuple[Config, dict, list[str]]:
        """Build the model once on a worker (as the encoder actors will), with device and dtype resolved there.

        Returns the config with ``runtime.dtype`` ``auto`` pinned to what the worker resolved (once for the whole
        cluster: every actor computes in the same dtype; the token files' ``meta.config`` then names it) and
        ``cuda:N`` made ``cuda`` (each actor sees the one GPU Ray gave it), the provenance the token files will
        carry, and the Pipeline's warnings. It also checks that the worker sees IN_DIR and OUT_DIR as this
        process does (a file written here must be readable there).
        """
        token = uuid.uuid4().hex
        mark = out_dir / f".slowfast-probe-{token}"
        mark.write_text(token, encoding="ascii")
        try:
            infos = self.probe_nodes(config, root, mark, token)
        finally:
            with contextlib.suppress(OSError):
                mark.unlink()
        info = _agree(infos, config)
        pinned = config_from_dict(config.to_dict())
        if config.runtime.device.startswith("cuda:"):  # an actor sees only the GPU Ray gave it, as cuda:0
            pinned.runtime.device = "cuda"
        if config.runtime.dtype == "auto":  # resolved once: CPUs with and without native bf16 would differ
            pinned.runtime.dtype = info["dtype"]
        self.image_size = info["image_size"]
        return pinned, info["provenance"], info["warnings"]

    def probe_nodes(self, config: Config, root: Path, mark: Path, token: str) -> dict[str, dict]:
        """``probe_task`` on every alive node with a CPU (pinned to it), at once: node id -> what it resolved.

        Nodes that can run an encoder (all of them, or those with a GPU when encoders take one) build the model;
        the others, which only decode, check IN_DIR and OUT_DIR. A node that joins after the probe is not checked
        here; its decode tasks still compare every file with the driver's (``ray_tasks.other_file``).
        """
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        refs = {}
        for node in nodes or [None]:
            model = not self.num_gpus or (node or {}).get("Resources", {}).get("GPU", 0) >= 1
            options = {"num_cpus": 1, "num_gpus": self.num_gpus if model else 0, "max_retries": 0}
            if node is not None:
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            task = ray.remote(probe_task).options(**options)
            refs[(node or {}).get("NodeID", "any")] = task.remote(config.to_dict(), str(root), str(mark), token, model)
        return {node: _get(ref) for node, ref in refs.items()}

    # --- the run ---------------------------------------------------------------------------------------------
    def outcomes(self, plan: BatchPlan, config: Config) -> Iterator[Outcome]:
        """One outcome per video of ``plan.todo`` (see ``run.record_all``), as rows arrive from the cluster."""
        if not plan.todo:
            return
        attempts = plan.out_dir / ATTEMPTS
        shutil.rmtree(attempts, ignore_errors=True)  # a killed run's counters (we hold the output lock)
        attempts.mkdir()
        try:
            job = {
                "config": config.to_dict(),
                "root": str(plan.root),
                "out_dir": str(plan.out_dir),
                "timeout": self.timeout,
                "image_size": self.image_size,  # the decode-time size, as the probe's Pipeline gave it
                "format": plan.writer.fmt.to_dict() if plan.writer else None,  # the nodes write its pending files
                "columns": {os.fsencode(rel): c for rel, c in plan.columns.items()},  # a CSV/JSONL list's rows
            }
            ds = self.dataset(plan, job)
            received: set[Path] = set()
            try:
                for row in ds.iter_rows():
                    out: RayRow = pickle.loads(row["item"])
                    rel = out.rel
                    if rel in received:  # a retried task whose first answer had come back already
                        if out.tmp:
                            with contextlib.suppress(OSError):
                                os.unlink(out.tmp)
                        continue
                    received.add(rel)
                    for stage, node in (("decoded", out.decoded), ("encoded", out.encoded)):
                        if node:
                            self.nodes.setdefault(node, Counter())[stage] += 1
                    if out.problem:
                        plan.problems.append(out.problem)
                    yield _outcome(out, plan)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except Exception as exc:  # the pipeline as a whole failed (an actor that cannot start): stop here
                raise SlowfastError(f"the Ray job stopped: {_reason(exc)}") from None
            for rel, out_rel in plan.todo:
                if rel not in received:
                    msg = f"{rel}: no result came back from the Ray cluster (a worker or node was lost); rerun to retry"
                    yield (lambda r=Record.failed(rel, out_rel, msg, "crash"): r)
        finally:
            shutil.rmtree(attempts, ignore_errors=True)

    def dataset(self, plan: BatchPlan, job: dict) -> ray.data.Dataset:
        """The two-operator pipeline over ``plan.todo`` (not executed until iterated)."""
        items = [
            {
                "item": pickle.dumps(
                    (os.fsencode(rel), os.fsencode(out_rel), rel in plan.unverified, identity(plan.root / rel))
                )
            }
            for rel, out_rel in plan.todo
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            decode_batch,
            batch_size=1,
            compute=ray.data.TaskPoolStrategy(size=self.decoders),
            num_cpus=1,
            memory=DECODE_MEMORY,  # also keeps decode a separate operator from the actor (no fusion)
            fn_kwargs={"job": job},
        )
        return ds.map_batches(
            encoder_class(job),
            batch_size=videos_per_batch(job["config"]),
            compute=ray.data.ActorPoolStrategy(size=self.encoders),
            num_cpus=1,
            num_gpus=self.num_gpus or None,
        )

    def summary(self) -> dict[str, Any]:
        """What ``report.json``'s ``run.engine`` says about this run."""
        return {
            "name": "ray",
            "decoders": self.decoders,
            "encoders": self.encoders,
            "gpus_per_encoder": self.num_gpus,
            "nodes": {n: dict(c) for n, c in sorted(self.nodes.items())},
        }


def _quiet_driver_errors() -> None:
    """Keep Ray's cluster error messages off stdout, where ``--json`` is.

    Ray's driver prints every error the cluster publishes for the job ("A worker died or was killed ...") to
    *stdout*, whatever ``log_to_driver`` says (``ray._private.worker.listen_error_messages``). slowfast reports
    each of those deaths itself as the video's ``crash`` record, and Ray keeps them in its logs
    (``<temp dir>/session_latest/logs``), so they are dropped here, or sent to stderr with ``SLOWFAST_DEBUG`` set.
    This replaces one private function of Ray 2.60's driver (the version pinned); if it is gone, nothing changes.
    """
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "slowfast", False):
        return

    def to_stderr_or_nowhere(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        if os.environ.get("SLOWFAST_DEBUG"):
            return original({**data, "is_err": True}, ignore_prefix)

    to_stderr_or_nowhere.slowfast = True
    worker.print_to_stdstream = to_stderr_or_nowhere


def _agree(infos: dict[str, dict], config: Config) -> dict:
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


def _get(ref):
    """``ray.get``, with a task's SlowfastError given back as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise SlowfastError(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SlowfastError):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {first_line(cause, 300)}"
    return f"{type(exc).__name__}: {first_line(exc, 300)}"


def _outcome(out: RayRow, plan: BatchPlan) -> Outcome:
    from ...formats import make_writer

    rel, out_rel, out_dir = out.rel, out.out_rel, plan.out_dir
    writer = plan.writer or make_writer(None, out_dir)
    if out.status == "skipped":
        return lambda: Record.skipped(rel, out_rel)
    record = Record(**{k: v for k, v in asdict(out.record).items() if k != "time"})  # recorded now, here
    if out.status == "failed":
        return lambda: record

    def finish() -> Record:  # status "written": put the worker's temporary file in place (the format's writer)
        try:
            writer.commit(out.tmp, out_rel)
        except FileNotFoundError:
            msg = (
                f"{out_rel}: the token file written on Ray node {out.encoded} is not visible here ({out.tmp}); {SHARED}"
            )
            return Record.failed(rel, out_rel, msg, "write")
        except (OSError, SlowfastError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(out.tmp)
            return Record.write_failed(exc, rel, out_rel)
        return record

    return finish
