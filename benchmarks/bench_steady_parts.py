"""Issue 21: where a steady-state frame's CPU goes in ``slowfast batch``, and what torch's OpenMP threads cost there.

Each cell is a fresh process (``--child``) with the OpenMP setting under test fixed before torch loads:

- ``spin x2``: torch's default, 2 intra-op threads (the cores here), libgomp's default wait policy (a waiting thread
  spins for a while before it sleeps): what ``slowfast batch`` did before issue 21's third pass;
- ``passive x2``: the same threads with ``OMP_WAIT_POLICY=PASSIVE`` (what ``slowfast`` sets now, ``cli/process.py``);
- ``spin x1`` / ``passive x1``: one intra-op thread ("cores minus decode workers" with one decode worker on 2 cores).

The child builds the ``Pipeline`` of ``slowfast batch --model ViT-B-32 --pretrained none --frames 16 --slow-pool
none`` and runs the stages of ``batch`` in turn for each of ``--clips`` 3-s 640x360 clips (one untimed clip first),
reading its own CPU time (all its threads) and wall time around each: decode (``load_clip`` in this process, as
a decode worker runs it), preprocess (``Encoder.preprocess``), ViT (``Encoder._tokens``, one 16-frame pass),
finish (projector, aggregator, meta: ``Pipeline.finish_clip``), write (the ``pt`` writer). With ``--neighbour`` a
busy process runs beside each child, the part a decode worker (or another session) takes of a core in ``batch``.
Cells are interleaved over ``--rounds``; medians and spreads of CPU ms per frame are printed.

Example:
    python benchmarks/bench_steady_parts.py --rounds 3 --clips 5
    python benchmarks/bench_steady_parts.py --rounds 3 --clips 5 --neighbour
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common

PARTS = ("decode", "preprocess", "vit", "finish", "write")
VARIANTS = {"spin x2": (2, None), "passive x2": (2, "PASSIVE"), "spin x1": (1, None), "passive x1": (1, "PASSIVE")}


def child(dtype: str, threads: int, clips: list[str], out: str) -> None:
    import torch

    from slowfast_cli.config import resolve_config
    from slowfast_cli.formats import make_writer
    from slowfast_cli.pipeline import Pipeline

    torch.set_num_threads(threads)
    overrides = {"model": "ViT-B-32", "pretrained": "none", "device": "cpu", "dtype": dtype, "frames": 16,
                 "slow_pool": "none"}  # fmt: skip
    pipe = Pipeline(resolve_config("default", overrides))
    writer = make_writer(None, Path(out))
    cpu = {p: [] for p in PARTS}
    wall = {p: [] for p in PARTS}

    def timed(part: str, fn):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        if part is not None:
            cpu[part].append(time.process_time() - c0)
            wall[part].append(time.perf_counter() - w0)
        return result

    with torch.inference_mode():
        for i, path in enumerate([clips[0], *clips]):  # the first one untimed: kernels and caches warm up

            def part(name: str, i: int = i) -> str | None:
                return name if i else None

            clip = timed(part("decode"), lambda p=path: pipe.load(p))
            x = timed(part("preprocess"), lambda c=clip: pipe.encoder.preprocess(c.frames))
            feats = timed(part("vit"), lambda x=x: pipe.encoder._tokens(x))
            result = timed(part("finish"), lambda c=clip, f=feats: pipe.finish_clip(c, f))
            name = Path(f"clip{i}.pt")
            timed(part("write"), lambda r=result, n=name: writer.write(r.tokens, writer.sample_meta(r.meta, n), n))
    frames = 16 * len(clips)
    print(json.dumps({"cpu": {p: 1000 * sum(v) / frames for p, v in cpu.items()},
                      "wall": {p: 1000 * sum(v) / frames for p, v in wall.items()}}))  # fmt: skip


def main() -> None:
    p = common.parser(__doc__, "bench_steady_parts", torch_options=False)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clips", type=int, default=5)
    p.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--neighbour", action="store_true", help="a busy process beside each cell")
    p.add_argument("--child", nargs=3, metavar=("DTYPE", "THREADS", "OUT"), help=argparse_hidden())
    args = p.parse_args()
    clips = [str(common.cached_video(common.OUT_DIR / "videos" / "speed", 3, seed=s)) for s in range(args.clips)]
    if args.child:
        dtype, threads, out = args.child
        child(dtype, int(threads), clips, out)
        return
    if args.quick:
        args.rounds, args.clips, args.dtypes = 1, 2, ["fp32"]
        clips = clips[:2]
    info = common.machine_info(with_torch=False)
    common.header("Issue 21: a steady-state frame's CPU, part by part", info, sys.argv[1:])
    import tempfile

    tmp = tempfile.mkdtemp(prefix="bench_steady_parts_")
    cells = [(dt, v) for dt in args.dtypes for v in args.variants]
    results: dict[tuple, list[dict]] = {c: [] for c in cells}
    for r in range(args.rounds):
        for dt, v in cells if r % 2 == 0 else reversed(cells):
            threads, policy = VARIANTS[v]
            env = {k: val for k, val in os.environ.items() if k != "OMP_WAIT_POLICY"}
            env |= {"PYTHONPATH": str(common.ROOT)} | ({"OMP_WAIT_POLICY": policy} if policy else {})
            cmd = [sys.executable, __file__, "--clips", str(args.clips), "--child", dt, str(threads), tmp]
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.neighbour else None
            try:
                res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            if res.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
            results[dt, v].append(json.loads(res.stdout.strip().splitlines()[-1]))
            got = results[dt, v][-1]["cpu"]
            print(f"  round {r + 1}: {dt} {v}: " + ", ".join(f"{k} {got[k]:.1f}" for k in PARTS), flush=True)
    rows = []
    for dt, v in cells:
        runs = results[dt, v]
        row = {"dtype": dt, "variant": v}
        for part in PARTS:
            values = [x["cpu"][part] for x in runs]
            row[part] = statistics.median(values)
        totals = [sum(x["cpu"].values()) for x in runs]
        walls = [sum(x["wall"].values()) for x in runs]
        vits = [x["cpu"]["vit"] for x in runs]
        row |= {"total": statistics.median(totals), "spread": f"{min(totals):.1f}-{max(totals):.1f}",
                "vit_spread": f"{min(vits):.1f}-{max(vits):.1f}", "wall": statistics.median(walls)}  # fmt: skip
        rows.append(row)
    columns = [("dtype", "dtype", "s"), ("variant", "OpenMP", "s"), *((p, f"{p} CPU ms", ".1f") for p in PARTS),
               ("vit_spread", "ViT spread", "s"), ("total", "total CPU ms/frame", ".1f"), ("spread", "spread", "s"),
               ("wall", "wall ms/frame", ".1f")]  # fmt: skip
    neighbour = "with a busy process beside" if args.neighbour else "alone"
    print(f"\n{args.rounds} interleaved rounds, {args.clips} clips x 16 frames, {neighbour}; per frame:\n")
    print(common.table(rows, columns))
    common.write_json(args.out, {"info": info, "rounds": args.rounds, "clips": args.clips, "neighbour": args.neighbour,
                                 "rows": rows, "runs": {f"{dt} {v}": results[dt, v] for dt, v in cells}})  # fmt: skip


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
