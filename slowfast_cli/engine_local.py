"""The local engine of ``slowfast batch`` (the default): decoding processes on this machine, the model here.

``workers.DecodePool`` decodes in worker processes while this process runs the model, one video per forward
pass; each finished video becomes an *outcome* for ``batch.record_all``, which writes the token file and its
manifest line together. At most ``workers`` videos decode at once plus one decoded clip waiting per worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .batch import BatchPlan, Record, encode_one, existing_output, skipped_record, write_one
from .config import Config


def local_outcomes(
    plan: BatchPlan, config: Config, workers: int = 2, timeout: float = 120.0, pipeline=None
) -> Iterator[Callable[[], Record]]:
    """One outcome per video of ``plan.todo``, in the order they finish decoding."""
    from .pipeline import Pipeline
    from .workers import DecodePool

    todo = []
    for rel, out_rel in plan.todo:  # outputs planned without their CRC check (verify=False) are checked here
        if rel in plan.unverified:
            state, why = existing_output(plan.out_dir / out_rel, None, plan.root / rel)
            if state == "done":
                yield (lambda r=skipped_record(rel, out_rel): r)
                continue
            plan.problems.append(f"{why}; it is redone")
        todo.append((rel, out_rel))
    if not todo:
        return
    pipe = pipeline or Pipeline(config)
    threads = 1 if workers > 1 else 0
    jobs = iter(todo)
    with DecodePool(config.video, pipe.image_size, workers, timeout, threads) as pool:
        for _ in range(max(1, workers) * 2):  # keep every worker busy plus one clip ready per worker
            job = next(jobs, None)
            if job is None:
                break
            pool.submit(job, str(plan.root / job[0]))
        while pool.busy:
            for done in pool.get():
                rel, out_rel = done.payload
                yield _outcome(done, rel, out_rel, plan, pipe)
                job = next(jobs, None)
                if job is not None:
                    pool.submit(job, str(plan.root / job[0]))


def _outcome(done, rel: Path, out_rel: Path, plan: BatchPlan, pipe) -> Callable[[], Record]:
    """Encode now (outside the Ctrl-C hold); the returned ``finish`` writes the file and gives the Record."""
    t0 = time.perf_counter()
    encoded = encode_one(done, rel, out_rel, plan.root, pipe)
    encode_seconds = time.perf_counter() - t0

    def finish() -> Record:
        if isinstance(encoded, Record):
            encoded.seconds = done.seconds
            return encoded
        t1 = time.perf_counter()
        record = write_one(encoded, rel, out_rel, plan.out_dir)
        record.seconds = done.seconds + (encode_seconds + time.perf_counter() - t1 if record.status == "ok" else 0)
        return record

    return finish
