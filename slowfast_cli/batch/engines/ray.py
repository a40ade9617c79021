"""The Ray engine of ``slowfast batch`` (``--engine ray``): the same plan, records and token files on a Ray cluster.

The driver (the ``slowfast batch`` process) plans as the local engine does, then runs one Ray Data pipeline:

    from_arrow(the plan as an Arrow table, in blocks of up to 1,000 videos: ray_plan)
      -> map_batches(encoder actor, ActorPoolStrategy(size=encoders), num_cpus=cpus [num_gpus=1],
                     batch_size=a block): each actor decodes its block's videos on its own node, with decoders
                     processes of its own, packs their frames into forward passes and writes the token files
      -> iter_rows() on the driver: the finished rows, a few at a time

- **Blocks, not videos**: the driver puts one small Arrow block per 1,000 videos into the object store, not an object
  per video; decoded frames never leave the node that decodes them (BENCHMARKS.md section 21).
- **Decode** runs in ``batch.workers.DecodePool`` processes inside each actor (the local engine's workers), under the
  same ``--timeout``: a hung or crashing decoder costs its video, never the actor. A resumed output that still
  awaits its CRC-32 check is checked on the node, not on the driver.
- **Encode**: each actor loads the model once; frames of several videos go through the ViT together, packed into
  forward passes of ``encoder.batch_frames`` (``encoder.packing``: tokens never depend on which node or block a
  video landed in). Tokens never travel to the driver.
- **Blocks out** (``ray_block``, ``batch.parts``): the actor that runs a block owns it: it puts each output in place
  itself (a ``pt``/``safetensors`` file renamed over its target, or the block's own webdataset shards) and records
  it in the block's part, an output becoming visible only once its record is durable; the driver merges the parts
  into ``manifest.jsonl`` (and ``index.jsonl``) every few seconds and at the end, with one fsync per merge, and a
  run that starts merges what an earlier one left (under the output lock).
- **Failures are records.** Every exception is caught per video. Ray restarts a dead actor and runs its block again
  (its own ``max_restarts``/``max_task_retries``, without end); the block's part says what is recorded already (not
  done again) and which videos were in hand at each death, and a video is given up after ``MAX_ATTEMPTS`` deaths
  with a ``crash`` record. A planned video whose row never comes back and that no part recorded is a ``crash`` too.
- **Stalls speak** (``ray_watch``): no row for ``--stall-warn`` seconds while Ray cannot grant what the run asks for
  prints the unmet demand and the nodes; ``--stall-timeout`` stops the run (exit 1).
- The driver sends the resolved config (``Config.to_dict()``) with device and dtype pinned for the whole cluster
  (:meth:`RayEngine.probe`), never a preset name: ``configs/`` need not exist on the nodes.

IN_DIR and OUT_DIR must be on a file system that every node sees at the same path. Ray Client (``ray://``) is
not supported by Ray Data (ray-project/ray#48682); it is refused. ray is imported in the ``ray_*`` modules only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
import ray.data

from ...atomic import sigint_deferred
from ...config import Config, config_from_dict
from ...errors import ConfigError, SlowfastError, first_line
from ...video.files import stderr_quiet
from ..parts import Merger
from ..plan import BatchPlan, prepare_output_dir
from ..records import Record
from ..run import EngineOptions, Outcome, Prepared
from .ray_checks import REACH_TIMEOUT_S, Sizing, agree, probe_nodes, reason, sizing, unreachable
from .ray_plan import block_rows, plan_dataset, plan_table
from .ray_tasks import RayRow, encoder_class
from .ray_watch import Watchdog

STALL_WARN_S = 60.0  # default --stall-warn: no row for this long while Ray cannot grant a request is a stall


class RayEngine:
    """A connection to a Ray cluster for ``slowfast batch``; use as a context manager.

    ``address``: None connects as ``ray.init()`` does (``RAY_ADDRESS`` when set, as under ``ray job submit``,
    else a cluster running on this machine, else a new local instance just for this run), ``auto`` requires a
    running cluster, ``HOST:PORT`` names one. ``encoders`` model actors and ``decoders`` decoding processes in all
    (shared out among the actors): see ``ray_checks.sizing``. ``notify``: where the stall watchdog's lines go (set
    by the CLI; None: nowhere).
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
        self.stall_warn = options.stall_warn or STALL_WARN_S
        self.stall_timeout = options.stall_timeout
        self.notify = None  # the CLI's printer for the watchdog's lines
        self.warnings: list[str] = []  # the probe's Pipeline warnings
        self.sizing: Sizing | None = None
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
        ctx.max_errored_blocks = -1  # a block lost to a bug costs its videos (crash records), not the run
        ctx.target_max_block_size = 1  # every answer of an actor (a few rows, pickled together) is a block at once
        # blocks go out once every encoder has started (an even share each); one that cannot be placed is a stall,
        # which the watchdog names and --stall-timeout ends
        ctx.wait_for_min_actors_s = int(self.stall_timeout) + 60 if self.stall_timeout else 10**7
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

    def resources(self) -> list[dict[str, float]]:
        """The Ray resources of each alive node."""
        return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

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
        """Encoders and decoders for the cluster's resources (``ray_checks.sizing``)."""
        self.sizing = sizing(self.resources(), config.runtime.device, self.encoders, self.decoders)
        self.num_gpus, self.encoders = self.sizing.gpus, self.sizing.encoders
        self.decoders = self.sizing.decoders * self.sizing.encoders

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
            infos = probe_nodes(self.num_gpus, config, root, mark, token)
        finally:
            with contextlib.suppress(OSError):
                mark.unlink()
        info = agree(infos, config)
        pinned = config_from_dict(config.to_dict())
        if config.runtime.device.startswith("cuda:"):  # an actor sees only the GPU Ray gave it, as cuda:0
            pinned.runtime.device = "cuda"
        if config.runtime.dtype == "auto":  # resolved once: CPUs with and without native bf16 would differ
            pinned.runtime.dtype = info["dtype"]
        self.image_size = info["image_size"]
        return pinned, info["provenance"], info["warnings"]

    # --- the run ---------------------------------------------------------------------------------------------
    def outcomes(self, plan: BatchPlan, config: Config) -> Iterator[Outcome]:
        """Not used: the actors record their blocks themselves (:meth:`record`)."""
        raise NotImplementedError("the Ray engine records its blocks itself: see RayEngine.record")

    def record(self, plan: BatchPlan, config: Config, fail_fast: bool = False) -> Iterator[Record]:
        """Every record of the plan, as ``run.record_all`` gives them, but written by the actors (``batch.parts``).

        The planned records (skips, collisions) are appended to the manifest here; the actors record the rest in
        their blocks' parts, which are merged into the manifest every ``MERGE_S`` seconds and at the end (on Ctrl-C
        and errors too), one fsync per merge. A record is yielded when its row arrives (it is durable by then); a
        planned video whose row never comes back is a ``crash`` record. A complete run finishes and removes the
        parts (``parts.recover``); an interrupted one leaves them for the next run, which merges them first.
        """
        merger = Merger(plan.out_dir)
        seen: set[bytes] = set()
        rows = self._rows(plan, config, merger, seen)
        complete = False
        try:
            merger.write(plan.records)
            for r in plan.records:
                yield r
                if fail_fast and r.status == "failed":
                    return
            for record in rows:
                yield record
                if fail_fast and record.status == "failed":
                    return
            unseen = [(rel, out_rel) for rel, out_rel in plan.todo if os.fsencode(rel) not in seen]
            recorded = merger.recorded() if unseen else {}  # rows lost with an actor that recorded them first
            lost = []
            for rel, out_rel in unseen:
                if str(rel) in recorded:
                    yield Record(**recorded[str(rel)])
                    continue
                msg = f"{rel}: no result came back from the Ray cluster (a worker or node was lost); rerun to retry"
                lost.append(Record.failed(rel, out_rel, msg, "crash"))
            merger.write(lost)
            yield from lost
            complete = True
        finally:
            with contextlib.suppress(Exception):
                rows.close()  # the actors stop before the last merge
            with sigint_deferred(reraise=False):
                try:
                    merger.merge()  # what the actors recorded up to now (the rest: the next run)
                finally:
                    merger.close(complete)

    def _rows(self, plan: BatchPlan, config: Config, merger: Merger, seen: set[bytes]) -> Iterator[Record]:
        """The records of the rows, as they arrive (each once), merging the parts now and then."""
        if not plan.todo:
            return
        watchdog = Watchdog(self.stall_warn, self.stall_timeout, self.notify)
        ds = self.dataset(plan, self.job(plan, config))
        rows = iter(ds.iter_rows())
        try:
            with watchdog:
                for item in rows:
                    watchdog.beat()
                    for out in pickle.loads(item["items"]):
                        if out.status == "stop":
                            raise SlowfastError(out.problem)
                        if out.source in seen:  # a block run again after its actor died: recorded already
                            continue
                        seen.add(out.source)
                        self._count(out)
                        if out.problem:
                            plan.problems.append(out.problem)
                        yield out.record
                    if merger.due():
                        merger.merge()
        except KeyboardInterrupt:
            if watchdog.stalled:
                raise SlowfastError(watchdog.stalled) from None
            raise
        except (GeneratorExit, SlowfastError):
            raise
        except Exception as exc:  # the pipeline as a whole failed (an actor that cannot start): stop here
            raise SlowfastError(f"the Ray job stopped: {reason(exc)}") from None
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # the actors stop

    def job(self, plan: BatchPlan, config: Config) -> dict:
        """What every encoder actor is given (``ray_tasks.encoder_class``)."""
        job = {
            "config": config.to_dict(),
            "root": str(plan.root),
            "out_dir": str(plan.out_dir),
            "timeout": self.timeout,
            "image_size": self.image_size,  # the decode-time size, as the probe's Pipeline gave it
            "format": plan.writer.fmt.to_dict() if plan.writer else None,  # the nodes write the outputs
            "decoders": self.sizing.decoders if self.sizing else 1,  # per actor
        }
        if plan.writer is not None and plan.writer.in_shards:  # each block's shards get numbers of their own
            plan.writer.finish()  # a local run's open shard first, under its number
            step = block_rows(len(plan.todo), self.encoders or 1)
            job["first_shard"] = plan.writer.next_number
            job["shards_per_block"] = math.ceil(step / plan.writer.fmt.shard_size)
        return job

    def _count(self, out: RayRow) -> None:
        for stage, node in (("decoded", out.decoded), ("encoded", out.encoded)):
            if node:
                self.nodes.setdefault(node, Counter())[stage] += 1

    def dataset(self, plan: BatchPlan, job: dict) -> ray.data.Dataset:
        """The pipeline over ``plan.todo``: the plan's blocks through the encoder actors (not run until iterated)."""
        table = plan_table(plan.root, plan.todo, plan.unverified, plan.columns)
        size = self.sizing or Sizing(self.num_gpus, self.encoders or 1, 1, 1)
        ds = plan_dataset(table, size.encoders)
        return ds.map_batches(
            encoder_class(job),
            batch_size=block_rows(table.num_rows, size.encoders),  # a block per call: the actor streams through it
            compute=ray.data.ActorPoolStrategy(size=size.encoders, max_tasks_in_flight_per_actor=2),
            num_cpus=size.cpus,
            num_gpus=size.gpus or None,
            # torch's threads in the actors wait passively, as the slowfast command's do (cli/process.py): each actor
            # runs its decoders beside its model; the driver's own setting (the user's, or PASSIVE) goes with them
            runtime_env={"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}},
        )  # Ray Data's actors restart and rerun their block without end (max_restarts = max_task_retries = -1, its
        # default for an actor pool); the block's part bounds the retries per video (ray_block, batch.parts)

    def summary(self) -> dict[str, Any]:
        """What ``report.json``'s ``run.engine`` says about this run."""
        return {
            "name": "ray",
            "decoders": self.decoders,  # in all: each encoder runs decoders / encoders of them on its node
            "encoders": self.encoders,
            "cpus_per_encoder": self.sizing.cpus if self.sizing else None,
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
