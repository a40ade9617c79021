"""Token and feature files on disk, written atomically (temporary file in the same folder, then rename).

token file:    {"tokens": Tensor(1, L, D), "meta": {...plain values...}}
features file: {"features": Tensor(T, N, D), "meta": {"grid": [Gh, Gw], ...}}
Both load with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from .errors import SlowfastError, load_failure
from .header import TMP_PREFIX, require_file


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s folder, with the mode a plain ``open(path, "w")`` would give it.

    ``mkstemp`` creates files 0600; token files are read by training jobs under other accounts, so the mode is
    set from the umask like any file the user writes (0644 under umask 022).
    """
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


@contextlib.contextmanager
def _temp_file(path: Path, mode: str = "wb") -> Iterator[tuple[IO, str]]:
    """``(file, name)`` of a new temporary file beside ``path``, flushed and fsynced when the block ends; deleted
    if the block fails."""
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``, else delete it."""
    path = Path(path)
    with _temp_file(path, mode) as (f, tmp):
        yield f
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass
class _Held:
    pending: bool = False  # a SIGINT arrived while held


_held: list[_Held] = []  # the active sigint_deferred blocks, outermost first


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # the CLI turns both into KeyboardInterrupt


@contextlib.contextmanager
def sigint_deferred(reraise: bool = True) -> Iterator[_Held]:
    """Hold Ctrl-C (SIGINT, and SIGTERM, which the CLI treats alike) until the block ends; then raise
    KeyboardInterrupt if one came (``reraise``), or leave that to the caller, who reads ``.pending`` of the
    yielded object.

    Used around "write a file, then record it": an interrupt then finds either nothing done or everything done,
    never a file without its manifest line. Nests (the outermost block decides); a no-op outside the main thread,
    which is where Python delivers signals anyway.
    """
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    outermost = not _held
    if outermost:

        def hold(signum, frame):
            for h in _held:
                h.pending = True

        previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    _held.append(held)
    try:
        yield held
    finally:
        _held.pop()
        if outermost:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if held.pending and reraise and outermost:
        raise KeyboardInterrupt


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
    with _temp_file(path) as (f, tmp):
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
    """Write a token file atomically. ``tokens`` must be (1, L, D)."""
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
    try:
        _check_plain(meta)
    except TypeError as exc:
        raise SlowfastError(f"{path}: not a {what} ({exc})") from None
    return {key: obj[key], "meta": meta}


def load_tokens(path: str | Path) -> dict:
    """Load a token file: ``{"tokens": (1, L, D), "meta": {...}}``, with ``weights_only=True``."""
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
    for key, ok, what in (("frame_indices", lambda v: _is_int(v) and v >= 0, "frame numbers >= 0"),
                          ("timestamps", _is_number, "finite numbers (seconds)")):  # fmt: skip
        if key not in meta:
            continue
        values = meta[key]
        if not isinstance(values, list) or len(values) != frames:
            shown = f"a list of {len(values)}" if isinstance(values, list) else f"a {type(values).__name__}"
            raise SlowfastError(f"{path}: meta[{key!r}] must be a list of {frames} {what} (one per frame), got {shown}")
        bad = next((i for i, v in enumerate(values) if not ok(v)), None)
        if bad is not None:
            raise SlowfastError(f"{path}: meta[{key!r}] must hold {what}, got {values[bad]!r} at position {bad}")
    if "config" in meta:
        from .config import config_from_dict

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
    if not x.is_floating_point():
        raise SlowfastError(f"{path}: features must be floating point, got {x.dtype}")
    check_features_meta(path, x.shape[0], x.shape[1], meta)
    if x.shape[2] == 0:
        raise SlowfastError(f"{path}: the features have no channels (D=0)")
    finite = torch.isfinite(x)
    if not finite.all():
        raise SlowfastError(f"{path}: the features hold {int((~finite).sum())} NaN or infinite values")
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """JSON that keeps non-ASCII text readable and file names that are not valid UTF-8 lossless.

    A name the file system gave as bytes that are not UTF-8 reaches Python as a str with lone surrogates
    (``os.fsdecode``); those, and only those, are written as ``\\udcXX`` escapes, which ``json.loads`` turns back into
    the same str, and ``os.fsencode`` into the original bytes. The output is always valid UTF-8.
    """
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically (see :func:`json_text`); a disk error is a ``SlowfastError`` naming the file."""
    path = Path(path)
    try:
        with atomic_open(path, "w") as f:
            f.write(json_text(obj, indent=2) + "\n")
    except OSError as exc:
        raise SlowfastError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path
