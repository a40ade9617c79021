"""Which videos a batch encodes: a recursive walk of IN_DIR, or ``--files-from``, and where each one's output goes."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..reading import lines_bounded
from ..remote import is_url, local_path

MAX_LINE = 16384  # bytes in one line of a --files-from list: four times Linux's PATH_MAX
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")


@dataclass
class Listing:
    videos: list[Path]  # relative to the root, sorted
    problems: list[str]  # unreadable folders, symlink loops: reported, never fatal
    keys: dict[Path, str] = field(default_factory=dict)  # sample keys given by a CSV/JSONL list
    columns: dict[Path, dict] = field(default_factory=dict)  # its other columns, per video (every row of a table)


def matches(rel: Path, pattern: str) -> bool:
    """``pattern`` (a glob) matches the relative path or the file name, in any case, like the extensions do."""
    pattern = pattern.lower()
    return fnmatch.fnmatchcase(str(rel).lower(), pattern) or fnmatch.fnmatchcase(rel.name.lower(), pattern)


def find_videos(root: Path, pattern: str | None = None) -> Listing:
    """Videos under ``root`` (recursive, following symlinks once per real folder), filtered by ``pattern``.

    ``pattern`` is a glob matched against the path relative to ``root`` and against the file name
    (``*.mp4``, ``clips/**``, ``cam1_*``), in any case (``*.mov`` matches ``s2.MOV``), as the extensions are.
    A URL (``remote.RemotePath``) is listed by its store, every object under it in one go; a key with an empty, ``.``
    or ``..`` part names no place under OUT_DIR and is a listing problem (``remote.list_files``).
    """
    if not isinstance(root, (str, os.PathLike)):
        from ..remote import list_files

        unplaced: list[str] = []
        found = [Path(rel) for rel in list_files(root, unplaced) if rel.lower().endswith(VIDEO_EXTENSIONS)]
        found = [v for v in found if not pattern or matches(v, pattern)]
        why = "a key with an empty, '.' or '..' part names no place under a folder; skipped (copy it to a plain key)"
        problems = [f"{root}/{rel}: {why}" for rel in unplaced if rel.lower().endswith(VIDEO_EXTENSIONS)]
        return Listing(sorted(found, key=lambda p: p.parts), problems)
    root = Path(root)
    videos, problems, seen = [], [], set()

    def onerror(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot be listed ({exc.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            problems.append(f"{dirpath}: already visited (symlink loop), skipped")
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            if not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            rel = Path(dirpath, name).relative_to(root)
            if pattern and not matches(rel, pattern):
                continue
            videos.append(rel)
    return Listing(sorted(videos, key=lambda p: p.parts), problems)  # as Path order, compared in C


def read_files_from(path: Path, root: Path) -> Listing:
    """``--files-from``: the inputs listed in a file, one path per line, relative to ``root`` (absolute paths
    inside ``root`` are accepted too), instead of walking the folder, which is how a list of millions is given.

    Lines are taken as bytes, so any file name the file system allows works (non-UTF-8 ones included); only the
    line end (``\n`` or ``\r\n``) is cut, not spaces. Empty lines and lines starting with ``#`` are skipped,
    a path listed twice counts once, and the list's order does not matter (outputs are planned sorted). A listed
    file that does not exist is that video's ``missing`` failure, as any unreadable video is; its extension is
    not checked (a listed file is meant). A path outside ``root`` is a usage error naming its line.
    (A list whose name ends in ``.csv`` or ``.jsonl`` is a table: ``batch.table``.)
    """
    path = Path(path)
    root_abs = absolute_root(root)
    videos: set[Path] = set()
    try:
        for n, raw in lines_bounded(path, MAX_LINE):
            _add_listed(videos, path, n, raw, root, root_abs)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read --files-from ({exc.strerror or exc})") from None
    except ValueError as exc:  # a device, a folder, or a line no file name is as long as (/dev/zero, a binary)
        raise ConfigError(f"{path}: cannot read --files-from: it {exc}") from None
    return Listing(sorted(videos, key=lambda p: p.parts), [])


def _add_listed(videos: set[Path], path: Path, n: int, raw: bytes, root: Path, root_abs: Path) -> None:
    """Add line ``n`` of a ``--files-from`` list to ``videos`` (see :func:`read_files_from`)."""
    raw = raw[:-1] if raw.endswith(b"\r") else raw
    if not raw or raw.startswith(b"#"):
        return
    if b"\0" in raw:
        raise ConfigError(f"{path}:{n}: holds NUL bytes, which no file name has; list one path per line (not -print0)")
    videos.add(listed_path(path, n, os.fsdecode(raw), root, root_abs))


def absolute_root(root) -> Path:
    """``root`` made absolute for :func:`listed_path` (a URL, ``remote.RemotePath``, is absolute already)."""
    return Path(os.path.abspath(root)) if isinstance(root, (str, os.PathLike)) else root


def listed_path(path: Path, n: int | str, name: str, root: Path, root_abs: Path) -> Path:
    """A listed video's path relative to ``root``; outside ``root`` is a usage error naming line ``n``. Under a URL
    root a line may also be the video's full URL (``s3://bucket/in/a.mp4``); under a local root a URL is a usage error
    (``Path`` would fold it into a name under IN_DIR that does not exist), and ``file:///x`` is the path ``/x``."""
    if isinstance(root_abs, Path) and is_url(name):
        raise ConfigError(f"{path}:{n}: {name!r} is a URL, and IN_DIR {root} a local folder; list paths relative to "
                          "IN_DIR, or give IN_DIR as the URL of the folder that holds them")  # fmt: skip
    if isinstance(root_abs, Path):
        name = local_path(name)
    if not isinstance(root_abs, Path):  # IN_DIR is a URL
        inside = name.startswith(f"{root_abs}/")
        if inside or "://" in name or name.startswith("/"):
            if not inside:
                raise ConfigError(f"{path}:{n}: {name!r} is not inside {root}; list paths relative to IN_DIR")
            name = name[len(str(root_abs)) + 1 :]
    p = Path(name)
    if p.is_absolute():
        absolute = Path(os.path.abspath(p))
        if not absolute.is_relative_to(root_abs):
            raise ConfigError(f"{path}:{n}: {name!r} is not inside {root}; list paths relative to IN_DIR")
        p = absolute.relative_to(root_abs)
    if ".." in p.parts or not p.parts or p == Path("."):
        raise ConfigError(f"{path}:{n}: {name!r} is not a file inside {root}; list paths relative to IN_DIR")
    return p
