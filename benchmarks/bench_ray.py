"""``slowfast batch``: the local engine against the Ray engine on one node and on two loopback nodes.

Every run is a real ``slowfast batch`` subprocess (tiny preset, fp32, 16 frames per video) into a fresh output
folder, over N copies of one short clip (640x360, 2 s, 30 fps; links to the same file would be cached alike, so
they are copies). Ray clusters are started here (``tests/raycluster.py``: ``ray start --block`` on loopback, state
in a temporary folder, stopped by PID) before the timed runs, so the time of ``ray start`` is reported apart.

From the wall times of the same setup at two sizes (``--small``, ``--large`` videos), the fixed cost (start-up:
imports, connecting, the probe, starting actors, the report) and the steady-state rate are solved from
``wall = fixed + videos / rate``, measured side by side in one run of this script.

Setups: ``local`` (``--workers 1``, the default on 2 cores); ``ray-1node`` (a head with 2 CPUs: 1 decoder +
1 encoder actor); ``ray-2nodes`` (a head and a second node with 1 CPU each); and the scaling rows
``ray-1node-dK`` (a head declaring K+1 logical CPUs: K decoders, oversubscribing 2 real cores when K > 1).

Example:
    python benchmarks/bench_ray.py --quick
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(common.ROOT / "tests"))
import raycluster  # noqa: E402

FRAMES = 16


def run_batch(src: Path, out: Path, env: dict, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(src), "-o", str(out), "--config", "tiny"]
    cmd += ["--dtype", "fp32", "--frames", str(FRAMES), "--json", *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-2000:]}")
    report = json.loads(r.stdout)
    shutil.rmtree(out)
    return {"wall_s": wall, "ok": report["run"]["ok"], "engine": report["run"]["engine"]}


def corpus(work: Path, n: int, clip: Path) -> Path:
    src = work / f"in{n}"
    src.mkdir()
    for i in range(n):
        shutil.copyfile(clip, src / f"v{i:04d}.mp4")
    return src


def solve(small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(fixed seconds, videos/s) from two (videos, wall) points of ``wall = fixed + videos / rate``."""
    (n1, w1), (n2, w2) = small, large
    per_video = (w2 - w1) / (n2 - n1)
    return w1 - n1 * per_video, (1.0 / per_video if per_video > 0 else float("inf"))


def main() -> None:
    p = common.parser(__doc__, "bench_ray", torch_options=False)
    p.add_argument("--small", type=int, default=20, help="videos in the small run (default 20)")
    p.add_argument("--large", type=int, default=200, help="videos in the large run (default 200)")
    p.add_argument("--scaling", default="1,2,3", help="decoder counts for the one-node scaling rows (default 1,2,3)")
    args = p.parse_args()
    if args.quick:
        args.small, args.large, args.scaling = 4, 12, "1"
    info = common.machine_info(with_torch=False)
    common.header("batch: local engine vs Ray engine", info)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    clip = common.cached_video(common.OUT_DIR / "videos", 2.0)
    sizes = (args.small, args.large)
    srcs = {n: corpus(work, n, clip) for n in sizes}
    rows, clusters = [], []
    try:
        setups: list[tuple[str, dict, list[str], float]] = [("local", dict(os.environ), ["--workers", "1"], 0.0)]
        for name, cpus, extra_nodes, decoders in [
            ("ray-1node", 2, 0, None),
            ("ray-2nodes", 1, 1, None),
            *[(f"ray-1node-d{k}", k + 1, 0, k) for k in map(int, args.scaling.split(",")) if k > 1],
        ]:
            c = raycluster.make_cluster(work / name)
            t0 = time.perf_counter()
            c.start_head(num_cpus=cpus)
            for _ in range(extra_nodes):
                c.add_node(num_cpus=cpus)
            start = time.perf_counter() - t0
            clusters.append(c)
            extra = ["--engine", "ray", "--address", c.address]
            if decoders:
                extra += ["--decoders", str(decoders)]
            setups.append((name, c.env, extra, start))
        for name, env, extra, start in setups:
            walls = {}
            for n in sizes:
                r = run_batch(srcs[n], work / "out", env, extra)
                assert r["ok"] == n, r
                walls[n] = r["wall_s"]
                engine = r["engine"]
            fixed, rate = solve((sizes[0], walls[sizes[0]]), (sizes[1], walls[sizes[1]]))
            workers = engine.get("decoders") or engine.get("workers")
            rows.append(
                {
                    "setup": name,
                    "cluster_start_s": start or None,
                    "decoders": workers,
                    **{f"wall_{n}_s": walls[n] for n in sizes},
                    "fixed_s": fixed,
                    "frames_per_s": rate * FRAMES,
                    "frames_per_s_per_decoder": rate * FRAMES / workers,
                    "nodes_used": len(engine.get("nodes", {})) or 1,
                }
            )
            print(f"{name}: {rows[-1]}", flush=True)
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(work, ignore_errors=True)
    cols = [
        ("setup", "setup", ""),
        ("cluster_start_s", "ray start (s)", ".1f"),
        ("decoders", "decoders", ""),
        (f"wall_{sizes[0]}_s", f"{sizes[0]} videos (s)", ".1f"),
        (f"wall_{sizes[1]}_s", f"{sizes[1]} videos (s)", ".1f"),
        ("fixed_s", "fixed cost (s)", ".1f"),
        ("frames_per_s", "steady frames/s", ".0f"),
        ("frames_per_s_per_decoder", "frames/s per decoder", ".0f"),
        ("nodes_used", "nodes used", ""),
    ]
    print("\n" + common.table(rows, cols))
    common.write_json(args.out, {"machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
