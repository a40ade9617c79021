"""The peers of ``bench_speed.py``: encode every video of a folder the way a careful user would without slowfast.

``naive``: decord ``get_batch`` of T uniformly spaced frames at full size, torch preprocessing (shorter side to the
model's size, bicubic with antialias, centre crop, CLIP mean/std), open_clip's ViT tower (random weights),
``forward_intermediates`` at the penultimate block, one video per forward pass, tokens saved with ``torch.save``.
``transformers``: the same frames through ``CLIPImageProcessor`` and ``CLIPVisionModel`` (a random ViT-B/32
config), ``hidden_states[-2]`` without the class token.

Run by ``bench_speed.py`` in a fresh process (its CPU time is measured from outside):
    python benchmarks/peer_encode.py naive IN_DIR OUT_DIR --frames 16 --dtype fp32
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=["naive", "transformers"])
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--model", default="ViT-B-32")
    args = p.parse_args()

    import sys

    sys.modules["nvidia"] = None  # decord2 would preload every pip-installed NVIDIA library (NVBLAS: a crash here)
    import decord

    del sys.modules["nvidia"]  # as slowfast_cli.video.files.without_cuda_preload does
    import numpy as np
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.peer == "naive":
        import open_clip
        import torch.nn.functional as F

        torch.manual_seed(0)
        visual = open_clip.create_model(args.model, pretrained=None).visual.eval().to(dtype)
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        blocks = len(visual.transformer.resblocks)

        def encode(frames: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
            h, w = x.shape[-2:]
            s = size / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True)
            top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x = ((x[..., top : top + size, left : left + size] / 255).clamp(0, 1) - mean) / std
            out = visual.forward_intermediates(x.to(dtype), indices=[blocks - 2], intermediates_only=True,
                                               output_fmt="NLC")  # fmt: skip
            return out["image_intermediates"][0]
    else:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(0)
        cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=224, patch_size=32)  # fmt: skip
        model = CLIPVisionModel(cfg).eval().to(dtype)
        processor = CLIPImageProcessor()

        def encode(frames: np.ndarray) -> torch.Tensor:
            x = processor(images=list(frames), return_tensors="pt")["pixel_values"].to(dtype)
            return model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]

    with torch.inference_mode():
        for path in sorted(args.in_dir.glob("*.mp4")):
            vr = decord.VideoReader(str(path))
            idx = np.linspace(0, len(vr) - 1, args.frames).round().astype(int).tolist()
            tokens = encode(vr.get_batch(idx).asnumpy())
            torch.save({"tokens": tokens.cpu()}, args.out_dir / (path.stem + ".pt"))


if __name__ == "__main__":
    main()
