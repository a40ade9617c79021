"""Issue 21 item 3: decoding long videos more cheaply with the same frames, this checkout against another.

``video.load_clip`` as a batch worker calls it (decord with one codec thread, the process pinned to one core,
decode-time resize for a 224 model when the shorter side is at least 448, so 1280x720 comes decoded at 398x224),
for T sampled frames (segment centres, the default sampling), on generated H.264 videos (libx264 crf 23, 30 fps,
``common.cached_video``): 640x360 10 s and 1280x720 60 s with a keyframe every 2 s, and 1280x720 60 s with
x264's default keyframe interval (250 frames, 8.3 s).

Each cell runs in a fresh process per checkout (``-P``, PYTHONPATH set to the checkout), one untimed call and then
``--calls`` timed ones, CPU time of the calls only (``time.process_time``, imports excluded); the two checkouts
alternate within a round, rounds are interleaved, and the median over rounds is reported with its spread and the
per-round ratio. The frames of both checkouts must be byte-identical (a SHA-256 of the decoded array, asserted).

Example:
    git -C /path/to/main archive HEAD | tar -x -C /tmp/base
    python benchmarks/bench_decode_plan.py --base /tmp/base --rounds 3
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import common

VIDEOS = [  # name, seconds, (w, h), keyframe interval in frames
    ("640x360 10 s", 10, (640, 360), 60),
    ("1280x720 60 s", 60, (1280, 720), 60),
    ("1280x720 60 s GOP 250", 60, (1280, 720), 250),
]
FRAMES = {"640x360 10 s": [8, 16, 32, 64], "1280x720 60 s": [16, 32], "1280x720 60 s GOP 250": [16, 32]}
CHILD = """
import hashlib, json, os, sys, time
os.sched_setaffinity(0, {{0}})
from slowfast_cli.config import VideoCfg
from slowfast_cli.video.decode import load_clip
cfg = VideoCfg(frames={frames})
load_clip({path!r}, cfg, image_size=224, num_threads=1, min_scale=2)
times = []
for _ in range({calls}):
    t = time.process_time()
    clip = load_clip({path!r}, cfg, image_size=224, num_threads=1, min_scale=2)
    times.append(time.process_time() - t)
sha = hashlib.sha256(clip.frames.tobytes()).hexdigest()
print(json.dumps({{"cpu": min(times), "sha": sha, "n": len(clip.indices)}}))
"""


def cell(tree: Path, path: Path, frames: int, calls: int) -> dict:
    code = CHILD.format(frames=frames, path=str(path), calls=calls)
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{tree}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = common.parser(__doc__, "bench_decode_plan", torch_options=False)
    p.add_argument("--base", type=Path, required=True, help="another checkout to compare with (e.g. main)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=1, help="timed calls per process (the minimum is kept)")
    args = p.parse_args()
    videos = VIDEOS[:1] if args.quick else VIDEOS
    info = common.machine_info(with_torch=False)
    common.header("Issue 21: long-video decoding, this against base", info, sys.argv[1:])
    trees = {"this": common.ROOT, "base": args.base.resolve()}
    clips = {name: common.cached_video(common.OUT_DIR / "videos" / "cost", s, size, gop=gop)
             for name, s, size, gop in videos}  # fmt: skip
    cells = [(name, t) for name, *_ in videos for t in FRAMES[name]]
    samples: dict[tuple, dict[str, list[dict]]] = {c: {w: [] for w in trees} for c in cells}
    for r in range(args.rounds):
        for name, t in cells:
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for who in order:
                samples[name, t][who].append(cell(trees[who], clips[name], t, args.calls))
            got = samples[name, t]
            assert got["this"][-1]["sha"] == got["base"][-1]["sha"], f"{name} T={t}: frames differ"
            print(f"  round {r + 1}: {name} T={t}: " + ", ".join(f"{w} {got[w][-1]['cpu']:.3f}s" for w in trees),
                  flush=True)  # fmt: skip
    rows = []
    for name, t in cells:
        cpu = {w: [s["cpu"] for s in samples[name, t][w]] for w in trees}
        ratios = [b / a for a, b in zip(cpu["this"], cpu["base"], strict=True)]
        rows.append({
            "video": name, "T": t,
            "base": statistics.median(cpu["base"]), "this": statistics.median(cpu["this"]),
            "base_fps": t / statistics.median(cpu["base"]), "this_fps": t / statistics.median(cpu["this"]),
            "gain": statistics.median(ratios), "spread": f"{min(ratios):.2f}-{max(ratios):.2f}",
        })  # fmt: skip
    table = common.table(rows, [("video", "video", "s"), ("T", "T", ""), ("base", "base CPU s", ".3f"),
                                ("this", "this CPU s", ".3f"), ("base_fps", "base frames/core-s", ".1f"),
                                ("this_fps", "this frames/core-s", ".1f"), ("gain", "base / this (median)", ".2f"),
                                ("spread", "per-round spread", "s")])  # fmt: skip
    print(f"\n{args.rounds} interleaved rounds, identical frames in every cell:\n\n{table}")
    common.write_json(args.out, {"info": info, "rounds": args.rounds, "rows": rows,
                                 "samples": {f"{n} T={t}": v for (n, t), v in samples.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
