"""What each output format costs per video: writing one sample (through the writer ``batch`` uses), reading it back
with ``TokenDataset``, and its size on disk, for the default preset's token size (4,160 x 768) in fp32 and bf16.

Written into a fresh folder (page cache, fsync included: each write is fsynced, as in a batch); webdataset with
shards of 100 samples (the last shard finished at the end, as a complete run does). Each figure is the best of
``--repeats`` runs (a shared machine's other load only ever adds time).

Example:
    PYTHONPATH=. python benchmarks/bench_formats.py --videos 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--length", type=int, default=4160)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch

    torch.manual_seed(0)
    meta = {"source": "clip.mp4", "output_tokens": args.length, "timestamps": [0.5 * i for i in range(64)],
            "frame_indices": list(range(0, 1280, 20)), "config": {"video": {"frames": 64}}}  # fmt: skip
    print(f"{'format':<12} {'dtype':<6} {'write ms':>9} {'read ms':>8} {'MB/video':>9}")
    for dtype in (torch.float32, torch.bfloat16):
        tokens = torch.randn(1, args.length, args.dim).to(dtype)
        for name in ("pt", "safetensors", "webdataset"):
            runs = [_once(name, tokens, meta, args.videos) for _ in range(args.repeats)]
            write, read, size = min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]
            print(f"{name:<12} {str(dtype)[6:]:<6} {1e3 * write:9.1f} {1e3 * read:8.1f} {size / 1e6:9.2f}")


def _once(name: str, tokens, meta: dict, videos: int) -> tuple[float, float, float]:
    """(seconds to write, seconds to read, bytes on disk) per video, for ``videos`` samples in format ``name``."""
    from slowfast_cli.dataset import TokenDataset
    from slowfast_cli.formats import OutputFormat, make_writer

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        out = Path(tmp)
        w = make_writer(OutputFormat(name, shard_size=100), out)
        w.load()
        t0 = time.perf_counter()
        for i in range(videos):
            rel = w.output(Path(f"v{i:05d}.mp4"))
            w.write(tokens, w.sample_meta(meta, rel), rel)
        w.finish()
        write = (time.perf_counter() - t0) / videos
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / videos
        ds = TokenDataset(out)
        t0 = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        return write, (time.perf_counter() - t0) / len(ds), size


if __name__ == "__main__":
    main()
