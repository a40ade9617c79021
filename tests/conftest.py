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
