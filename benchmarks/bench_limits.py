"""Two limits from issue 8, measured: preprocessing memory for extreme frame shapes, and the offline start.

1. Peak RSS above the baseline of a fresh process that preprocesses one 32-frame chunk (``Encoder.preprocess``,
   random weights) of frames of each shape, for the tiny model (64 px) and ViT-B-16 (224 px). Shapes too costly
   for the code under test are skipped with ``--max-gib``.
2. Seconds until ``slowfast encode`` with default weights (ViT-B-16 ``openai``) fails when they are not cached
   and the hub cannot be reached (HF_HOME and XDG_CACHE_HOME point at an empty folder).

Point ``--code`` at another checkout (e.g. a ``git worktree`` of an older commit) to measure it side by side.

Example:
    python benchmarks/bench_limits.py --quick
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

CHILD = """
import json, resource, sys, torch
from slowfast_cli.config import EncoderCfg
from slowfast_cli.encoder.encoder import build_encoder
model, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
enc = build_encoder(EncoderCfg(model=model, pretrained="none"), torch.device("cpu"), torch.float32)
frames = torch.randint(0, 256, (32, h, w, 3), dtype=torch.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = enc.preprocess(frames)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"shape": list(out.shape), "mib": (peak - base) / 1024}))
"""

SHAPES = [(4000, 2), (2, 4000), (1000, 3), (1920, 1080), (640, 360)]


def main() -> None:
    p = common.parser(__doc__, "limits", torch_options=False)
    p.add_argument("--code", type=Path, default=common.ROOT, help="checkout whose slowfast_cli is measured")
    p.add_argument("--max-gib", type=float, default=6.0, help="skip shapes whose old cost would exceed this")
    args = p.parse_args()
    info = common.machine_info(with_torch=False)
    common.header("Preprocessing memory and the offline start", info)
    env = {**os.environ, "PYTHONPATH": str(args.code.resolve())}
    models = [("slowfast-tiny-vit", 64)] + ([] if args.quick else [("ViT-B-16", 224)])
    rows = []
    for model, side in models:
        for w, h in SHAPES[:2] if args.quick else SHAPES:
            # the whole-frame resize keeps the short side at `side`: what it would allocate, in GiB
            naive = 32 * 3 * side * side * max(w, h) / min(w, h) * 4 * 3 / 2**30
            row = {"model": model, "frames": f"{w}x{h}", "naive_gib": naive}
            if naive > args.max_gib and args.code.resolve() != common.ROOT:
                row["note"] = f"skipped: the whole-frame resize would need ~{naive:.0f} GiB"
                rows.append(row)
                continue
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", CHILD, model, str(w), str(h)], capture_output=True, text=True,
                               env=env, cwd=tempfile.gettempdir(), timeout=600)  # fmt: skip
            row["seconds"] = time.perf_counter() - t0
            if r.returncode:
                row["note"] = (r.stderr.strip().splitlines() or ["failed"])[-1][:80]
            else:
                row.update(json.loads(r.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(f"  {model} {w}x{h}: {row.get('mib', float('nan')):.0f} MiB, {row['seconds']:.1f} s", flush=True)
    print(common.table(rows, [("model", "model", ""), ("frames", "frames (w x h)", ""), ("mib", "peak MiB", ".0f"),
                              ("seconds", "process s", ".1f"), ("note", "note", "")]))  # fmt: skip

    with tempfile.TemporaryDirectory() as home:
        video = common.cached_video(common.OUT_DIR / "videos", 2.0)
        env_off = {**env, "HF_HOME": home, "XDG_CACHE_HOME": home}
        env_off.pop("HF_HUB_OFFLINE", None)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "slowfast_cli", "encode", str(video), "-o", f"{home}/o.pt"],
                           capture_output=True, text=True, env=env_off, cwd=home, timeout=600)  # fmt: skip
        offline = {"seconds": time.perf_counter() - t0, "exit": r.returncode, "error": r.stderr.strip()[-200:]}
    print(f"\noffline start: exit {offline['exit']} after {offline['seconds']:.1f} s: {offline['error']}")
    common.write_json(args.out, {"machine": info, "code": str(args.code), "memory": rows, "offline": offline})


if __name__ == "__main__":
    main()
