"""Frame times, rate and duration from decord's pts table (``decode`` asks; see docs/decord.md, "Timestamps")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def frame_times(vr: Any) -> np.ndarray:
    """(N, 2) start and end of every frame in seconds, float64 (never a slice: decord decodes for slices)."""
    return vr.get_frame_timestamp(np.arange(len(vr))).astype(np.float64)


def times_ok(times: np.ndarray) -> bool:
    """decord's pts table is usable: finite, starting at 0 and strictly increasing.

    It is not for streams without pts (AVI and MPEG program streams with B-frames give -9e17 for every frame).
    """
    start = times[:, 0]
    return bool(np.isfinite(times).all() and abs(start[0]) < 1.0 and (np.diff(start) > 0).all())


def fps(vr: Any, times: np.ndarray | None) -> float:
    """The stream's average frame rate; else one from valid ``times``; else 1 (timestamps are then frame numbers)."""
    rate = float(vr.get_avg_fps())
    if math.isfinite(rate) and rate > 0:
        return rate
    if times is not None and len(times) > 1 and times[-1, 0] > times[0, 0]:
        return (len(times) - 1) / (times[-1, 0] - times[0, 0])
    return 1.0


def duration(times: np.ndarray, num_frames: int, fps: float) -> float:
    """Seconds to the end of frame ``num_frames - 1`` (its start plus 1/fps when the container gives no end)."""
    start, stop = times[num_frames - 1]
    return round(float(stop if stop > start else start + 1.0 / fps), 6)
