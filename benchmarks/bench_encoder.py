"""Encoder ceiling: frames/s of the bare ViT forward to layer -2, per model and dtype, against the matmul peak.

Times ``Encoder._tokens`` (open_clip's ``forward_intermediates`` up to the tapped block, class token dropped) on
already preprocessed random input, so neither decoding nor preprocessing is included: this is the most the
pipeline can reach. FLOPs per frame are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one frame
(MHA fast path off so the q/k/v projections are visible, plus a formula for ``scaled_dot_product_attention``,
which the counter does not know on the CPU). The peak is a square matmul in the same dtype, timed in the same
run; "of peak" is achieved FLOP/s over it.

Example:
    python benchmarks/bench_encoder.py --quick
"""

from __future__ import annotations

import common
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from slowfast_cli.config import EncoderCfg
from slowfast_cli.encoder.device import cpu_has_native_bf16, resolve_dtype
from slowfast_cli.encoder.encoder import build_encoder

MODELS = ["slowfast-tiny-vit", "ViT-B-32", "ViT-B-16", "ViT-L-14-336"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOOL_BATCH = 32  # frames per forward pass of the sweep's reference (the tool: 16 on a CPU, 128 on CUDA; tiny 16)
# CPU frames per forward and timed repeats, sized so the default run takes a few minutes on 2 cores
CPU_SIZES = {"slowfast-tiny-vit": (16, 20), "ViT-B-32": (32, 3), "ViT-B-16": (8, 3), "ViT-L-14-336": (4, 2)}
QUICK_SIZES = {"slowfast-tiny-vit": (16, 10), "ViT-B-32": (4, 2)}
QUICK_MODELS = ["slowfast-tiny-vit", "ViT-B-32"]
SWEEP = [1, 2, 4, 8, 16, 32]
SDPA_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # FlopCounterMode has no formula for it


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def flops_per_frame(enc) -> int:
    """FLOPs of one frame through ``enc._tokens``, counted by FlopCounterMode (fp32 on the CPU)."""
    x = torch.zeros(1, 3, *enc.image_size, device=enc.device, dtype=enc.dtype)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel hides its matmuls from the counter
    try:
        counter = FlopCounterMode(display=False, custom_mapping={SDPA_CPU: _sdpa_flops})
        with torch.inference_mode(), counter:
            enc._tokens(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return counter.get_total_flops()


def time_forward(enc, batch: int, repeats: int, device) -> common.Timing:
    x = torch.randn(batch, 3, *enc.image_size, generator=torch.Generator().manual_seed(0)).to(device, enc.dtype)
    with torch.inference_mode():
        return common.measure(lambda: enc._tokens(x), repeats=repeats, warmup=1, device=device)


def sizes(model: str, device, quick: bool, batch: int | None) -> tuple[int, int]:
    """(frames per forward, repeats): the tool's batch on CUDA, smaller on the CPU (see CPU_SIZES)."""
    if quick:
        b, r = QUICK_SIZES.get(model, (2, 2))
    elif device.type == "cuda":
        b, r = TOOL_BATCH, 10
    else:
        b, r = CPU_SIZES.get(model, (8, 3))
    return batch or b, r


def main() -> None:
    p = common.parser(__doc__, "encoder")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"open_clip model names (default: {' '.join(MODELS)}; --quick: {' '.join(QUICK_MODELS)})",
    )
    p.add_argument("--dtypes", nargs="+", default=None, help="fp32 bf16 fp16 (default: fp32 bf16, + fp16 on CUDA)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="frames per forward pass (default: 32 on CUDA; on the CPU per model, see CPU_SIZES)",
    )
    p.add_argument(
        "--sweep-model",
        default="ViT-B-16",
        help="model for the frames-per-forward sweep (default ViT-B-16; '' skips it)",
    )
    args = p.parse_args()
    device = common.setup_torch(args.device, args.threads)
    models = args.models or (QUICK_MODELS if args.quick else MODELS)
    dtypes = args.dtypes or (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])
    info = common.machine_info()
    common.header("Encoder ceiling (bare ViT forward to layer -2)", info)
    peak_n = 8192 if device.type == "cuda" else 2048
    peaks = {d: common.matmul_peak(DTYPES[d], device, peak_n) for d in dtypes}
    table_peaks = common.table(
        [{"dtype": d, "n": peak_n, "gflops": v / 1e9} for d, v in peaks.items()],
        [("dtype", "dtype", ""), ("n", "matmul n^3", ""), ("gflops", "peak GFLOP/s", ".1f")],
    )
    print(table_peaks)
    auto = resolve_dtype("auto", device)
    print(f"\n--dtype auto picks {auto} here (native CPU bf16: {cpu_has_native_bf16()})\n")

    rows = []
    for model in models:
        flops = None
        for name in dtypes:
            enc = build_encoder(EncoderCfg(model=model, pretrained="none", layer=-2), device, DTYPES[name])
            if flops is None:
                flops = flops_per_frame(enc)
            batch, repeats = sizes(model, device, args.quick, args.batch)
            common.cuda_reset_peak(device)
            t = time_forward(enc, batch, repeats, device)
            fps = t.rate(batch)
            rows.append(
                {
                    "model": model,
                    "dtype": name,
                    "grid": "x".join(map(str, enc.grid)),
                    "batch": batch,
                    "repeats": repeats,
                    "gflop_per_frame": flops / 1e9,
                    "fps": fps,
                    "ms_per_frame": 1e3 / fps,
                    "gflops": flops * fps / 1e9,
                    "of_peak": flops * fps / peaks[name],
                    "cuda_peak_mb": common.cuda_peak_mb(device),
                    "times": t.times,
                }
            )
            print(f"  {model} {name}: {fps:.2f} frames/s", flush=True)
            del enc
    for r in rows:  # dtype speed relative to fp32 of the same model
        base = next((b for b in rows if b["model"] == r["model"] and b["dtype"] == "fp32"), None)
        r["vs_fp32"] = r["fps"] / base["fps"] if base else None
    cols = [
        ("model", "model", ""),
        ("dtype", "dtype", ""),
        ("grid", "grid", ""),
        ("batch", "frames/forward", ""),
        ("repeats", "repeats", ""),
        ("gflop_per_frame", "GFLOP/frame", ".2f"),
        ("fps", "frames/s", ".2f"),
        ("ms_per_frame", "ms/frame", ".1f"),
        ("gflops", "GFLOP/s", ".1f"),
        ("of_peak", "of peak", ".0%"),
        ("vs_fp32", "speed vs fp32", ".2f"),
        ("cuda_peak_mb", "CUDA peak MiB", ".0f"),
    ]
    table_models = common.table(rows, cols)
    print("\n" + table_models)

    sweep, tables = [], [table_peaks, table_models]
    if args.sweep_model and not args.quick:
        enc = build_encoder(EncoderCfg(model=args.sweep_model, pretrained="none"), device, torch.float32)
        flops = flops_per_frame(enc)
        for b in SWEEP:
            t = time_forward(enc, b, 3, device)
            sweep.append(
                {
                    "model": args.sweep_model,
                    "dtype": "fp32",
                    "batch": b,
                    "fps": t.rate(b),
                    "of_peak": flops * t.rate(b) / peaks.get("fp32", float("nan")),
                    "times": t.times,
                }
            )
            print(f"  sweep {args.sweep_model} batch {b}: {t.rate(b):.2f} frames/s", flush=True)
        best = max(s["fps"] for s in sweep)
        for s in sweep:
            s["vs_best"] = s["fps"] / best
        cols = [
            ("model", "model", ""),
            ("dtype", "dtype", ""),
            ("batch", "frames/forward", ""),
            ("fps", "frames/s", ".2f"),
            ("of_peak", "of peak", ".0%"),
            ("vs_best", "vs best", ".2f"),
        ]
        tables.append(common.table(sweep, cols))
        print(f"\nframes per forward pass (the tool's default is {TOOL_BATCH}):\n\n" + tables[-1])

    common.write_json(
        args.out,
        {
            "machine": info,
            "peaks_flops": peaks,
            "peak_n": peak_n,
            "auto_dtype": str(auto),
            "flops_method": "FlopCounterMode, 1 frame, MHA fast path off, SDPA by formula",
            "rows": rows,
            "sweep": sweep,
            "tables": tables,
        },
    )


if __name__ == "__main__":
    main()
