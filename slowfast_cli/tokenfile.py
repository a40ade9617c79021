"""Token and features files: the objects, their checks, and saving and loading them.

token file:    {"tokens": Tensor(1, L, D), "meta": {...plain values...}}
features file: {"features": Tensor(T, N, D), "meta": {"grid": [Gh, Gw], ...}}
Both load with ``torch.load(path, weights_only=True)``. Writes go through ``atomic`` (all files or none).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import torch

from .atomic import sigint_deferred, temp_file
from .config import config_from_dict
from .errors import SlowfastError, load_failure
from .header import check_meta_size, check_pickle_size, require_file
from .tensors import check_tensors


def _underlying(exc: BaseException) -> BaseException | None:
    """The OSError or KeyboardInterrupt that torch.save turned into a RuntimeError ("unexpected pos ..."), if any.

    torch's zip writer calls our file's ``write``; what that raises reaches us only as the RuntimeError's context.
    """
    seen = exc
    for _ in range(8):
        seen = seen.__cause__ or seen.__context__
        if seen is None:
            return None
        if isinstance(seen, (OSError, KeyboardInterrupt)):
            return seen
    return None


def _write_temp(path: Path, obj: dict) -> str:
    """torch.save ``obj`` into a temporary file beside ``path``, fsynced; returns its name (removed on failure)."""
    with temp_file(path) as (f, tmp):
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            cause = _underlying(exc)
            if cause is None:
                raise
            raise cause from None
    return tmp


def save_all(files: list[tuple[str | Path, dict]]) -> None:
    """Write several ``torch.save`` files so that either all of them appear or none does.

    Each goes to a temporary file in its own folder (fsynced); only when every one is written are they renamed
    into place, with Ctrl-C held over the renames. A failure while writing (a full disk, Ctrl-C) leaves no
    temporary file and no new output; an existing file at a target stays as it was. (A rename itself failing
    after an earlier one succeeded, which needs the folder to change under us, is not rolled back.) Errors from
    the disk become ``SlowfastError("PATH: cannot write (REASON)")``.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for path, obj in files:
            path = Path(path)
            try:
                temps.append((_write_temp(path, obj), path))
            except OSError as exc:
                raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None
        with sigint_deferred():  # the renames go together: Ctrl-C between two of them waits for the second
            for tmp, path in temps:
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise


def commit_together(pending: list[tuple[str, str | Path]], complete: bool = True) -> None:
    """Rename temporary files over their targets together, with Ctrl-C held (see :func:`save_all`); the temporary
    files are removed if any rename fails, or without renaming any when not ``complete`` (a later one failed to be
    written). Errors become ``SlowfastError("PATH: cannot write (REASON)")``."""
    try:
        with sigint_deferred() if complete else contextlib.nullcontext():
            if not complete:
                return
            for tmp, path in pending:
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def save_pending(path: str | Path, obj: dict) -> str:
    """``torch.save`` ``obj`` into a new temporary file beside ``path`` (fsynced) and return its name; renaming it
    over ``path`` is left to the caller (the Ray engine's driver, which records it at the same time). Errors from
    the disk become ``SlowfastError("PATH: cannot write (REASON)")``; nothing is left behind then."""
    path = Path(path)
    try:
        return _write_temp(path, obj)
    except OSError as exc:
        raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None


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


def token_object(tokens: torch.Tensor, meta: dict) -> dict:
    """What a token file holds, checked: ``tokens`` (1, L, D) and plain-value ``meta``."""
    if tokens.ndim != 3 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must be (1, L, D), got {tuple(tokens.shape)}")
    return _object("tokens", tokens, meta)


def features_object(features: torch.Tensor, meta: dict) -> dict:
    """What a features file holds, checked: ``features`` (T, N, D) and ``meta`` with the grid."""
    if features.ndim != 3:
        raise ValueError(f"features must be (T, N, D), got {tuple(features.shape)}")
    if "grid" not in meta:
        raise ValueError("features meta must hold the grid")
    return _object("features", features, meta)


def _object(key: str, tensor: torch.Tensor, meta: dict) -> dict:
    meta = _plain(meta)
    _check_plain(meta)
    return {key: tensor.detach().contiguous().cpu(), "meta": meta}


def save_tokens(path: str | Path, tokens: torch.Tensor, meta: dict) -> Path:
    """Write a token file (the ``.pt`` format: ``torch.save``) atomically. ``tokens`` must be (1, L, D).

    Raises:
        SlowfastError: ``path`` is named ``.safetensors``, which every safetensors reader would refuse; write that
            format with ``slowfast_cli.formats`` (``encode --format safetensors``).
    """
    if isinstance(tokens, torch.Tensor) and tokens.is_floating_point() and not torch.isfinite(tokens).all():
        raise SlowfastError(f"{path}: the tokens hold NaN or inf; an LLM cannot take them (nothing written)")
    if Path(path).suffix.lower() == ".safetensors":
        raise SlowfastError(
            f"{path}: save_tokens writes the .pt format (torch.save); name it .pt, or write safetensors with "
            "slowfast_cli.formats (encode --format safetensors)"
        )
    save_all([(path, token_object(tokens, meta))])
    return Path(path)


def save_features(path: str | Path, features: torch.Tensor, meta: dict) -> Path:
    """Write a features file atomically. ``features`` must be (T, N, D) and ``meta`` must hold ``grid``."""
    save_all([(path, features_object(features, meta))])
    return Path(path)


TOKEN_FILE = "a dict with 'tokens' (a (1, L, D) tensor) and 'meta' (plain values), as slowfast encode writes"
FEATURES_FILE = "a dict with 'features' (a (T, N, D) tensor) and 'meta' (plain values with the grid)"


def _load(path: str | Path, key: str, what: str, expected: str) -> dict:
    path = require_file(path)
    check_pickle_size(path, what)  # before torch.load reads it whole
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not our file"
        reason = load_failure(exc, expected)
        message = f"{path}: {reason}" if reason.startswith("not a") else f"{path}: not a {what} ({reason})"
        raise SlowfastError(message) from None
    if isinstance(obj, torch.Tensor):
        raise SlowfastError(f"{path}: not a {what} (a bare tensor; expected {expected})")
    if not isinstance(obj, dict) or key not in obj:
        keys = ", ".join(map(repr, obj)) if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise SlowfastError(f"{path}: not a {what} (found {keys or 'an empty dict'}; expected {expected})")
    if not isinstance(obj[key], torch.Tensor):
        raise SlowfastError(f"{path}: {key!r} is not a tensor (found a {type(obj[key]).__name__})")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise SlowfastError(f"{path}: 'meta' is not a dict (found a {type(meta).__name__})")
    check_meta_size(meta, path)
    try:
        _check_plain(meta)
    except TypeError as exc:
        raise SlowfastError(f"{path}: not a {what} ({exc})") from None
    return {key: obj[key], "meta": meta}


def load_tokens(path: str | Path) -> dict:
    """Load a token file: ``{"tokens": (1, L, D), "meta": {...}}``, with ``weights_only=True``.

    A ``.safetensors`` token file (``--format safetensors``) is read by its own reader, CRC checked: torch.load
    takes such a file too, but returns its tensors without the meta in its header."""
    if Path(path).suffix == ".safetensors":
        from .formats.safetensors_file import load  # pure Python; imports nothing of ours that imports this module

        obj = load(require_file(path))
    else:
        obj = _load(path, "tokens", "token file", TOKEN_FILE)
    if obj["tokens"].ndim != 3 or obj["tokens"].shape[0] != 1:
        raise SlowfastError(f"{path}: tokens must have shape (1, L, D), got {tuple(obj['tokens'].shape)}")
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_features_meta(path: str | Path, frames: int, tokens: int, meta: dict) -> None:
    """Validate a features file's ``meta`` against its (T, N, D) tensor; one ``SlowfastError`` naming the key.

    ``grid`` must be two positive integers whose product is N; ``frame_indices`` (video frame numbers) and
    ``timestamps`` (seconds), where present, one per frame; ``config``, where present, a slowfast config.
    """
    grid = meta.get("grid")
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(_is_int(g) and g > 0 for g in grid)):
        raise SlowfastError(f"{path}: meta['grid'] must be [Gh, Gw] with positive integers, got {grid!r}")
    if grid[0] * grid[1] != tokens:
        raise SlowfastError(
            f"{path}: grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} tokens but the features have N={tokens}"
        )
    if frames == 0:
        raise SlowfastError(f"{path}: the features hold no frames (T=0)")
    per, positions = 1, meta.get("positions")
    if isinstance(positions, dict) and _is_int(positions.get("temporal_patch")) and positions["temporal_patch"] > 0:
        per = positions["temporal_patch"]  # a hf: tower's features: T temporal patches of ``per`` sampled frames
    for key, ok, what in (("frame_indices", lambda v: _is_int(v) and v >= 0, "frame numbers >= 0"),
                          ("timestamps", _is_number, "finite numbers (seconds)")):  # fmt: skip
        if key not in meta:
            continue
        values = meta[key]
        if not isinstance(values, list) or -(-len(values) // per) != frames:
            shown = f"a list of {len(values)}" if isinstance(values, list) else f"a {type(values).__name__}"
            raise SlowfastError(f"{path}: meta[{key!r}] must be a list of {frames} {what} (one per frame), got {shown}")
        bad = next((i for i, v in enumerate(values) if not ok(v)), None)
        if bad is not None:
            raise SlowfastError(f"{path}: meta[{key!r}] must hold {what}, got {values[bad]!r} at position {bad}")
    if "config" in meta:
        try:
            config_from_dict(meta["config"])
        except SlowfastError as exc:
            raise SlowfastError(f"{path}: meta['config'] is not a slowfast config ({exc})") from None


def load_features(path: str | Path) -> dict:
    """Load a features file: ``{"features": (T, N, D), "meta": {"grid": [Gh, Gw], ...}}``, its meta validated."""
    obj = _load(path, "features", "features file", FEATURES_FILE)
    x, meta = obj["features"], obj["meta"]
    if x.ndim != 3:
        raise SlowfastError(f"{path}: features must have shape (T, N, D), got rank {x.ndim} {tuple(x.shape)}")
    check_features_meta(path, x.shape[0], x.shape[1], meta)
    check_tensors({"features": x}, str(path))
    return obj
