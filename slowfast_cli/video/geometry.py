"""Where decoded pixels land: display orientation (decord's rotation made ffmpeg's, mirrors included), the
decode-time size and the centre crop. numpy only; see ``docs/decord.md`` (Rotation, Mirroring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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


def _display_rotation(matrix: Sequence[int]) -> float:
    """FFmpeg's ``av_display_rotation_get``: the matrix's rotation in degrees (NaN for a degenerate one)."""
    a, b, c, d = (matrix[i] / 65536 for i in (0, 1, 3, 4))
    scale_a, scale_b = math.hypot(a, c), math.hypot(b, d)
    if scale_a == 0 or scale_b == 0:
        return math.nan
    return -(math.atan2(b / scale_b, a / scale_a) * 180 / math.pi)


def _decord_turns(matrix: Sequence[int], nearest: bool = True) -> int:
    """Quarter turns counter-clockwise (``np.rot90``'s k) that decord gives frames with this display matrix.

    decord turns by ``theta``, clockwise degrees: ``-av_display_rotation_get(matrix)``, and applies only 90
    (``transpose=1``, clockwise), 180 (two of those) and 270 (``transpose=2``). It never mirrors.

    - ``nearest`` (decord2 3.4.0, read from its ``VideoReader::GetRotation``): ``theta`` modulo 360 in [0, 360),
      then the nearest of 0, 90, 180 and 270, a tie going to the smaller; 360 is not among them, so a matrix a
      hair counter-clockwise of upright (theta 359.6) is turned by 270.
    - else decord 0.6.0: FFmpeg 4.1's mov demuxer writes theta (plus 360 when negative) as a "rotate" tag, printed
      with %g; decord truncates it to an int and turns only at exactly 90, 180 or 270.
    """
    rotation = _display_rotation(matrix)
    if math.isnan(rotation):
        return 0
    if nearest:
        theta = math.fmod(-rotation, 360)
        theta += 360 if theta < 0 else 0
        turn = min((0, 90, 180, 270), key=lambda t: abs(theta - t))  # min keeps the first of equals: the smaller
        return {90: 3, 180: 2, 270: 1}.get(turn, 0)
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


def mirror_fix(matrix: Sequence[int] | None, nearest: bool = True) -> tuple[bool, bool]:
    """(flip rows, flip columns) that turn decord's frames for this display matrix into ffmpeg's autorotated ones.

    decord only turns (:func:`_decord_turns`; ``nearest``: decord2's rule, else decord 0.6's); ffmpeg also
    mirrors (:func:`_autorotate`). Both turn by the same quarter turns up to a half turn, so what is left is a
    flip of the decoded frame, which holds at any size the decoder scales to. (False, False) without a matrix,
    for angles off the quarter turns, and where the two differ by a quarter turn (a matrix within a degree of
    upright that decord2 turns by 270, one within a degree of 90 that decord 0.6 truncates to 89).

    Example:
        ``ffmpeg -display_hflip``: decord turns the frames by 180 degrees, ffmpeg mirrors them left to right,
        so the rows are flipped back.

        >>> mirror_fix((-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30))
        (True, False)
    """
    probe = np.arange(6).reshape(2, 3)
    want = None if matrix is None else _autorotate(matrix, probe)
    if want is None:
        return False, False
    got = np.rot90(probe, _decord_turns(matrix, nearest))
    for rows, cols in ((False, False), (True, False), (False, True), (True, True)):
        if np.array_equal(got[:: -1 if rows else 1, :: -1 if cols else 1], want):
            return rows, cols
    return False, False


def mirror(frames: np.ndarray, fix: tuple[bool, bool]) -> np.ndarray:
    """``frames`` (T, H, W, C) with rows and/or columns reversed as :func:`mirror_fix` says; contiguous."""
    rows, cols = fix
    if not (rows or cols):
        return frames
    return np.ascontiguousarray(frames[:, :: -1 if rows else 1, :: -1 if cols else 1])
