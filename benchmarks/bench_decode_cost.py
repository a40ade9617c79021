"""What one decode process delivers per core: sampled frames/s, frames decoded per frame kept, by T and length.

A GPU takes frames faster than one decode process makes them, so the question for ``batch`` on a GPU is how
many cores one GPU needs. This measures ``video.load_clip`` as a batch worker runs it (decord, one codec thread,
the process pinned to one core) for the presets' video settings on generated H.264 videos (640x360 and
1280x720, 30 fps, 10 s and 60 s, a keyframe every 2 s and one with every 5 s; see ``common.cached_video``):

- **T sweep** with the default preset's settings (segment centres, decode-time resize for a 224 model when the
  video's shorter side is at least 448), T = 8, 16, 32, 64;
- **presets** at their own settings: ``default`` (T=64), ``sf-llava-7b`` (T=50 ``sf_llava``, full size, squash
  336) and ``llava-video-siglip`` (T=64 ``linspace``, full size, squash 384).

Each cell is timed with the library's skip of unconverted frames (``reader.skips``, on for H.264) and with it
off (every frame read in order converted to RGB, what ``load_clip`` did before), interleaved, the minimum of
``--repeats``; the two must give identical frames (asserted). "decoded / kept" counts the frames the decoder
decodes per frame returned: frame 0 at each open (two opens when the decoder scales), every frame up to the
last one kept when reading in order, and, when seeking, ``video._random_cost`` plus about one GOP per keyframe
that ``_seeks_exactly`` checks (the module's own cost model, not a counter inside decord). "converted" counts
the frames converted to RGB (and scaled).

Two more tables: decord's codec threads (``num_threads`` 1, 2 and 0 = FFmpeg's choice) on one and on two cores,
and how many frames per second one ``multiprocessing`` pipe carries from a worker to the main process, which is
what ``batch`` moves decoded frames through.

Example:
    python benchmarks/bench_decode_cost.py --quick
"""

from __future__ import annotations

import bisect
import contextlib
import multiprocessing as mp
import os
import time
from pathlib import Path

import common
import numpy as np

from slowfast_cli.config import VideoCfg, resolve_config
from slowfast_cli.models import vision_config
from slowfast_cli.video import decode as video

FPS = 30
VIDEOS = [  # name, seconds, (w, h), gop in frames
    ("640x360 10 s", 10, (640, 360), 60),
    ("640x360 60 s", 60, (640, 360), 60),
    ("640x360 60 s GOP 5 s", 60, (640, 360), 150),
    ("1280x720 10 s", 10, (1280, 720), 60),
    ("1280x720 60 s", 60, (1280, 720), 60),
]
QUICK_VIDEOS = [("640x360 10 s", 10, (640, 360), 60)]
FRAMES = [8, 16, 32, 64]
PRESETS = ["default", "sf-llava-7b", "llava-video-siglip"]


def preset_settings(name: str) -> tuple[VideoCfg, int | None]:
    """(video settings, the side the decoder may scale to) as ``Pipeline`` derives them for a preset."""
    cfg = resolve_config(name)
    squash = cfg.encoder.resize == "squash" or "SigLIP" in cfg.encoder.model
    return cfg.video, None if squash else vision_config(cfg.encoder.model)["image_size"]


@contextlib.contextmanager
def skipping(on: bool):
    """The library's skip of unconverted frames as it is (on) or switched off (every frame converted)."""
    original = video._skips_exactly
    if not on:
        video._skips_exactly = lambda reader, stream, pts_ok: False
    try:
        yield
    finally:
        video._skips_exactly = original


@contextlib.contextmanager
def recorded():
    """What one ``load_clip`` did: its access (seek or in order), its readers' keys, frames converted."""
    seen = {"seek": None, "converted": 0, "keys": None, "opens": 0}
    names = ("_use_random_access", "_decode", "_open")
    originals = {n: getattr(video, n) for n in names}

    def use_random_access(reader, opened, indices):
        seen["seek"] = originals["_use_random_access"](reader, opened, indices)
        seen["keys"] = video._segment_keys(reader)
        return seen["seek"]

    def decode(reader, indices):
        seen["converted"] += len(indices)
        return originals["_decode"](reader, indices)

    def open_(*args, **kwargs):
        seen["opens"] += 1
        return originals["_open"](*args, **kwargs)

    video._use_random_access, video._decode, video._open = use_random_access, decode, open_
    try:
        yield seen
    finally:
        for n, fn in originals.items():
            setattr(video, n, fn)


def decoded_frames(seen: dict, indices: list[int]) -> int:
    """Frames the decoder decodes for one load_clip, by the module's cost model (see the module docstring).

    Seeking: ``_random_cost`` plus, for each keyframe ``_seeks_exactly`` checks (chosen as it chooses them), the
    frames from the keyframe before it up to it and the keyframe once more after a seek.
    """
    unique = sorted(set(indices))
    keys = seen["keys"] or []
    if not seen["seek"]:
        return seen["opens"] + unique[-1] + 1
    used = sorted({keys[bisect.bisect_right(keys, i) - 1] for i in unique if i >= keys[0]})
    if len(used) > video.SEEK_CHECKS:
        used = [used[round(j * (len(used) - 1) / (video.SEEK_CHECKS - 1))] for j in range(video.SEEK_CHECKS)]
    starts = [0, *keys]
    check = sum(k - starts[bisect.bisect_left(keys, k)] + 2 for k in set(used) | {keys[0]})
    return seen["opens"] + video._random_cost(keys, unique) + check


def one_core(core: int = 0) -> None:
    """Pin this process (and decord's threads it starts) to one core."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {core})


def all_cores() -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def time_cell(path: Path, cfg: VideoCfg, image_size: int | None, repeats: int, threads: int = 1) -> dict:
    """load_clip with the skip on and off, interleaved; minimum times, counts, and the frames checked equal."""
    times = {True: [], False: []}
    frames, seen = {}, {}
    for _ in range(repeats):
        for on in (True, False):
            with skipping(on), recorded() as s:
                t0 = time.perf_counter()
                clip = video.load_clip(path, cfg, image_size, num_threads=threads, min_scale=video.DECODE_RESIZE_MIN)
                times[on].append(time.perf_counter() - t0)
            frames[on], seen[on] = clip, s
    assert np.array_equal(frames[True].frames, frames[False].frames), f"the skip changed frames ({path.name})"
    clip = frames[True]
    kept = len(clip.indices)
    decoded = decoded_frames(seen[True], clip.indices)
    best = {on: min(t) for on, t in times.items()}
    return {
        "T": cfg.frames,
        "sampling": cfg.sampling,
        "decode_resize": bool(cfg.decode_resize and image_size),
        "frames_shape": "x".join(map(str, clip.frames.shape[1:3][::-1])),
        "access": "seek" if seen[True]["seek"] else "in order",
        "kept": kept,
        "decoded": decoded,
        "decoded_per_kept": decoded / kept,
        "converted_skip": seen[True]["converted"],
        "converted_all": seen[False]["converted"],
        "ms": 1e3 * best[True],
        "ms_no_skip": 1e3 * best[False],
        "fps": kept / best[True],
        "fps_no_skip": kept / best[False],
        "decoded_fps": decoded / best[True],
        "skip_gain": best[False] / best[True],
        "times": {"skip": times[True], "no_skip": times[False]},
    }


def thread_rows(path: Path, name: str, cfg: VideoCfg, image_size: int | None, repeats: int) -> list[dict]:
    """Sampled frames/s per core for decord's codec threads on one and on two cores (skip on)."""
    rows = []
    for cores in (1, 2):
        if cores > (os.cpu_count() or 1):
            continue
        for threads in (1, 2, 0):
            if cores == 1:
                one_core()
            else:
                all_cores()
            best = min(_timed_load(path, cfg, image_size, threads) for _ in range(repeats))
            rows.append({"video": name, "T": cfg.frames, "cores": cores, "threads": threads,
                         "fps": cfg.frames / best, "fps_per_core": cfg.frames / best / cores})  # fmt: skip
    one_core()
    return rows


def _timed_load(path: Path, cfg: VideoCfg, image_size: int | None, threads: int) -> float:
    t0 = time.perf_counter()
    video.load_clip(path, cfg, image_size, num_threads=threads, min_scale=video.DECODE_RESIZE_MIN)
    return time.perf_counter() - t0


def _receiver(conn, back, count: int) -> None:
    """Receive one warm-up clip, say so, then ``count`` clips; send back (wall s, CPU s) of those."""
    conn.recv()
    back.send("ready")
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(count):
        conn.recv()
    back.send((time.perf_counter() - t0, time.process_time() - c0))


def pipe_rows(repeats: int) -> list[dict]:
    """Frames/s one multiprocessing pipe carries (uint8 (64, H, W, 3) clips, pickled as ``batch`` sends them), and
    the receiving process's CPU time per GB (what the main process of ``batch`` spends per worker's frames)."""
    ctx = mp.get_context("spawn")
    rows = []
    for w, h in ((224, 224), (640, 360), (1280, 720)):
        clip = np.zeros((64, h, w, 3), dtype=np.uint8)
        recv, send = ctx.Pipe(duplex=False)
        back_recv, back_send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_receiver, args=(recv, back_send, repeats))
        proc.start()
        send.send(clip)  # warm-up, while the child starts
        back_recv.recv()
        for _ in range(repeats):
            send.send(clip)
        seconds, cpu = back_recv.recv()
        proc.join()
        gb = clip.nbytes * repeats / 1e9
        rows.append({"frame": f"{w}x{h}", "mb_per_frame": clip[0].nbytes / 1e6, "fps": 64 * repeats / seconds,
                     "gb_s": gb / seconds, "recv_cpu_s_per_gb": cpu / gb})  # fmt: skip
    return rows


def main() -> None:
    p = common.parser(__doc__, "decode_cost", torch_options=False)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 2; --quick 1)")
    p.add_argument("--core", type=int, default=0, help="the core the decode process is pinned to (default 0)")
    p.add_argument("--parts", nargs="+", default=["cost", "threads", "pipes"], help="which tables (default: all)")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 2)
    info = common.machine_info(with_torch=False)
    common.header("Decode cost per core (one decode process, one codec thread)", info)
    folder = common.OUT_DIR / "videos" / "decode_cost"
    specs = QUICK_VIDEOS if args.quick else VIDEOS
    videos = [(name, common.cached_video(folder, secs, size, FPS, gop), gop) for name, secs, size, gop in specs]
    one_core(args.core)
    base, base_size = preset_settings("default")
    rows = []
    for name, path, gop in videos if "cost" in args.parts else []:
        for t in [8, 64] if args.quick else FRAMES:
            row = {"video": name, "setting": f"default, T={t}", "gop_s": gop / FPS}
            rows.append(row | time_cell(path, VideoCfg(**{**vars(base), "frames": t}), base_size, repeats))
            print(f"  {name} T={t}: {rows[-1]['fps']:.1f} frames/s (no skip {rows[-1]['fps_no_skip']:.1f})", flush=True)
        for preset in [] if args.quick else PRESETS[1:]:
            cfg, size = preset_settings(preset)
            rows.append({"video": name, "setting": preset, "gop_s": gop / FPS} | time_cell(path, cfg, size, repeats))
            print(f"  {name} {preset}: {rows[-1]['fps']:.1f} frames/s", flush=True)
    cols = [
        ("video", "video", ""),
        ("setting", "setting", ""),
        ("frames_shape", "frames", ""),
        ("access", "access", ""),
        ("decoded_per_kept", "decoded / kept", ".1f"),
        ("converted_skip", "converted (skip)", ""),
        ("converted_all", "converted (before)", ""),
        ("ms", "ms per video", ".0f"),
        ("fps", "kept frames/s per core", ".1f"),
        ("decoded_fps", "decoded frames/s", ".0f"),
        ("fps_no_skip", "before: kept frames/s", ".1f"),
        ("skip_gain", "gain", ".2f"),
    ]
    cost_table = common.table(rows, cols) if rows else ""
    print("\n" + cost_table)

    first_name, first_path, _ = videos[0]
    threads = []
    if "threads" in args.parts:
        threads = thread_rows(first_path, first_name, VideoCfg(**{**vars(base), "frames": 64}), base_size, repeats)
    if "threads" in args.parts and not args.quick and len(videos) > 3:
        name, path, _ = videos[3]
        cfg, size = preset_settings("sf-llava-7b")
        threads += thread_rows(path, name, cfg, size, repeats)
    threads_table = common.table(
        threads,
        [("video", "video", ""), ("T", "T", ""), ("cores", "cores", ""), ("threads", "num_threads", ""),
         ("fps", "kept frames/s", ".1f"), ("fps_per_core", "per core", ".1f")],
    )  # fmt: skip
    print("\n" + threads_table)
    all_cores()
    pipes = pipe_rows(3 if args.quick else 10) if "pipes" in args.parts else []
    pipe_table = common.table(
        pipes,
        [("frame", "frame", ""), ("mb_per_frame", "MB per frame", ".2f"), ("fps", "frames/s through one pipe", ",.0f"),
         ("gb_s", "GB/s", ".2f"), ("recv_cpu_s_per_gb", "receiver CPU s per GB", ".2f")],
    )  # fmt: skip
    print("\n" + pipe_table)
    common.write_json(
        args.out,
        {"machine": info, "repeats": repeats, "rows": rows, "threads": threads, "pipes": pipes,
         "tables": [cost_table, threads_table, pipe_table]},
    )  # fmt: skip


if __name__ == "__main__":
    main()
