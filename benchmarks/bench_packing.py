"""What packing the frames of several videos into one forward pass buys (``encoder.packing.Packer``), in one process.

The clips of ``bench_speed.py`` (9 x 3 s 640x360, 16 frames each) are decoded once; then their frames go through the
encoder (preprocessing and the ViT up to layer -2, random weights) one video per pass, the way ``batch`` ran before
issue 21, and packed into passes of 16, 32, 64 and 128 frames, interleaved, ``--rounds`` times; the figure is the
median CPU time (this process: torch's threads included) per frame. Every packed run's tokens are checked against
the one-video-per-pass tokens at the same pass size (bit-identical).

Example:
    python benchmarks/bench_packing.py --model ViT-B-32 --rounds 3
"""

from __future__ import annotations

import statistics
import sys
import time

import common


def main() -> None:
    p = common.parser(__doc__, "bench_packing")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--passes", nargs="+", type=int, default=[16, 32, 64, 128])
    args = p.parse_args()
    if args.quick:
        args.model, args.rounds, args.passes = "slowfast-tiny-vit", 1, [16, 32]
    device = common.setup_torch(args.device, args.threads)
    import torch

    threads = torch.get_num_threads()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}

    from slowfast_cli.config import EncoderCfg, VideoCfg
    from slowfast_cli.encoder.encoder import build_encoder
    from slowfast_cli.encoder.packing import Packer
    from slowfast_cli.video.decode import load_clip

    info = common.machine_info()
    common.header("Packing frames of several videos per forward pass", info, sys.argv[1:])
    clips = [common.cached_video(common.OUT_DIR / "videos" / "speed", 3, seed=s) for s in range(9)]
    frames = [load_clip(c, VideoCfg(frames=16), 224).frames for c in clips]
    total = sum(len(f) for f in frames)
    rows = []
    for dt in args.dtypes:
        enc = build_encoder(EncoderCfg(model=args.model, pretrained="none"), device, dtypes[dt])

        def alone(size: int, enc=enc) -> list[torch.Tensor]:
            return [enc.encode(f, size) for f in frames]

        def packed(size: int, enc=enc) -> list[torch.Tensor]:
            packer = Packer(enc, size)
            out = {d.key: d.tokens for i, f in enumerate(frames) for d in packer.add(i, f)}
            out.update((d.key, d.tokens) for d in packer.flush())
            return [out[i] for i in range(len(frames))]

        cases = [("one video per pass (16 frames)", lambda: alone(16))]
        cases += [(f"packed, {n} frames per pass", lambda n=n: packed(n)) for n in args.passes]
        cases[0][1]()  # warm-up (oneDNN's kernels are made on first use)
        cpu: dict[str, list[float]] = {name: [] for name, _ in cases}
        for _ in range(args.rounds):
            for name, fn in cases:
                c0 = time.process_time()
                fn()
                common.sync(device)
                cpu[name].append((time.process_time() - c0) / total * 1000)
        base = statistics.median(cpu[cases[0][0]])
        for n in args.passes:
            same = all(torch.equal(a, b) for a, b in zip(packed(n), alone(n), strict=True))
            assert same, f"packed tokens differ from one video per pass at {n} frames per pass"
        for name, _ in cases:
            med = statistics.median(cpu[name])
            rows.append({"dtype": dt, "case": name, "ms": med, "spread": f"{min(cpu[name]):.1f}-{max(cpu[name]):.1f}",
                         "speed": base / med})  # fmt: skip
    columns = [("dtype", "dtype", ""), ("case", "frames of 9 videos x 16", ""), ("ms", "CPU ms per frame", ".1f"),
               ("spread", "spread", ""), ("speed", "speed vs one video per pass", ".2f")]  # fmt: skip
    print(f"{args.model}, {threads} torch threads, {total} frames, median of {args.rounds} interleaved rounds\n")
    print(common.table(rows, columns))
    common.write_json(args.out, {"info": info, "model": args.model, "rows": rows, "cpu_ms": cpu})


if __name__ == "__main__":
    main()
