"""InternVL 3 through transformers' own vision code (``--model hf:internvl``), proven against the model itself.

A tiny random ``InternVLForConditionalGeneration`` (InternViT at the real 448 px and 14-px patches, 2 layers, a
tiny Qwen2 LLM) is saved with ``save_pretrained``; every parameter is drawn at random (the class token and position
embeddings start at zero otherwise). ``slowfast encode --config internvl3-8b --pretrained FOLDER`` on a real clip
must give the model's ``get_image_features`` for the same frames bit for bit, and ``inputs_embeds`` built from the
token file (``llm.frame_segments`` + ``splice_video``) the logits of the model's own forward with its
``Frame{k}: <img>...</img>`` prompt. The pixels are the model card's preprocessing (PIL squash to 448, bicubic;
ImageNet mean/std), transcribed here with PIL and torchvision.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from media import make_video
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import InternVLConfig, InternVLForConditionalGeneration
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.config import VideoCfg
from slowfast_cli.llm import frame_segments, splice_video
from slowfast_cli.video.decode import load_clip
from slowfast_cli.video.sampling import internvl_indices

IMAGE_TOKEN, START, END, PLACEHOLDER = 299, 7, 8, 298
LOGITS_TOL = 1e-5  # relative; measured 0.0 (BENCHMARKS §21)
runner = CliRunner()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", frames=30, size=(160, 96), fps=10)


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    torch.manual_seed(0)
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=[448, 448], patch_size=[14, 14], attention_bias=True),
        text_config=dict(model_type="qwen2", hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, vocab_size=300),
        image_token_id=IMAGE_TOKEN,
    )  # fmt: skip
    model = InternVLForConditionalGeneration(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("ivl") / "InternVL3-tiny-hf"
    model.save_pretrained(folder)
    return folder, InternVLForConditionalGeneration.from_pretrained(folder).eval()


def encode(video, out, folder, *flags: str) -> dict:
    args = ["encode", str(video), "-o", str(out), "--config", "internvl3-8b", "--pretrained", str(folder),
            "--dtype", "fp32", "--frames", "4", *flags]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return torch.load(out, weights_only=True)


def card_pixels(video, frames: int) -> torch.Tensor:
    """The model card's load_video(max_num=1): get_index middles, one 448x448 tile per frame (dynamic_preprocess's
    PIL resize, then build_transform: Resize((448, 448), BICUBIC), ToTensor, Normalize(ImageNet)). (T, 3, 448, 448)"""
    clip = load_clip(video, VideoCfg(frames=frames, sampling="internvl", decode_resize=False), None)
    transform = T.Compose([T.Resize((448, 448), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    return torch.stack([transform(Image.fromarray(f).convert("RGB").resize((448, 448))) for f in clip.frames])


def prompt_ids(counts: list[tuple[int, int]], token: int) -> torch.Tensor:
    """``Frame{k}: <img>{n tokens}</img>\\n`` per (k, n), with made-up ids for the text."""
    ids = [1, 2]
    for k, n in counts:
        ids += [10 + k, 9, START, *([token] * n), END, 5]
    return torch.tensor([ids + [3, 4]])


def test_sampling_is_the_model_cards_get_index():
    def get_index(max_frame, num_segments):  # the card's, bound=None, first_idx=0 (transcribed)
        start_idx, end_idx = 0, max_frame
        seg_size = float(end_idx - start_idx) / num_segments
        return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]

    for n in [1, 2, 3, 7, 30, 31, 100, 301, 1000]:
        for t in [1, 4, 8, 16, 32, 64]:
            assert internvl_indices(n, t) == get_index(n - 1, t), (n, t)


def test_features_and_logits_equal_the_models(internvl, video, tmp_path):
    folder, model = internvl
    obj = encode(video, tmp_path / "ivl.pt", folder)
    tokens, meta = obj["tokens"], obj["meta"]
    assert tokens.shape == (1, 4 * 256, 48)
    assert (meta["layout"], meta["output_tokens"], meta["model"]) == ("frames", 1024, "hf:internvl")
    assert meta["provenance"]["libraries"]["transformers"]  # its code computes the tokens: part of resume's record
    pixels = card_pixels(video, 4)
    clip = load_clip(video, VideoCfg(frames=4, sampling="internvl", decode_resize=False), None)
    assert meta["frame_indices"] == [int(i) for i in clip.indices]
    with torch.no_grad():
        own = model.model.get_image_features(pixel_values=pixels).pooler_output  # (4, 256, 48)
    assert torch.equal(tokens[0], own.reshape(-1, 48))  # bit for bit
    segments = frame_segments(obj)
    assert [(k, len(t)) for k, t in segments] == [(k, 256) for k in (1, 2, 3, 4)]
    ids = prompt_ids([(k, 256) for k in (1, 2, 3, 4)], IMAGE_TOKEN)
    with torch.no_grad():
        theirs = model(input_ids=ids, pixel_values=pixels).logits
        inputs = splice_video(model, prompt_ids([(k, 1) for k in (1, 2, 3, 4)], PLACEHOLDER),
                              [t for _, t in segments], PLACEHOLDER)  # fmt: skip
        ours = model(**inputs).logits
    assert rel(ours, theirs) <= LOGITS_TOL


def test_slowfast_tokens_generate(internvl, video, tmp_path):
    """The SlowFast preset: 2 slow frames of 256 + 8 frames of 4x4 = 640 tokens, the slow ones equal to the
    model's own for those frames; generate runs from the token file."""
    folder, model = internvl
    out = tmp_path / "sf.pt"
    result = runner.invoke(app, ["encode", str(video), "-o", str(out), "--config", "internvl3-8b-slowfast",
                                 "--pretrained", str(folder), "--dtype", "fp32", "--frames", "8",
                                 "--slow-frames", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    obj = torch.load(out, weights_only=True)
    assert obj["tokens"].shape == (1, 2 * 256 + 8 * 16, 48)
    segments = frame_segments(obj)
    slow = [k for k, t in segments if len(t) == 256]
    assert len(slow) == 2 and [k for k, t in segments if len(t) == 16] == list(range(1, 9))
    with torch.no_grad():
        own = model.model.get_image_features(pixel_values=card_pixels(video, 8)).pooler_output
    assert torch.equal(segments[0][1], own[slow[0] - 1]) and torch.equal(segments[1][1], own[slow[1] - 1])
    inputs = splice_video(model, prompt_ids([(k, 1) for k, _ in segments], PLACEHOLDER), [t for _, t in segments],
                          PLACEHOLDER)  # fmt: skip
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 3)


def test_an_original_checkpoint_gives_the_same_tokens(internvl, video, tmp_path):
    """OpenGVLab's own naming (vision_model.*, attn.qkv fused, ls1/ls2, mlp1.{0,1,3}) and internvl_chat config."""
    folder, _ = internvl
    hf = json.loads((folder / "config.json").read_text())
    state = {}
    for key, value in load_file(folder / "model.safetensors").items():
        if key.startswith("multi_modal_projector."):
            index = {"layer_norm": "0", "linear_1": "1", "linear_2": "3"}[key.split(".")[1]]
            state[f"mlp1.{index}.{key.split('.')[-1]}"] = value
        elif key.startswith("vision_tower."):
            k = key.replace("vision_tower.", "vision_model.").replace("encoder.layer.", "encoder.layers.")
            k = k.replace("cls_token", "class_embedding").replace("position_embeddings", "position_embedding")
            k = k.replace("patch_embeddings.projection", "patch_embedding").replace("lambda_", "ls")
            k = k.replace("attention.projection_layer", "attn.proj").replace("layernorm_before", "norm1")
            k = k.replace("layernorm_after", "norm2").replace(".attention.", ".attn.")
            state[k] = value
        else:
            state[key] = value
    for key in [k for k in state if ".attn.q_proj." in k]:
        parts = [state.pop(key.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj")]
        state[key.replace("q_proj", "qkv")] = torch.cat(parts)
    original = tmp_path / "InternVL3-tiny"
    original.mkdir()
    save_file(state, original / "model.safetensors")
    vision = dict(hf["vision_config"], model_type="intern_vit_6b", qkv_bias=True, qk_normalization=False)
    for key in ("attention_bias", "use_qk_norm"):
        vision.pop(key)
    config = {"model_type": "internvl_chat", "vision_config": vision, "downsample_ratio": 0.5, "select_layer": -1,
              "ps_version": "v2", "llm_config": {"hidden_size": 48, "model_type": "qwen2"}}  # fmt: skip
    (original / "config.json").write_text(json.dumps(config))
    a = encode(video, tmp_path / "a.pt", folder)["tokens"]
    b = encode(video, tmp_path / "b.pt", original)["tokens"]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "flags, message",
    [
        ((), "must be a checkpoint folder"),
        (("--pretrained", ".", "--projector", "mlp2x_gelu"), "the projector is the model's own"),
        (("--pretrained", ".", "--newline", "grid"), "has no newline token"),
        (("--pretrained", ".", "--layout", "slowfast", "--fast-size", "17x17"), "larger than the 16x16"),
    ],
)
def test_bad_settings_are_one_line(video, tmp_path, flags, message):
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "x.pt"), "--config", "internvl3-8b",
                                 *flags])  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.pt").exists()


def test_another_familys_checkpoint_is_one_line(internvl, video, tmp_path):
    folder, _ = internvl
    other = tmp_path / "qwen"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (other / "model.safetensors").symlink_to(folder / "model.safetensors")
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "x.pt"), "--config", "internvl3-8b",
                                 "--pretrained", str(other), "--dtype", "fp32"])  # fmt: skip
    assert result.exit_code != 0
    assert "model_type 'qwen2_5_vl' is not an InternVL checkpoint" in result.output, result.output
    assert not (tmp_path / "x.pt").exists()
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 1  # the tensors hold 2 blocks: never a silently shorter tower
    (other / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "x.pt"), "--config", "internvl3-8b",
                                 "--pretrained", str(other), "--frames", "1"])  # fmt: skip
    assert result.exit_code == 1 and "the vision tower has blocks 0, 1, but" in result.output, result.output
    assert "num_hidden_layers = 1" in result.output and not (tmp_path / "x.pt").exists()
    config["vision_config"].update(num_hidden_layers=2, num_attention_heads=3)  # 32 wide: transformers refuses it
    (other / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "x.pt"), "--config", "internvl3-8b",
                                 "--pretrained", str(other), "--frames", "1"])  # fmt: skip
    assert result.exit_code == 1 and "config.json: not a valid InternVL config (embed_dim" in result.output


def test_pixels_are_within_one_level_of_transformers_video_processor(video):
    """The model card resizes with PIL (as slowfast); transformers' InternVLVideoProcessor with torchvision: at most
    one level of 255 apart (measured: max 1.0, mean 4e-5 levels)."""
    from transformers import InternVLVideoProcessor

    ours = card_pixels(video, 4)
    clip = load_clip(video, VideoCfg(frames=4, sampling="internvl", decode_resize=False), None)
    processor = InternVLVideoProcessor(size={"height": 448, "width": 448}, image_mean=[0.485, 0.456, 0.406],
                                       image_std=[0.229, 0.224, 0.225])  # fmt: skip
    theirs = processor(videos=[clip.frames], return_tensors="pt")["pixel_values_videos"][0]
    levels = (theirs - ours) * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    assert levels.abs().max().item() <= 1 + 1e-4


def test_only_the_towers_shards_are_read(internvl, video, tmp_path):
    """A sharded checkpoint whose LLM shard is missing still encodes (the index names it; it is never opened), and
    gives the same tokens; a missing tower shard is one line naming it."""
    folder, _ = internvl
    state = load_file(folder / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tower = {k: v for k, v in state.items() if not k.startswith("language_model") and "lm_head" not in k}
    llm = {k: v for k, v in state.items() if k not in tower}
    assert llm and tower
    save_file(tower, sharded / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tower}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in llm})  # never written: the LLM's shard
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (sharded / "config.json").write_text((folder / "config.json").read_text())
    a = encode(video, tmp_path / "a.pt", folder)["tokens"]
    b = encode(video, tmp_path / "b.pt", sharded)["tokens"]
    assert torch.equal(a, b)
    (sharded / "model-00001-of-00002.safetensors").unlink()
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "c.pt"), "--config", "internvl3-8b",
                                 "--pretrained", str(sharded), "--dtype", "fp32"])  # fmt: skip
    assert result.exit_code == 1 and "model-00001-of-00002.safetensors" in result.output, result.output
    assert not (tmp_path / "c.pt").exists()


def test_readme_internvl_example_runs(internvl, video, tmp_path, monkeypatch):
    """The README's block under '### Models whose towers only transformers holds: `--model hf:internvl`', run as
    written on a token file of the tiny model, with a stand-in for the checkpoint's tokenizer (one id per piece)."""
    import re
    from pathlib import Path

    folder, model = internvl
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    heading = "### Models whose towers only transformers holds: `--model hf:internvl`"
    code = re.search(re.escape(heading) + r".*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    encode(video, tmp_path / "clip.tokens.pt", folder)

    class Tokenizer:  # the text's pieces -> ids, <VIDEO> -> PLACEHOLDER (the real one is the checkpoint's)
        def convert_tokens_to_ids(self, token):
            return PLACEHOLDER

        def __call__(self, text, return_tensors):
            pieces = re.findall(r"<VIDEO>|<img>|</img>|\w+|\S|\n", text)
            ids = [PLACEHOLDER if p == "<VIDEO>" else sum(map(ord, p)) % 250 for p in pieces]
            return type("Batch", (), {"input_ids": torch.tensor([ids])})

    namespace = {"tokenizer": Tokenizer(), "model": model}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["inputs"]["inputs_embeds"].shape[1] == len(namespace["ids"][0]) - 4 + 4 * 256


def test_a_fifo_as_the_checkpoint_never_blocks(video, tmp_path):
    import os

    fifo = tmp_path / "weights"
    os.mkfifo(fifo)
    result = runner.invoke(app, ["encode", str(video), "-o", str(tmp_path / "x.pt"), "--config", "internvl3-8b",
                                 "--pretrained", str(fifo)])  # fmt: skip
    assert result.exit_code == 2 and "is a FIFO" in result.output, result.output
