"""The local engine of ``slowfast batch`` (the default): decoding processes on this machine, the model here.

``workers.DecodePool`` decodes in worker processes while this process runs the model, the frames of several
videos packed into forward passes of exactly ``encoder.batch_frames`` frames (``encoder.packing``: the tokens are
the same bits as a video's alone); each encoded video becomes an *outcome* for ``run.record_all``, which writes the
token file and its manifest line together. At most ``workers`` videos decode at once plus one decoded clip waiting
per worker, plus the clips whose frames wait for a full pass (fewer than ``batch_frames`` frames in all, and the
last one added). When no video is left to decode, the last pass is padded with zero frames.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import Config
from ...errors import ConfigError, SlowfastError
from ..plan import BatchPlan, existing_output
from ..records import Record
from ..run import EngineOptions, Outcome, Prepared, encode_one, write_one


def default_workers() -> int:
    """One decoder per core, minus one for the process that runs the model; at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class LocalEngine:
    """Decoding worker processes here, the model in this process (see the module docstring)."""

    name = "local"
    verifies_outputs = True  # outputs that look done are CRC-checked while planning, here

    def __init__(self, options: EngineOptions):
        if options.address or options.decoders or options.encoders or options.stall_warn or options.stall_timeout:
            ray_only = "--address, --decoders, --encoders, --stall-warn and --stall-timeout"
            raise ConfigError(f"{ray_only} are for --engine ray")
        self.workers = options.workers or default_workers()
        self.timeout = options.timeout
        self.features_dir = options.features_dir
        self.planned: dict | None = None  # the provenance prepare() planned with
        self.pipeline = None  # built by start(), once there is work

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipeline = None

    def prepare(self, config: Config, root: Path, out_dir: Path) -> Prepared:
        """The provenance this machine's files will carry (``--dtype auto`` resolved here), without the model, and
        without torch where the dtype is certain without it (``runtime.planned_dtype``): usage errors come at once."""
        from ...provenance import provenance
        from ...runtime import planned_dtype

        dtype = planned_dtype(config.runtime.device, config.runtime.dtype)
        if dtype is None:
            from ...pipeline import run_provenance

            self.planned = run_provenance(config)
        else:
            self.planned = provenance(config, dtype)
        return Prepared(config, self.planned)

    def start(self, plan: BatchPlan, config: Config) -> list[str]:
        """Load the model (before the progress bar, so its warnings come first); its warnings."""
        from ...pipeline import Pipeline

        self.pipeline = Pipeline(config)
        planned = self.planned
        if planned is not None and planned["dtype"] != self.pipeline.provenance["dtype"]:  # runtime.py was wrong
            raise SlowfastError(f"the model runs in {self.pipeline.provenance['dtype']}, not the {planned['dtype']} "
                                "planned; pass --dtype explicitly")  # fmt: skip
        return self.pipeline.warnings

    def outcomes(self, plan: BatchPlan, config: Config) -> Iterator[Outcome]:
        """One outcome per video of ``plan.todo``, in the order they finish decoding."""
        from ...encoder.packing import Packer
        from ..workers import DecodePool

        todo = []
        for rel, out_rel in plan.todo:  # outputs planned without their CRC check (verify=False) are checked here
            if rel in plan.unverified:
                state, why = existing_output(plan.out_dir / out_rel, None, plan.root / rel)
                if state == "done":
                    yield (lambda r=Record.skipped(rel, out_rel): r)
                    continue
                plan.problems.append(f"{why}; it is redone")
            todo.append((rel, out_rel))
        if not todo:
            return
        if self.pipeline is None:
            self.start(plan, config)
        pipe, workers = self.pipeline, self.workers
        threads = 1 if workers > 1 else 0
        jobs = iter(todo)
        packer = Packer(pipe.encoder, pipe.batch_frames)  # frames of several videos per forward pass
        decoded: dict[int, Any] = {}  # job id -> its Done, while its frames wait in the packer
        with DecodePool(config.video, pipe.image_size, workers, self.timeout, threads) as pool:
            for _ in range(max(1, workers) * 2):  # keep every worker busy plus one clip ready per worker
                job = next(jobs, None)
                if job is None:
                    break
                pool.submit(job, str(plan.root / job[0]))
            while pool.busy or decoded:
                packed = []
                for done in pool.get() if pool.busy else []:
                    job = next(jobs, None)
                    if job is not None:
                        pool.submit(job, str(plan.root / job[0]))
                    if not done.ok:
                        yield _outcome(done, plan, pipe, features_dir=self.features_dir)
                        continue
                    decoded[done.job_id] = done
                    packed += packer.add(done.job_id, done.clip.frames)
                if not pool.busy:  # nothing more is coming: the last pass, padded
                    packed += packer.flush()
                for p in packed:
                    yield _outcome(decoded.pop(p.key), plan, pipe, p, self.features_dir)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "workers": self.workers}


def _outcome(done, plan: BatchPlan, pipe, packed=None, features_dir: Path | None = None) -> Outcome:
    """Finish encoding now (outside the Ctrl-C hold); the returned ``finish`` writes the file and gives the Record."""
    rel, out_rel = done.payload
    t0 = time.perf_counter()
    encoded = encode_one(done, rel, out_rel, plan.root, pipe, packed, keep_features=features_dir is not None)
    encode_seconds = time.perf_counter() - t0 + (packed.seconds if packed is not None else 0.0)

    def finish() -> Record:
        if isinstance(encoded, Record):
            encoded.seconds = done.seconds
            return encoded
        t1 = time.perf_counter()
        record = write_one(encoded, rel, out_rel, plan.out_dir, plan.writer, plan.columns.get(rel), features_dir)
        record.seconds = done.seconds + (encode_seconds + time.perf_counter() - t1 if record.status == "ok" else 0)
        return record

    return finish
