"""LLaVA-OneVision, LLaVA-NeXT-Video and LLaVA-Video, proven against the models themselves.

transformers 5 ships ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, projector, bilinear pooling after it,
one ``image_newline`` at the end of the video) and ``LlavaNextVideoForConditionalGeneration`` (CLIP tower, 2x2
average pooling before the projector, no newline). Tiny random configs of each are saved with ``save_pretrained``;
``slowfast encode --pretrained FOLDER --projector-weights FOLDER`` must give the video features the model computes
for the same frames, and ``inputs_embeds`` built from the token file the logits of the model's own video forward
(fp32, CPU). The towers are tiny in depth (2-3 layers) but at the width, input and patch size of an open_clip model
(ViT-B-16-SigLIP, ViT-B-16), so ``--model`` names a real geometry. LLaVA-Video's own layout (grid newlines) is not in
transformers: it is checked against a transcription of LLaVA-NeXT's ``add_token_per_grid``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from media import make_video
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from typer.testing import CliRunner

from slowfast_cli.aggregate import slow_fast
from slowfast_cli.budget import aggregator_budget
from slowfast_cli.cli.app import app
from slowfast_cli.config import VideoCfg, resolve_config
from slowfast_cli.encoder.encoder import build_encoder
from slowfast_cli.encoder.preprocess import preprocess
from slowfast_cli.encoder.towers import preprocess_cfg
from slowfast_cli.errors import ConfigError, SlowfastError
from slowfast_cli.models import model_grid
from slowfast_cli.pipeline import Pipeline
from slowfast_cli.planner import plan
from slowfast_cli.report import build_report
from slowfast_cli.video.decode import load_clip
from slowfast_cli.video.sampling import sample_indices

VIDEO_TOKEN = 150
FEATURES_TOL = 1e-6  # relative, max-abs over max-abs: measured 0.0 (OneVision) and 4.9e-7 (NeXT-Video), BENCHMARKS §20
LOGITS_TOL = 1e-5  # relative: measured 0.0 and 4.4e-7
runner = CliRunner()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", frames=30, size=(160, 96), fps=10)


def _tiny_llm(cls):
    return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=200)  # fmt: skip


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    """A tiny LlavaOnevision: SigLIP of ViT-B-16-SigLIP's shape (224 px, 16-px patches, width 768), 2 layers."""
    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                                image_size=224, patch_size=16)  # fmt: skip
    cfg = LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=_tiny_llm(Qwen2Config).to_dict(),
                               vision_feature_layer=-1, video_token_id=VIDEO_TOKEN, image_token_id=151)  # fmt: skip
    folder = tmp_path_factory.mktemp("ov") / "llava-onevision-tiny"
    LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(folder)
    return folder, LlavaOnevisionForConditionalGeneration.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def next_video(tmp_path_factory):
    """A tiny LlavaNextVideo: CLIP of ViT-B-16's shape, 3 layers, layer -2 without CLS, average pool before."""
    torch.manual_seed(1)
    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=3, num_attention_heads=12,
                              image_size=224, patch_size=16, projection_dim=32)  # fmt: skip
    cfg = LlavaNextVideoConfig(vision_config=vision.to_dict(), text_config=_tiny_llm(LlamaConfig).to_dict(),
                               video_token_id=VIDEO_TOKEN, image_token_id=151)  # fmt: skip
    assert (cfg.vision_feature_layer, cfg.spatial_pool_mode, cfg.spatial_pool_stride) == (-2, "average", 2)
    folder = tmp_path_factory.mktemp("nv") / "llava-next-video-tiny"
    LlavaNextVideoForConditionalGeneration(cfg).save_pretrained(folder)
    return folder, LlavaNextVideoForConditionalGeneration.from_pretrained(folder).eval()


def encode(video, out, folder, *flags: str) -> dict:
    args = ["encode", str(video), "-o", str(out), "--pretrained", str(folder), "--projector", "mlp2x_gelu",
            "--projector-weights", str(folder), "--dtype", "fp32", "--frames", "4", "--sampling", "linspace",
            "--no-decode-resize", "--layout", "frames", *flags]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return torch.load(out, weights_only=True)


def model_pixels(video, siglip: bool):
    """The 4 frames slowfast samples (linspace, full size), preprocessed as its encoder does for the model's tags
    (SigLIP: squash, mean/std 0.5; CLIP: shortest side and centre crop, CLIP's mean/std): ((4, 3, 224, 224), clip)."""
    clip = load_clip(video, VideoCfg(frames=4, sampling="linspace", decode_resize=False), None)
    model = "ViT-B-16-SigLIP" if siglip else "ViT-B-16"
    cfg = preprocess_cfg(model, None, (224, 224))
    pixels = preprocess(torch.as_tensor(clip.frames), cfg, (224, 224), torch.device("cpu"), torch.float32)
    return pixels, clip


def same_logits(model, tokens: torch.Tensor, pixels: torch.Tensor) -> float:
    """Relative difference of the logits: the model's own video forward vs ``inputs_embeds`` from ``tokens``."""
    length = tokens.shape[1]
    ids = torch.tensor([[1, 2] + [VIDEO_TOKEN] * length + [3, 4]])
    with torch.no_grad():
        own = model(input_ids=ids, pixel_values_videos=pixels[None]).logits
        embeds = model.get_input_embeddings()(ids)
        embeds[0, 2 : 2 + length] = tokens[0]
        ours = model(inputs_embeds=embeds).logits
    return rel(ours, own)


class TestLlavaOnevision:
    FLAGS = ("--model", "ViT-B-16-SigLIP", "--layer", "1", "--slow-pool", "2x2_bilinear", "--newline", "one_token")

    def test_features_and_logits_equal_the_models(self, onevision, video, tmp_path):
        folder, model = onevision
        obj = encode(video, tmp_path / "ov.pt", folder, *self.FLAGS)
        tokens, meta = obj["tokens"], obj["meta"]
        assert (meta["activation"], meta["layout"], meta["newline_tokens"]) == ("gelu_tanh", "frames", 1)
        assert tokens.shape == (1, 4 * 7 * 7 + 1, 64)  # 14x14 -> 7x7 bilinear per frame, one newline at the end
        pixels, _ = model_pixels(video, siglip=True)
        with torch.no_grad():
            own = model.model.get_video_features(pixels[None], vision_feature_layer=-1,
                                                 vision_feature_select_strategy="full").pooler_output  # fmt: skip
        assert rel(tokens, own) <= FEATURES_TOL
        assert torch.equal(tokens[0, -1], model.model.image_newline.detach())
        report = build_report(tmp_path / "ov.pt")
        assert (report.layouts, report.newline_tokens) == ({"frames/one_token": 1}, 1)
        assert same_logits(model, tokens, pixels) <= LOGITS_TOL
        assert obj["meta"]["output_tokens"] == aggregator_budget(4, (14, 14), resolve_config(
            "default", {"layout": "frames", "slow_pool": "2x2_bilinear", "newline": "one_token"}).aggregator
        ).output_tokens  # fmt: skip

    def test_pixels_are_within_one_level_of_transformers_video_processor(self, onevision, video):
        """LLaVA-NeXT's own SigLIP processor resizes with PIL (bicubic), as slowfast does; transformers 5's video
        processor resizes tensors with torchvision: at most one level of 255 apart (mean 1.6e-5)."""
        folder, _ = onevision
        ours, clip = model_pixels(video, siglip=True)
        processor = LlavaOnevisionVideoProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                                                 image_std=[0.5] * 3)  # fmt: skip
        theirs = processor(videos=[clip.frames], return_tensors="pt")["pixel_values_videos"][0]
        assert (theirs - ours).abs().max().item() <= 2 / 255 + 1e-6  # one level is 2/255 after mean/std 0.5

    def test_the_activation_comes_from_the_checkpoint(self, onevision, tmp_path):
        """Same weights, config.json saying gelu: exact GELU; the checkpoint's own gelu_pytorch_tanh: tanh."""
        folder, _ = onevision
        config = json.loads((folder / "config.json").read_text())
        config["vision_config"]["hidden_act"] = "gelu"
        other = tmp_path / "gelu"
        other.mkdir()
        (other / "config.json").write_text(json.dumps(config))
        (other / "model.safetensors").symlink_to(folder / "model.safetensors")
        tanh, gelu = (build_encoder(self._cfg(f).encoder, torch.device("cpu"), torch.float32) for f in (folder, other))
        assert (tanh.activation, gelu.activation) == ("gelu_tanh", "gelu")
        x = torch.randint(0, 255, (1, 64, 64, 3), dtype=torch.uint8)
        assert rel(gelu.encode(x), tanh.encode(x)) > 1e-7

    @staticmethod
    def _cfg(folder):
        return resolve_config("default", {"model": "ViT-B-16-SigLIP", "pretrained": str(folder), "layer": 1,
                                          "dtype": "fp32"})  # fmt: skip

    def test_an_original_llava_onevision_checkpoint_gives_the_same_tokens(self, onevision, video, tmp_path):
        """LLaVA-NeXT's own naming (lmms-lab checkpoints): model.vision_tower.vision_tower.vision_model.*,
        model.mm_projector.{0,2}.*, model.image_newline, and a config.json that names only mm_vision_tower: the
        activation is SigLIP's gelu_pytorch_tanh all the same."""
        folder, _ = onevision
        names = {"vision_tower.": "model.vision_tower.vision_tower.vision_model.",
                 "multi_modal_projector.linear_1.": "model.mm_projector.0.",
                 "multi_modal_projector.linear_2.": "model.mm_projector.2.", "image_newline": "model.image_newline",
                 "language_model.": "model."}  # fmt: skip
        state = {}
        for key, value in load_file(folder / "model.safetensors").items():
            old = next(k for k in [*names, ""] if key.startswith(k))
            state[(names[old] + key[len(old) :]) if old else key] = value
        original = tmp_path / "llava-onevision-qwen2-tiny-ov"
        original.mkdir()
        save_file(state, original / "model.safetensors")
        (original / "config.json").write_text(
            json.dumps(
                {
                    "model_type": "llava_qwen",
                    "hidden_act": "silu",
                    "mm_vision_tower": "google/siglip-so400m-patch14-384",
                }
            )
        )
        ours = encode(video, tmp_path / "orig.pt", original, *self.FLAGS)
        theirs = encode(video, tmp_path / "hf.pt", folder, *self.FLAGS)
        assert ours["meta"]["activation"] == "gelu_tanh"
        assert torch.equal(ours["tokens"], theirs["tokens"])


NEXT_VIDEO_FLAGS = ("--model", "ViT-B-16", "--layer", "1", "--slow-pool", "2x2_avg", "--pool-stage", "before")


@pytest.fixture(scope="module")
def before(next_video, video, tmp_path_factory):
    """The token file of the NeXT-Video layout (pooled before the projector), encoded once."""
    return encode(video, tmp_path_factory.mktemp("nv") / "before.pt", next_video[0], *NEXT_VIDEO_FLAGS)


class TestLlavaNextVideo:
    FLAGS = NEXT_VIDEO_FLAGS

    def test_features_and_logits_equal_the_models(self, next_video, video, before):
        folder, model = next_video
        obj = before
        tokens = obj["tokens"]
        assert tokens.shape == (1, 4 * 49, 64) and obj["meta"]["pool_stage"] == "before"
        pixels, _ = model_pixels(video, siglip=False)
        with torch.no_grad():
            own = model.model.get_video_features(pixels[None], vision_feature_layer=-2,
                                                 vision_feature_select_strategy="default").pooler_output  # fmt: skip
        assert rel(tokens, own) <= FEATURES_TOL
        assert same_logits(model, tokens, pixels) <= LOGITS_TOL

    def test_pooling_after_the_projector_is_another_sequence(self, next_video, video, before, tmp_path):
        folder, _ = next_video
        before = before["tokens"]
        after = encode(video, tmp_path / "a.pt", folder, *self.FLAGS[:-1], "after")["tokens"]
        assert before.shape == after.shape and rel(after, before) > 1e-3


def add_token_per_grid(features: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """A transcription of LLaVA-NeXT's ``add_token_per_grid`` (LLaVA-VL/LLaVA-NeXT llava/model/llava_arch.py) without
    ``add_faster_video``: (T, h*h, D) -> (T * h * (h + 1), D)."""
    side = int(features.shape[1] ** 0.5)
    frames = features.shape[0]
    x = features.view(frames, 1, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
    x = x.flatten(1, 2).flatten(2, 3)
    x = torch.cat((x, newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
    return x.flatten(1, 2).transpose(0, 1)


class TestLayouts:
    def test_llava_video_grid_layout_is_llava_nexts(self):
        """64 frames of a 27x27 grid, bilinear to 14x14, a newline after each row: 64 x 210 = 13,440 tokens."""
        x, newline = torch.randn(64, 729, 8), torch.randn(8)
        out = slow_fast(x, (27, 27), layout="frames", slow_pool="2x2_bilinear", newline="grid", newline_token=newline)
        pooled = slow_fast(x, (27, 27), layout="frames", slow_pool="2x2_bilinear").tokens[0].view(64, 196, 8)
        assert out.tokens.shape == (1, 13440, 8)
        assert torch.equal(out.tokens[0], add_token_per_grid(pooled, newline))

    @pytest.mark.parametrize("newline", ["frame", "one_token", "no_token", "grid"])
    def test_every_position_in_the_slowfast_layout_matches_the_budget(self, newline):
        token = torch.full((4,), 7.0)
        x = torch.randn(6, 64, 4)
        out = slow_fast(x, (8, 8), 3, "2x2_avg", (2, 2), newline=newline, newline_token=token)
        assert out.tokens.shape[1] == out.budget.output_tokens
        marks = (out.tokens[0] == 7.0).all(-1).sum().item()
        assert marks == out.budget.newline_tokens == {"frame": 9, "one_token": 1, "no_token": 0, "grid": 24}[newline]

    @pytest.mark.parametrize("preset,tokens", [
        ("llava-video-7b", 13440), ("llava-video-7b-lmms-eval", 20 * 182), ("llava-onevision-7b", 32 * 196 + 1),
        ("llava-next-video-7b-hf", 8 * 144), ("llava-video-7b-slowfast", 16 * 210 + 64 * 20),
    ])  # fmt: skip
    def test_each_presets_budget_is_the_tensor_it_writes(self, preset, tokens):
        cfg = resolve_config(preset)
        grid, width = model_grid(cfg.encoder.model), 8
        budget = aggregator_budget(cfg.video.frames, grid, cfg.aggregator)
        x = torch.randn(cfg.video.frames, grid[0] * grid[1], width)
        a = cfg.aggregator
        out = slow_fast(x, grid, a.slow_frames, a.slow_pool, a.fast_size, a.slow_index, a.layout, a.newline,
                        torch.randn(width))  # fmt: skip
        assert out.tokens.shape[1] == budget.output_tokens == tokens
        result = runner.invoke(app, ["budget", "--config", preset, "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout)["output_tokens"] == budget.output_tokens

    def test_the_planner_searches_the_frames_layout_with_its_newlines(self):
        entries = plan(8192, (27, 27), layout="frames", newline="grid")
        b = entries[0].budget
        assert (b.layout, b.frames, b.slow_pool, b.output_tokens) == ("frames", 32, "2x2_bilinear", 32 * 210)
        assert all(e.budget.output_tokens <= 8192 and e.budget.fast_tokens == 0 for e in entries)
        assert not [e for e in plan(4096, (2, 5), layout="frames", newline="grid") if e.budget.slow_pool == "1d_max"]


def upstream_load_video_indices(total_frame_num: int, avg_fps: float, max_frames_num: int, fps: float = 1) -> list:
    """A transcription of the index arithmetic of lmms-eval's ``LlavaVid.load_video`` (and LLaVA-NeXT's
    ``process_video_with_decord``), without decord."""
    step = round(avg_fps / fps)
    frame_idx = [i for i in range(0, total_frame_num, step)]
    if len(frame_idx) > max_frames_num:
        frame_idx = np.linspace(0, total_frame_num - 1, max_frames_num, dtype=int).tolist()
    return frame_idx


class TestSampling:
    @pytest.mark.parametrize("fps", [23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 2.5])
    def test_llava_next_is_upstreams_rule(self, fps):
        for n in [*range(1, 130), 599, 600, 601, 1800, 7201]:
            assert sample_indices(n, fps, 20, sampling="llava_next") == upstream_load_video_indices(n, fps, 20), n
            assert sample_indices(n, fps, 64, 2.0, sampling="llava_next") == upstream_load_video_indices(n, fps, 64, 2)

    def test_arange_is_the_model_cards(self):
        for n in [*range(1, 100), 1000, 4321]:
            assert sample_indices(n, 25.0, 8, sampling="arange") == np.arange(0, n, n / 8).astype(int).tolist()


class TestSO400MAt384:
    """The tower of LLaVA-OneVision and LLaVA-Video at its real width, input and patch size (1152, 384 px, 14-px
    patches, 16 heads, MLP 4304), random weights, from a Hugging Face SiglipVisionModel folder, against transformers
    on the same weights. Two of its 27 layers (the shapes are per layer; 27 would take 1.6 GB of checkpoint)."""

    def test_tower_equals_transformers(self, tmp_path):
        vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2,
                                    num_attention_heads=16, image_size=384, patch_size=14)  # fmt: skip
        torch.manual_seed(2)
        hf = SiglipVisionModel(vision).eval()
        hf.save_pretrained(tmp_path / "siglip-so400m")
        folder = str(tmp_path / "siglip-so400m")
        cfg = resolve_config("default", {"model": "ViT-SO400M-14-SigLIP-384", "pretrained": folder, "layer": 1})
        enc = build_encoder(cfg.encoder, torch.device("cpu"), torch.float32)
        assert (enc.grid, enc.width, enc.activation) == ((27, 27), 1152, "gelu_tanh")
        x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            own = hf(pixel_values=x, output_hidden_states=True).hidden_states
        assert rel(enc._tokens(x), own[-1]) <= FEATURES_TOL  # block 1 = hidden_states[2]: before post_layernorm


class TestBadInputs:
    def test_a_siglip_checkpoint_missing_a_layer_names_it(self, onevision, tmp_path):
        folder, _ = onevision
        state = load_file(folder / "model.safetensors")
        del state["vision_tower.encoder.layers.0.mlp.fc1.weight"]
        out = tmp_path / "holed"
        out.mkdir()
        save_file(state, out / "model.safetensors")
        (out / "config.json").write_text((folder / "config.json").read_text())
        state = {k: v for k, v in load_file(folder / "model.safetensors").items() if ".layers.1." not in k}
        (tmp_path / "short").mkdir()
        save_file(state, tmp_path / "short" / "model.safetensors")
        with pytest.raises(SlowfastError, match=r"lacks .*vision_tower\.encoder\.layers\.0\.mlp\.fc1\.weight"):
            Pipeline(TestLlavaOnevision._cfg(out))
        with pytest.raises(SlowfastError, match=r"holds layers 0\.\.0 but block 1 \(--layer\) needs layers 0\.\.1"):
            Pipeline(TestLlavaOnevision._cfg(tmp_path / "short"))

    def test_a_newline_of_the_wrong_width_is_refused(self, onevision, tmp_path):
        folder, _ = onevision
        state = load_file(folder / "model.safetensors")
        state["image_newline"] = torch.zeros(65)
        (tmp_path / "wide").mkdir()
        save_file(state, tmp_path / "wide" / "model.safetensors")
        (tmp_path / "wide" / "config.json").write_text((folder / "config.json").read_text())
        wide = str(tmp_path / "wide")
        flags = {
            "model": "ViT-B-16-SigLIP",
            "pretrained": wide,
            "layer": 1,
            "projector": "mlp2x_gelu",
            "projector_weights": wide,
            "newline": "grid",
            "layout": "frames",
            "slow_pool": "2x2_bilinear",
        }
        cfg = resolve_config("default", flags)
        with pytest.raises(SlowfastError, match=r"image_newline has shape \(65,\) but the projector gives 64-wide"):
            Pipeline(cfg)

    def test_a_layout_that_does_not_fit_the_grid_is_one_line(self):
        result = runner.invoke(app, ["budget", "--model", "ViT-B-16", "--grid", "2x5", "--slow-pool", "1d_max",
                                     "--newline", "grid", "--layout", "frames"])  # fmt: skip
        assert result.exit_code == 2 and "--newline grid puts a newline token after each row" in result.output
        with pytest.raises(ConfigError, match="unknown layout 'rows'"):
            resolve_config("default", {"layout": "rows"})

    def test_slowfast_flags_with_the_frames_layout_are_refused(self):
        result = runner.invoke(app, ["budget", "--config", "llava-video-7b", "--slow-frames", "8", "--fast-size", "2"])
        assert result.exit_code == 2 and "--slow-frames, --fast-size do not apply to the frames layout" in result.output
        assert runner.invoke(app, ["budget", "--config", "llava-video-7b", "--layout", "slowfast", "--slow-frames", "8"]
                             ).exit_code == 0  # fmt: skip

    def test_a_siglip_checkpoint_for_a_clip_model_is_refused(self, onevision):
        cfg = resolve_config("default", {"model": "ViT-B-16", "pretrained": str(onevision[0]), "layer": 1})
        with pytest.raises(SlowfastError, match="hold a SigLIP tower but ViT-B-16 is not a SigLIP model"):
            Pipeline(cfg)

    def test_newlines_without_a_projector_checkpoint_are_a_usage_error(self, video):
        result = runner.invoke(app, ["encode", str(video), "--config", "tiny", "--newline", "grid"])
        assert result.exit_code == 2 and "projector.kind (--projector) is identity" in result.output

    def test_a_siglip_tower_with_a_config_of_another_shape_is_refused(self, tmp_path):
        vision = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                    num_attention_heads=12, image_size=256, patch_size=16)  # fmt: skip
        SiglipVisionModel(vision).save_pretrained(tmp_path / "siglip")
        cfg = resolve_config("default", {"model": "ViT-B-16-SigLIP", "pretrained": str(tmp_path / "siglip"),
                                         "layer": 0})  # fmt: skip
        with pytest.raises(SlowfastError, match="says image_size 256 but ViT-B-16-SigLIP's tower has 224"):
            Pipeline(cfg)
