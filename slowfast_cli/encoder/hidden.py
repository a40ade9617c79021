"""Importing a library with one of its optional dependencies hidden: ``without``.

open_clip imports transformers at its own import (``open_clip.hf_model``) for its Hugging Face *text* towers only,
and takes its absence (``transformers = None``); slowfast builds vision towers only, so ``towers`` imports open_clip
``without("transformers")``, which shortens the start of ``encode`` and ``batch`` (BENCHMARKS.md §17). A library
already imported is never hidden, and nothing is hidden once the ``with`` block ends: an ``import transformers``
afterwards (slowfast's Hugging Face checks, a user's code) gets the real one.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
from collections.abc import Iterator


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``import NAME`` and its submodules raise ModuleNotFoundError while it is on ``sys.meta_path``."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"{self.name} is hidden while open_clip is imported", name=fullname)
        return None


@contextlib.contextmanager
def without(name: str) -> Iterator[None]:
    """Inside the block, ``import name`` fails as if it were not installed, unless it is already imported."""
    if name in sys.modules:
        yield
        return
    finder = _Hidden(name)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
