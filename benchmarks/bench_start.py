"""Issue 21 item 2, a lighter start: CPU time of ``slowfast encode --config tiny`` and of ``slowfast batch --config
tiny`` (one clip), this checkout against another (``--base``, e.g. a clean copy of main), side by side.

Every command runs in a fresh process; its CPU time (user + system, its decode worker included: ``wait4``) and wall
time are read from outside. Rounds are interleaved (every command once per round, the trees alternating), and the
median and the spread over ``--rounds`` are reported, because the machine is shared. Then each tree's ``encode``
runs once more under ``python -X importtime``: the import time of the top-level packages and which heavy
libraries were imported at all.

``--base`` may be given more than once, as ``NAME=PATH`` to name the tree (``base``, ``base2``, ... otherwise);
every ratio is this / each base, per round.

Example:
    git -C /path/to/main archive HEAD | tar -x -C /tmp/base
    python benchmarks/bench_start.py --base /tmp/base --rounds 7
    python benchmarks/bench_start.py --base start=/tmp/base --base before=/tmp/older --rounds 7
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
from bench_speed import run_cpu

HEAVY = ("torch", "open_clip", "torchvision", "torch._dynamo", "timm", "transformers", "huggingface_hub", "PIL")


def importtime(cmd: list[str], env: dict) -> dict[str, float]:
    """Seconds of cumulative import time (wall clock) per module of one run under ``-X importtime``."""
    r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True, check=True)
    times: dict[str, float] = {}
    for line in r.stderr.splitlines():  # "import time: self [us] | cumulative | <indent>name"
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.removeprefix("import time:").split("|")
            if cumulative.strip().isdigit():
                times[name.strip()] = max(times.get(name.strip(), 0), int(cumulative) / 1e6)
                if len(name) - len(name.lstrip()) == 1:
                    times["(all top-level)"] = times.get("(all top-level)", 0) + int(cumulative) / 1e6
    return times


def main() -> None:
    p = common.parser(__doc__, "bench_start", torch_options=False)
    p.add_argument("--base", action="append", required=True, help="another checkout ([NAME=]PATH), e.g. main")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    rounds = 2 if args.quick else args.rounds
    info = common.machine_info(with_torch=False)
    common.header("Issue 21: start-up CPU", info, sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="bench_start_"))
    one = tmp / "one"
    one.mkdir()
    clip = common.cached_video(common.OUT_DIR / "videos" / "speed", 3, seed=0)
    os.link(clip, one / clip.name)
    trees = {"this": common.ROOT}
    for i, spec in enumerate(args.base):
        name, _, path = spec.rpartition("=")
        trees[name or ("base" if i == 0 else f"base{i + 1}")] = Path(path).resolve()
    py = sys.executable
    cmds = {}
    for name, tree in trees.items():
        # -P: not the working directory first on sys.path, which would import this checkout's slowfast_cli for both
        env = dict(os.environ, PYTHONPATH=str(tree))
        run = [py, "-P", "-m", "slowfast_cli"]
        cmds["encode", name] = [*run, "encode", "--config", "tiny", str(one / clip.name), "-o", str(tmp / f"{name}.pt"),
                                "--overwrite"], env  # fmt: skip
        cmds["batch", name] = [*run, "batch", str(one), "-o", str(tmp / f"b_{name}"), "--config", "tiny",
                               "--workers", "1", "--overwrite"], env  # fmt: skip
    for cmd, env in cmds.values():  # one untimed run each: page cache, .pyc files
        run_cpu(cmd, env)
    samples: dict[tuple, list[tuple[float, float]]] = {k: [] for k in cmds}
    for r in range(rounds):
        order = list(cmds) if r % 2 == 0 else list(reversed(cmds))
        for key in order:
            samples[key].append(run_cpu(*cmds[key]))
        print(f"  round {r + 1}: " + ", ".join(f"{' '.join(k)} {samples[k][-1][0]:.2f}" for k in cmds), flush=True)
    rows = []
    bases = [who for who in trees if who != "this"]
    for what in ("encode", "batch"):
        cpu = {who: [s[0] for s in samples[what, who]] for who in trees}
        wall = {who: [s[1] for s in samples[what, who]] for who in trees}
        for who in trees:
            spread = f"{min(cpu[who]):.2f}-{max(cpu[who]):.2f}"
            row = {"what": what, "who": who, "cpu": statistics.median(cpu[who]), "spread": spread,
                   "wall": statistics.median(wall[who])}  # fmt: skip
            if who == "this":
                for b in bases:
                    ratios = [a / c for a, c in zip(cpu["this"], cpu[b], strict=True)]
                    row[f"ratio {b}"] = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            rows.append(row)
    table = common.table(rows, [("what", "command", "s"), ("who", "tree", "s"), ("cpu", "CPU s median", ".2f"),
                                ("spread", "CPU s spread", "s"), ("wall", "wall s median", ".2f"),
                                *((f"ratio {b}", f"this / {b} per round", "s") for b in bases)])  # fmt: skip
    imports = {who: importtime(*cmds["encode", who]) for who in trees}
    names = ("(all top-level)", *HEAVY)
    irows = [{"module": n, **{who: imports[who].get(n) for who in trees}} for n in names]
    itable = common.table(irows, [("module", "import (cumulative wall s, -X importtime, encode)", "s"),
                                  *((who, who, ".2f") for who in trees)])  # fmt: skip
    print(f"\n{rounds} interleaved rounds:\n\n{table}\n\n{itable}\n(blank: not imported)")
    common.write_json(args.out, {"info": info, "rounds": rounds, "rows": rows, "imports": imports,
                                 "samples": {" ".join(k): v for k, v in samples.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
