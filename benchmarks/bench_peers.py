"""Issue 21's peers table: slowfast against what a user would run without it, steady state and start-up apart.

Who runs (each in a fresh process, on the same folders of 3-s 640x360 H.264 clips, 16 frames each, ViT-B-32 with
random weights, penultimate block's patch tokens, one video per forward pass unless said):

- ``slowfast``: ``slowfast batch --model ViT-B-32 --pretrained none --frames 16 --workers 1`` (tokens through the
  projector and the slow/fast aggregator, written as token files);
- ``naive``: ``peer_encode.py naive``, a careful script: decord ``get_batch``, torch preprocessing, open_clip's ViT;
- ``transformers``: ``peer_encode.py transformers``: the same frames through ``CLIPImageProcessor`` and
  ``CLIPVisionModel`` (a random ViT-B/32 config), ``hidden_states[-2]``.

Not run, with the reason printed: clip-video-encode (PyPI's only release, 1.3.0 of 2022, requires torch < 2,
numpy < 2, open-clip-torch < 3, pyarrow < 8 and fsspec 2022.1.0, so it does not install beside this project's
torch) and video_features (not on PyPI: a git repository with its own environment).

With ``--base CHECKOUT``, ``slowfast base`` is that checkout's ``slowfast batch`` in the same run (e.g. main before a
change: "today"). With ``--passive``, every peer also runs with ``OMP_WAIT_POLICY=PASSIVE`` (``PEER+passive``), the
OpenMP setting slowfast's command line makes for itself (``slowfast_cli/cli/process.py``), so that what it is worth
to a peer is measured too.

Each who runs on a folder of ``--clips`` clips and on a folder of its first clip, rounds interleaved. CPU time is
user + system of the process and its waited-for children (decode workers), read from outside; wall time beside it.
- **steady state**: ``(clips - 1) * 16 / (cpu(clips) - cpu(1))`` frames per CPU-second (and per wall second);
- **start-up**: ``cpu(1) - (cpu(clips) - cpu(1)) / (clips - 1)``: the one-clip run less one clip's steady cost, i.e.
  imports, model build and whatever a run pays once.
Ratios are peer / slowfast per round, then the median (> 1: the peer is faster in steady state, or slower to
start).

Example:
    python benchmarks/bench_peers.py --rounds 3 --clips 5
    python benchmarks/bench_peers.py --rounds 3 --clips 9 --base /tmp/base --passive
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import common
from bench_speed import folders, run_cpu

HERE = Path(__file__).resolve().parent
NOT_RUN = {
    "clip-video-encode": "PyPI's only release (1.3.0, 2022) requires torch<2, numpy<2, open-clip-torch<3, pyarrow<8 "
    "and fsspec==2022.1.0: it does not install beside torch 2",
    "video_features": "not on PyPI (a git repository with its own conda environment): not fetched",
}


def main() -> None:
    p = common.parser(__doc__, "bench_peers", torch_options=False)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clips", type=int, default=5)
    p.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    p.add_argument("--peers", nargs="*", default=["naive", "transformers"])
    p.add_argument("--base", type=Path, help="another checkout whose slowfast batch runs beside (e.g. main)")
    p.add_argument("--passive", action="store_true", help="also run every peer with OMP_WAIT_POLICY=PASSIVE")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.clips, args.dtypes = 1, 2, ["fp32"]
    info = common.machine_info(with_torch=False)
    common.header("Issue 21: peers, steady state and start-up", info, sys.argv[1:])
    many, one = folders(common.OUT_DIR, args.clips)
    tmp = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    env = dict(os.environ, PYTHONPATH=str(common.ROOT))
    env.pop("OMP_WAIT_POLICY", None)  # each command's own: slowfast sets it for itself, peers run as a user's script
    py = sys.executable
    trees = {"slowfast": common.ROOT} | ({"slowfast base": args.base.resolve()} if args.base else {})
    peers = [*args.peers, *(f"{p}+passive" for p in args.peers if args.passive)]
    cmds: dict[tuple, tuple[list[str], dict]] = {}
    for dt in args.dtypes:
        for size, folder in ((args.clips, many), (1, one)):
            for who, tree in trees.items():
                out = tmp / f"{who.replace(' ', '_')}_{dt}_{size}"
                model = ["--model", "ViT-B-32", "--pretrained", "none", "--frames", "16", "--slow-pool", "none"]
                cmd = [py, "-P", "-m", "slowfast_cli", "batch", str(folder), "-o", str(out), *model, "--dtype", dt,
                       "--workers", "1", "--overwrite"]  # fmt: skip
                cmds[who, dt, size] = cmd, {**env, "PYTHONPATH": str(tree)}
            for who in peers:
                peer, passive = who.removesuffix("+passive"), who.endswith("+passive")
                cmd = [py, str(HERE / "peer_encode.py"), peer, str(folder), str(tmp / f"{who}_{dt}_{size}"),
                       "--frames", "16", "--dtype", dt]  # fmt: skip
                cmds[who, dt, size] = cmd, {**env, "OMP_WAIT_POLICY": "PASSIVE"} if passive else env
    samples: dict[tuple, list[tuple[float, float]]] = {k: [] for k in cmds}
    for r in range(args.rounds):
        keys = list(cmds) if r % 2 == 0 else list(reversed(cmds))
        for key in keys:
            samples[key].append(run_cpu(*cmds[key]))
            print(f"  round {r + 1}: {key} cpu {samples[key][-1][0]:.2f}s wall {samples[key][-1][1]:.2f}s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    frames = (args.clips - 1) * 16

    def per_round(who: str, dt: str, i: int) -> tuple[list[float], list[float]]:
        """(steady frames per second, start-up seconds) per round; i = 0 CPU, 1 wall."""
        big, small = samples[who, dt, args.clips], samples[who, dt, 1]
        steady = [frames / (b[i] - s[i]) for b, s in zip(big, small, strict=True)]
        start = [s[i] - (b[i] - s[i]) / (args.clips - 1) for b, s in zip(big, small, strict=True)]
        return steady, start

    rows = []
    for dt in args.dtypes:
        base = {i: per_round("slowfast", dt, i) for i in (0, 1)}
        for who in (*trees, *peers):
            cpu_steady, cpu_start = per_round(who, dt, 0)
            wall_steady, wall_start = per_round(who, dt, 1)
            rows.append({
                "dtype": dt, "who": who,
                "steady": statistics.median(cpu_steady),
                "steady_spread": f"{min(cpu_steady):.2f}-{max(cpu_steady):.2f}",
                "steady_ratio": statistics.median(a / b for a, b in zip(cpu_steady, base[0][0], strict=True)),
                "wall_steady_ratio": statistics.median(a / b for a, b in zip(wall_steady, base[1][0], strict=True)),
                "start": statistics.median(cpu_start), "start_spread": f"{min(cpu_start):.2f}-{max(cpu_start):.2f}",
                "start_ratio": statistics.median(a / b for a, b in zip(cpu_start, base[0][1], strict=True)),
                "wall_start_ratio": statistics.median(a / b for a, b in zip(wall_start, base[1][1], strict=True)),
            })  # fmt: skip
    columns = [("dtype", "dtype", "s"), ("who", "who", "s"), ("steady", "steady frames/CPU-s", ".2f"),
               ("steady_spread", "spread", "s"), ("steady_ratio", "steady CPU ratio", ".2f"),
               ("wall_steady_ratio", "steady wall ratio", ".2f"), ("start", "start-up CPU s", ".2f"),
               ("start_spread", "spread", "s"), ("start_ratio", "start-up CPU ratio", ".2f"),
               ("wall_start_ratio", "start-up wall ratio", ".2f")]  # fmt: skip
    table = common.table(rows, columns)
    print(f"\n{args.rounds} interleaved rounds, {args.clips} clips; ratios peer / slowfast:\n\n{table}\n", flush=True)
    for who, why in NOT_RUN.items():
        print(f"not run: {who}: {why}")
    raw = {" ".join(map(str, k)): v for k, v in samples.items()}
    common.write_json(args.out, {"info": info, "rounds": args.rounds, "clips": args.clips, "rows": rows,
                                 "not_run": NOT_RUN, "samples": raw})  # fmt: skip


if __name__ == "__main__":
    main()
