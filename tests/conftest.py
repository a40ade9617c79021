import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Under pytest-xdist the workers already share the cores: one torch (OpenMP) thread per worker per core, set before
# anything imports torch and inherited by the `slowfast` subprocesses the tests start. With torch's default (a thread
# per core) in each of 2 workers and their subprocesses, the threads spin-wait on each other: on 2 cores
# tests/test_siglip.py took 50% more CPU time, and as much more wall time, beside other work. A value already set
# wins; a run without xdist keeps torch's default.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

# PyAV must load its FFmpeg before decord does: decord loads its own FFmpeg 4.1 with RTLD_GLOBAL, and PyAV's
# VP9 encoder then fails to open ("avcodec_open2(libvpx-vp9) returned 22").
import media  # noqa: E402

# --- pytest-xdist: the order in which modules are handed out ---------------------------------------------------
# `python -m pytest` runs with `-n 2 --dist loadfile --no-loadscope-reorder` (pyproject.toml): a module's tests stay
# on one worker, so that its module-scoped fixtures (a Ray cluster, an encoded corpus, built models) are made once,
# as in a run without xdist, and the modules are handed out in collection order. LONGEST_FIRST puts the longest
# modules first, so that the short ones fill the other worker's time instead of the last minutes.
LONGEST_FIRST = ["test_ray.py", "test_batch.py", "test_gpu_check.py", "test_checkpoints.py", "test_siglip.py"]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a module is kept


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
