"""Command-line values that may be URLs (``slowfast batch`` IN_DIR, ``-o`` and ``--files-from``; ``remote.py``).

A URL stays a ``str`` (``Path`` would fold ``s3://b`` into ``s3:/b``); a local name becomes a ``Path`` and gets the
checks typer gave it before URLs were accepted, with the same messages and exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..batch.remote_io import as_place


def folder_or_url(text: str) -> Path | str:
    """IN_DIR: a URL, or an existing folder."""
    if not text:
        raise typer.BadParameter("an empty name; give a folder")
    place = as_place(text)
    if isinstance(place, Path):
        if not place.exists():
            raise typer.BadParameter(f"Directory '{place}' does not exist.")
        if not place.is_dir():
            raise typer.BadParameter(f"Directory '{place}' is a file.")
    return place


def name_or_url(text: str) -> Path | str:
    """``-o``: a URL, or a folder name (an empty one is a usage error: ``Path("")`` would be the current folder)."""
    if not text:
        raise typer.BadParameter("an empty name; give a path")
    return as_place(text)


def list_or_url(text: str) -> Path | str:
    """``--files-from``: a URL, or a file name that is not a folder."""
    place = as_place(text)
    if isinstance(place, Path) and place.is_dir():
        raise typer.BadParameter(f"File '{place}' is a directory.")
    return place
