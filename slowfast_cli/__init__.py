"""slowfast: videos to short SlowFast token sequences for video LLMs.

Importing the package is cheap (no torch); ``encode_video`` and ``load_tokens`` import what they need on use.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = ["__version__", "encode_video", "load_tokens", "resolve_config"]


def __getattr__(name: str) -> Any:
    if name == "encode_video":
        from .pipeline import encode_video

        return encode_video
    if name == "load_tokens":
        from .tokenfile import load_tokens

        return load_tokens
    if name == "resolve_config":
        from .config import resolve_config

        return resolve_config
    raise AttributeError(name)
