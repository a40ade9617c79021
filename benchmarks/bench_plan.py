"""What planning a batch costs on the driver at scale: listing 100,000 videos, and the resume check of outputs.

On a synthetic tree in a temporary folder (``--tmp``, default the system's, removed at the end):

1. Listing: ``--files`` empty ``.mp4`` files (``--per-folder`` per folder) and an empty OUT_DIR, planned by
   ``batch.plan_batch`` walking the tree, and through ``files_from`` (a list of the relative paths, which skips
   the walk); beside them ``find_videos`` and ``read_files_from`` alone. Making the tree is timed apart and not
   counted. The peak Python heap of one plan (tracemalloc, an untimed extra call) says what 10^7 would hold.
2. Resume check: ``--outputs`` existing token files of the tiny preset's size (one real file, encoded by the
   tiny pipeline in fp32) and ``--large-outputs`` of a realistic size (a (1, 680, 4096) bf16 tensor, ~5.6 MB,
   with the real file's meta), planned with the provenance of the config that wrote them: ``verify=True``
   (header plus the CRC-32 of every byte, as the local engine does) against ``verify=False`` (header only, as
   the Ray engine's driver does; the CRC check then runs in its tasks, not measured here). Each plan must find
   every output done, or the script stops. Per output, the listing of the same tree into an empty OUT_DIR is
   subtracted (the "marginal" column).

``existing_output`` checks that an output's ``meta["source"]`` has the video's file name and that the recorded
``meta["video"]["bytes"]`` is the video's size: the outputs are written with ``save_tokens`` once per file name
(``v000.pt`` ... with ``source`` ``.../v000.mp4`` and ``bytes`` 0, the empty sources' size) and copied into
every folder. They were just written, so they are read from the page cache: a cold disk costs what reading
the bytes from it costs.

Example:
    python benchmarks/bench_plan.py --quick
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import common


def make_tree(root: Path, files: int, per_folder: int) -> list[Path]:
    """``files`` empty videos ``dNNNN/vNNN.mp4`` under ``root``; their relative paths, sorted."""
    rels = []
    for i in range((files + per_folder - 1) // per_folder):
        folder = root / f"d{i:04d}"
        folder.mkdir(parents=True)
        for j in range(min(per_folder, files - i * per_folder)):
            name = f"v{j:03d}.mp4"
            os.close(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            rels.append(Path(folder.name, name))
    return rels


def fill_outputs(out: Path, rels: list[Path], template: Path) -> None:
    """Copy ``template/<name>.pt`` to ``out/<folder>/<name>.pt`` for every source ``<folder>/<name>.mp4``."""
    for rel in rels:
        target = out / rel.with_suffix(".pt")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template / rel.with_suffix(".pt").name, target)


def timed(fn, repeats: int, warmup: int = 1):
    """common.measure of ``fn`` plus the result of its last call."""
    last = []
    timing = common.measure(lambda: last.append(fn()), repeats, warmup)
    return timing, last[-1]


def peak_heap_mb(fn) -> float:
    """Peak traced Python allocation of one ``fn()`` call, in MiB (tracemalloc; slower, so never timed)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def file_system(path: Path) -> str:
    """``type on device`` of the mount that holds ``path`` (from /proc/mounts), or ``unknown``."""
    best, found = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, kind = line.split()[:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, found = mnt, f"{kind} on {dev}"
    except OSError:
        pass
    return found


def main() -> None:
    p = common.parser(__doc__, "bench_plan", torch_options=False)
    p.add_argument("--files", type=int, default=100_000, help="empty videos in the listing tree (default 100,000)")
    p.add_argument("--per-folder", type=int, default=100, help="videos per folder (default 100)")
    p.add_argument("--outputs", type=int, default=2_000, help="existing tiny-size outputs (default 2,000)")
    p.add_argument("--large-outputs", type=int, default=1_000, help="existing ~5.6 MB outputs (default 1,000)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement, after one warm-up")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the synthetic trees (default: the system's)")
    args = p.parse_args()
    if args.quick:
        args.files, args.outputs, args.large_outputs, args.repeats = 5_000, 200, 100, 1
    common.setup_torch("cpu", None)
    import torch

    sys.path.insert(0, str(common.ROOT / "tests"))
    import media

    from slowfast_cli.batch.listing import find_videos, read_files_from
    from slowfast_cli.batch.plan import plan_batch
    from slowfast_cli.config import resolve_config
    from slowfast_cli.pipeline import Pipeline, run_provenance
    from slowfast_cli.provenance import differences
    from slowfast_cli.tokenfile import save_tokens

    info = common.machine_info()
    common.header("Planning at scale: listing and the resume check", info)
    work = Path(tempfile.mkdtemp(prefix="bench-plan-", dir=args.tmp))
    info["work_fs"] = file_system(work)
    print(f"work folder: {work} ({info['work_fs']})\n")
    result: dict = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        # --- 1. listing -------------------------------------------------------------------------------------
        root = work / "videos"
        t0 = time.perf_counter()
        rels = make_tree(root, args.files, args.per_folder)
        make_s = time.perf_counter() - t0
        listfile = work / "files.txt"
        listfile.write_bytes(b"".join(os.fsencode(r) + b"\n" for r in rels))
        print(f"made {len(rels):,} empty videos in {len({r.parent for r in rels}):,} folders in {make_s:.1f} s "
              f"(not counted)\n", flush=True)  # fmt: skip
        empty = work / "out-empty"
        n = len(rels)

        def plan(root_: Path, out: Path, **kw):
            with plan_batch(root_, out, **kw) as pl:
                return pl

        cases = [
            ("find_videos (walk only)", lambda: find_videos(root).videos),
            ("read_files_from (list only)", lambda: read_files_from(listfile, root).videos),
            ("plan_batch, walk", lambda: plan(root, empty).todo),
            ("plan_batch, files_from", lambda: plan(root, empty, files_from=listfile).todo),
        ]
        listing_rows = []
        for what, fn in cases:
            timing, got = timed(fn, args.repeats)
            assert len(got) == n, f"{what}: {len(got)} of {n} videos"
            heap = peak_heap_mb(fn)
            listing_rows.append({
                "what": what, "files": n, "s": timing.median, "min_s": timing.min,
                "files_per_s": timing.rate(n), "us_per_file": timing.median / n * 1e6, "heap_mb": heap,
                "at_1e7_s": timing.median / n * 1e7, "heap_1e7_gb": heap / n * 1e7 / 1024,
            })  # fmt: skip
            print(f"  {what}: {timing.median:.2f} s", flush=True)
        print()
        print(common.table(listing_rows, [
            ("what", "listing", ""), ("files", "videos", ","), ("s", "median (s)", ".2f"), ("min_s", "min (s)", ".2f"),
            ("files_per_s", "videos/s", ",.0f"), ("us_per_file", "µs/video", ".1f"),
            ("heap_mb", "peak heap (MiB)", ".0f"), ("at_1e7_s", "10^7 videos (s, extrapolated)", ",.0f"),
            ("heap_1e7_gb", "10^7 heap (GiB, extrapolated)", ".1f"),
        ]))  # fmt: skip
        result.update(make_tree_s=make_s, listing=listing_rows)
        shutil.rmtree(root)  # the resume trees are smaller; free the inodes now

        # --- 2. resume check --------------------------------------------------------------------------------
        cfg = resolve_config("tiny", {"dtype": "fp32"})
        current = run_provenance(cfg)
        clip = media.make_video(work / "clip.mp4", frames=32)
        real = Pipeline(cfg).encode(clip)
        assert not differences(real.meta["provenance"], current), "the pipeline's provenance is not run_provenance's"
        big = torch.randn(1, 680, 4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        big_meta = copy.deepcopy(real.meta)
        big_meta.update(dim=4096, output_tokens=680)
        src = work / "resume-videos"
        most = max(args.outputs, args.large_outputs)
        sources = make_tree(src, most, args.per_folder)
        base_timing, _ = timed(lambda: plan(src, work / "resume-empty").todo, args.repeats)
        resume_rows = []
        for label, tokens, meta, count in (
            ("tiny fp32 (real)", real.tokens, real.meta, args.outputs),
            ("1 x 680 x 4096 bf16", big, big_meta, args.large_outputs),
        ):
            root_n = work / f"resume-videos-{count}"
            if count == most:
                root_n = src
            elif not root_n.exists():
                make_tree(root_n, count, args.per_folder)
            base = base_timing if root_n == src else timed(lambda r=root_n: plan(r, work / "resume-empty").todo,
                                                           args.repeats)[0]  # fmt: skip
            template, out = work / f"template-{count}", work / f"out-{count}-{tokens.shape[-1]}"
            template.mkdir()
            for j in range(min(args.per_folder, count)):
                m = copy.deepcopy(meta)
                m["source"] = str(root_n / "d0000" / f"v{j:03d}.mp4")
                m["video"]["bytes"] = 0  # the empty sources' size
                save_tokens(template / f"v{j:03d}.pt", tokens, m)
            t0 = time.perf_counter()
            fill_outputs(out, sources[:count], template)
            mb = (template / "v000.pt").stat().st_size / 1e6
            print(f"\nwrote {count:,} outputs of {mb:.2f} MB ({label}) in {time.perf_counter() - t0:.1f} s "
                  "(not counted; now in the page cache)", flush=True)  # fmt: skip
            for verify in (True, False):
                timing, pl = timed(lambda r=root_n, o=out, v=verify: plan(r, o, provenance=current, verify=v),
                                   args.repeats)  # fmt: skip
                assert not pl.problems, pl.problems[:3]
                if verify:
                    assert len(pl.records) == count and not pl.todo, f"{len(pl.records)} of {count} done"
                    assert all(r.status == "skipped" for r in pl.records)
                else:
                    assert len(pl.unverified) == count == len(pl.todo) and not pl.records, (
                        f"{len(pl.unverified)} of {count} unverified"
                    )
                per = timing.median / count
                marginal = max(timing.median - base.median, 0.0) / count
                resume_rows.append({
                    "file": label, "mb": mb, "outputs": count,
                    "check": "header + CRC-32 (verify=True)" if verify else "header only (verify=False)",
                    "s": timing.median, "min_s": timing.min, "base_s": base.median, "ms_per_output": per * 1e3,
                    "marginal_ms": marginal * 1e3, "at_1e6_min": marginal * 1e6 / 60,
                    "mb_per_s": mb * count / timing.median if verify else None,
                })  # fmt: skip
                print(f"  verify={verify}: {timing.median:.2f} s", flush=True)
            shutil.rmtree(out)
        print()
        print(common.table(resume_rows, [
            ("file", "token file", ""), ("mb", "MB", ".2f"), ("outputs", "outputs", ","), ("check", "check", ""),
            ("s", "plan (s)", ".2f"), ("min_s", "min (s)", ".2f"), ("base_s", "listing only (s)", ".2f"),
            ("ms_per_output", "ms/output", ".3f"),
            ("marginal_ms", "marginal ms/output", ".3f"), ("at_1e6_min", "10^6 outputs (min, extrapolated)", ".1f"),
            ("mb_per_s", "read MB/s", ",.0f"),
        ]))  # fmt: skip
        result.update(resume=resume_rows, page_cache="outputs were just written: read from the page cache")
    finally:
        t0 = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)
        print(f"\nremoved {work} in {time.perf_counter() - t0:.1f} s")
    common.write_json(args.out, result)


if __name__ == "__main__":
    main()
