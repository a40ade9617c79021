"""slowfast: videos to short SlowFast token sequences for video LLMs.

Importing the package is cheap (no torch); the names below import what they need on first use:
``VideoEncoder`` (holds the model; ``api.py``), ``encode_video`` (one call), ``load_tokens`` and ``save_tokens``
(token files), ``splice_video`` (tokens into an LLM's ``inputs_embeds``; ``llm.py``) and ``resolve_config``.
"""

from __future__ import annotations

from typing import Any

from .version import __version__

__all__ = [
    "VideoEncoder",
    "__version__",
    "encode_video",
    "load_tokens",
    "resolve_config",
    "save_tokens",
    "splice_video",
]


def __getattr__(name: str) -> Any:
    if name in ("VideoEncoder", "encode_video"):
        from . import api

        return getattr(api, name)
    if name in ("load_tokens", "save_tokens"):
        from . import tokenfile

        return getattr(tokenfile, name)
    if name == "resolve_config":
        from .config import resolve_config

        return resolve_config
    if name == "splice_video":
        from .llm import splice_video

        return splice_video
    raise AttributeError(name)
