"""What is wrong with a video file before and while decord opens it, in one line, and names decord can open.

Checks visible without decoding (missing, a folder, unreadable, empty, an MPEG transport stream), decord's
errors turned into user-facing problems, and the temporary link through which a name that is not valid UTF-8 is
opened. Nothing here imports decord; see ``docs/decord.md`` (Bad files, File names).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SlowfastError
from ..reading import path_problem

AVERROR_DECODER_NOT_FOUND = -1128613112  # FFERRTAG(0xF8, 'D', 'E', 'C'), in decord's "cannot find video stream"
AVERRORS = {-1094995529: "invalid data"}  # AVERROR_INVALIDDATA, what damaged packets give; others show as numbers


def decord_reason(exc: BaseException) -> str:
    """decord's message without its (repeated) timestamp/source prefixes and stack trace, at most 200 characters.

    Its decoder thread's failure, ``Check failed: avcodec_send_packet(...) >= 0 (-1094995529 vs. 0) Thread
    worker: Error sending packet.``, becomes ``FFmpeg rejected a packet: invalid data``, and decord2's
    ``Check failed: av_buffersrc_add_frame_flags(...) >= 0 (-12 vs. 0) Error while feeding the filter graph``
    ``FFmpeg's filter graph refused a decoded frame: error -12``.
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
    refused = re.match(r"Check failed: av_buffersrc_add_frame_flags\(.*\) >= 0 \((-?\d+) vs\. 0\)", text)
    if refused:  # decord2, on a frame decoded from a packet cut short (docs/decord.md: Truncated or damaged data)
        code = int(refused[1])
        text = f"FFmpeg's filter graph refused a decoded frame: {AVERRORS.get(code, f'error {code}')}"
    return text[:200]


def problem(exc: BaseException) -> str:
    """A user-facing description of why decord could not open a file."""
    text = str(exc)
    if "cannot find video stream" in text:
        if str(AVERROR_DECODER_NOT_FOUND) in text:
            return "unsupported video codec (decord's FFmpeg has no decoder for it)"
        return "no video stream"
    if "av_read_frame failed" in text:
        return f"truncated or damaged video data (demuxing failed: {decord_reason(exc)})"
    if text.startswith("Error reading"):
        return "not a readable video (unknown format, or a damaged or truncated container)"
    if "Invalid frame count" in text:
        return "no video frames"
    if "Cannot create buffer source" in text:
        return "truncated or damaged video data (no decodable frame to set up the decoder)"
    return f"not a readable video ({decord_reason(exc)})"


def check_file(path: str | os.PathLike) -> None:
    """Raise for problems visible without decoding: missing, a directory, unreadable, empty, MPEG-TS."""
    p = Path(path)
    if not p.exists():
        raise SlowfastError(f"{path}: does not exist")
    if p.is_dir():
        raise SlowfastError(f"{path}: is a directory, not a video file")
    if not p.is_file():  # a FIFO would block the reader, a device has no end: neither is a video file
        raise SlowfastError(f"{path}: {path_problem(p, 'video file')}")
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
def decord_name(path: str | os.PathLike) -> Iterator[str]:
    """A name under which decord can open ``path``: the path itself, or a temporary link when it is not UTF-8.

    decord (0.6, decord2) hands the name to FFmpeg as ``name.encode("utf-8")`` (its ctypes layer refuses bytes), which
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


@contextlib.contextmanager
def stderr_quiet() -> Iterator[None]:
    """File descriptor 2 on /dev/null inside the block, for C++ code that writes there directly, not through
    ``sys.stderr``: decord prints "ERROR opening: ..." for a file FFmpeg cannot open, before slowfast's own one line
    says the same (decode workers keep it closed), and Ray's logger announces its level (the Ray engine)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def without_cuda_preload() -> Iterator[None]:
    """Inside the block, ``importlib.util.find_spec("nvidia")`` finds nothing: for ``import decord``.

    decord2 3.4.0's ``_ffi.base`` loads, before its own library, every ``nvidia/*/lib/*.so*`` that pip installed
    (with RTLD_GLOBAL, for its CUDA wheels); beside torch's CUDA build that is cuBLAS, cuDNN, NCCL and the rest:
    685 MiB resident and 0.35 s more CPU for each process that imports decord, where slowfast decodes on the CPU
    only and the CPU wheel needs none of them (36 MiB, 0.1 s; docs/decord.md). ``sys.modules["nvidia"] = None``
    makes ``find_spec`` answer None; whatever was there before is put back.
    """
    saved = sys.modules.get("nvidia", ...)
    sys.modules["nvidia"] = None
    try:
        yield
    finally:
        if saved is ...:
            sys.modules.pop("nvidia", None)
        else:
            sys.modules["nvidia"] = saved
