"""decord 0.6.0 against decord2 3.4.0: sampled frames per core-second of ``load_clip``, and whether frames agree.

Both decoders install ``import decord``, so each runs in its own interpreter: this one (``sys.executable``) and
``--other PYTHON`` (for example a venv with decord2, see docs/decord.md), both importing slowfast_cli from this
tree. Every measurement is a fresh child process pinned to one core, as a batch worker decodes (one codec
thread), running ``video.load_clip`` with the default preset's video settings at T = ``--frames`` (decode-time
scaling for a 224 model when the shorter side is at least 448, so the 720p clip is scaled by the decoder and the
360p one is not), one warm-up, then ``--repeats`` timed calls; the child's CPU time (user + system, its threads
included) per clip gives frames per core-second. Rounds alternate which decoder goes first; the table gives each
round's rate and the median, and the ratio per round. The frames are compared by SHA-256 at full size
(``decode_resize`` off) and as scaled by the decoder.

Videos: ``common.cached_video`` (H.264, 30 fps, a keyframe every 2 s): 10 s at 640x360 and 60 s at 1280x720.

Example:
    python benchmarks/bench_decoder_switch.py --other /tmp/d2venv/bin/python --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import common

VIDEOS = [("640x360 10 s", 10, (640, 360)), ("1280x720 60 s", 60, (1280, 720))]


def child(path: str, frames: int, repeats: int) -> dict:
    """One decoder's measurement of one video in this process (pinned to one core); printed as JSON."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from slowfast_cli.config import resolve_config
    from slowfast_cli.provenance import decoder_identity
    from slowfast_cli.video import decode

    cfg = resolve_config("default").video
    cfg.frames = frames

    def one(config):
        return decode.load_clip(path, config, 224, num_threads=1, min_scale=decode.DECODE_RESIZE_MIN)

    scaled = one(cfg)  # warm-up (and the scaled frames)
    times = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        one(cfg)
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    cfg.decode_resize = False
    full = one(cfg)
    return {
        "decoder": decoder_identity(),
        "cpu_s": statistics.median(times),
        "frames": len(scaled.indices),
        "scaled": hashlib.sha256(scaled.frames.tobytes()).hexdigest()[:16],
        "full": hashlib.sha256(full.frames.tobytes()).hexdigest()[:16],
    }


def measure(python: str, path: Path, frames: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    cmd = [python, __file__, "--child", str(path), "--frames", str(frames), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = common.parser(__doc__, "bench_decoder_switch", torch_options=False)
    p.add_argument("--other", help="the interpreter whose `import decord` is the other decoder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="timed calls per child (after one warm-up)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure this video in this process
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.frames, args.repeats)))
        return
    if not args.other:
        p.error("--other PYTHON is required")
    info = common.machine_info(with_torch=False)
    common.header("decord 0.6.0 against decord2 3.4.0", info)
    videos = VIDEOS[:1] if args.quick else VIDEOS
    rounds = 1 if args.quick else args.rounds
    pythons = [sys.executable, args.other]
    rows, result = [], {"machine": info, "videos": {}}
    for name, seconds, size in videos:
        path = common.cached_video(common.OUT_DIR / "videos", seconds, size)
        runs: dict[str, list[dict]] = {}
        for r in range(rounds):
            for python in pythons if r % 2 == 0 else pythons[::-1]:
                m = measure(python, path, args.frames, args.repeats)
                runs.setdefault(m["decoder"], []).append(m)
        (a, ra), (b, rb) = runs.items()
        rates = {d: [m["frames"] / m["cpu_s"] for m in ms] for d, ms in runs.items()}
        ratios = [y / x for x, y in zip(rates[a], rates[b])]
        same = {k: len({m[k] for m in ra + rb}) == 1 for k in ("full", "scaled")}
        for d in (a, b):
            rows.append({"video": name, "decoder": d, "rounds": " / ".join(f"{x:.2f}" for x in rates[d]),
                         "median": statistics.median(rates[d])})  # fmt: skip
        rows.append({"video": name, "decoder": f"{b} / {a}", "rounds": " / ".join(f"{x:.2f}" for x in ratios),
                     "median": statistics.median(ratios)})  # fmt: skip
        result["videos"][name] = {"runs": runs, "identical": same}
        print(f"{name}: frames identical at full size: {same['full']}, as scaled by the decoder: {same['scaled']}")
    columns = [("video", "video", ""), ("decoder", "decoder", ""), ("rounds", "frames per core-second, per round", "")]
    print(common.table(rows, [*columns, ("median", "median", ".2f")]))
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
