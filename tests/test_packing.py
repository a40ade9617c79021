"""Frames of several videos in one forward pass (``encoder.packing.Packer``): the same bits as each video alone.

The towers are real (random weights); the videos' frames are random arrays of several sizes and lengths, so passes
hold slices of 1 to 3 videos at every offset. bf16 runs on any CPU (torch computes it without native support, just
slower), so the bf16 proof holds wherever the suite runs.
"""

from __future__ import annotations

import media
import pytest
import torch
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.config import EncoderCfg, resolve_config
from slowfast_cli.encoder.encoder import Encoder, build_encoder
from slowfast_cli.encoder.packing import Packer, pass_frames
from slowfast_cli.errors import ConfigError, SlowfastError
from slowfast_cli.tokenfile import load_tokens

LENGTHS = (16, 5, 33, 1, 16, 7, 12)  # frames per video: shorter, longer and as long as a pass


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def tiny(request) -> Encoder:
    return build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained="none"), torch.device("cpu"), request.param)


def videos(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(t, 48 + 8 * i, 80, 3) for i, t in enumerate(LENGTHS)]  # (T, H, W, 3): every video its own height
    return [torch.randint(0, 256, size, dtype=torch.uint8, generator=g) for size in sizes]


def packed(encoder: Encoder, clips, pass_frames: int, order=None) -> dict:
    """Every clip through one Packer, in ``order``; {index: Packed}."""
    p = Packer(encoder, pass_frames)
    out = {}
    for i in order or range(len(clips)):
        out.update((d.key, d) for d in p.add(i, clips[i]))
    out.update((d.key, d) for d in p.flush())
    return out


class TestSameBitsAsAlone:
    @pytest.mark.parametrize("pass_frames", [16, 7, 40])
    def test_every_video_packed_equals_it_alone(self, tiny, pass_frames):
        clips = videos()
        alone = [tiny.encode(c, pass_frames) for c in clips]  # one video per pass (the last one padded)
        for order in (None, list(reversed(range(len(clips))))):
            got = packed(tiny, clips, pass_frames, order)
            assert sorted(got) == list(range(len(clips)))
            for i, c in enumerate(clips):
                assert got[i].error is None
                assert got[i].tokens.shape == (len(c), 64, 64) and got[i].tokens.dtype == tiny.dtype
                assert torch.equal(got[i].tokens, alone[i]), (i, order)

    def test_passes_are_full_and_only_the_last_one_is_padded(self, tiny):
        p = Packer(tiny, 16)
        done = [d for i, c in enumerate(videos()) for d in p.add(i, c)] + p.flush()
        total = sum(LENGTHS)
        assert len(done) == len(LENGTHS) and p.passes == -(-total // 16) and p.padded == p.passes * 16 - total

    def test_a_pass_of_one_frame_gives_the_same_bits_as_one_frame_alone(self, tiny):
        (one,) = videos()[3:4]
        assert torch.equal(packed(tiny, [one], 1)[0].tokens, tiny.encode(one, 1))

    def test_a_real_tower_viT_b_32_fp32_and_bf16(self):
        """A full-size tower (12 blocks, width 768, 7x7 grid): 3 videos in passes of 8, against each alone."""
        g = torch.Generator().manual_seed(1)
        clips = [torch.randint(0, 256, (t, 240, 320, 3), dtype=torch.uint8, generator=g) for t in (5, 6, 3)]
        for dtype in (torch.float32, torch.bfloat16):
            enc = build_encoder(EncoderCfg(model="ViT-B-32", pretrained="none"), torch.device("cpu"), dtype)
            got = packed(enc, clips, 8)
            for i, c in enumerate(clips):
                assert torch.equal(got[i].tokens, enc.encode(c, 8)), (dtype, i)


class TestFailuresStayPerVideo:
    def test_a_bad_frame_array_fails_only_its_video(self, tiny):
        clips = videos()
        clips[2] = clips[2].float()  # not uint8
        got = packed(tiny, clips, 16)
        assert isinstance(got[2].error, SlowfastError) and "uint8" in str(got[2].error)
        for i in (0, 1, 3, 4, 5, 6):
            assert torch.equal(got[i].tokens, tiny.encode(clips[i], 16))

    def test_a_pass_that_raises_is_rerun_per_video_and_only_the_bad_one_fails(self, tiny, monkeypatch):
        """The ViT raising on a pass (out of memory, a kernel error: injected, as it cannot be caused here) for
        any pass that holds a frame of video 2 (every pixel 255: no other video has such a frame)."""
        clips = videos()
        clips[2][:] = 255
        alone = [tiny.encode(c, 16) for c in clips]
        real = Encoder._tokens
        white = tiny.preprocess(clips[2][:1])[0]  # (3, Hs, Ws)

        def tokens(self, x):
            if any(torch.equal(frame, white) for frame in x):
                raise RuntimeError("CUDA out of memory (injected)")
            return real(self, x)

        monkeypatch.setattr(Encoder, "_tokens", tokens)
        got = packed(tiny, clips, 16)
        assert "out of memory" in str(got[2].error)
        for i in (0, 1, 3, 4, 5, 6):
            assert got[i].error is None and torch.equal(got[i].tokens, alone[i]), i

    def test_an_empty_video_gives_no_tokens(self, tiny):
        got = packed(tiny, [torch.zeros(0, 8, 8, 3, dtype=torch.uint8), videos()[0]], 16)
        assert got[0].tokens.shape == (0, 64, 64) and got[1].tokens.shape == (16, 64, 64)

    @pytest.mark.parametrize("bad", [0, -3])
    def test_pass_size_must_be_positive(self, tiny, bad):
        with pytest.raises(SlowfastError, match="batch_frames"):
            Packer(tiny, bad)


def test_batch_packs_videos_and_writes_the_same_tokens_as_encode(tmp_path):
    """``slowfast batch`` with passes of 24 frames over 16-frame videos (every pass holds two videos, one of them
    split) writes the tokens ``slowfast encode`` writes for each video alone."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        media.make_video(folder / f"v{i}.mp4", frames=20 + 4 * i, size=(96 + 16 * i, 64))
    runner = CliRunner()
    opts = ["--config", "tiny", "--dtype", "fp32", "--batch-frames", "24"]
    r = runner.invoke(app, ["batch", str(folder), "-o", str(tmp_path / "out"), "--workers", "1", *opts])
    assert r.exit_code == 0, r.output
    for i in range(3):
        one = tmp_path / f"v{i}.pt"
        r = runner.invoke(app, ["encode", str(folder / f"v{i}.mp4"), "-o", str(one), *opts])
        assert r.exit_code == 0, r.output
        assert torch.equal(load_tokens(tmp_path / "out" / f"v{i}.pt")["tokens"], load_tokens(one)["tokens"])


class TestPassSize:
    def test_zero_means_by_device(self):
        assert (pass_frames(0, "cpu"), pass_frames(0, "cuda"), pass_frames(0, "mps")) == (16, 128, 16)
        assert pass_frames(24, "cuda") == 24 and pass_frames(24, "cpu") == 24

    def test_the_default_is_by_device_and_a_negative_size_is_refused(self):
        assert resolve_config("default").encoder.batch_frames == 0
        assert resolve_config("tiny", {"batch_frames": 0}).encoder.batch_frames == 0
        with pytest.raises(ConfigError, match="batch_frames.*must be a positive integer"):
            resolve_config("tiny", {"batch_frames": -1})
