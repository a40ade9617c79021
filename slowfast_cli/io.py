"""Token and feature files on disk, written atomically (temporary file in the same folder, then rename).

token file:    {"tokens": Tensor(1, L, D), "meta": {...plain values...}}
features file: {"features": Tensor(T, N, D), "meta": {"grid": [Gh, Gw], ...}}
Both load with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .errors import SlowfastError, first_line
from .header import TMP_PREFIX, require_file


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``, else delete it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_plain(value: Any, where: str = "meta") -> None:
    """Meta may hold only str, int, float, bool, None, lists and dicts of those (weights_only-loadable)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where} holds a {type(value).__name__}; only plain values are allowed")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _save(path: str | Path, key: str, tensor: torch.Tensor, meta: dict) -> Path:
    path = Path(path)
    meta = _plain(meta)
    _check_plain(meta)
    try:
        with atomic_open(path) as f:
            torch.save({key: tensor.detach().contiguous().cpu(), "meta": meta}, f)
    except OSError as exc:
        raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def save_tokens(path: str | Path, tokens: torch.Tensor, meta: dict) -> Path:
    """Write a token file atomically. ``tokens`` must be (1, L, D)."""
    if tokens.ndim != 3 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must be (1, L, D), got {tuple(tokens.shape)}")
    return _save(path, "tokens", tokens, meta)


def save_features(path: str | Path, features: torch.Tensor, meta: dict) -> Path:
    """Write a features file atomically. ``features`` must be (T, N, D) and ``meta`` must hold ``grid``."""
    if features.ndim != 3:
        raise ValueError(f"features must be (T, N, D), got {tuple(features.shape)}")
    if "grid" not in meta:
        raise ValueError("features meta must hold the grid")
    return _save(path, "features", features, meta)


def _load(path: str | Path, key: str, what: str) -> dict:
    path = require_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not our file"
        raise SlowfastError(f"{path}: not a {what} (cannot be loaded: {first_line(exc)})") from None
    if not isinstance(obj, dict) or key not in obj:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise SlowfastError(f"{path}: not a {what} (expected a dict with {key!r}, found {keys})")
    if not isinstance(obj[key], torch.Tensor):
        raise SlowfastError(f"{path}: {key!r} is not a tensor")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise SlowfastError(f"{path}: 'meta' is not a dict")
    return {key: obj[key], "meta": meta}


def load_tokens(path: str | Path) -> dict:
    """Load a token file: ``{"tokens": (1, L, D), "meta": {...}}``, with ``weights_only=True``."""
    obj = _load(path, "tokens", "token file")
    if obj["tokens"].ndim != 3 or obj["tokens"].shape[0] != 1:
        raise SlowfastError(f"{path}: tokens must have shape (1, L, D), got {tuple(obj['tokens'].shape)}")
    return obj


def load_features(path: str | Path) -> dict:
    """Load a features file: ``{"features": (T, N, D), "meta": {"grid": [Gh, Gw], ...}}``."""
    obj = _load(path, "features", "features file")
    x, meta = obj["features"], obj["meta"]
    if x.ndim != 3:
        raise SlowfastError(f"{path}: features must have shape (T, N, D), got rank {x.ndim} {tuple(x.shape)}")
    if not x.is_floating_point():
        raise SlowfastError(f"{path}: features must be floating point, got {x.dtype}")
    grid = meta.get("grid")
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        raise SlowfastError(f"{path}: meta['grid'] must be [Gh, Gw] with positive integers, got {grid!r}")
    if grid[0] * grid[1] != x.shape[1]:
        raise SlowfastError(
            f"{path}: grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} tokens but the features have N={x.shape[1]}"
        )
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    return path
