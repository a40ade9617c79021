"""What a decoded video is: its probe (``VideoInfo``) and the sampled frames with their provenance (``Clip``).

Plain dataclasses, no decord: decode workers send ``Clip`` objects between processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    identity: dict | None = None  # decoded from a downloaded copy of a URL (remote.py): bytes, mtime_ns, fingerprint


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    indices: list[int]  # frame indices into the video, ascending; repeated where the sampling policy repeats
    timestamps: list[float]  # seconds, presentation time of each sampled frame
    info: VideoInfo
    short: bool  # True when the video had fewer frames than requested (by rate: and every frame was used)
