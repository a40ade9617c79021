"""Helpers for tests on a really full disk (see the ``small_disk`` fixture in conftest.py)."""

import os
from pathlib import Path


def fill(folder: Path, leave: int = 0) -> None:
    """Fill ``folder``'s file system until at most ``leave`` bytes are free (a filler file, 4 KiB at a time)."""
    with open(folder / "filler", "wb") as f:
        while True:
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(4096, free - leave))
                f.flush()
            except OSError:
                break
