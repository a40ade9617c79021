"""The Python API: a ``VideoEncoder`` that holds the loaded model, and ``encode_video`` for one call.

    >>> enc = VideoEncoder.from_preset("tiny", frames=8)  # doctest: +SKIP
    >>> result = enc.encode("clip.mp4")  # doctest: +SKIP
    >>> result.tokens.shape, result.meta["output_tokens"]  # doctest: +SKIP
    (torch.Size([1, 256, 64]), 256)

Settings are the command line's: a preset (name, TOML file or ``Config``) and overrides named as the flags are
(``frames=8``, ``slow_pool="2x2_max"``, ``fast_size="2x2"``, ``dtype="fp32"``; ``config.FLAG_KEYS`` lists them),
checked the same way (an unknown name or a bad value raises ``ConfigError`` listing the valid ones), and
``preflight`` checks the whole config before the model loads.

What ``encode`` takes:
- a video path (``str`` or ``Path``): sampled and decoded exactly as ``slowfast encode`` does (same tokens);
- frames already decoded, uint8 RGB, numpy or torch, (T, H, W, 3) or (T, 3, H, W): every one of the T frames is
  encoded (no sampling: the caller chose them), at full size through the model's own preprocessing (never the
  decoder's fast scaling); ``fps`` gives them timestamps, ``source`` a name for ``meta["source"]``;
- a list of those: a list of results, in order, with the model loaded once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FLAG_KEYS, Config, config_from_dict, resolve_config
from .errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .pipeline import EncodeResult, Pipeline

PATH_SETTINGS = ("projector_weights", "pretrained")  # settings that take a path: a Path is given as its str


def make_config(config: Config | str | Path | None = None, **overrides: Any) -> Config:
    """A config from a preset (name or TOML file; default ``default``) or a ``Config``, with flag-named overrides.

    Example:
        >>> make_config("tiny", frames=8, fast_size="2x2").aggregator.fast_size
        (2, 2)
    """
    unknown = sorted(set(overrides) - set(FLAG_KEYS))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; valid: {', '.join(FLAG_KEYS)}")
    overrides = {k: str(v) if k in PATH_SETTINGS and isinstance(v, Path) else v for k, v in overrides.items()}
    if isinstance(config, Config):
        base = config_from_dict(config.to_dict())  # a copy, checked: the caller's object is never changed
        if not overrides:
            return base
        return _override(base, overrides)
    return resolve_config(str(config) if config is not None else "default", overrides)


def _override(cfg: Config, overrides: dict[str, Any]) -> Config:
    """``overrides`` applied to a Config as ``resolve_config`` applies them to a preset."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        if value is not None:
            section, name = FLAG_KEYS[key]
            d[section][name] = value
    try:
        return config_from_dict(d)
    except ConfigError as exc:
        raise ConfigError(f"overrides ({', '.join(overrides)}): {exc}") from None


class VideoEncoder:
    """A built pipeline (tower, projector, aggregator) for one config; encode many videos with one model load.

    Build it with :meth:`from_preset` (or ``VideoEncoder(config)``). ``config``, ``device``, ``dtype``, ``grid``
    (the patch grid) and ``dim`` (the token width D) describe what it computes.
    """

    def __init__(self, config: Config):
        from .pipeline import Pipeline
        from .preflight import preflight

        preflight(config)  # settings that cannot work fail here, before the model loads
        self.config = config
        self.pipeline: Pipeline = Pipeline(config)

    @classmethod
    def from_preset(cls, preset: Config | str | Path = "default", **overrides: Any) -> VideoEncoder:
        """Load the model for a preset (name, TOML file or ``Config``) with flag-named overrides (``frames=8``)."""
        return cls(make_config(preset, **overrides))

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.dtype

    @property
    def grid(self) -> tuple[int, int] | None:
        """(Gh, Gw) of every frame; None for a ``hf:`` model, whose grid varies per video (each result's meta)."""
        return self.pipeline.encoder.grid

    @property
    def dim(self) -> int:
        """The width D of the output tokens (the projector's output)."""
        return int(self.pipeline.projector_info.get("out_dim") or self.pipeline.encoder.width)

    @property
    def warnings(self) -> list[str]:
        """What the user should know about every result (random weights: the tokens carry no meaning)."""
        return list(self.pipeline.warnings)

    def encode(
        self,
        videos: str | Path | np.ndarray | torch.Tensor | Sequence[Any],
        *,
        fps: float | None = None,
        source: str | None = None,
        keep_features: bool = False,
    ) -> EncodeResult | list[EncodeResult]:
        """Encode a video path, decoded frames, or a list of them (see the module docstring).

        Args:
            videos: a path, uint8 frames (T, H, W, 3) or (T, 3, H, W), or a list of paths and frames.
            fps: for frames: their rate, which gives ``meta["timestamps"]`` (seconds); without it there are none.
            source: for frames: the name recorded as ``meta["source"]`` (default ``<frames>``).
            keep_features: also return the pre-aggregation features (T, N, D) as ``result.features``.

        Returns:
            An ``EncodeResult`` (``tokens`` (1, L, D) on the CPU, ``meta`` as a token file holds it,
            ``features``, ``warnings``), or a list of them for a list.

        Raises:
            SlowfastError: a video that cannot be decoded (one line naming it); ConfigError: frames of the wrong
                dtype or shape.
        """
        if isinstance(videos, (list, tuple)):
            return [self.encode(v, fps=fps, source=source, keep_features=keep_features) for v in videos]
        if isinstance(videos, (str, Path)):
            return self.pipeline.encode(videos, keep_features)
        if fps is None and self.grid is None:  # hf: Qwen-VL: meta["positions"] (M-RoPE) counts seconds
            raise ConfigError(f"{self.pipeline.config.encoder.model}: pass fps= with frames (positions count seconds)")
        clip = frames_clip(videos, fps)
        return _encode_frames(self.pipeline, clip, source or "<frames>", fps is not None, keep_features)


def frames_clip(frames: Any, fps: float | None = None):
    """Decoded frames as a ``video.info.Clip`` of every frame: (T, H, W, 3) or (T, 3, H, W) uint8, numpy or torch.

    Raises:
        ConfigError: not uint8, not 4-D with 3 channels first or last, no frames, or a bad ``fps``.
    """
    import numpy as np
    import torch

    from .video.info import Clip, VideoInfo

    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
    if not isinstance(frames, torch.Tensor):
        raise ConfigError(f"expected a video path, frames (a uint8 array or tensor) or a list; got a {type(frames)}")
    if frames.dtype != torch.uint8:
        raise ConfigError(f"frames must be uint8 RGB (0..255), got {frames.dtype}; convert with (x * 255).byte()")
    if frames.ndim != 4 or 3 not in (frames.shape[1], frames.shape[-1]):
        raise ConfigError(f"frames must have shape (T, H, W, 3) or (T, 3, H, W), got {tuple(frames.shape)}")
    if frames.shape[-1] != 3:  # (T, 3, H, W) -> (T, H, W, 3)
        frames = frames.permute(0, 2, 3, 1)
    t, h, w, _ = frames.shape
    if t == 0:
        raise ConfigError("frames: got none (T = 0)")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    # path "": no file to stat or fingerprint (os.stat("") fails), never a file of the current folder
    info = VideoInfo(path="", num_frames=t, fps=float(fps or 0), duration=t / fps if fps else 0.0, width=w, height=h)
    times = [i / fps for i in range(t)] if fps else []
    return Clip(frames=frames.contiguous(), indices=list(range(t)), timestamps=times, info=info, short=False)


def _encode_frames(pipeline: Pipeline, clip, source: str, timed: bool, keep_features: bool) -> EncodeResult:
    """``Pipeline.encode_clip`` on frames given in memory, its meta made true of them: no file (no bytes,
    fingerprint or stream; no provenance, which describes a video file for resume), no timestamps without an fps."""
    result = pipeline.encode_clip(clip, keep_features)
    meta = result.meta
    meta["source"] = source
    meta["video"] = {k: meta["video"][k] for k in ("num_frames", "fps", "duration", "width", "height")}
    if not timed:
        del meta["timestamps"]
        meta["video"]["fps"] = meta["video"]["duration"] = None
    meta.pop("provenance", None)
    return result


def encode_video(
    video: str | Path, config: Config | str | Path | None = None, keep_features: bool = False, **overrides: Any
) -> EncodeResult:
    """Encode one video in one call (loads the model each time: use ``VideoEncoder`` for many).

    Args:
        video: the video file.
        config: a preset name, a TOML path or a ``Config`` (default: the ``default`` preset).
        keep_features: also return the pre-aggregation features (T, N, D).
        **overrides: settings named as the command-line flags, e.g. ``frames=8``, ``dtype="fp32"``.

    Example:
        >>> result = encode_video("clip.mp4", "tiny", frames=8)  # doctest: +SKIP
        >>> result.tokens.shape  # (1, L, D)  # doctest: +SKIP
    """
    return VideoEncoder.from_preset(config or "default", **overrides).encode(video, keep_features=keep_features)
