"""Decode cost and memory vs video length: decord (``video.load_clip``) against a seeking PyAV decoder.

Sampling T frames should cost time that grows with T and with keyframe spacing, not with the video's length,
and peak memory should not grow with length at all. Videos are 320x240 30 fps H.264 (libx264 crf 23, a
keyframe every 2 s; one with a keyframe every 10 s), made once and cached in ``bench-out/videos``; frames come
at full size (no decoder resize). ``load_clip``'s time is split by timing its internal steps: opening (which
builds decord's packet index and decodes frame 0), the pts table, and the choice of access (sequential or
seeking, which includes the seek check that decodes about one GOP per keyframe used); the rest is decoding.

The PyAV decoder (written here, not in the library) seeks to the keyframe before each target and decodes
forward to it, and decodes forward instead of seeking when the target is closer than the keyframe interval as
far as it is known (see ``pyav_sample``). Its frames are compared with decord's. A third column reads the same
frames in order with decord's ``skip_frames`` (decode without RGB conversion) and checks they are identical to
``load_clip``'s: what a sequential read costs when only the wanted frames are converted (timed once on videos
longer than a minute, since it reads them whole).

Memory: peak RSS (``wait4``'s ru_maxrss) of a fresh ``slowfast encode VIDEO --config tiny --frames 64`` per
video.

Example:
    python benchmarks/bench_decode.py --quick
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import common
import decord
import numpy as np

from slowfast_cli.config import VideoCfg
from slowfast_cli.video import decode as video

SIZE, FPS = (320, 240), 30
VIDEOS = [("10 s", 10, 60), ("1 min", 60, 60), ("10 min", 600, 60), ("1 min, GOP 10 s", 60, 300)]  # name, s, gop
FRAMES = [8, 32, 64]


@contextlib.contextmanager
def timed_calls(module, names: list[str]):
    """Patch ``module.<name>`` functions to add their wall time to a dict (and remember the last result)."""
    spent: dict[str, float] = {n: 0.0 for n in names}
    last: dict[str, object] = {}
    originals = {n: getattr(module, n) for n in names}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                last[name] = fn(*args, **kwargs)
                return last[name]
            finally:
                spent[name] += time.perf_counter() - t0

        return timed

    for n in names:
        setattr(module, n, wrap(n, originals[n]))
    try:
        yield spent, last
    finally:
        for n, fn in originals.items():
            setattr(module, n, fn)


def pyav_sample(path: Path, indices: list[int]) -> tuple[np.ndarray, int]:
    """Frames ``indices`` (ascending) by seeking to keyframes and decoding forward; (frames, frames decoded).

    Seeks when the target is further ahead than the keyframe interval as known so far: the shortest interval
    seen between two keyframes while decoding forward, else the longest stretch decoded after a keyframe without
    meeting the next one, and at least 1 s.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        per_frame = 1 / (stream.average_rate * stream.time_base)  # pts units per frame
        start = stream.start_time or 0
        one_second = round(float(stream.average_rate) * per_frame)
        intervals, stretch = [], 0
        out, decoded, frames, cur, run_key = [], 0, None, None, None
        for i in indices:
            target = start + round(i * per_frame)
            gap = min(intervals) if intervals else max(one_second, stretch)
            if frames is None or target <= cur or target - cur > gap:
                container.seek(target, stream=stream, backward=True)  # lands on the keyframe at or before
                frames, run_key = container.decode(stream), None
            for frame in frames:
                decoded += 1
                cur = frame.pts
                if frame.key_frame:
                    if run_key is not None:
                        intervals.append(frame.pts - run_key)
                    run_key = frame.pts
                if frame.pts >= target:
                    stretch = max(stretch, frame.pts - run_key)
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
        return np.stack(out), decoded


def decord_skip_sample(path: Path, indices: list[int]) -> np.ndarray:
    """Frames ``indices`` by reading in order with decord's ``skip_frames`` (decodes, no RGB conversion)."""
    vr = decord.VideoReader(str(path), decord.cpu(0))
    out, pos = [], 0
    for i in indices:
        vr.skip_frames(i - pos)
        out.append(vr.next().asnumpy())
        pos = i + 1
    return np.stack(out)


def decord_sample(path: Path, frames: int) -> dict:
    """One ``load_clip`` with its time split into steps."""
    steps = ["_open", "_inspect", "_use_random_access"]
    with timed_calls(video, steps) as (spent, last):
        t0 = time.perf_counter()
        clip = video.load_clip(path, VideoCfg(frames=frames), image_size=None)
        total = time.perf_counter() - t0
    access = "seek" if last.get("_use_random_access") else "sequential"
    return {
        "total": total,
        "open": spent["_open"],
        "pts": spent["_inspect"],
        "choose": spent["_use_random_access"],
        "access": access,
        "clip": clip,
    }


def memory_rows(videos: list[tuple[str, Path]], work: Path) -> list[dict]:
    """Peak RSS of ``slowfast encode --config tiny --frames 64`` per video, after a baseline that only imports."""
    exe = str(Path(sys.executable).with_name("slowfast"))
    base = common.run_measured([sys.executable, "-c", "import slowfast_cli.encoder.encoder, slowfast_cli.video.decode"])
    rows = [
        {"video": "(baseline: import torch, open_clip, decord)", "rss_mb": base["maxrss_mb"], "wall": base["seconds"]}
    ]
    for name, path in videos:
        r = common.run_measured(
            [exe, "encode", str(path), "--config", "tiny", "--frames", "64", "-o", str(work / "m.pt"), "--overwrite"]
        )
        assert r["rc"] == 0, r["stderr"]
        rows.append({"video": name, "mib": path.stat().st_size / 2**20, "rss_mb": r["maxrss_mb"], "wall": r["seconds"]})
        print(f"  memory {name}: {r['maxrss_mb']:.0f} MiB", flush=True)
    return rows


def main() -> None:
    p = common.parser(__doc__, "decode", torch_options=False)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 3; --quick 1)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    frame_counts = [8, 64] if args.quick else FRAMES
    info = common.machine_info(with_torch=False)
    common.header("Decode cost and memory vs video length", info)
    folder = common.OUT_DIR / "videos" / "decode"
    specs = [s for s in VIDEOS if not (args.quick and s[1] > 60)]
    videos = [(name, common.cached_video(folder, secs, SIZE, FPS, gop)) for name, secs, gop in specs]

    rows = []
    for (name, path), (_, secs, gop) in zip(videos, specs):
        for t in frame_counts:
            decord_sample(path, t)  # warm-up (file cache)
            runs = [decord_sample(path, t) for _ in range(repeats)]
            clip = runs[0]["clip"]
            pyav_times, decoded = [], 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                frames, decoded = pyav_sample(path, clip.indices)
                pyav_times.append(time.perf_counter() - t0)
            skip_times = []
            for _ in range(repeats if secs <= 60 else 1):  # it reads the whole video: once for long ones
                t0 = time.perf_counter()
                skipped = decord_skip_sample(path, clip.indices)
                skip_times.append(time.perf_counter() - t0)
            assert np.array_equal(skipped, clip.frames), f"skip_frames gave other frames ({name}, T={t})"
            diff = float(np.abs(frames.astype(np.int16) - clip.frames.astype(np.int16)).mean(axis=(1, 2, 3)).max())
            med = {k: statistics.median(r[k] for r in runs) for k in ("total", "open", "pts", "choose")}
            rows.append(
                {
                    "video": name,
                    "seconds": secs,
                    "gop_s": gop / FPS,
                    "frames": t,
                    "access": runs[0]["access"],
                    "decord_ms": 1e3 * med["total"],
                    "open_ms": 1e3 * med["open"],
                    "pts_ms": 1e3 * med["pts"],
                    "choose_ms": 1e3 * med["choose"],
                    "decode_ms": 1e3 * (med["total"] - med["open"] - med["pts"] - med["choose"]),
                    "skip_ms": 1e3 * statistics.median(skip_times),
                    "pyav_ms": 1e3 * statistics.median(pyav_times),
                    "pyav_decoded": decoded,
                    "decord_vs_pyav": med["total"] / statistics.median(pyav_times),
                    "max_mean_diff": diff,
                }
            )
            print(f"  {name} T={t}: decord {1e3 * med['total']:.0f} ms, PyAV {rows[-1]['pyav_ms']:.0f} ms", flush=True)
    cols = [
        ("video", "video", ""),
        ("gop_s", "GOP s", ".0f"),
        ("frames", "T", ""),
        ("decord_ms", "decord ms", ".0f"),
        ("open_ms", "open+index ms", ".0f"),
        ("pts_ms", "pts table ms", ".0f"),
        ("choose_ms", "seek check ms", ".0f"),
        ("decode_ms", "decode ms", ".0f"),
        ("access", "access", ""),
        ("skip_ms", "decord skip_frames ms", ".0f"),
        ("pyav_ms", "PyAV ms", ".0f"),
        ("pyav_decoded", "PyAV frames decoded", ""),
        ("decord_vs_pyav", "decord / PyAV", ".2f"),
        ("max_mean_diff", "max mean abs diff", ".1f"),
    ]
    decode_table = common.table(rows, cols)

    def ratio(video_a: str, video_b: str, key: str, t: int) -> float:
        a = next(r[key] for r in rows if r["video"] == video_a and r["frames"] == t)
        b = next(r[key] for r in rows if r["video"] == video_b and r["frames"] == t)
        return a / b

    longest = [n for n, _ in videos if n != "1 min, GOP 10 s"][-1]
    ratios = []
    for t in frame_counts:
        ratios.append(
            {
                "T": t,
                "what": f"{longest} / 10 s",
                "decord": ratio(longest, "10 s", "decord_ms", t),
                "pyav": ratio(longest, "10 s", "pyav_ms", t),
            }
        )
        ratios.append(
            {
                "T": t,
                "what": "GOP 10 s / GOP 2 s (1 min)",
                "decord": ratio("1 min, GOP 10 s", "1 min", "decord_ms", t),
                "pyav": ratio("1 min, GOP 10 s", "1 min", "pyav_ms", t),
            }
        )
    for video_name in dict.fromkeys(r["video"] for r in rows):
        ratios.append(
            {
                "T": "64/8",
                "what": video_name,
                "decord": ratio_t(rows, video_name, "decord_ms"),
                "pyav": ratio_t(rows, video_name, "pyav_ms"),
            }
        )
    ratio_table = common.table(
        ratios, [("what", "time ratio", ""), ("T", "T", ""), ("decord", "decord", ".2f"), ("pyav", "PyAV", ".2f")]
    )
    print("\n" + decode_table + "\n\n" + ratio_table + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as work:
        mem = memory_rows(videos[:2] if args.quick else videos, Path(work))
    mem_table = common.table(
        mem,
        [
            ("video", "video", ""),
            ("mib", "file MiB", ".1f"),
            ("rss_mb", "peak RSS MiB (slowfast encode --config tiny --frames 64)", ".0f"),
            ("wall", "wall s", ".2f"),
        ],
    )
    print("\n" + mem_table)
    common.write_json(
        args.out,
        {
            "machine": info,
            "size": SIZE,
            "fps": FPS,
            "repeats": repeats,
            "rows": rows,
            "ratios": ratios,
            "memory": mem,
            "tables": [decode_table, ratio_table, mem_table],
        },
    )


def ratio_t(rows: list[dict], video_name: str, key: str) -> float:
    """Time at T=64 over time at T=8 for one video."""
    by_t = {r["frames"]: r[key] for r in rows if r["video"] == video_name}
    return by_t[64] / by_t[8]


if __name__ == "__main__":
    main()
