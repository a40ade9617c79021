"""What the resume and report checks cost per token file, against encoding the same video.

For token files of the presets' sizes (tiny: 512 x 64; default: 4,160 x 768, fp32 and bf16), in one run:

- ``header``: reading shape and meta only (the check before this issue: zip directory + pickle, no tensor data);
- ``verify``: the same plus reading every archive entry once and checking its CRC-32 (what ``batch`` resume and
  ``slowfast report`` now do), from the page cache;
- ``compare``: ``provenance.differences`` between the file's stored provenance and the run's;
- the weights hash (``provenance.file_digest``) of a weights-sized file, paid once per run, not per file;
- against: ``encode`` of one 10 s 640x360 video with the same preset on this machine (``Pipeline.encode``).

Example:
    python benchmarks/bench_resume.py --quick
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import common


def main() -> None:
    args = common.parser(__doc__, "bench_resume").parse_args()
    common.setup_torch("cpu", args.threads)
    import torch

    from slowfast_cli.config import resolve_config
    from slowfast_cli.header import read_token_header
    from slowfast_cli.pipeline import Pipeline
    from slowfast_cli.provenance import differences, file_digest
    from slowfast_cli.tokenfile import save_tokens

    info = common.machine_info()
    common.header("Resume and report checks per token file", info)
    repeats = 5 if args.quick else 30
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    video = common.cached_video(common.OUT_DIR / "videos", 2.0 if args.quick else 10.0)
    rows = []
    for preset, dtype in (("tiny", "fp32"), ("default", "fp32"), ("default", "bf16")):
        cfg = resolve_config(preset, {"pretrained": "none", "dtype": dtype, "frames": 16 if args.quick else None})
        pipe = Pipeline(cfg)
        result = pipe.encode(video)
        path = work / f"{preset}-{dtype}.pt"
        save_tokens(path, result.tokens, result.meta)
        stored = read_token_header(path)["meta"]["provenance"]
        header = common.measure(lambda p=path: read_token_header(p), repeats)
        verify = common.measure(lambda p=path: read_token_header(p, verify=True), repeats)
        compare = common.measure(lambda s=stored, c=pipe.provenance: differences(s, c), repeats * 10)
        encode = common.measure(lambda p=pipe: p.encode(video), 1, warmup=0)
        rows.append({
            "file": f"{preset} {dtype}",
            "tokens": f"{result.tokens.shape[1]} x {result.tokens.shape[2]}",
            "mb": path.stat().st_size / 1e6,
            "header_ms": header.median * 1e3,
            "verify_ms": verify.median * 1e3,
            "compare_ms": compare.median * 1e3,
            "encode_s": encode.median,
            "check_over_encode": (verify.median + compare.median) / encode.median,
        })  # fmt: skip
    print(common.table(rows, [
        ("file", "token file", ""), ("tokens", "L x D", ""), ("mb", "MB", ".1f"),
        ("header_ms", "header only (ms)", ".2f"), ("verify_ms", "+ CRC-32 (ms)", ".2f"),
        ("compare_ms", "provenance compare (ms)", ".3f"), ("encode_s", "encode one video (s)", ".2f"),
        ("check_over_encode", "(CRC + compare) / encode", ".2%"),
    ]))  # fmt: skip
    weights = work / "weights.bin"
    size = (64 if args.quick else 600) * 2**20  # ViT-B-16 is ~600 MB in fp32
    with open(weights, "wb") as f:
        f.write(torch.randn(size // 4).numpy().tobytes())
    digest = common.measure(lambda: (common_clear(), file_digest(weights)), 3)
    print(f"\nweights hash (sha256, once per run): {size / 2**20:.0f} MiB in {digest.median:.2f} s "
          f"({size / 2**20 / digest.median:.0f} MiB/s)")  # fmt: skip
    common.write_json(args.out, {"machine": info, "rows": rows, "weights_mib": size / 2**20,
                                 "weights_hash_s": digest.median})  # fmt: skip


def common_clear() -> None:
    """Forget memoised digests so each repeat hashes the file again."""
    from slowfast_cli import provenance

    provenance._digests.clear()


if __name__ == "__main__":
    main()
