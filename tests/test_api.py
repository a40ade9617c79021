"""The Python API (``slowfast_cli.api``, ``slowfast_cli.llm``): one loaded model for paths, frames and lists, with
the command line's settings and checks; and video tokens spliced into a real (tiny, random) Llama's inputs_embeds.
"""

from __future__ import annotations

import media
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import slowfast_cli
from slowfast_cli.api import VideoEncoder, make_config
from slowfast_cli.cli.app import app
from slowfast_cli.config import FLAG_KEYS, resolve_config
from slowfast_cli.errors import ConfigError
from slowfast_cli.llm import splice_video

EXACT = {"frames": 8, "dtype": "fp32", "decode_resize": False}  # full-size frames: a path and its frames agree


@pytest.fixture(scope="module")
def bikes():
    return media.sample_clip("bikes.mp4")  # 640x272, 250 frames


@pytest.fixture(scope="module")
def encoder():
    return VideoEncoder.from_preset("tiny", **EXACT)


@pytest.fixture(scope="module")
def from_path(encoder, bikes):
    return encoder.encode(bikes)


class TestSettings:
    def test_overrides_are_the_flags(self):
        cfg = make_config("tiny", frames=8, slow_pool="2x2_max", fast_size="2x2", dtype="fp32")
        assert (cfg.video.frames, cfg.aggregator.slow_pool, cfg.aggregator.fast_size) == (8, "2x2_max", (2, 2))
        assert cfg.name == "tiny"

    def test_an_unknown_setting_lists_the_valid_ones(self):
        with pytest.raises(ConfigError, match=r"unknown setting 'frame'; valid: frames, sample_fps") as e:
            VideoEncoder.from_preset("tiny", frame=8)
        assert all(k in str(e.value) for k in FLAG_KEYS)

    def test_a_bad_value_names_the_setting(self):
        with pytest.raises(ConfigError, match="unknown slow pool 'max'"):
            make_config("tiny", slow_pool="max")
        with pytest.raises(ConfigError, match="frames"):
            make_config("tiny", frames="eight")

    def test_a_config_object_is_copied_and_overridden(self):
        base = resolve_config("tiny")
        cfg = make_config(base, frames=4, projector_weights=None)
        assert cfg.video.frames == 4 and base.video.frames == 16 and cfg.name == "tiny"
        with pytest.raises(ConfigError, match="slow pool"):
            make_config(base, slow_pool="max")

    def test_settings_that_cannot_work_fail_before_the_model_loads(self):
        with pytest.raises(ConfigError, match="layer"):
            VideoEncoder.from_preset("tiny", layer=40)


class TestEncode:
    def test_a_path_gives_what_the_command_line_writes(self, from_path, bikes, tmp_path):
        out = tmp_path / "cli.pt"
        args = ["encode", str(bikes), "--config", "tiny", "--frames", "8", "--dtype", "fp32", "--no-decode-resize"]
        r = CliRunner().invoke(app, [*args, "-o", str(out)])
        assert r.exit_code == 0, r.output
        saved = slowfast_cli.load_tokens(out)
        assert torch.equal(from_path.tokens, saved["tokens"])
        assert from_path.meta["frame_indices"] == saved["meta"]["frame_indices"]
        assert from_path.meta["output_tokens"] == from_path.tokens.shape[1] == 8 * 32 + 8 * 16  # slow 1d_max, fast 4x4

    def test_frames_in_either_layout_give_the_paths_tokens(self, encoder, from_path, bikes):
        clip = encoder.pipeline.load(bikes)  # the same sampled frames, full size (decode_resize off)
        thwc = clip.frames  # numpy (T, H, W, 3)
        tchw = torch.from_numpy(thwc).permute(0, 3, 1, 2)  # torch (T, 3, H, W)
        a, b = encoder.encode(thwc, fps=clip.info.fps, source="bikes"), encoder.encode(tchw)
        assert torch.equal(a.tokens, from_path.tokens) and torch.equal(b.tokens, from_path.tokens)
        assert a.meta["source"] == "bikes" and b.meta["source"] == "<frames>"
        assert a.meta["frame_indices"] == list(range(8)) and a.meta["timestamps"] == [i / 25 for i in range(8)]
        assert "timestamps" not in b.meta and b.meta["video"]["fps"] is None
        assert "provenance" not in a.meta and "fingerprint" not in a.meta["video"]  # no file behind them

    def test_a_list_gives_a_list_in_order(self, encoder, from_path, bikes):
        frames = np.zeros((3, 40, 50, 3), np.uint8)
        results = encoder.encode([bikes, frames])
        assert torch.equal(results[0].tokens, from_path.tokens)
        assert results[1].meta["frames"] == 3 and results[1].tokens.shape[-1] == encoder.dim == 64

    @pytest.mark.parametrize(
        ("frames", "message"),
        [
            (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
            (np.zeros((8, 8, 3), np.uint8), r"\(T, H, W, 3\)"),
            (np.zeros((2, 8, 8, 4), np.uint8), r"\(T, H, W, 3\)"),
            (np.zeros((0, 8, 8, 3), np.uint8), "none"),
            ("not a file.mp4", "not a file.mp4"),
        ],
    )
    def test_bad_input_is_one_clear_error(self, encoder, frames, message):
        with pytest.raises(slowfast_cli.errors.SlowfastError, match=message):
            encoder.encode(frames)

    def test_encode_video_takes_overrides(self, from_path, bikes):
        result = slowfast_cli.encode_video(bikes, "tiny", **EXACT)
        assert torch.equal(result.tokens, from_path.tokens)
        assert result.meta["config"]["video"]["frames"] == 8


@pytest.fixture(scope="module")
def llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, vocab_size=128)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


class TestSplice:
    VIDEO = 127  # the placeholder's id

    def test_one_video_goes_where_its_placeholder_was(self, llama, from_path):
        ids = torch.tensor([[1, 17, self.VIDEO, 42, 99]])
        inputs = splice_video(llama, ids, from_path, self.VIDEO)
        text = llama.get_input_embeddings()(ids)
        want = torch.cat([text[0, :2], from_path.tokens[0], text[0, 3:]])
        assert inputs["inputs_embeds"].shape == (1, 4 + 384, 64)
        assert torch.equal(inputs["inputs_embeds"][0], want) and inputs["attention_mask"].sum() == 4 + 384
        with torch.inference_mode():
            answer = llama.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert answer.shape == (1, 4)

    def test_a_batch_of_videos_of_different_lengths_is_padded_on_the_left(self, llama, from_path, tmp_path):
        path = tmp_path / "v.pt"
        short = from_path.tokens[:, :10]
        slowfast_cli.tokenfile.save_tokens(path, short, {})
        ids = torch.tensor([[1, self.VIDEO, 5], [self.VIDEO, 6, 7]])
        inputs = splice_video(llama, ids, [from_path, path], self.VIDEO)
        embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
        assert embeds.shape == (2, 2 + 384, 64)  # row 0: 2 + 384; row 1: 2 + 10, after 374 padding
        assert mask[0].all() and mask[1, :374].sum() == 0 and mask[1, 374:].all()
        assert torch.equal(embeds[1, 374:384], short[0]) and not embeds[1, :374].any()
        right = splice_video(llama, ids, [from_path, path], self.VIDEO, padding_side="right")
        assert torch.equal(right["inputs_embeds"][1, :10], short[0]) and not right["attention_mask"][1, 12:].any()

    def test_mismatches_are_named(self, llama, from_path):
        ids = torch.tensor([[1, self.VIDEO, self.VIDEO]])
        with pytest.raises(ConfigError, match=r"2 video placeholder\(s\) \(id 127\) but 1 video"):
            splice_video(llama, ids, from_path, self.VIDEO)
        with pytest.raises(ConfigError, match="32 wide but the LLM's embeddings are 64"):
            splice_video(llama, ids[:, :2], from_path.tokens[..., :32], self.VIDEO)
