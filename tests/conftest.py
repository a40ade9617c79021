import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# PyAV must load its FFmpeg before decord does: decord loads its own FFmpeg 4.1 with RTLD_GLOBAL, and PyAV's
# VP9 encoder then fails to open ("avcodec_open2(libvpx-vp9) returned 22").
import media  # noqa: E402


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    """32 frames, 96x64, 10 fps h264 mp4 whose frames encode their index (see ``media.read_index``)."""
    return media.make_video(tmp_path_factory.mktemp("videos") / "small.mp4")


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small tmpfs file systems mounted under ``tmp_path`` (a full disk, for real): needs the right
    to mount (root in this project's CI); skipped with the reason elsewhere. Unmounted at the end."""
    import subprocess

    mounted = []

    def mount(size: str, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
