"""The Ray driver's CPU per video: rows for files that do not exist, which cost the engine's overhead only.

Every run is a real ``slowfast batch --engine ray --files-from LIST`` subprocess into a fresh output folder, against
a loopback head of 2 CPUs per tree (started here with ``tests/raycluster.py``, its workers importing that tree too,
stopped by PID). LIST names ``--small`` and ``--large`` paths that do not exist: each comes back from the encoder
actor's decoder as a ``missing`` failure (checked), so the driver's work per row is all engine (receiving the row,
recording it, the manifest). The driver's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)`` around the
subprocess) is split into a fixed part and a part per row from the two sizes: ``cpu = fixed + rows * per_row``.
Trees given with ``--trees`` (each put first on ``PYTHONPATH``) run interleaved, ``--repeats`` times; medians with
their spreads (min-max) are printed.

Example:
    python benchmarks/bench_ray_driver.py --trees /work/main,. --small 200 --large 2000 --repeats 3
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(common.ROOT / "tests"))
import raycluster  # noqa: E402


def driver_cpu(tree: Path, src: Path, listing: Path, out: Path, env: dict, address: str) -> tuple[float, float]:
    """(driver CPU seconds, wall seconds) of one batch of ``listing`` run from ``tree``."""
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(src), "-o", str(out), "--files-from", str(listing)]
    cmd += ["--engine", "ray", "--address", address, "--config", "tiny", "--dtype", "fp32", "--json"]
    env = {**env, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = len(listing.read_text().splitlines())
    kinds = json.loads(r.stdout)["run"]["failures_by_kind"] if r.stdout else None
    if r.returncode != 1 or kinds != {"missing": rows}:  # every row came back from the cluster as missing
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}, {kinds}): {r.stderr.decode()[-2000:]}")
    shutil.rmtree(out)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    p = common.parser(__doc__, "bench_ray_driver", torch_options=False)
    p.add_argument("--trees", default=".", help="comma-separated source trees to compare (default: this one)")
    p.add_argument("--small", type=int, default=200, help="rows in the small run (default 200)")
    p.add_argument("--large", type=int, default=2000, help="rows in the large run (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every tree and size (default 3)")
    args = p.parse_args()
    if args.quick:
        args.small, args.large, args.repeats = 20, 100, 1
    info = common.machine_info(with_torch=False)
    common.header("the Ray driver's CPU per row (rows of files that do not exist)", info)
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ray-driver-"))
    src = work / "in"
    src.mkdir()
    lists = {}
    for n in (args.small, args.large):
        lists[n] = work / f"list{n}.txt"
        lists[n].write_text("".join(f"gone/m{i:07d}.mp4\n" for i in range(n)))
    clusters = {}  # one head per tree: its workers import that tree too (PYTHONPATH in the cluster's environment)
    runs: dict[str, list[dict]] = {str(t): [] for t in trees}
    try:
        for i, tree in enumerate(trees):
            clusters[tree] = raycluster.make_cluster(work / f"rc{i}", {"PYTHONPATH": str(tree)})
            clusters[tree].start_head(num_cpus=2)
        for rep in range(args.repeats):
            for tree in trees:
                cpu, wall, c = {}, {}, clusters[tree]
                for n in (args.small, args.large):
                    cpu[n], wall[n] = driver_cpu(tree, src, lists[n], work / "out", c.env, c.address)
                per_row = (cpu[args.large] - cpu[args.small]) / (args.large - args.small)
                row = {"per_row_ms": per_row * 1e3, "fixed_s": cpu[args.small] - args.small * per_row,
                       "rows_per_s": args.large / wall[args.large], **{f"cpu_{n}_s": cpu[n] for n in cpu}}  # fmt: skip
                runs[str(tree)].append(row)
                print(f"round {rep} {tree}: {row}", flush=True)
    finally:
        for c in clusters.values():
            c.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for tree, got in runs.items():
        row = {"tree": tree}
        for key in ("per_row_ms", "fixed_s", "rows_per_s"):
            values = [g[key] for g in got]
            row[key] = f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"
        rows.append(row)
    cols = [("tree", "tree", ""), ("per_row_ms", "driver CPU ms/row", ""), ("fixed_s", "driver CPU fixed s", ""),
            ("rows_per_s", f"rows/s at {args.large}", "")]  # fmt: skip
    print("\n" + common.table(rows, cols))
    common.write_json(args.out, {"machine": info, "args": vars(args), "runs": runs})


if __name__ == "__main__":
    main()
