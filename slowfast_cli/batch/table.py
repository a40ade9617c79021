"""``--files-from`` as a table: a CSV (with a header row) or JSONL file naming the videos and what goes with them.

Columns: ``path`` (required: the video, relative to IN_DIR, as in a plain list), ``key`` (optional: the sample's
key, i.e. its output name without the extension; empty or absent: the path without its extension), and any others (a
caption, an id, ...), carried as they are into the sample's ``meta["columns"]`` (and, for webdataset, into
``KEY.json`` and ``index.jsonl``). CSV values are strings; JSONL values any JSON. A path listed twice is a usage
error naming both lines, as is a row without a path; every row's columns are kept, empty ones included.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..reading import lines_bounded
from .listing import Listing, absolute_root, listed_path

if TYPE_CHECKING:
    from ..formats.writers import Writer

MAX_FIELD = 1 << 20  # characters in one CSV value (a long caption fits; a binary file named by mistake does not)


def read_table(path: Path, root: Path, writer: Writer | None = None) -> Listing:
    """The videos of a CSV/JSONL ``--files-from`` with their keys and columns (see the module docstring)."""
    root_abs = absolute_root(root)
    fmt = writer.name if writer is not None else "pt"
    rows = _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else _csv_rows(path)
    listing, where = Listing([], []), {}
    for n, row in rows:
        name = row.pop("path", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}:{n}: no 'path' (the video, relative to IN_DIR); columns are {sorted(row)}")
        rel = listed_path(path, n, name, root, root_abs)
        if rel in where:
            raise ConfigError(f"{path}:{n}: {name!r} is listed again (first on line {where[rel]})")
        where[rel] = n
        key = row.pop("key", None)
        if key is not None and key != "":  # an empty key: the default one
            from ..formats.writers import check_key

            if not isinstance(key, str):
                raise ConfigError(f"{path}:{n}: key must be a string, got {key!r}")
            listing.keys[rel] = check_key(key, f"{path}:{n}", fmt)
        listing.columns[rel] = row
        listing.videos.append(rel)
    listing.videos.sort(key=lambda p: p.parts)
    return listing


def _jsonl_rows(path: Path):
    try:
        for n, raw in lines_bounded(path, MAX_FIELD):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8", "surrogateescape"))
            except ValueError as exc:
                raise ConfigError(f"{path}:{n}: not a JSON object ({exc})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: not a JSON object (found a {type(row).__name__})")
            yield n, row
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read --files-from ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: cannot read --files-from: it {exc}") from None


def _csv_rows(path: Path):
    csv.field_size_limit(MAX_FIELD)
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                found = ", ".join(reader.fieldnames or []) or "nothing"
                raise ConfigError(f"{path}: a CSV --files-from needs a header row with a 'path' column (found {found})")
            for row in reader:
                if None in row:
                    raise ConfigError(f"{path}:{reader.line_num}: more values than the header has columns")
                yield reader.line_num, {k: ("" if v is None else v) for k, v in row.items()}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read --files-from ({exc.strerror or exc})") from None
    except (csv.Error, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable CSV ({exc})") from None
