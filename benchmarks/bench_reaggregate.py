"""Re-aggregation at scale and usage errors before torch (issue 18).

1. ``aggregate FEATURES_DIR -o OUT`` (one process) against one ``aggregate F.pt -o O.pt`` process per file, on the
   features of ``--videos`` tiny-preset videos saved by ``batch --save-features``.
2. The settings-mismatch usage error on an existing output folder (``batch`` with other settings): wall time of the
   command, and whether torch was imported, for ``--tree`` folders given (e.g. the main checkout and this one).

Example:
    python benchmarks/bench_reaggregate.py --videos 20 --runs 5 --tree /work/main --tree .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # media.py: test videos
import media  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def slowfast(*args: str, tree: Path = ROOT) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m slowfast_cli ARGS`` with ``tree``'s package, run from / (the current folder would come first)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "slowfast_cli", *args], capture_output=True, text=True, env=env, cwd="/")
    return time.perf_counter() - t0, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tree", type=Path, action="append", default=[], help="a checkout to time the usage error in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "in").mkdir()
        for i in range(args.videos):
            media.make_video(d / "in" / f"v{i:03d}.mp4", frames=24)
        _, r = slowfast("batch", str(d / "in"), "-o", str(d / "tok"), "--save-features", str(d / "feat"),
                        "--config", "tiny", "--dtype", "fp32", "--workers", "1")  # fmt: skip
        assert r.returncode == 0, r.stderr
        one, r = slowfast("aggregate", str(d / "feat"), "-o", str(d / "agg"), "--slow-pool", "none")
        assert r.returncode == 0, r.stderr
        t0 = time.perf_counter()
        for f in sorted((d / "feat").glob("*.pt")):
            _, r = slowfast("aggregate", str(f), "-o", str(d / f"{f.stem}.agg.pt"), "--slow-pool", "none")
            assert r.returncode == 0, r.stderr
        each = time.perf_counter() - t0
        print(f"| aggregate {args.videos} features files | one process (folder) | one process per file | ratio |")
        print("|---|---|---|---|")
        print(f"| wall | {one:.2f} s | {each:.2f} s | {each / one:.1f}x |")
        print()
        print("| tree | settings-mismatch usage error, median of runs | runs | exit |")
        print("|---|---|---|---|")
        for tree in args.tree:
            times, codes = [], set()
            for _ in range(args.runs):
                t, r = slowfast("batch", str(d / "in"), "-o", str(d / "tok"), "--config", "tiny", "--slow-pool",
                                "none", tree=tree.resolve())  # fmt: skip
                times.append(t)
                codes.add(r.returncode)
            shown = ", ".join(f"{t:.2f}" for t in times)
            print(f"| {tree} | {statistics.median(times):.2f} s | {shown} | {sorted(codes)} |")


if __name__ == "__main__":
    main()
