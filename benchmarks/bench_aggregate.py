"""Aggregator cost: ``aggregate.slow_fast`` against the encoder forward and a naive per-frame loop.

For the seed design's shape (T=64 frames of ViT-B-16: 14x14 grid, D=768, 32 slow frames, fast 4x4) and each of
the five slow pools, times ``slow_fast`` and a straightforward per-frame Python loop written here (one frame at a
time, same result: checked with ``torch.equal``). The encoder time for the same T is measured on a few frames
with the bare ViT forward at layer -2 and scaled linearly to T (said in the output); the aggregator should cost
well under 1% of it.

Example:
    python benchmarks/bench_aggregate.py --quick
"""

from __future__ import annotations

import common
import torch
import torch.nn.functional as F

from slowfast_cli.aggregate import slow_fast, slow_indices
from slowfast_cli.config import SLOW_POOLS, EncoderCfg
from slowfast_cli.encoder.encoder import build_encoder


def naive(x: torch.Tensor, grid: tuple[int, int], slow_frames: int, pool: str, fast: tuple[int, int]) -> torch.Tensor:
    """The aggregator written frame by frame, as a first version might be: (T, N, D) -> (1, L, D)."""
    gh, gw = grid
    out = []
    for i in slow_indices(len(x), slow_frames).tolist():
        frame = x[i]  # (N, D)
        if pool == "none":
            out.append(frame)
        elif pool.startswith("1d"):
            pairs = [frame[j : j + 2] for j in range(0, len(frame), 2)]
            out.append(torch.stack([p.amax(0) if pool == "1d_max" else p.mean(0) for p in pairs]))
        else:
            img = frame.t().reshape(1, -1, gh, gw)
            pooled = F.max_pool2d(img, 2, 2) if pool == "2x2_max" else F.avg_pool2d(img, 2, 2)
            out.append(pooled[0].flatten(1).t())
    for frame in x:
        img = frame.t().reshape(1, -1, gh, gw)
        out.append(F.adaptive_avg_pool2d(img, fast)[0].flatten(1).t())
    return torch.cat(out).unsqueeze(0)


def main() -> None:
    p = common.parser(__doc__, "aggregate")
    p.add_argument("--frames", type=int, default=64, help="T (default 64)")
    p.add_argument(
        "--model", default="ViT-B-16", help="model whose grid, width and forward time are used (default ViT-B-16)"
    )
    p.add_argument("--encoder-frames", type=int, default=None, help="frames timed in the encoder (default 4; quick 2)")
    args = p.parse_args()
    device = common.setup_torch(args.device, args.threads)
    info = common.machine_info()
    common.header("Aggregator vs encoder and vs a per-frame loop", info)
    enc = build_encoder(EncoderCfg(model=args.model, pretrained="none"), device, torch.float32)
    grid, d, t = enc.grid, enc.width, args.frames
    n_enc = args.encoder_frames or (2 if args.quick else 4)
    x_img = torch.randn(n_enc, 3, *enc.image_size).to(device)
    with torch.inference_mode():
        enc_t = common.measure(lambda: enc._tokens(x_img), repeats=1 if args.quick else 3, warmup=1, device=device)
    encoder_s = enc_t.median / n_enc * t
    print(
        f"encoder: {args.model} fp32, {n_enc} frames timed ({enc_t.median:.2f}s), scaled to T={t}: {encoder_s:.2f}s\n"
    )

    x = torch.randn(t, grid[0] * grid[1], d, generator=torch.Generator().manual_seed(0)).to(device)
    repeats, loop_repeats = (5, 1) if args.quick else (30, 3)
    rows = []
    with torch.inference_mode():
        for pool in SLOW_POOLS:
            fast = common.measure(lambda pool=pool: slow_fast(x, grid, 32, pool, (4, 4)), repeats, 3, device)
            slow = common.measure(lambda pool=pool: naive(x, grid, 32, pool, (4, 4)), loop_repeats, 1, device)
            same = torch.equal(slow_fast(x, grid, 32, pool, (4, 4)).tokens, naive(x, grid, 32, pool, (4, 4)))
            rows.append(
                {
                    "pool": pool,
                    "ms": 1e3 * fast.median,
                    "of_encoder": fast.median / encoder_s,
                    "loop_ms": 1e3 * slow.median,
                    "speedup": slow.median / fast.median,
                    "equal": same,
                }
            )
    cols = [
        ("pool", "slow pool", ""),
        ("ms", "slow_fast ms", ".2f"),
        ("of_encoder", "of encoder time", ".3%"),
        ("loop_ms", "per-frame loop ms", ".1f"),
        ("speedup", "loop / slow_fast", ".0f"),
        ("equal", "same tokens", ""),
    ]
    agg_table = common.table(rows, cols)
    print(f"T={t}, grid {grid[0]}x{grid[1]}, D={d}, 32 slow frames, fast 4x4, fp32 on {device}:\n\n{agg_table}")
    common.write_json(
        args.out,
        {
            "machine": info,
            "model": args.model,
            "frames": t,
            "grid": grid,
            "dim": d,
            "encoder_frames_timed": n_enc,
            "encoder_s_scaled": encoder_s,
            "rows": rows,
            "tables": [agg_table],
        },
    )


if __name__ == "__main__":
    main()
