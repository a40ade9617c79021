"""The Ray engine of ``slowfast batch`` (``--engine ray``): the same plan, records and token files on a Ray cluster.

The driver (the ``slowfast batch`` process) plans as the local engine does, then runs one Ray Data pipeline:

    from_items(planned videos, one per block)
      -> decode:  map_batches(TaskPoolStrategy(size=decoders), num_cpus=1, memory=DECODE_MEMORY, batch_size=1)
      -> encode:  map_batches(encoder actor, ActorPoolStrategy(size=encoders), num_cpus=1 [num_gpus=1], batch_size=1)
      -> iter_rows() on the driver: one small record per video

- **Decode** runs in a child process of the Ray task (``workers.DecodePool``, the local engine's worker, one per
  task process), under the same ``--timeout``: a hung or crashing decoder costs its video, never the task.
  A resumed output that still awaits its CRC-32 check is checked here, on the node, not on the driver.
- **Encode**: each actor loads the model once and encodes one video per forward pass (tokens never depend on which
  node or batch a video landed in). It writes the token file to a temporary file beside its target in OUT_DIR and
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
not supported by Ray Data (ray-project/ray#48682); the CLI refuses it. ray is imported in this module only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import shutil
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray
import ray.data

from .batch import (
    BatchPlan,
    Record,
    decode_failure,
    encode_one,
    error_kind,
    existing_output,
    ok_record,
    skipped_record,
    write_failure,
)
from .config import Config, config_from_dict
from .errors import SlowfastError, first_line

ATTEMPTS = ".slowfast-attempts"  # per-video attempt counters of a running Ray batch, in OUT_DIR
MAX_ATTEMPTS = 3  # a video whose worker died this many times is given up (a ``crash`` record)
DECODE_MEMORY = 1 << 30  # logical memory a decode task asks for: one decoder and one clip, with room
SHARED = "IN_DIR and OUT_DIR must be on a file system that every node sees at the same path"


def node_name() -> str:
    """``host/node-id-prefix`` of the Ray node this runs on (two nodes on one host differ by their ids)."""
    try:
        node = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # outside a Ray worker
        node = "driver"
    return f"{socket.gethostname()}/{node}"


class RayEngine:
    """A connection to a Ray cluster for ``slowfast batch``; use as a context manager.

    ``address``: None connects as ``ray.init()`` does (``RAY_ADDRESS`` when set, as under ``ray job submit``,
    else a cluster running on this machine, else a new local instance just for this run), ``auto`` requires a
    running cluster, ``HOST:PORT`` names one. ``decoders`` (default: the cluster's CPUs minus one per CPU
    encoder, at least 1) decode tasks and ``encoders`` (default: one per GPU, else 1) model actors.
    """

    def __init__(self, address: str | None = None, decoders: int | None = None, encoders: int | None = None):
        self.address = address
        self.decoders = decoders
        self.encoders = encoders
        self.num_gpus = 0
        self.image_size: int | None = None  # the decode-time size (``Pipeline.image_size``), from the probe
        self.nodes: dict[str, Counter] = {}
        self._owned = False

    # --- connection ------------------------------------------------------------------------------------------
    def __enter__(self) -> RayEngine:
        previous = signal.getsignal(signal.SIGTERM)
        if not ray.is_initialized():
            # Ray's C++ side logs an "E" line on stderr for every encoder actor (its constructor arguments live
            # in the object store, ray-project/ray#53727), which is Ray Data's own doing and harmless here: keep
            # the terminal to slowfast's one-line messages unless the user chose a Ray log level
            quiet = "RAY_BACKEND_LOG_LEVEL" not in os.environ
            if quiet:
                os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
            try:
                with _stderr_silenced(quiet):  # where Ray's C++ logger says that it was set so
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
    def probe(self, config: Config, root: Path, out_dir: Path) -> tuple[Config, dict, list[str]]:
        """Build the model once on a worker (as the encoder actors will), with device and dtype resolved there.

        Returns the config with ``runtime.dtype`` ``auto`` pinned to what the worker resolved (once for the whole
        cluster: every actor computes in the same dtype; the token files' ``meta.config`` then names it) and
        ``cuda:N`` made ``cuda`` (each actor sees the one GPU Ray gave it), the provenance the token files will
        carry, and the Pipeline's warnings. It also checks that the worker sees IN_DIR and OUT_DIR as this
        process does (a file written here must be readable there).
        """
        resources = self.resources()
        gpus = int(resources.get("GPU", 0))
        device = config.runtime.device
        if device.startswith("cuda") and not gpus:
            raise SlowfastError(f"--device {device}: the Ray cluster has no GPUs")
        self.num_gpus = 1 if gpus and device != "cpu" else 0
        if self.encoders is None:
            self.encoders = max(1, gpus) if self.num_gpus else 1
        if self.decoders is None:
            cpu_encoders = 0 if self.num_gpus else self.encoders
            self.decoders = max(1, int(resources.get("CPU", 1)) - cpu_encoders)
        token = uuid.uuid4().hex
        mark = out_dir / f".slowfast-probe-{token}"
        mark.write_text(token, encoding="ascii")
        try:
            task = ray.remote(_probe).options(num_cpus=1, num_gpus=self.num_gpus, max_retries=0)
            info = _get(task.remote(config.to_dict(), str(root), str(mark), token))
        finally:
            with contextlib.suppress(OSError):
                mark.unlink()
        pinned = config_from_dict(config.to_dict())
        if device.startswith("cuda:"):  # an actor sees only the GPU Ray gave it, as cuda:0
            pinned.runtime.device = "cuda"
        if config.runtime.dtype == "auto":  # resolved once: CPUs with and without native bf16 would differ
            pinned.runtime.dtype = info["dtype"]
        self.image_size = info["image_size"]
        return pinned, info["provenance"], info["warnings"]

    # --- the run ---------------------------------------------------------------------------------------------
    def outcomes(self, plan: BatchPlan, config: Config, timeout: float) -> Iterator[Callable[[], Record]]:
        """One outcome per video of ``plan.todo`` (see ``batch.record_all``), as rows arrive from the cluster."""
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
                "timeout": timeout,
                "image_size": self.image_size,  # the decode-time size, as the probe's Pipeline gave it
            }
            ds = self.dataset(plan, job)
            received: set[Path] = set()
            try:
                for row in ds.iter_rows():
                    out = pickle.loads(row["item"])
                    rel = Path(os.fsdecode(out["source"]))
                    if rel in received:  # a retried task whose first answer had come back already
                        with contextlib.suppress(OSError, KeyError):
                            os.unlink(out["tmp"])
                        continue
                    received.add(rel)
                    for stage in ("decoded", "encoded"):
                        if out.get(stage):
                            self.nodes.setdefault(out[stage], Counter())[stage] += 1
                    if out.get("problem"):
                        plan.problems.append(out["problem"])
                    yield _outcome(out, rel, Path(os.fsdecode(out["output"])), plan.out_dir)
            except (KeyboardInterrupt, GeneratorExit):
                raise
            except Exception as exc:  # the pipeline as a whole failed (an actor that cannot start): stop here
                raise SlowfastError(f"the Ray job stopped: {_reason(exc)}") from None
            for rel, out_rel in plan.todo:
                if rel not in received:
                    msg = f"{rel}: no result came back from the Ray cluster (a worker or node was lost); rerun to retry"
                    yield (lambda r=Record(str(rel), str(out_rel), "failed", msg, "crash"): r)
        finally:
            shutil.rmtree(attempts, ignore_errors=True)

    def dataset(self, plan: BatchPlan, job: dict) -> ray.data.Dataset:
        """The two-operator pipeline over ``plan.todo`` (not executed until iterated)."""
        items = [
            {"item": pickle.dumps((os.fsencode(rel), os.fsencode(out_rel), rel in plan.unverified))}
            for rel, out_rel in plan.todo
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            _decode_batch,
            batch_size=1,
            compute=ray.data.TaskPoolStrategy(size=self.decoders),
            num_cpus=1,
            memory=DECODE_MEMORY,  # also keeps decode a separate operator from the actor (no fusion)
            fn_kwargs={"job": job},
        )
        return ds.map_batches(
            _encoder_class(job),
            batch_size=1,
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


@contextlib.contextmanager
def _stderr_silenced(on: bool = True):
    """File descriptor 2 points at /dev/null inside the block (C++ writes there directly, not via sys.stderr)."""
    if not on:
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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


def _key(d: dict) -> str:
    return hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()


# --- what runs on the nodes ----------------------------------------------------------------------------------
def _probe(config_dict: dict, root: str, mark: str, token: str) -> dict:
    from .pipeline import DTYPE_NAMES, Pipeline

    where = node_name()
    if not Path(root).is_dir():
        raise SlowfastError(f"{root}: not visible on Ray node {where}; {SHARED}")
    try:
        seen = Path(mark).read_text(encoding="ascii")
    except OSError:
        seen = None
    if seen != token:
        raise SlowfastError(f"{Path(mark).parent}: not the same folder on Ray node {where}; {SHARED}")
    pipe = Pipeline(config_from_dict(config_dict))
    return {
        "dtype": DTYPE_NAMES[pipe.dtype],
        "provenance": pipe.provenance,
        "warnings": pipe.warnings,
        "image_size": pipe.image_size,
    }


def _attempt(out_dir: str, rel: bytes, stage: str) -> int:
    """Count one more attempt of ``stage`` on a video; returns the count (1 for the first)."""
    name = hashlib.sha1(rel).hexdigest() + "." + stage
    fd = os.open(os.path.join(out_dir, ATTEMPTS, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _given_up(rel: bytes, out_rel: bytes, stage: str) -> dict:
    msg = (
        f"{os.fsdecode(rel)}: its Ray {stage} worker died {MAX_ATTEMPTS} times while on it (a crash, an "
        "out-of-memory kill or a lost node); not retried again"
    )
    return _failed(rel, out_rel, msg, "crash")


def _failed(rel: bytes, out_rel: bytes, msg: str, kind: str | None = None, seconds: float = 0.0) -> dict:
    record = Record(os.fsdecode(rel), os.fsdecode(out_rel), "failed", msg, kind or error_kind(msg), seconds)
    return {"source": rel, "output": out_rel, "status": "failed", "record": asdict(record)}


_pools: dict[tuple, Any] = {}  # one decoding child process per Ray task process, kept between tasks


def _decode_pool(job: dict):
    from .workers import DecodePool

    key = (_key(job["config"]), job["image_size"], job["timeout"])
    if key not in _pools:
        for old in _pools.values():
            old.close()
        _pools.clear()
        video = config_from_dict(job["config"]).video
        _pools[key] = DecodePool(video, job["image_size"], workers=1, timeout=job["timeout"], threads=1)
    return _pools[key]


def _decode_batch(batch: dict, job: dict) -> dict:
    return {"item": [pickle.dumps(_decode_row(*pickle.loads(item), job)) for item in batch["item"]]}


def _decode_row(rel: bytes, out_rel: bytes, unverified: bool, job: dict) -> dict:
    from .workers import test_fault

    root, out_dir = Path(job["root"]), Path(job["out_dir"])
    where = node_name()
    src = root / os.fsdecode(rel)
    try:
        if not root.is_dir():
            return _failed(rel, out_rel, f"{root}: not visible on Ray node {where}; {SHARED}", "missing")
        problem = None
        if unverified:
            state, why = existing_output(out_dir / os.fsdecode(out_rel), None, src)
            if state == "done":
                return {"source": rel, "output": out_rel, "status": "skipped", "decoded": where}
            problem = f"{why}; it is redone"
        if _attempt(str(out_dir), rel, "decode") > MAX_ATTEMPTS:
            return _given_up(rel, out_rel, "decode")
        test_fault("decode-task", str(src))
        pool = _decode_pool(job)
        pool.submit(None, str(src))
        done = []
        while pool.busy:
            done += pool.get()
        d = done[0]
        row = {"source": rel, "output": out_rel, "decoded": where, "problem": problem, "seconds": d.seconds}
        if not d.ok:
            record = decode_failure(d, Path(os.fsdecode(rel)), Path(os.fsdecode(out_rel)))
            return {**row, "status": "failed", "record": asdict(record)}
        return {**row, "status": "decoded", "clip": pickle.dumps(d.clip, protocol=5)}
    except Exception as exc:  # a bug here must cost one video, never the Dataset
        return _failed(rel, out_rel, f"{src}: decoding failed on Ray node {where} ({type(exc).__name__}: {exc})")


def _encoder_class(job: dict) -> type:
    """The encoder actor class, with the job in the class itself: no constructor arguments in the object store."""

    class SlowfastEncoder:
        def __init__(self) -> None:
            from .pipeline import Pipeline

            self.pipe = Pipeline(config_from_dict(job["config"]))
            self.where = node_name()

        def __call__(self, batch: dict) -> dict:
            return {"item": [pickle.dumps(self.encode(pickle.loads(item))) for item in batch["item"]]}

        def encode(self, row: dict) -> dict:
            if row["status"] != "decoded":
                return row
            rel, out_rel = row["source"], row["output"]
            try:
                return {**self._encode(row, rel, out_rel), "decoded": row["decoded"], "problem": row["problem"]}
            except Exception as exc:  # any bug: this video fails, the batch goes on
                msg = f"{os.fsdecode(rel)}: encoding failed ({type(exc).__name__}: {first_line(exc, 200)})"
                return {**_failed(rel, out_rel, msg, "encode"), "decoded": row["decoded"]}

        def _encode(self, row: dict, rel: bytes, out_rel: bytes) -> dict:
            from .pipeline import write_pending
            from .workers import Done, test_fault

            if _attempt(job["out_dir"], rel, "encode") > MAX_ATTEMPTS:
                return {**_given_up(rel, out_rel, "encode"), "encoded": self.where}
            test_fault("encode", os.fsdecode(rel))
            relp, out_relp = Path(os.fsdecode(rel)), Path(os.fsdecode(out_rel))
            done = Done(0, None, True, clip=pickle.loads(row["clip"]), seconds=row["seconds"])
            t0 = time.perf_counter()
            encoded = encode_one(done, relp, out_relp, Path(job["root"]), self.pipe)
            base = {"source": rel, "output": out_rel, "encoded": self.where}
            if isinstance(encoded, Record):
                encoded.seconds = row["seconds"]
                return {**base, "status": "failed", "record": asdict(encoded)}
            target = Path(job["out_dir"]) / out_relp
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = write_pending(encoded, target)
            except (SlowfastError, OSError) as exc:
                record = write_failure(exc, relp, out_relp)
                record.seconds = row["seconds"]
                return {**base, "status": "failed", "record": asdict(record)}
            record = ok_record(encoded.meta, relp, out_relp)
            record.seconds = row["seconds"] + time.perf_counter() - t0
            return {**base, "status": "written", "record": asdict(record), "tmp": tmp}

    return SlowfastEncoder


# --- back on the driver --------------------------------------------------------------------------------------
def _outcome(out: dict, rel: Path, out_rel: Path, out_dir: Path) -> Callable[[], Record]:
    status = out["status"]
    if status == "skipped":
        return lambda: skipped_record(rel, out_rel)
    record = Record(**{k: v for k, v in out["record"].items() if k != "time"})
    if status == "failed":
        return lambda: record

    def finish() -> Record:  # status "written": put the worker's temporary file in place
        try:
            os.replace(out["tmp"], out_dir / out_rel)
        except FileNotFoundError:
            msg = (
                f"{out_rel}: the token file written on Ray node {out.get('encoded')} is not visible here "
                f"({out['tmp']}); {SHARED}"
            )
            return Record(str(rel), str(out_rel), "failed", msg, "write")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(out["tmp"])
            return write_failure(exc, rel, out_rel)
        return record

    return finish
