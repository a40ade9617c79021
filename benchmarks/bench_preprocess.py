"""What the decode-time resize (``video.decode_resize``, FFmpeg's scaler) costs in fidelity and buys in speed.

On by default, for videos whose short side is at least ``DECODE_RESIZE_MIN`` (2) times the model's side, decord
asks FFmpeg's swscale to scale each frame while decoding (short side to the model's, then ``video.center_crop``),
instead of decoding full frames and resizing them like PIL. On a generated 1280x720 clip (``common.cached_video``: a
panning blocky texture with grain, harder on a resizer than most footage), for a 336-px model (ViT-L-14-336, the
tower of LLaVA-1.5/1.6 and SF-LLaVA):

1. *Fidelity*: mean / p99 / max difference in 8-bit levels between each path's 336x336 pixels and PIL's (open_clip's
   transform, LLaVA's ``image.resize``), for both resize policies: ``shortest`` (resize + centre crop; decoder vs
   PIL, and the exact path's torch mimic vs PIL) and ``squash`` (PIL itself in the tool; a decoder scaling straight
   to 336x336 is what a decode-time squash would be). Then the relative change of layer -2 tokens, random weights
   (||tokens(path) - tokens(PIL)|| / ||tokens(PIL)||), on the first ``--feature-frames`` frames.
2. *Speed*: decoding T frames scaled by the decoder vs at full size, and preprocessing each (on ``--device``).
3. *Geometry*: PIL-based pipelines (torchvision's ``Resize``, open_clip, transformers' ``shortest_edge``) truncate
   ``int(side * long / short)``; ``video.decode_size`` rounded half up until this script found it (1280x800 at 336:
   538 against 537), and now truncates too: the sizes where they still differ (none expected).
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZES = [(1280, 720), (1920, 1080), (3840, 2160), (1280, 800), (1920, 1200), (1366, 768), (1440, 1080), (640, 360),
         (854, 480), (2560, 1080), (720, 1280), (1080, 1920)]  # fmt: skip
SIDES = (224, 336, 384)


def geometry_rows() -> list[dict]:
    """Resized size and crop offset, decoder (``decode_size``) vs PIL pipelines, where they differ."""
    from slowfast_cli.video.geometry import decode_size

    rows = []
    for w, h in SIZES:
        for side in SIDES:
            dw, dh = decode_size(w, h, side)
            short, long = min(w, h), max(w, h)
            trunc = int(side * long / short)  # torchvision's _compute_resized_output_size, HF's shortest_edge
            pw, ph = (side, trunc) if w <= h else (trunc, side)
            if (dw, dh) == (pw, ph):
                continue
            offsets = [int(round((n - side) / 2.0)) for n in (max(dw, dh), max(pw, ph))]  # torchvision center_crop
            rows.append({"video": f"{w}x{h}", "side": side, "decoder": f"{dw}x{dh}", "pil": f"{pw}x{ph}",
                         "exact": f"{side * long / short:.3f}",
                         "crop_offset": "{} vs {}".format(*offsets)})  # fmt: skip
    return rows


def _pil_shortest(frames, side: int):
    """open_clip's eval transform in 8-bit levels: PIL bicubic, short side to ``side`` (truncated), centre crop."""
    import numpy as np
    from PIL import Image

    out = []
    for f in frames:
        h, w = f.shape[:2]
        nw, nh = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
        img = np.asarray(Image.fromarray(f).resize((nw, nh), Image.Resampling.BICUBIC))
        top, left = int(round((nh - side) / 2.0)), int(round((nw - side) / 2.0))
        out.append(img[top : top + side, left : left + side])
    return np.stack(out)


def _pil_squash(frames, side: int):
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.BICUBIC)) for f in frames])


def _levels(a, b) -> dict:
    import numpy as np

    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel()
    return {"mean": float(d.mean()), "p99": float(np.quantile(d, 0.99)), "max": int(d.max()),
            "changed": float((d > 0).mean())}  # fmt: skip


def fidelity(clips: list[Path], model: str, frames: int, feature_frames: int, device) -> list[dict]:
    import torch

    from slowfast_cli.config import EncoderCfg
    from slowfast_cli.encoder.encoder import build_encoder

    enc = build_encoder(EncoderCfg(model=model, pretrained="none", layer=-2), device, torch.float32)
    side = max(enc.image_size)
    return [row for path in clips for row in _fidelity_of(path, enc, side, frames, feature_frames, device)]


def _fidelity_of(path: Path, enc, side: int, frames: int, feature_frames: int, device) -> list[dict]:
    import decord
    import numpy as np
    import torch

    from slowfast_cli.config import VideoCfg
    from slowfast_cli.video.decode import DECODE_RESIZE_MIN, load_clip

    exact = load_clip(path, VideoCfg(frames=frames, decode_resize=False), side)
    fast = load_clip(path, VideoCfg(frames=frames, decode_resize=True), side, min_scale=DECODE_RESIZE_MIN)
    assert fast.frames.shape[1:3] == (side, side), "the clip is too small for decode-time scaling"
    full = exact.frames  # (T, H, W, 3) at full size
    reader = decord.VideoReader(str(path), width=side, height=side)  # what a decode-time squash would give
    squash_decoder = reader.get_batch(exact.indices).asnumpy()
    pil_short, pil_squash = _pil_shortest(full, side), _pil_squash(full, side)
    ours_short = enc.preprocess(torch.from_numpy(full))  # the exact path: torch mimic of PIL, on the device
    mean, std = (torch.tensor(enc.preprocess_cfg[k], device=device).view(3, 1, 1) for k in ("mean", "std"))
    ours_short_levels = ((ours_short * std + mean) * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu()

    def tokens(levels) -> torch.Tensor:
        return enc.encode(torch.as_tensor(np.ascontiguousarray(levels[:feature_frames])), batch_frames=feature_frames)

    cases = [
        ("shortest", "decoder (FFmpeg) + centre crop", fast.frames, pil_short),
        ("shortest", "full decode + tool's torch resize", ours_short_levels.numpy(), pil_short),
        ("squash", f"decoder (FFmpeg) straight to {side}x{side}", squash_decoder, pil_squash),
        ("squash", "full decode + PIL (the tool)", pil_squash.copy(), pil_squash),
    ]
    rows, refs = [], {}
    for policy, path_name, levels, reference in cases:
        ref = refs.setdefault(policy, tokens(reference))
        t = tokens(levels)
        rel = ((t - ref).norm() / ref.norm()).item()
        rows.append({"clip": path.name, "policy": policy, "path": path_name, **_levels(levels, reference),
                     "feature_rel": rel})  # fmt: skip
    return rows


def speed(path: Path, model: str, frames: int, device) -> list[dict]:
    import torch

    from slowfast_cli.config import EncoderCfg, VideoCfg
    from slowfast_cli.encoder.encoder import build_encoder
    from slowfast_cli.video.decode import DECODE_RESIZE_MIN, load_clip

    rows = []
    for resize in ("shortest", "squash"):
        enc = build_encoder(EncoderCfg(model=model, pretrained="none", layer=0, resize=resize), device, torch.float32)
        side = max(enc.image_size)
        for scaled in (True, False):
            if scaled and resize == "squash":
                continue  # the tool does not scale at decode time for squash (it would crop): see fidelity
            cfg = VideoCfg(frames=frames, decode_resize=scaled)

            def decode(cfg=cfg, side=side):
                return load_clip(path, cfg, side, min_scale=DECODE_RESIZE_MIN).frames

            decode_t = common.measure(decode)
            pre_t = common.measure(partial(enc.preprocess, torch.from_numpy(decode())), device=device)
            total = decode_t.median + pre_t.median
            rows.append({"resize": resize, "decode": "scaled by decoder" if scaled else "full size",
                         "decode_s": decode_t.median, "preprocess_s": pre_t.median, "total_s": total,
                         "fps": frames / total})  # fmt: skip
    base = next(r["total_s"] for r in rows if r["resize"] == "shortest" and r["decode"] == "full size")
    for r in rows:
        r["speedup"] = base / r["total_s"]
    return rows


def main() -> None:
    p = common.parser(__doc__, "preprocess")
    p.add_argument("--model", default="ViT-L-14-336", help="model whose side and preprocessing to use")
    p.add_argument("--frames", type=int, default=64, help="frames sampled per clip (default 64)")
    p.add_argument("--feature-frames", type=int, default=2, help="frames through the ViT for the token change")
    p.add_argument("--size", default="1280x720", help="generated clip size WxH (default 1280x720)")
    args = p.parse_args()
    device = common.setup_torch(args.device, args.threads)
    info = common.machine_info()
    common.header("Decode-time resize: fidelity and speed", info)
    w, h = map(int, args.size.split("x"))
    frames = 8 if args.quick else args.frames
    path = common.cached_video(common.OUT_DIR / "videos", 4 if args.quick else 10, size=(w, h))
    sys.path.insert(0, str(common.ROOT / "tests"))
    import media

    clips = [path] + ([] if args.quick else [media.sample_clip("bigbuckbunny.mp4")])  # a real 1280x720 clip too

    geo = geometry_rows()
    print("## Long side: sizes where video.decode_size and PIL pipelines (truncate) differ\n")
    if not geo:
        print(f"none of {len(SIZES)} video sizes at 224, 336 and 384 (decode_size truncates like them)\n")
    print(common.table(geo, [("video", "video", ""), ("side", "model side", ""), ("decoder", "decode_size", ""),
                             ("pil", "PIL / torchvision / HF", ""), ("exact", "side * long / short", ""),
                             ("crop_offset", "crop offset (decoder vs PIL)", "")]))  # fmt: skip

    fid = fidelity(clips, args.model, frames, 1 if args.quick else args.feature_frames, device)
    print(f"\n## Fidelity vs PIL, {frames} frames, {args.model} (random weights)\n")
    print(common.table(fid, [("clip", "clip", ""), ("policy", "resize", ""), ("path", "pixels from", ""),
                             ("mean", "mean |diff|", ".2f"),
                             ("p99", "p99", ".0f"), ("max", "max", ""), ("changed", "values changed", ".1%"),
                             ("feature_rel", "layer -2 rel. change", ".2%")]))  # fmt: skip

    spd = speed(path, args.model, frames, device)
    print(f"\n## Speed, {frames} frames of the {w}x{h} clip (preprocessing on {device.type})\n")
    print(common.table(spd, [("resize", "resize", ""), ("decode", "decode", ""), ("decode_s", "decode s", ".3f"),
                             ("preprocess_s", "preprocess s", ".3f"), ("total_s", "total s", ".3f"),
                             ("fps", "frames/s", ".0f"), ("speedup", "vs full decode", ".2f")]))  # fmt: skip
    common.write_json(args.out, {"machine": info, "clip": str(path), "geometry": geo, "fidelity": fid, "speed": spd})


if __name__ == "__main__":
    main()
