"""Pipeline efficiency: decode-only, encoder-only, end-to-end ``encode`` and ``batch`` on one folder, one run.

All four are measured on the same videos in interleaved rounds (decode, encoder, encode, batch, then again),
each the median over rounds, in frames/s of sampled frames:

- decode-only: ``video.load_clip`` at the model's size, sequential, in this process (FFmpeg picks its threads);
- encoder-only: ``Encoder.encode`` (preprocessing + ViT) on the already decoded uint8 clips;
- encode: ``Pipeline.encode`` + ``write_result`` per video, sequential (what ``slowfast encode`` does per file,
  without building the model each time);
- batch: ``batch.plan_batch`` + ``batch.run_batch`` into a fresh output folder, decode workers in parallel
  with the model (the model is built once, outside the timing, like the pipeline's);
- ceiling: the bare ViT forward (``Encoder._tokens``) on preprocessed input at the same frames per forward
  (3 passes).

The ratios say how close the tool gets to its slowest stage: ``batch / min(encoder, decode)`` (1 means the
slower stage runs flat out, the other hidden behind it) and ``batch time / (decode time + encoder time)``
(below 1 means overlap pays; on 2 cores the goal is <= 1). Peak RSS covers this process plus its children
(the decode workers), sampled with psutil.

Example:
    python benchmarks/bench_pipeline.py --quick
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import common

# torch and slowfast_cli are imported inside main(): the batch's decode workers are spawned, and a spawned
# process re-imports this script, which must then stay as light as the ``slowfast`` entry point is.


def stage(fn, device) -> tuple[float, float, float]:
    """(seconds, peak RSS MiB of this process plus its children, of its largest child) of ``fn()``."""
    with common.RssPeak() as rss:
        common.sync(device)
        t0 = time.perf_counter()
        fn()
        common.sync(device)
        seconds = time.perf_counter() - t0
    return seconds, rss.tree_mb, rss.child_mb


def main() -> None:
    import torch

    from slowfast_cli.batch.engines.local import LocalEngine, default_workers
    from slowfast_cli.batch.plan import plan_batch
    from slowfast_cli.batch.run import EngineOptions, run_batch
    from slowfast_cli.config import resolve_config
    from slowfast_cli.pipeline import Pipeline, write_result
    from slowfast_cli.video.decode import load_clip

    p = common.parser(__doc__, "pipeline")
    p.add_argument("--model", default=None, help="open_clip model (default ViT-B-16; --quick: slowfast-tiny-vit)")
    p.add_argument("--dtype", default="fp32", help="auto, fp32, bf16 or fp16 (default fp32)")
    p.add_argument("--frames", type=int, default=16, help="frames T sampled per video (default 16)")
    p.add_argument("--videos", type=int, default=None, help="videos in the folder (default 8; --quick 3)")
    p.add_argument("--seconds", type=float, default=None, help="length of each video (default 10; --quick 3)")
    p.add_argument("--workers", type=int, default=default_workers(), help="batch decode workers (default: cores - 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; --quick 1)")
    args = p.parse_args()
    q = args.quick
    model = args.model or ("slowfast-tiny-vit" if q else "ViT-B-16")
    n_videos, seconds = args.videos or (3 if q else 8), args.seconds or (3 if q else 10)
    rounds = args.rounds or (1 if q else 2)
    device = common.setup_torch(args.device, args.threads)
    info = common.machine_info()
    common.header("Pipeline efficiency", info)

    folder = common.OUT_DIR / "videos" / f"pipeline_{n_videos}x{seconds:g}s"
    videos = [common.cached_video(folder, seconds, (640, 360), 30, 60, seed=i) for i in range(n_videos)]
    cfg = resolve_config(
        "default",
        {"model": model, "pretrained": "none", "frames": args.frames, "device": str(device), "dtype": args.dtype},
    )
    t0 = time.perf_counter()
    pipe = Pipeline(cfg)
    build_s = time.perf_counter() - t0
    enc, bf = pipe.encoder, pipe.batch_frames
    per_forward = min(bf, args.frames)
    print(
        f"{model} {pipe.dtype} on {device}, {n_videos} videos x {seconds:g}s 640x360 30fps, T={args.frames}, "
        f"batch_frames={bf}, workers={args.workers}, model build {build_s:.1f}s\n"
    )

    clips = [load_clip(v, cfg.video, pipe.image_size) for v in videos]  # warm-up: file cache, decoder, model
    with torch.inference_mode():
        enc.encode(clips[0].frames, bf)
    total = sum(len(c.indices) for c in clips)
    x = torch.randn(per_forward, 3, *enc.image_size).to(device, enc.dtype)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    runs: dict[str, list[tuple[float, float, float]]] = {
        k: [] for k in ("decode", "encoder", "encode", "batch", "ceiling")
    }
    breakdown: dict[str, float] = {}

    def decode_all() -> None:
        for v in videos:
            load_clip(v, cfg.video, pipe.image_size)

    def encoder_all() -> None:
        with torch.inference_mode():
            for c in clips:
                enc.encode(c.frames, bf)

    ceiling_passes = min(-(-total // per_forward), 3)  # 3 forward passes are enough for a steady rate

    def ceiling() -> None:
        with torch.inference_mode():
            for _ in range(ceiling_passes):
                enc._tokens(x)

    def encode_all(r: int) -> None:
        out = work / f"encode{r}"
        out.mkdir()
        for i, v in enumerate(videos):
            result = pipe.encode(v)
            write_result(result, out / f"{i}.pt")
            for k, s in result.meta["timings"].items():
                breakdown[k] = breakdown.get(k, 0.0) + s / rounds

    def batch_all(r: int) -> None:
        plan = plan_batch(folder, work / f"batch{r}")
        engine = LocalEngine(EngineOptions(workers=args.workers))
        engine.pipeline = pipe  # the model built once for every round
        records = list(run_batch(plan, engine, cfg))
        bad = [rec.error for rec in records if rec.status != "ok"]
        assert not bad and len(records) == n_videos, bad

    try:
        for r in range(rounds):
            runs["decode"].append(stage(decode_all, device))
            runs["encoder"].append(stage(encoder_all, device))
            runs["ceiling"].append(stage(ceiling, device))
            runs["encode"].append(stage(lambda r=r: encode_all(r), device))
            runs["batch"].append(stage(lambda r=r: batch_all(r), device))
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f}s" for k, v in runs.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(run[0] for run in v) for k, v in runs.items()}
    ceiling_frames = ceiling_passes * per_forward
    fps = {k: (ceiling_frames if k == "ceiling" else total) / s for k, s in med.items()}
    rows = [
        {
            "stage": k,
            "seconds": med[k],
            "fps": fps[k],
            "vs_ceiling": fps[k] / fps["ceiling"],
            "rss_mb": max(run[1] for run in runs[k]),
            "child_mb": max(run[2] for run in runs[k]),
        }
        for k in runs
    ]
    cols = [
        ("stage", "stage", ""),
        ("seconds", "seconds", ".2f"),
        ("fps", "frames/s", ".2f"),
        ("vs_ceiling", "vs encoder ceiling", ".2f"),
        ("rss_mb", "peak RSS MiB (incl. children)", ".0f"),
        ("child_mb", "largest child MiB", ".0f"),
    ]
    stages_table = common.table(rows, cols)
    ratios = {
        "batch_fps / min(encoder_fps, decode_fps)": fps["batch"] / min(fps["encoder"], fps["decode"]),
        "batch_time / (decode_time + encoder_time)": med["batch"] / (med["decode"] + med["encoder"]),
        "encode_fps / encoder_ceiling_fps": fps["encode"] / fps["ceiling"],
        "batch_fps / encoder_ceiling_fps": fps["batch"] / fps["ceiling"],
        "encoder_only_fps / encoder_ceiling_fps (preprocessing cost)": fps["encoder"] / fps["ceiling"],
        "batch_time / encode_time": med["batch"] / med["encode"],
    }
    ratio_table = common.table(
        [{"ratio": k, "value": v} for k, v in ratios.items()], [("ratio", "ratio", ""), ("value", "value", ".2f")]
    )
    split = common.table(
        [{"part": k, "seconds": v, "share": v / sum(breakdown.values())} for k, v in breakdown.items()],
        [("part", "encode: time per part", ""), ("seconds", "seconds", ".2f"), ("share", "share", ".0%")],
    )
    print("\n" + stages_table + "\n\n" + ratio_table + "\n\n" + split)
    rusage = common.rusage_mb()
    print(
        f"\nprocess lifetime peak RSS (getrusage) {rusage['self_maxrss_mb']:.0f} MiB; "
        f"CUDA peak {common.cuda_peak_mb(device) or 0:.0f} MiB"
    )
    common.write_json(
        args.out,
        {
            "machine": info,
            "model": model,
            "dtype": str(pipe.dtype),
            "frames": args.frames,
            "videos": n_videos,
            "seconds": seconds,
            "workers": args.workers,
            "rounds": rounds,
            "total_frames": total,
            "model_build_s": build_s,
            "runs": runs,
            "stages": rows,
            "ratios": ratios,
            "encode_breakdown_s": breakdown,
            "rusage": rusage,
            "cuda_peak_mb": common.cuda_peak_mb(device),
            "tables": [stages_table, ratio_table, split],
        },
    )


if __name__ == "__main__":
    main()
