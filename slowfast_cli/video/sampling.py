"""Which frames of a video to decode: the sampling policies, pure functions of frame counts and times.

No decord and no torch here, so ``budget`` and tests can call them without a video. Uniform sampling (T frames)
counts frames; sampling by rate (``sample_fps``) follows the frames' timestamps, so it steps by time on
variable-frame-rate video. See ``docs/decord.md`` for where the timestamps come from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..config import VideoCfg
from .info import VideoInfo

TIME_TOL = 1e-6  # seconds: timestamps are rounded to microseconds (plus float32 precision, see _time_tol)


def _centres(count: int, picks: int) -> list[int]:
    """Positions ``floor((i + 0.5) * count / picks)`` for ``i < picks`` (integer arithmetic, no float drift)."""
    return [(2 * i + 1) * count // (2 * picks) for i in range(picks)]


def _time_tol(t: np.ndarray | float) -> np.ndarray | float:
    """Seconds within which two times count as equal: microsecond rounding plus twice float32's 2^-24 relative."""
    return TIME_TOL + np.abs(t) * 2.0**-23


def centers_indices(num_frames: int, frames: int) -> list[int]:
    """``centers`` sampling (the default): every frame if ``num_frames <= frames``, else segment centres.

    Frame ``floor((i + 0.5) * num_frames / frames)`` for ``i < frames``: the centre of each of ``frames`` equal
    segments, so the first and last frames' neighbourhoods are equally represented. No repeats.

    Example:
        >>> centers_indices(100, 4)
        [12, 37, 62, 87]
    """
    return list(range(num_frames)) if num_frames <= frames else _centres(num_frames, frames)


def sf_llava_indices(num_frames: int, frames: int) -> list[int]:
    """``sf_llava`` sampling: SlowFast-LLaVA's ``get_seq_frames`` (apple/ml-slowfast-llava bea0f73, dataset.py:61-100).

    ``T = min(num_frames, frames)``, ``s = (num_frames - 1) / T``, frame ``i`` is
    ``(round(s * i) + round(s * (i + 1))) // 2`` with numpy's round half to even, in float64 as upstream. A video
    with fewer than ``frames`` frames gives T = num_frames picks with repeats, and its last frame is never picked.

    Example:
        >>> sf_llava_indices(5, 50)
        [0, 1, 2, 2, 3]
    """
    t = min(num_frames, frames)
    step = float(num_frames - 1) / t if t else 0.0
    edges = np.round(step * np.arange(t + 1, dtype=np.float64)).astype(np.int64)  # (T+1,) rounded segment bounds
    return ((edges[:-1] + edges[1:]) // 2).tolist()


def linspace_indices(num_frames: int, frames: int) -> list[int]:
    """``linspace`` sampling: ``np.linspace(0, num_frames - 1, frames, dtype=int)``, LLaVA-NeXT's video loader.

    As in LLaVA-NeXT (LLaVA-VL/LLaVA-NeXT ``playground/demo/video_demo.py`` ``load_video`` and ``llava/utils.py``
    ``process_video_with_decord`` with ``force_sample``): always ``frames`` picks from the first to the last frame,
    truncated towards zero, so a video shorter than ``frames`` gives repeats. Empty for an empty video.

    Example:
        >>> linspace_indices(10, 4)
        [0, 3, 6, 9]
    """
    if not num_frames:
        return []
    return np.linspace(0, num_frames - 1, frames, dtype=int).tolist()


def llava_next_indices(num_frames: int, fps: float, frames: int, sample_fps: float = 1.0) -> list[int]:
    """``llava_next`` sampling: one frame every ``round(fps / sample_fps)`` frames from frame 0, and
    :func:`linspace_indices` instead when that gives more than ``frames``.

    As LLaVA-NeXT's training loader (LLaVA-VL/LLaVA-NeXT ``llava/utils.py`` ``process_video_with_decord``:
    ``avg_fps = round(vr.get_avg_fps() / data_args.video_fps)``, ``range(0, total_frame_num, avg_fps)``, linspace
    to ``frames_upbound`` when longer) and lmms-eval's LLaVA-Video evaluator (EvolvingLMMs-Lab/lmms-eval
    ``lmms_eval/models/llava_vid.py`` ``load_video(video_path, max_frames_num, fps, force_sample=False)``: the same
    rule, ``max_frames_num`` 20 and ``fps`` 1 by default). ``round`` is Python's (half to even), on decord's average
    frame rate. Where upstream's step rounds to 0 (``fps < sample_fps / 2``) its ``range`` raises; here the step is 1.
    The count varies with the video: a 10 s clip at 1 fps gives 10 frames, a 60 s clip ``frames``.

    Example:
        >>> llava_next_indices(100, 25.0, 20), llava_next_indices(1000, 25.0, 4)
        ([0, 25, 50, 75], [0, 333, 666, 999])
    """
    if not num_frames:
        return []
    step = max(1, round(fps / sample_fps))
    picked = list(range(0, num_frames, step))
    return linspace_indices(num_frames, frames) if len(picked) > frames else picked


def arange_indices(num_frames: int, frames: int) -> list[int]:
    """``arange`` sampling: ``np.arange(0, num_frames, num_frames / frames).astype(int)``, the llava-hf model cards'
    video loader (``read_video_pyav`` with ``indices = np.arange(0, total_frames, total_frames / 8).astype(int)``, on
    llava-hf/LLaVA-NeXT-Video-7B-hf and llava-hf/llava-onevision-qwen2-7b-ov-hf), computed as upstream in float64:
    the start of each of T equal segments, truncated; a video shorter than T repeats frames.

    Example:
        >>> arange_indices(100, 8), arange_indices(3, 4)
        ([0, 12, 25, 37, 50, 62, 75, 87], [0, 0, 1, 2])
    """
    if not num_frames:
        return []
    return np.arange(0, num_frames, num_frames / frames).astype(int).tolist()


def internvl_indices(num_frames: int, frames: int) -> list[int]:
    """``internvl`` sampling: the middles of T equal segments of frames 0..n-1, InternVL's video loader (the
    OpenGVLab/InternVL3-8B model card's ``get_index(bound=None, fps, max_frame=len(vr) - 1, num_segments=T)``, also
    lmms-eval's ``internvl2`` model): ``int(seg / 2 + np.round(seg * i))`` with ``seg = (n - 1) / T``, computed as
    upstream (float64, numpy's round half to even). A video shorter than T repeats frames.

    Example:
        >>> internvl_indices(100, 8), internvl_indices(3, 4)
        ([6, 18, 31, 43, 56, 68, 80, 93], [0, 0, 1, 2])
    """
    if not num_frames:
        return []
    seg = float(num_frames - 1) / frames
    return [int(seg / 2 + np.round(seg * i)) for i in range(frames)]


QWEN_FPS, QWEN_MIN_FRAMES, QWEN_FRAME_FACTOR = 2.0, 4, 2  # qwen-vl-utils' FPS, FPS_MIN_FRAMES, FRAME_FACTOR


def qwen_indices(num_frames: int, fps: float, sample_fps: float = QWEN_FPS, max_frames: int = 768) -> list[int]:
    """``qwen`` sampling: Qwen2.5-VL's and Qwen3-VL's ``smart_nframes`` then ``linspace(...).round()``.

    As qwen-vl-utils (QwenLM/Qwen2.5-VL ``qwen-vl-utils/src/qwen_vl_utils/vision_process.py``, ``smart_nframes``
    and ``_read_video_decord``): n = duration * ``sample_fps`` (2 by default), at least 4, at most ``max_frames``
    (768 upstream) and the video's frame count, floored to an even count (two frames per temporal patch); the picks
    are ``torch.linspace(0, num_frames - 1, n).round()`` (here numpy's, in float64; equal on every count tested,
    tests/test_qwen_models.py). A video of fewer than 2 frames gives none (upstream raises).

    Example:
        >>> qwen_indices(100, 25.0), len(qwen_indices(1000, 25.0)), qwen_indices(5, 25.0)
        ([0, 14, 28, 42, 57, 71, 85, 99], 80, [0, 1, 3, 4])
    """
    if num_frames < QWEN_FRAME_FACTOR or not fps > 0:
        return []
    low = -(-QWEN_MIN_FRAMES // QWEN_FRAME_FACTOR) * QWEN_FRAME_FACTOR
    high = min(max_frames, num_frames) // QWEN_FRAME_FACTOR * QWEN_FRAME_FACTOR
    n = min(max(num_frames / fps * sample_fps, low), high, num_frames)
    n = max(QWEN_FRAME_FACTOR, math.floor(n / QWEN_FRAME_FACTOR) * QWEN_FRAME_FACTOR)
    return np.round(np.linspace(0, num_frames - 1, n)).astype(int).tolist()


SAMPLERS: dict[str, Callable[[int, int], list[int]]] = {
    "centers": centers_indices,
    "sf_llava": sf_llava_indices,
    "linspace": linspace_indices,
    "llava_next": lambda num_frames, frames: llava_next_indices(num_frames, 1.0, frames),  # see sample_indices
    "arange": arange_indices,
    "internvl": internvl_indices,
    "qwen": lambda num_frames, frames: qwen_indices(num_frames, 1.0, 2.0, frames),  # see sample_indices
}  # config.SAMPLINGS, in that order


def sample_indices(
    num_frames: int,
    fps: float,
    frames: int,
    sample_fps: float | None = None,
    max_frames: int = 256,
    starts: Sequence[float] | np.ndarray | None = None,
    duration: float | None = None,
    sampling: str = "centers",
) -> list[int]:
    """Frame indices to decode, ascending; without repeats except where ``sampling`` repeats frames.

    Uniform (``sample_fps`` None): T = ``frames`` picks by the ``sampling`` policy (``SAMPLERS``):
    ``centers`` (:func:`centers_indices`, segment centres, every frame of a short video, no repeats);
    ``sf_llava`` (:func:`sf_llava_indices`, SlowFast-LLaVA's, min(n, T) picks, repeats on short videos);
    ``linspace`` (:func:`linspace_indices`, LLaVA-NeXT's, always T picks, repeats on short videos). All count
    frames, not seconds, so on variable-frame-rate video the picks are even in frames.

    By rate (only with ``sampling="centers"``; the other policies reproduce models that take a fixed T): target
    times ``k / sample_fps`` seconds for k = 0, 1, ..., each mapped to the frame whose start is
    nearest (a tie goes to the later frame, as round half up does), so the picks follow the clock on
    variable-frame-rate video too. A target nearer to the end of the video (``duration``) than to the last
    frame's start is dropped, and a frame nearest to several targets (``sample_fps`` above the local frame rate)
    is used once. Without ``starts`` (constant frame rate, frame i starting at ``i / fps``) that is index
    ``floor(k * fps / sample_fps + 0.5)`` while below ``num_frames``, computed so in frame units. With
    ``starts`` (decord's float32 timestamps) times within :func:`_time_tol` (about 1 microsecond) of each
    other count as equal, so the exact ties of e.g. 25 fps sampled at 2 fps still go to the later frame; for
    ``starts = i / fps`` the two agree except where a target lies within that tolerance of the midpoint
    between two frames. More than ``max_frames`` picks are thinned to ``max_frames`` by segment centres over
    that list, so a long video keeps an even spread.

    Args:
        num_frames: usable frames in the video (0 gives an empty list).
        fps: the video's average frame rate; needed only when ``sample_fps`` is set.
        frames: T for uniform sampling.
        sample_fps: sampling rate in frames per second, or None for uniform sampling.
        max_frames: cap on the count when sampling by rate.
        starts: (num_frames,) presentation start of each frame in seconds, ascending; None for ``index / fps``.
            Used only when sampling by rate.
        duration: seconds from 0 to the end of the last frame; None for ``starts[-1] + 1 / fps``.
        sampling: one of ``SAMPLERS`` (config.SAMPLINGS).

    Raises:
        ValueError: bad counts, an unknown ``sampling``, or ``sample_fps`` with a sampling other than centers.

    Example:
        >>> sample_indices(100, 25.0, 4)
        [12, 37, 62, 87]
        >>> sample_indices(100, 25.0, 4, sampling="sf_llava")
        [12, 37, 62, 86]
        >>> sample_indices(100, 25.0, 4, sample_fps=2.0)
        [0, 13, 25, 38, 50, 63, 75, 88]
        >>> vfr = [i / 25 for i in range(25)] + [1 + i / 5 for i in range(10)]  # 1 s at 25 fps, 2 s at 5 fps
        >>> sample_indices(35, 35 / 3, 4, sample_fps=1.0, starts=vfr, duration=3.0)
        [0, 25, 30]
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if sampling not in SAMPLERS:
        raise ValueError(f"unknown sampling {sampling!r}; valid: {', '.join(SAMPLERS)}")
    if sampling == "llava_next":  # its own rate rule (llava_next_indices): sample_fps 1 unless set
        return llava_next_indices(num_frames, fps, frames, 1.0 if sample_fps is None else sample_fps)
    if sampling == "qwen":  # smart_nframes: sample_fps 2 unless set, at most max_frames
        return qwen_indices(num_frames, fps, QWEN_FPS if sample_fps is None else sample_fps, max_frames)
    if sample_fps is None:
        return SAMPLERS[sampling](num_frames, frames)
    if sampling != "centers":
        raise ValueError(f"sampling by rate (sample_fps) works only with sampling centers, not {sampling!r}")
    if sample_fps <= 0 or not fps > 0:
        raise ValueError(f"sampling by rate needs positive fps and sample_fps, got fps={fps}, sample_fps={sample_fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if starts is None:  # constant frame rate: the same rule in frame units, where exact ties stay exact
        step = max(fps / sample_fps, 1.0)
        picked, k = [], 0
        while (index := math.floor(k * step + 0.5)) < num_frames:
            picked.append(index)
            k += 1
        return _thin(picked, max_frames)
    starts = np.asarray(starts, dtype=np.float64)
    if starts.shape != (num_frames,):
        raise ValueError(f"starts must have shape ({num_frames},), got {starts.shape}")
    if not num_frames:
        return []
    end = float(starts[-1] + 1.0 / fps if duration is None else duration)
    bounds = (starts + np.append(starts[1:], end)) / 2  # (N,) s: frame i is the nearest in [bounds[i-1], bounds[i])
    reached = np.ceil((bounds - _time_tol(bounds)) * sample_fps).clip(min=0)  # (N,) targets before each bound
    picked = np.flatnonzero(np.diff(reached, prepend=0) > 0).tolist()  # frames whose span holds a target
    return _thin(picked, max_frames)


def _thin(picked: list[int], max_frames: int) -> list[int]:
    """At most ``max_frames`` of ``picked``: the segment centres over the list when it is longer."""
    if len(picked) > max_frames:
        picked = [picked[p] for p in _centres(len(picked), max_frames)]
    return picked


def requested_frames(info: VideoInfo, cfg: VideoCfg) -> int:
    """How many frames ``cfg`` asks for from this video: T, or one per ``1 / sample_fps`` s of it, capped.

    T for every ``cfg.sampling`` policy (``sf_llava`` then takes min(n, T) and ``linspace`` T with repeats); by
    rate only with ``centers`` (``config.validate`` refuses the others).
    """
    if cfg.sampling == "llava_next":
        return len(llava_next_indices(info.num_frames, info.fps, cfg.frames, cfg.sample_fps or 1.0))
    if cfg.sampling == "qwen":
        return len(qwen_indices(info.num_frames, info.fps, cfg.sample_fps or QWEN_FPS, cfg.max_frames))
    if cfg.sample_fps is None:
        return cfg.frames
    if cfg.sampling != "centers":
        raise ValueError(f"sampling by rate (sample_fps) works only with sampling centers, not {cfg.sampling!r}")
    targets = math.ceil(info.duration * cfg.sample_fps - _time_tol(info.duration) * cfg.sample_fps)
    return min(cfg.max_frames, max(targets, 1))
