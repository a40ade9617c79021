"""Does ``torch.compile`` speed up the ViT forward? Eager and compiled, interleaved in one run.

The compiled function is ``Encoder._tokens`` (the forward to layer -2) with torch's default inductor backend.
Rounds alternate eager and compiled, each the median of ``--repeats`` calls after a warm-up; the compile time
(the first compiled call) and the largest difference from eager are reported too. The library has no compile
flag: it would be added only if this shows a gain (see BENCHMARKS.md §6).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    p = common.parser(__doc__, "compile")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model (default ViT-B-32)")
    p.add_argument("--frames", type=int, default=32, help="frames per forward pass (default 32, the tool's)")
    p.add_argument("--rounds", type=int, default=5, help="eager/compiled rounds (default 5)")
    p.add_argument("--repeats", type=int, default=5, help="calls per measurement (default 5)")
    args = p.parse_args()
    if args.quick:
        args.model, args.frames, args.rounds, args.repeats = "slowfast-tiny-vit", 16, 2, 3
    device = common.setup_torch(args.device, args.threads)
    import time

    import torch

    from slowfast_cli.config import EncoderCfg
    from slowfast_cli.encoder.encoder import build_encoder

    info = common.machine_info()
    common.header("torch.compile vs eager (ViT forward to layer -2)", info)
    enc = build_encoder(EncoderCfg(model=args.model, pretrained="none"), device, torch.float32)
    x = torch.randn(args.frames, 3, *enc.image_size, device=device)
    compiled = torch.compile(enc._tokens)
    with torch.inference_mode():
        reference = enc._tokens(x)
        t0 = time.perf_counter()
        out = compiled(x)
        common.sync(device)
        compile_s = time.perf_counter() - t0
        max_diff = (out - reference).abs().max().item()
        rows = []
        for r in range(args.rounds):
            eager = common.measure(lambda: enc._tokens(x), args.repeats, 1, device)
            comp = common.measure(lambda: compiled(x), args.repeats, 1, device)
            rows.append({"round": r, "eager_ms": eager.median * 1e3, "compiled_ms": comp.median * 1e3,
                         "ratio": comp.median / eager.median})  # fmt: skip
    print(f"compile + first call: {compile_s:.1f} s; max |compiled - eager|: {max_diff:.2e}\n")
    cols = [("round", "round", ""), ("eager_ms", "eager ms", ".0f"), ("compiled_ms", "compiled ms", ".0f"),
            ("ratio", "compiled / eager", ".2f")]  # fmt: skip
    print(common.table(rows, cols))
    median_ratio = statistics.median(r["ratio"] for r in rows)
    print(f"\nmedian compiled / eager: {median_ratio:.2f} ({args.model}, {args.frames} frames, fp32, {device})")
    common.write_json(args.out, {"machine": info, "model": args.model, "frames": args.frames, "compile_s": compile_s,
                                 "max_diff": max_diff, "rounds": rows, "median_ratio": median_ratio})  # fmt: skip


if __name__ == "__main__":
    main()
