"""Qwen2.5-VL (and Qwen3-VL's geometry), proven against transformers' own model.

A tiny random ``Qwen2_5_VLForConditionalGeneration`` (2 vision blocks of width 32, merger to 64, a 2-layer LLM of
width 64) is saved with ``save_pretrained`` together with a video processor whose pixel bounds keep the grids small.
``slowfast encode --config qwen2.5-vl-7b --pretrained FOLDER`` on a real clip must give the model's own
``get_video_features`` for the same frames, and ``qwen_positions.qwen_inputs`` from the token file the model's own
positions (``get_rope_index``) and logits of its own video forward (fp32, CPU). With SlowFast on, ``generate`` runs
from the token file and its recorded positions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from media import make_video
from typer.testing import CliRunner

pytest.importorskip("transformers")
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.models.qwen2_vl.video_processing_qwen2_vl import (  # noqa: E402
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize as hf_smart_resize  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as hf_smart_resize3  # noqa: E402

from slowfast_cli.cli.app import app  # noqa: E402
from slowfast_cli.config import resolve_config  # noqa: E402
from slowfast_cli.encoder.hfvl.families import FAMILIES, smart_resize, smart_resize_video  # noqa: E402
from slowfast_cli.errors import ConfigError, SlowfastError  # noqa: E402
from slowfast_cli.formats.safetensors_file import load as safetensors_tokens  # noqa: E402
from slowfast_cli.positions import token_positions  # noqa: E402
from slowfast_cli.qwen_positions import qwen3_inputs, qwen_inputs  # noqa: E402
from slowfast_cli.tokenfile import load_tokens  # noqa: E402
from slowfast_cli.video.decode import load_clip  # noqa: E402
from slowfast_cli.video.sampling import qwen_indices  # noqa: E402

VIDEO, IMAGE, START, END = 151, 152, 153, 154  # the tiny config's special token ids
FEATURES_TOL = 1e-6  # relative, max-abs over max-abs (BENCHMARKS.md, issue 17 (qwen) section: measured 0.0)
LOGITS_TOL = 1e-5  # relative (measured there: 0.0)
runner = CliRunner()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="session")
def qwen25(tmp_path_factory):
    """(folder, model): a tiny random Qwen2.5-VL saved with save_pretrained, with a small-bounds video processor."""
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=200, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1],
            window_size=56, tokens_per_second=2,
        ),
        video_token_id=VIDEO, image_token_id=IMAGE, vision_start_token_id=START, vision_end_token_id=END,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    folder = tmp_path_factory.mktemp("qwen25") / "Qwen2.5-VL-tiny"
    model.save_pretrained(folder)
    Qwen2VLVideoProcessor(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 24}).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="session")
def qwen_clip(tmp_path_factory):
    """3 s at 10 fps, 160x96: qwen sampling takes 6 frames, 3 temporal patches of a 3x6 merged grid."""
    return make_video(tmp_path_factory.mktemp("qv") / "clip.mp4", frames=30, size=(160, 96), fps=10)


def encode(video, folder, out, *extra):
    args = ["encode", str(video), "--pretrained", str(folder), "-o", str(out), "--dtype", "fp32", "--device", "cpu"]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return load_tokens(out)


@pytest.fixture(scope="session")
def own_layout(qwen25, qwen_clip, tmp_path_factory):
    folder, _ = qwen25
    return encode(qwen_clip, folder, tmp_path_factory.mktemp("qo") / "own.pt", "--config", "qwen2.5-vl-7b")


def model_video_inputs(folder, video):
    """The model's own processor on the frames slowfast decodes for the preset."""
    clip = load_clip(video, resolve_config("qwen2.5-vl-7b").video)
    processor = Qwen2VLVideoProcessor.from_pretrained(folder)
    out = processor(videos=[torch.from_numpy(np.asarray(clip.frames))], return_tensors="pt", cap_pixels_per_frame=False)
    return out["pixel_values_videos"], out["video_grid_thw"]


def test_features_equal_the_models_video_features(qwen25, qwen_clip, own_layout):
    folder, model = qwen25
    pixels, grid_thw = model_video_inputs(folder, qwen_clip)
    with torch.no_grad():
        expected = model.model.get_video_features(pixels, grid_thw).pooler_output[0]  # (T' * Gh * Gw, D)
    tokens, meta = own_layout["tokens"][0], own_layout["meta"]
    assert grid_thw.tolist() == [[3, 6, 12]] and meta["grid"] == [3, 6] and meta["frames"] == 3
    assert meta["positions"]["grid_thw"] == [3, 3, 6]
    assert tokens.shape == expected.shape == (54, 64)
    assert rel(tokens, expected) <= FEATURES_TOL


def test_logits_from_the_token_file_equal_the_models_video_forward(qwen25, qwen_clip, own_layout):
    folder, model = qwen25
    pixels, grid_thw = model_video_inputs(folder, qwen_clip)
    meta = own_layout["meta"]
    n = own_layout["tokens"].shape[1]
    before, after = [5, 6, START], [END, 7, 8, 9]
    ids = torch.tensor([before + [VIDEO] * n + after])
    types = (ids == VIDEO).int() * 2
    spg = torch.tensor([meta["positions"]["second_per_grid_t"]])
    assert spg.item() == 1.0  # 6 frames of a 3 s video: 2 fps, 2 frames per temporal patch
    with torch.no_grad():
        want_pos, want_delta = model.model.get_rope_index(ids, types, video_grid_thw=grid_thw, second_per_grid_ts=spg)
        want = model(
            input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid_thw, second_per_grid_ts=spg,
            mm_token_type_ids=types,
        ).logits  # fmt: skip
        inputs = qwen_inputs(model, torch.tensor(before + [VIDEO] + after), own_layout, VIDEO)
        assert torch.equal(inputs["position_ids"], want_pos) and torch.equal(inputs["rope_deltas"], want_delta)
        got = model(
            inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
        ).logits  # fmt: skip
    assert got.shape == want.shape
    assert rel(got, want) <= LOGITS_TOL
    with torch.no_grad():  # greedy decoding from the token file continues as the model's own from pixels does
        own_answer = model.generate(
            input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid_thw, second_per_grid_ts=spg,
            mm_token_type_ids=types, max_new_tokens=6, do_sample=False,
        )[0, ids.shape[1]:]  # fmt: skip
        inputs.pop("rope_deltas")
        answer = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0]
    assert answer.tolist() == own_answer.tolist()


def test_slowfast_tokens_keep_their_positions_and_generate_runs(qwen25, qwen_clip, own_layout, tmp_path):
    folder, model = qwen25
    sf = encode(qwen_clip, folder, tmp_path / "sf.pt", "--config", "qwen2.5-vl-7b-slowfast", "--fast-size", "2x2")
    meta = sf["meta"]
    assert meta["slow_frames"] == 3 and sf["tokens"].shape[1] == meta["output_tokens"] == 3 * 18 + 3 * 4
    where = token_positions(meta["positions"])
    assert len(where) == sf["tokens"].shape[1]
    assert where[:18] == token_positions(own_layout["meta"]["positions"])[:18]  # a slow patch: all its cells
    assert where[54:58] == [(0, 0, 0), (0, 0, 3), (0, 1, 0), (0, 1, 3)]  # fast 2x2 of 3x6: windows' first cells
    result = runner.invoke(app, ["show", str(tmp_path / "sf.pt"), "-o", str(tmp_path / "sf.png")])
    assert result.exit_code == 0 and (tmp_path / "sf.png").stat().st_size > 0, result.output
    ids = torch.tensor([[0, 0, 5, START, VIDEO, END, 7], [5, 6, START, VIDEO, END, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        inputs = qwen_inputs(model, ids, [sf, sf], VIDEO, attention_mask=mask)
        assert inputs["position_ids"].shape == (3, 2, 7 + 65)
        assert torch.equal(inputs["position_ids"][:, 0, :2], torch.zeros(3, 2, dtype=torch.long))  # padding
        inputs.pop("rope_deltas")
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 3)


@pytest.mark.parametrize("width,height", [(160, 96), (1280, 720), (640, 272), (30, 900), (3840, 2160), (57, 57)])
def test_smart_resize_equals_transformers(width, height):
    q25, q3 = FAMILIES["qwen2_5_vl"], FAMILIES["qwen3_vl"]
    want = hf_smart_resize(height, width, q25.factor, q25.min_pixels, q25.max_pixels)
    assert smart_resize(height, width, q25.factor, q25.min_pixels, q25.max_pixels) == want
    for frames in (2, 16, 97):
        want = hf_smart_resize3(frames, height, width, 2, q3.factor, q3.min_pixels, q3.max_pixels)
        assert smart_resize_video(frames, height, width, 2, q3.factor, q3.min_pixels, q3.max_pixels) == want


def test_a_frame_too_long_for_qwen3_is_named_by_its_own_size():
    """transformers checks the ratio after scaling a narrow frame up to 32 px; the message names the video's size."""
    q3 = FAMILIES["qwen3_vl"]
    with pytest.raises(ValueError, match="must be smaller than 200, got 410"):
        hf_smart_resize3(16, 4100, 10, 2, q3.factor, q3.min_pixels, q3.max_pixels)
    with pytest.raises(SlowfastError, match=r"^a 10x4100 frame is more than 200 times as long as it is wide$"):
        smart_resize_video(16, 4100, 10, 2, q3.factor, q3.min_pixels, q3.max_pixels)


def test_qwen_sampling_is_smart_nframes_then_rounded_linspace():
    """qwen-vl-utils' rule, spelled out: fps 2, at least 4, at most min(768, n), floored to even; torch's linspace."""
    for n in (4, 5, 30, 31, 100, 301, 1000, 5000):
        for fps in (10.0, 24.0, 29.97, 60.0):
            k = min(max(n / fps * 2.0, 4), min(768, n) // 2 * 2, n) // 2 * 2
            want = torch.linspace(0, n - 1, int(k)).round().long().tolist()
            assert qwen_indices(n, fps, 2.0, 768) == want


def test_budget_of_a_video_size_is_the_count_the_tensor_has(qwen25, qwen_clip, own_layout):
    folder, _ = qwen25
    args = ["budget", "--config", "qwen2.5-vl-7b", "--pretrained", str(folder), "--size", "160x96", "--frames", "6"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output_tokens"] == own_layout["tokens"].shape[1] == 54
    result = runner.invoke(app, ["budget", "--config", "qwen2.5-vl-7b", "--json"])  # no size: 1280x720, said
    assert result.exit_code == 0 and json.loads(result.stdout)["grid"] == [20, 36]
    assert "cannot know the token count without it: counted for a 1280x720 video" in result.output
    result = runner.invoke(app, [*args[:-4], "--size", "160x96x3"])  # the message says the order: WxH, not a grid's
    assert result.exit_code == 2 and "bad --size '160x96x3': expected WxH, the video's width x height" in result.output
    # Qwen3-VL's bound covers the whole video: --plan gives each frame count its own grid, as budget --frames does
    plan3 = ["budget", "--config", "qwen3-vl-8b", "--size", "1280x720", "--plan", "--context", "8192"]
    result = runner.invoke(app, [*plan3, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len({tuple(r["grid"]) for r in rows}) > 1
    for r in rows:
        one = ["budget", "--config", "qwen3-vl-8b", "--size", "1280x720", "--frames", str(2 * r["frames"]), "--json"]
        assert json.loads(runner.invoke(app, one).stdout)["grid"] == r["grid"]
    result = runner.invoke(app, plan3)
    assert f"--max-frames {2 * rows[0]['frames']} " in result.stdout  # frames sampled by rate: a cap, in frames
    result = runner.invoke(app, [*args[:-4], "--size", "16x16"])  # a size the model refuses: a bad flag, exit 2
    assert result.exit_code == 2 and "--size 16x16 with 64 frames: a 16x16 video is smaller" in result.output
    result = runner.invoke(app, [*args[:-4], "--size", "160x96", "--pretrained", str(folder) + "-typo"])
    assert result.exit_code == 2 and "-typo: no config.json" in result.output  # not the defaults, without a word
    bounds = json.loads((folder / "video_preprocessor_config.json").read_text())
    lying = with_processor(folder, {**bounds, "size": {"shortest_edge": 9000, "longest_edge": 3000}})
    for command in (["budget", "--size", "160x96"], ["encode", str(qwen_clip), "-o", str(lying / "x.pt")]):
        result = runner.invoke(app, [*command, "--config", "qwen2.5-vl-7b", "--pretrained", str(lying)])
        assert result.exit_code == 1 and "min_pixels 9000 / max_pixels 3000" in result.output, result.output
        assert str(lying / "video_preprocessor_config.json") in result.output and not (lying / "x.pt").exists()


def with_processor(folder, processor: dict):
    """A copy of checkpoint ``folder`` (weights linked) whose video processor config is ``processor``."""
    copy = folder.parent / f"{folder.name}-processor-{abs(hash(json.dumps(processor, sort_keys=True)))}"
    copy.mkdir(exist_ok=True)
    for p in folder.iterdir():
        if not (copy / p.name).exists() and p.name != "video_preprocessor_config.json":
            (copy / p.name).symlink_to(p)
    (copy / "video_preprocessor_config.json").write_text(json.dumps(processor))
    return copy


def test_bad_inputs_get_one_line(qwen25, qwen_clip, tmp_path):
    folder, _ = qwen25
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    cases = [
        (["--pretrained", str(other)], "model_type 'llava_onevision', not 'qwen2_5_vl'"),
        (["--pretrained", "none"], "must be a checkpoint folder with its config.json (e.g. Qwen/Qwen2.5-VL-7B"),
        (["--pretrained", str(folder), "--projector", "mlp2x_gelu"], "keep projector.kind (--projector) identity"),
        (["--pretrained", str(folder), "--layer", "-2"], "must be -1"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["encode", str(qwen_clip), "--config", "qwen2.5-vl-7b", *extra])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    out = tmp_path / "x.pt"
    args = ["encode", str(qwen_clip), "--config", "qwen2.5-vl-7b-slowfast", "--pretrained", str(folder), "-o", str(out)]
    result = runner.invoke(app, args)  # fast 4x4 on this video's 3x6 grid
    assert result.exit_code != 0 and str(qwen_clip) in result.output and "3x6" in result.output
    assert "--fast-size" in result.output and not out.exists()
    tiny = make_video(tmp_path / "tiny.mp4", frames=20, size=(40, 16), fps=10)
    result = runner.invoke(app, [*args[:1], str(tiny), *args[2:]])
    assert result.exit_code == 1 and f"{tiny}: a 40x16 video is smaller than the model's 28x28 pixels" in result.output
    one = make_video(tmp_path / "one frame.mp4", frames=1, size=(64, 64), fps=10)
    result = runner.invoke(app, [*args[:1], str(one), *args[2:]])  # qwen sampling needs 2 frames: not a traceback
    assert result.exit_code == 1 and f"{one}: 1 frame(s) is too few for 'qwen' sampling" in result.output
    lying = tmp_path / "lying"  # config.json says a wider tower than its tensors hold
    lying.mkdir()
    (lying / "model.safetensors").symlink_to(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 64
    (lying / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, [*args[:4], "--pretrained", str(lying), *args[6:]])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "visual.blocks.0.attn.proj.bias is (32,) but its config.json makes it (64,)" in result.output
    for key, value, message in [("depth", "two", "Field 'depth' expected int"), ("num_heads", 3, "not a multiple")]:
        config = json.loads((folder / "config.json").read_text())
        config["vision_config"][key] = value  # transformers' own errors, or a forward that would fail: one line
        (lying / "config.json").write_text(json.dumps(config))
        result = runner.invoke(app, [*args[:4], "--pretrained", str(lying), *args[6:]])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"{lying / 'config.json'}: " in result.output and message in result.output
    assert not out.exists()


def test_a_fixed_frame_count_on_a_qwen_preset(qwen25, qwen_clip, tmp_path):
    """--sampling centers --sample-fps 0 --frames N undoes the preset's rate from the command line (no TOML): N
    segment-centre frames, N/2 temporal patches; --sample-fps 0 with qwen sampling is refused."""
    folder, _ = qwen25
    args = ["--config", "qwen2.5-vl-7b", "--sampling", "centers", "--sample-fps", "0", "--frames", "4"]
    t = encode(qwen_clip, folder, tmp_path / "c.pt", *args)
    assert t["meta"]["frame_indices"] == [3, 11, 18, 26] and t["meta"]["frames"] == 2  # 30 frames, 4 centres
    result = runner.invoke(app, ["encode", str(qwen_clip), *args[:2], "--sample-fps", "0", "--pretrained", str(folder)])
    assert result.exit_code == 2 and "does not apply to --sampling qwen" in result.output


def test_batch_and_aggregate_keep_the_tokens_and_positions(qwen25, qwen_clip, own_layout, tmp_path):
    """batch (the local engine, one video per pass; here into safetensors files) gives encode's tokens and
    positions bit for bit; aggregate re-pools saved features with the positions of the new groups."""
    folder, _ = qwen25
    videos = tmp_path / "in"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(qwen_clip.read_bytes())
    args = ["batch", str(videos), "-o", str(tmp_path / "out"), "--config", "qwen2.5-vl-7b", "--pretrained", str(folder)]
    result = runner.invoke(app, [*args, "--dtype", "fp32", "--device", "cpu", "--format", "safetensors"])
    assert result.exit_code == 0, result.output
    batched = safetensors_tokens(tmp_path / "out" / "a.safetensors")
    assert torch.equal(batched["tokens"], own_layout["tokens"])
    assert batched["meta"]["positions"] == own_layout["meta"]["positions"]
    embed = torch.nn.Embedding(200, 64)
    a = qwen_inputs(embed, torch.tensor([5, VIDEO]), tmp_path / "out" / "a.safetensors", VIDEO, tokens_per_second=2)
    b = qwen_inputs(embed, torch.tensor([5, VIDEO]), own_layout, VIDEO, tokens_per_second=2)
    assert torch.equal(a["position_ids"], b["position_ids"]) and torch.equal(a["inputs_embeds"], b["inputs_embeds"])
    sf = encode(
        qwen_clip, folder, tmp_path / "sf.pt", "--config", "qwen2.5-vl-7b", "--save-features", str(tmp_path / "f.pt")
    )
    args = ["aggregate", str(tmp_path / "f.pt"), "-o", str(tmp_path / "ag.pt"), "--layout", "slowfast"]
    result = runner.invoke(app, [*args, "--slow-frames", "1", "--fast-size", "4x4"])  # larger than this video's 3x6
    assert result.exit_code == 2 and f"{tmp_path / 'f.pt'}: this video's merged grid is 3x6" in result.output
    result = runner.invoke(app, [*args, "--slow-frames", "1", "--fast-size", "1x1"])
    assert result.exit_code == 0, result.output
    ag = load_tokens(tmp_path / "ag.pt")
    where = token_positions(ag["meta"]["positions"])
    assert ag["tokens"].shape[1] == len(where) == 18 + 3 and where[18:] == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert torch.equal(ag["tokens"][0, :18], sf["tokens"][0, :18])
    assert ag["meta"]["slow_video_indices"] == [sf["meta"]["frame_indices"][0]]
    # a folder whose videos have other grids: the one a 4x4 pool does not fit fails alone, named; the other is done
    both = tmp_path / "both"
    both.mkdir()
    (both / "a.mp4").write_bytes(qwen_clip.read_bytes())  # a 3x6 merged grid
    make_video(both / "big.mp4", frames=30, size=(320, 320), fps=10)  # a 4x4 merged grid
    args = ["batch", str(both), "-o", str(tmp_path / "tok2"), "--save-features", str(tmp_path / "feat2")]
    result = runner.invoke(app, [*args, "--config", "qwen2.5-vl-7b", "--pretrained", str(folder), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    args = ["aggregate", str(tmp_path / "feat2"), "-o", str(tmp_path / "ag2"), "--layout", "slowfast"]
    result = runner.invoke(app, [*args, "--slow-frames", "1", "--fast-size", "4x4"])
    assert result.exit_code == 1 and "1 of 2 videos failed" in result.output, result.output
    lines = [json.loads(line) for line in (tmp_path / "ag2" / "manifest.jsonl").read_text().splitlines()]
    assert {r["source"]: r["status"] for r in lines} == {"a.pt": "failed", "big.pt": "ok"}
    assert "a.pt: fast size 4x4 (--fast-size) is larger than the 3x6 patch grid" in lines[0]["error"]
    assert (tmp_path / "ag2" / "big.pt").is_file() and not (tmp_path / "ag2" / "a.pt").exists()


def test_without_transformers_one_line(qwen25, qwen_clip, tmp_path):
    """No transformers installed (hidden here): encode says how to install it, in one line, exit 1."""
    import subprocess
    import sys

    folder, _ = qwen25
    code = (
        "import sys; sys.modules['transformers'] = None; from slowfast_cli.cli.app import main; "
        f"sys.argv = ['slowfast', 'encode', {str(qwen_clip)!r}, '--config', 'qwen2.5-vl-7b', '--pretrained', "
        f"{str(folder)!r}, '-o', {str(tmp_path / 'x.pt')!r}]; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert 'pip install "slowfast-cli[hf]"' in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="session")
def qwen3(tmp_path_factory):
    """(folder, model): a tiny random Qwen3-VL (one deepstack merger) saved with save_pretrained."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    cfg = Qwen3VLConfig(
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=200, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0,
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            deepstack_visual_indexes=[0], num_position_embeddings=64,
        ),
        video_token_id=VIDEO, image_token_id=IMAGE, vision_start_token_id=START, vision_end_token_id=END,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    folder = tmp_path_factory.mktemp("qwen3") / "Qwen3-VL-tiny"
    model.save_pretrained(folder)
    Qwen3VLVideoProcessor(size={"shortest_edge": 32 * 32 * 8, "longest_edge": 32 * 32 * 96}).save_pretrained(folder)
    return folder, model


def timestamp_ids(seconds: float) -> list[int]:
    """A stand-in tokenizer for "<t seconds>": two ids that depend on the text."""
    text = f"<{seconds:.1f} seconds>"
    return [10 + sum(map(ord, text)) % 90, 100 + len(text)]


def test_qwen3_features_and_logits_equal_the_models_own(qwen3, qwen25, own_layout, qwen_clip, tmp_path):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    folder, model = qwen3
    own = encode(qwen_clip, folder, tmp_path / "q3.pt", "--config", "qwen3-vl-8b")
    clip = load_clip(qwen_clip, resolve_config("qwen3-vl-8b").video)
    processor = Qwen3VLVideoProcessor.from_pretrained(folder)
    frames = torch.from_numpy(np.asarray(clip.frames))
    got = processor(videos=[frames], return_tensors="pt", do_sample_frames=False, cap_pixels_per_frame=False)
    pixels, grid_thw = got["pixel_values_videos"], got["video_grid_thw"]
    t, h, w = grid_thw[0].tolist()
    with torch.no_grad():
        feats = model.model.get_video_features(pixels, grid_thw)
    want = torch.cat([feats.pooler_output[0], feats.deepstack_features[0][0]], dim=-1)  # (T' * Gh * Gw, 2 * 64)
    tokens, meta = own["tokens"][0], own["meta"]
    assert meta["positions"]["grid_thw"] == [t, h // 2, w // 2] and meta["positions"]["deepstack"] == 1
    assert tokens.shape == want.shape and rel(tokens, want) <= FEATURES_TOL
    # the processor's own prompt: per temporal patch "<t seconds>" + start + tokens + end, times from its metadata
    seconds = [(a + b) / 2 / 10.0 for a, b in zip(clip.indices[::2], clip.indices[1::2])]
    assert meta["positions"]["patch_seconds"] == pytest.approx(seconds)
    n = (h // 2) * (w // 2)
    ids = [5, 6]
    for s in seconds:
        ids += [*timestamp_ids(s), START] + [VIDEO] * n + [END]
    ids = torch.tensor([ids + [7, 8]])
    with torch.no_grad():
        want_logits = model(
            input_ids=ids,
            pixel_values_videos=pixels,
            video_grid_thw=grid_thw,
            mm_token_type_ids=(ids == VIDEO).int() * 2,
        ).logits
        want_pos, _ = model.model.get_rope_index(ids, (ids == VIDEO).int() * 2, video_grid_thw=grid_thw)
        inputs = qwen3_inputs(torch.tensor([5, 6, VIDEO, 7, 8]), own, VIDEO, START, END, timestamp_ids)
        assert torch.equal(inputs["input_ids"], ids) and torch.equal(inputs["position_ids"], want_pos)
        logits = model(**inputs).logits
    assert rel(logits, want_logits) <= LOGITS_TOL
    # SlowFast: one slow patch, every patch at 1x1; each run of one patch's tokens is written as its own frame
    sf = encode(qwen_clip, folder, tmp_path / "sf.pt", "--config", "qwen3-vl-8b-slowfast", "--slow-frames", "1",
                "--fast-size", "1x1")  # fmt: skip
    with torch.no_grad():
        inputs = qwen3_inputs(torch.tensor([5, VIDEO, 7]), sf, VIDEO, START, END, timestamp_ids)
        assert int((inputs["input_ids"] == START).sum()) == 1 + t
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]
        assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape == (
            1,
            inputs["input_ids"].shape[1] + 3,
        )
    # another family's token file: one line, never inputs without their deepstack features or misplaced positions
    with pytest.raises(ConfigError, match="tokens of hf:qwen2_5_vl, but these inputs are for hf:qwen3_vl's LLM"):
        qwen3_inputs(torch.tensor([5, VIDEO, 7]), own_layout, VIDEO, START, END, timestamp_ids)
    with pytest.raises(ConfigError, match=r"sf\.pt: tokens of hf:qwen3_vl, but these inputs are for hf:qwen2_5_vl"):
        qwen_inputs(qwen25[1], torch.tensor([5, VIDEO, 7]), tmp_path / "sf.pt", VIDEO)
    from slowfast_cli.api import VideoEncoder

    enc = VideoEncoder.from_preset("qwen3-vl-8b", pretrained=str(folder), dtype="fp32")
    with pytest.raises(ConfigError, match="hf:qwen3_vl: pass fps= with frames"):  # was an IndexError
        enc.encode(np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(SlowfastError, match=r"^frames: 1 frame\(s\) is fewer than the model's 2 frames"):
        enc.encode(np.zeros((1, 64, 64, 3), np.uint8), fps=2.0)  # was transformers' ValueError


def test_readme_qwen_vl_models_example_runs(qwen25, qwen_clip, tmp_path, monkeypatch):
    """The README's ``## Qwen-VL models`` Python block, run as written on the tiny checkpoint (its question's ids
    stand in for a tokenizer, which the tiny checkpoint has none of)."""
    import re
    from pathlib import Path

    folder, _ = qwen25
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"## Qwen-VL models\n.*?```python\n(.*?)```", readme, re.S).group(1)
    tokenizer = 'AutoTokenizer.from_pretrained(CHECKPOINT)("What happens in this video?").input_ids'
    assert tokenizer in code
    monkeypatch.chdir(tmp_path)
    encode(qwen_clip, folder, tmp_path / "clip.sf.pt", "--config", "qwen2.5-vl-7b-slowfast", "--fast-size", "2x2")
    scope = {"CHECKPOINT": str(folder)}
    exec(code.replace(tokenizer, "[5, 6, 7]"), scope)
    assert scope["answer"].shape[0] == 1


def test_only_the_shards_holding_the_tower_are_read(qwen25, qwen_clip, own_layout, tmp_path):
    """A sharded checkpoint given by its index, with every shard that holds no vision tensor deleted, gives the
    same tokens: only the shards holding visual.* are opened."""
    folder, model = qwen25
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    for name in ("video_preprocessor_config.json",):
        (sharded / name).write_bytes((folder / name).read_bytes())
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    vision = {f for k, f in index.items() if k.startswith("visual.")}
    dropped = {f for f in index.values()} - vision
    assert dropped  # the LLM's shards
    for f in dropped:
        (sharded / f).unlink()
    got = encode(qwen_clip, sharded / "model.safetensors.index.json", tmp_path / "s.pt", "--config", "qwen2.5-vl-7b")
    assert torch.equal(got["tokens"], own_layout["tokens"])
