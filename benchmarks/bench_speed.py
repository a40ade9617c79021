"""Issue 21's figures: start-up CPU and steady-state frames per CPU-second of ``slowfast batch``, this checkout
against another (``--base``, e.g. a checkout of main) and against peers, side by side in fresh processes.

Every command runs in a fresh process; its CPU time (user + system, its decoding children included: ``wait4``) and
wall time are taken from outside. Rounds are interleaved (every command once per round), and the median of
``--rounds`` is reported, because the machine is shared: CPU time is the figure to read, wall time is kept beside it.

- **start-up**: ``slowfast encode --config tiny`` of one short clip, and ``slowfast batch --config tiny`` of a folder
  of one clip: almost all of it is imports and building the model.
- **steady state**: ``slowfast batch`` (``--model ViT-B-32 --pretrained none --frames 16``, fp32 and bf16,
  ``--workers 1``) of a folder of N clips and of a folder of 1 clip; the steady rate is the difference:
  ``(N - 1) * 16 frames / (cpu(N) - cpu(1))``, so start-up and the last pass's padding cancel out.
- **peers** (``peer_encode.py``, the same two folders, the same subtraction): ``naive`` (decord + open_clip, one
  video per pass) and ``transformers`` (CLIPImageProcessor + CLIPVisionModel).

Example:
    python benchmarks/bench_speed.py --base /path/to/main-checkout --rounds 3
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent


def run_cpu(cmd: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds of the process and its waited-for children, wall seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def folders(root: Path, n: int) -> tuple[Path, Path]:
    """A folder of ``n`` 3-s 640x360 clips and one of the first of them."""
    videos = root / "videos"
    clips = [common.cached_video(videos / "speed", 3, seed=s) for s in range(n)]
    many, one = root / f"speed_{n}", root / "speed_1"
    for folder, chosen in ((many, clips), (one, clips[:1])):
        folder.mkdir(parents=True, exist_ok=True)
        for c in chosen:
            if not (folder / c.name).exists():
                os.link(c, folder / c.name)
    return many, one


def main() -> None:
    p = common.parser(__doc__, "bench_speed", torch_options=False)
    p.add_argument("--base", type=Path, help="another checkout to compare with (e.g. main)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clips", type=int, default=9)
    p.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--peers", nargs="*", default=["naive", "transformers"])
    p.add_argument("--no-startup", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.clips, args.dtypes, args.peers = 1, 3, ["fp32"], ["naive"]
    info = common.machine_info(with_torch=False)
    common.header("Issue 21: start-up and steady state", info, sys.argv[1:])
    many, one = folders(common.OUT_DIR, args.clips)
    trees = {"this": common.ROOT} | ({"base": args.base.resolve()} if args.base else {})
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="bench_speed_"))

    def slowfast(tree: Path, *argv) -> tuple[list[str], dict]:
        env = dict(os.environ, PYTHONPATH=str(tree))
        return [py, "-P", "-m", "slowfast_cli", *map(str, argv)], env  # -P: PYTHONPATH, not the working dir, first

    cmds: dict[tuple, tuple[list[str], dict]] = {}
    for name, tree in trees.items():
        if not args.no_startup:
            clip = one / os.listdir(one)[0]
            cmds["startup", "encode tiny", name] = slowfast(tree, "encode", "--config", "tiny", clip, "-o",
                                                           tmp / f"{name}.pt", "--overwrite")  # fmt: skip
            cmds["startup", "batch tiny", name] = slowfast(tree, "batch", one, "-o", tmp / f"st_{name}", "--config",
                                                          "tiny", "--workers", "1", "--overwrite")  # fmt: skip
        for dt in args.dtypes:
            for size, folder in ((args.clips, many), (1, one)):
                model = ["--model", "ViT-B-32", "--pretrained", "none", "--frames", "16", "--slow-pool", "none"]
                out = tmp / f"{name}_{dt}_{size}"
                cmds["steady", dt, name, size] = slowfast(tree, "batch", folder, "-o", out, *model, "--dtype", dt,
                                                          "--workers", "1", "--overwrite")  # fmt: skip
    for peer in args.peers:
        for dt in args.dtypes:
            for size, folder in ((args.clips, many), (1, one)):
                cmd = [py, str(HERE / "peer_encode.py"), peer, str(folder), str(tmp / f"{peer}_{dt}_{size}"),
                       "--frames", "16", "--dtype", dt]  # fmt: skip
                cmds["steady", dt, peer, size] = cmd, dict(os.environ, PYTHONPATH=str(common.ROOT))
    samples: dict[tuple, list[tuple[float, float]]] = {k: [] for k in cmds}
    for r in range(args.rounds):
        for key, (cmd, env) in cmds.items():
            samples[key].append(run_cpu(cmd, env))
            print(f"  round {r + 1}: {key} cpu {samples[key][-1][0]:.2f}s wall {samples[key][-1][1]:.2f}s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    def med(key, i):
        return statistics.median(s[i] for s in samples[key])

    rows = []
    for key in cmds:
        if key[0] == "startup":
            cpus = [s[0] for s in samples[key]]
            rows.append({"what": f"start-up: {key[1]}", "who": key[2], "cpu": med(key, 0), "wall": med(key, 1),
                         "spread": f"{min(cpus):.2f}-{max(cpus):.2f}"})  # fmt: skip
        elif key[3] == args.clips:
            small = key[:3] + (1,)
            frames = (args.clips - 1) * 16
            per_round = [frames / (a[0] - b[0]) for a, b in zip(samples[key], samples[small], strict=True)]
            rows.append({"what": f"steady {key[1]}: frames per CPU-s", "who": key[2],
                         "cpu": frames / (med(key, 0) - med(small, 0)), "wall": frames / (med(key, 1) - med(small, 1)),
                         "spread": f"{min(per_round):.2f}-{max(per_round):.2f}"})  # fmt: skip
    columns = [("what", "what", "s"), ("who", "who", "s"), ("cpu", "CPU s or frames/CPU-s", ".2f"),
               ("wall", "wall s or frames/s", ".2f"), ("spread", "CPU spread over rounds", "s")]  # fmt: skip
    print(common.table(rows, columns))
    common.write_json(args.out, {"info": info, "rounds": args.rounds, "clips": args.clips, "rows": rows,
                                 "samples": {" ".join(map(str, k)): v for k, v in samples.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
