"""What the Ray engine's driver pays before the first task: planning, the plan table, the Dataset (issue 20).

For each size N (``--sizes``, default 100,000 and 1,000,000): a ``--files-from`` list of N generated relative paths
(``dNNNN/vNNN.mp4``; the files need not exist, so each stat fails at once), planned with ``batch.plan_batch``
(the listing, as ``slowfast batch`` does), then turned into the Ray engine's Arrow plan table
(``ray_plan.plan_table``: one stat per video) and a Ray Dataset of blocks (``ray_plan.plan_dataset``) on a local
Ray instance started here (``ray.init``, 2 CPUs, its own temp dir). Each step is timed on the driver (wall and
this process's CPU time) with the driver's RSS after it; then the first row is taken through a real encoder actor
pipeline (``RayEngine.dataset``, tiny preset, fp32): "first row" is the wall time from the start of planning to the
first answer of an actor (the actor's start and model load included, its videos all ``missing``).

``--rate N`` (default 2,000; 0 skips it) runs all rows of an N-entry plan of missing files through one encoder
actor (the 2-CPU instance's default sizing: one actor, one decoder): the engine's own cost per video, which the
issue measured at 8.3 videos/s with one task and one actor call per video.

``--old N`` also times the engine's former dataset creation, ``ray.data.from_items`` with one block (and one
``ray.put``) per video, on the first N entries (default 20,000; 0 skips it): what issue 20 measured at 134.5 s for
100,000.

Example:
    python benchmarks/bench_ray_plan.py --quick
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import common
import psutil


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class Clock:
    """Wall and CPU seconds of this process since the last ``lap``."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def write_list(path: Path, n: int, per_folder: int = 1000) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f"d{i // per_folder:04d}/v{i % per_folder:03d}.mp4\n")


def one_size(n: int, work: Path, old: int) -> dict:
    import ray

    from slowfast_cli.batch.engines.ray import RayEngine
    from slowfast_cli.batch.engines.ray_plan import block_rows, plan_dataset, plan_table
    from slowfast_cli.batch.plan import plan_batch
    from slowfast_cli.batch.run import EngineOptions
    from slowfast_cli.config import resolve_config

    root, out, listing = work / f"in{n}", work / f"out{n}", work / f"list{n}.txt"
    root.mkdir()
    write_list(listing, n)
    row = {"videos": n, "rss_start_mb": rss_mb()}
    t0 = time.perf_counter()
    clock = Clock()
    with plan_batch(root, out, files_from=listing, verify=False) as plan:
        row["plan_s"], row["plan_cpu_s"] = clock.lap()
        row["rss_plan_mb"] = rss_mb()
        table = plan_table(plan.root, plan.todo, plan.unverified, plan.columns)
        row["table_s"], row["table_cpu_s"] = clock.lap()
        row["table_mb"] = table.nbytes / 2**20
        row["rss_table_mb"] = rss_mb()
        ds = plan_dataset(table, 1)
        row["dataset_s"], row["dataset_cpu_s"] = clock.lap()
        row["rss_dataset_mb"] = rss_mb()
        row["block_rows"] = block_rows(n, 1)
        del ds
        with RayEngine(EngineOptions(address=os.environ["RAY_ADDRESS"])) as engine:
            cfg = resolve_config("tiny", {"dtype": "fp32"})
            engine.size(cfg)
            pinned, _, _ = engine.probe(cfg, root, out)
            clock.lap()  # the probe (a model build on the node) is apart: it does not grow with N
            job = {"config": pinned.to_dict(), "root": str(plan.root), "out_dir": str(plan.out_dir), "timeout": 60.0,
                   "image_size": engine.image_size, "format": None, "decoders": 1}  # fmt: skip
            (plan.out_dir / ".slowfast-attempts").mkdir(exist_ok=True)
            ds = engine.dataset(plan, job)
            first = next(iter(ds.iter_rows()))
            row["first_row_s"], row["first_row_cpu_s"] = clock.lap()
            row["first_rows"] = len(pickle.loads(first["items"]))
            row["rss_first_row_mb"] = rss_mb()
        row["driver_s"] = row["plan_s"] + row["table_s"] + row["dataset_s"]
        row["us_per_video"] = 1e6 * row["driver_s"] / n
        row["us_per_video_table_dataset"] = 1e6 * (row["table_s"] + row["dataset_s"]) / n
        row["wall_to_first_row_s"] = time.perf_counter() - t0 - 0  # includes the probe
    if old:
        items = [{"item": pickle.dumps((os.fsencode(r), os.fsencode(o), False, None))} for r, o in plan.todo[:old]]
        clock.lap()
        ray.data.from_items(items, override_num_blocks=len(items))
        row["old_videos"] = old
        row["old_s"], row["old_cpu_s"] = clock.lap()
        row["old_us_per_video"] = 1e6 * row["old_s"] / old
        row["rss_old_mb"] = rss_mb()
    shutil.rmtree(root)
    shutil.rmtree(out, ignore_errors=True)
    return row


def missing_rate(n: int, work: Path) -> dict:
    """Rows per second for ``n`` planned videos that do not exist, through the real encoder actor."""
    from slowfast_cli.batch.engines.ray import RayEngine
    from slowfast_cli.batch.plan import plan_batch
    from slowfast_cli.batch.run import EngineOptions
    from slowfast_cli.config import resolve_config

    root, out, listing = work / "rate-in", work / "rate-out", work / "rate.txt"
    root.mkdir()
    write_list(listing, n)
    options = EngineOptions(address=os.environ["RAY_ADDRESS"])
    with plan_batch(root, out, files_from=listing, verify=False) as plan, RayEngine(options) as engine:
        cfg = resolve_config("tiny", {"dtype": "fp32"})
        engine.size(cfg)
        pinned, _, _ = engine.probe(cfg, root, out)
        job = {"config": pinned.to_dict(), "root": str(plan.root), "out_dir": str(plan.out_dir), "timeout": 60.0,
               "image_size": engine.image_size, "format": None, "decoders": engine.sizing.decoders}  # fmt: skip
        (plan.out_dir / ".slowfast-attempts").mkdir(exist_ok=True)
        ds = engine.dataset(plan, job)
        it = iter(ds.iter_rows())
        first = got = len(pickle.loads(next(it)["items"]))  # the actor has started: time from here
        t0 = time.perf_counter()
        for item in it:
            got += len(pickle.loads(item["items"]))
        seconds = time.perf_counter() - t0
    assert got == n, (got, n)
    return {"rate_videos": n - first, "rate_s": seconds, "rate_per_s": (n - first) / seconds}


def main() -> None:
    p = common.parser(__doc__, "bench_ray_plan", torch_options=False)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--old", type=int, default=20_000, help="entries for the former from_items path (0: skip)")
    p.add_argument("--rate", type=int, default=2_000, help="missing videos run through an actor (0: skip)")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.old, args.rate = [5_000], 1_000, 200
    import ray

    info = common.machine_info(with_torch=False)
    common.header("Ray plan: planning, plan table, Dataset, first row", info)
    ray_dir = Path(tempfile.mkdtemp(prefix="sfrp-"))
    work = Path(tempfile.mkdtemp(prefix="bench-ray-plan-"))
    rows = []
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(ray_dir), logging_level="ERROR")
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        for n in args.sizes:
            rows.append(one_size(n, work, args.old if n == args.sizes[0] else 0))
            print(rows[-1], flush=True)
        if args.rate:
            rows[0].update(missing_rate(args.rate, work))
            print(f"missing videos through one actor: {rows[0]['rate_per_s']:.0f} videos/s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
    print(
        common.table(
            rows,
            [
                ("videos", "videos", ","),
                ("plan_s", "plan_batch (s)", ".2f"),
                ("table_s", "plan table (s)", ".2f"),
                ("dataset_s", "Dataset (s)", ".2f"),
                ("us_per_video", "µs/video, all three", ".1f"),
                ("us_per_video_table_dataset", "µs/video, table + Dataset", ".1f"),
                ("first_row_s", "then first row (s)", ".2f"),
                ("table_mb", "table (MiB)", ".1f"),
                ("rss_start_mb", "RSS start (MiB)", ".0f"),
                ("rss_plan_mb", "after plan", ".0f"),
                ("rss_dataset_mb", "after Dataset", ".0f"),
                ("rss_first_row_mb", "after first row", ".0f"),
                ("old_us_per_video", "from_items µs/video", ".0f"),
                ("rate_per_s", "missing videos/s", ".0f"),
            ],
        )
    )
    common.write_json(args.out, {"info": info, "rows": rows})


if __name__ == "__main__":
    main()
