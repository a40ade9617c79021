"""Why damaged videos fail instead of being encoded from the part before the damage: decord 0.6's race.

Not speed. Two generated h264 files with an intact mp4 index and zeros where data should be, each decoded many
times over, with ``num_threads`` 0 (FFmpeg picks its threads, what ``encode`` and a one-worker batch use) and 1
(what each batch worker uses when there are several), optionally with busy processes beside it (``--hogs``):

1. *Prefix*: 32 frames, the second half of the bytes zeros. Each run opens a fresh reader for every frame
   (``get_batch([i])``) from frame 0 on and counts the frames before the first that fails: the "decodable
   prefix" a salvage would use. Every frame whose packet lies before the zeros could decode; how many do depends
   on thread timing, because decord's reader pushes packets ahead and raises its decoder thread's error on a
   later bad packet even for frames already decoded.
2. *Damage after the sample*: 64 frames, zeros from 90% of the bytes (the last 8 or so frames); ``load_clip``
   samples one frame (frame 30, at ``sample_fps=1, max_frames=1``), 26 frames before the first damaged one, with
   the tool's retries (``DECODE_ATTEMPTS``). Counts the runs that pass.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common  # noqa: E402


def _hog() -> None:
    while True:
        pass


def prefix_runs(path: Path, threads: int, runs: int) -> Counter:
    from slowfast_cli.errors import SlowfastError
    from slowfast_cli.video import decode as video

    counts: Counter = Counter()
    for _ in range(runs):
        n = 0
        while True:
            try:
                video._decode(video._open(path, num_threads=threads), [n])
            except (video._Undecodable, SlowfastError):
                break
            n += 1
        counts[n] += 1
    return counts


def after_runs(path: Path, threads: int, runs: int) -> tuple[int, list[int]]:
    from slowfast_cli.config import VideoCfg
    from slowfast_cli.errors import SlowfastError
    from slowfast_cli.video.decode import load_clip

    cfg, passed, indices = VideoCfg(sample_fps=1.0, max_frames=1, decode_resize=False), 0, []
    for _ in range(runs):
        try:
            indices = load_clip(path, cfg, num_threads=threads).indices
            passed += 1
        except SlowfastError:
            pass
    return passed, indices


def main() -> None:
    p = common.parser(__doc__, "damaged", torch_options=False)
    p.add_argument("--runs", type=int, default=60, help="decodes per file and thread setting (default 60)")
    p.add_argument("--hogs", type=int, default=2, help="busy-looping processes beside the decodes (default 2)")
    args = p.parse_args()
    runs = 5 if args.quick else args.runs
    import media

    info = common.machine_info(with_torch=False)
    common.header("Decoding damaged videos with decord", info)
    hogs = [mp.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            half = media.make_truncated(Path(tmp) / "half zeros.mp4", moov_front=True, zero_fill=True)
            cut = half.stat().st_size // 2
            intact = sum(1 for _, end, i in media.packets(half) if end <= cut and i < 32)
            tail = media.make_video(Path(tmp) / "tail.mp4", frames=64, faststart=True)
            size = tail.stat().st_size
            media.make_damaged(tail, 0.9)
            first_bad = min(i for _, end, i in media.packets(tail) if end > int(size * 0.9))
            rows = []
            for threads in (0, 1):
                counts = prefix_runs(half, threads, runs)
                passed, indices = after_runs(tail, threads, runs)
                rows.append({"num_threads": threads, "runs": runs, "intact_frames": intact,
                             "prefix_counts": dict(sorted(counts.items())), "sampled": indices,
                             "first_damaged": first_bad, "after_passed": passed})  # fmt: skip
    finally:
        for h in hogs:
            h.terminate()
    cols = [("num_threads", "num_threads", ""), ("runs", "runs", ""),
            ("intact_frames", "frames wholly before the zeros", ""),
            ("prefix_counts", "prefix found: {frames: runs}", ""), ("sampled", "sampled frame", ""),
            ("first_damaged", "first damaged frame", ""), ("after_passed", "runs passed", "")]  # fmt: skip
    print(f"{args.hogs} busy processes beside the decodes\n")
    print(common.table(rows, cols))
    common.write_json(args.out, {"machine": info, "hogs": args.hogs, "rows": rows})


if __name__ == "__main__":
    main()
