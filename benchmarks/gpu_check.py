"""The GPU check: the CUDA tests, the encoder ceiling, and ``batch`` end to end against the encoder alone, in one run.

Three parts, each time-boxed so that the whole run fits ``--budget-s`` (default 450 s; the device gives a command
at most 10 minutes):

1. **tests**: ``pytest tests/test_cuda.py`` plus the older CUDA test in ``tests/test_aggregate.py``, run in a
   child process (``--noconftest``: the GPU machine has no PyAV, which ``conftest.py`` imports; the video comes
   from ``$SLOWFAST_TEST_VIDEO``); the counts and every skip or failure reason come from its JUnit XML.
2. **encoder ceiling**: the bare ViT forward to layer -2 (``Encoder._tokens`` on preprocessed random input,
   random weights) of ViT-B-16 and ViT-L-14-336 in bf16 and fp16 at 32, 64 and 128 frames per forward pass,
   eager and with ``torch.compile`` (inductor, ``dynamic=False``), attention as PyTorch picks it (open_clip's
   ``nn.MultiheadAttention`` fast path, which calls SDPA; the attention kernels it ran are listed from a
   profiler trace, with the SDPA backends enabled). FLOPs per frame come from the model's config:
   ``blocks * ((8 + 4 * mlp_ratio) * N * D^2 + 4 * N^2 * D) + 2 * patches * 3 * P^2 * D`` (N tokens with the class
   token, D width, P patch side; the q/k/v and output projections, the MLP, QK^T and AV, the patch embedding), the
   same numbers ``torch.utils.flop_counter.FlopCounterMode`` gives (reported beside it). "of bf16 peak" is
   achieved FLOP/s over the fastest of 5 square bf16 matmuls (8192^3 on CUDA) timed in the same run. Eager
   cells run first; compiled cells follow, batch 64 first, and each is skipped with the reason when its
   compile (estimated from the last one) would pass the part's deadline.
3. **batch end to end**: ``slowfast batch`` (the real CLI, a child process, default ``--workers``) on generated
   videos (hard links to a few distinct 10 s 640x360 H.264 clips), for the ``default`` preset (ViT-B-16, T=64)
   and ``llava-l14-336`` (ViT-L-14-336, T=64), random weights. Its steady rate is read from ``manifest.jsonl``
   as lines appear (the first ``workers`` videos, start-up included, are left out); it is stopped with SIGTERM
   after ``--run-s`` seconds. Against it, in this process on the same distinct clips: one decode process
   (``load_clip``, one codec thread), the encoder alone (``Encoder.encode``: preprocessing and ViT) and the
   model side of ``encode_clip`` (encoder, projector, aggregator, copy back). The ratio the goal (>= 0.9) is about
   is ``batch frames/s / encoder-only frames/s``.

It writes one JSON (``--out``; default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``bench-out/gpu_check.json``) and prints one Markdown table. ``--quick`` runs the same code on a CPU in well
under a minute: the tiny random ViT, bf16 and fp16, 8 and 16 frames per pass, no compiled cell (``--quick
--compile`` adds one: 15-45 s of compiling on 2 cores), ``batch`` with the ``tiny`` preset on two small generated
videos; every part records, under ``cuda``, that its CUDA run was skipped and why.

The command for the GPU machine, with ``wheels/`` prepared by ``benchmarks/prepare_gpu_wheels.sh`` (the device
tool's run, ``carry: ["wheels"]``, ``timeout_s: 540``): ``bash benchmarks/gpu_check.sh``.

Examples:
    python benchmarks/gpu_check.py --quick
    python benchmarks/gpu_check.py --videos wheels/videos          # on the GPU machine: see gpu_check.sh
    python benchmarks/gpu_check.py --make-videos wheels/videos     # the clips to carry there (needs PyAV)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MODELS = ["ViT-B-16", "ViT-L-14-336"]
QUICK_MODELS = ["slowfast-tiny-vit"]
DTYPES = ["bf16", "fp16"]
BATCHES = [32, 64, 128]
QUICK_BATCHES = [8, 16]
E2E = [
    ("default", {"pretrained": "none"}),
    ("llava-l14-336", {"pretrained": "none", "random_projector": True}),
    ("default", {"pretrained": "none", "batch_frames": 128}),  # frames of 2 videos (64 each) per forward pass
    ("default", {"pretrained": "none", "batch_frames": 256}),
]  # 4 videos per pass (issue 21)
QUICK_E2E = [("tiny", {})]
VIDEO = {"seconds": 10, "size": (640, 360), "distinct": 4}  # the clips batch and the encoder-only rate use
QUICK_VIDEO = {"seconds": 2, "size": (320, 240), "distinct": 2}
COPIES, QUICK_COPIES = 400, 6  # videos in the batch folder (hard links to the distinct clips)
COMPILE_GUESS_S = {"ViT-B-16": 40.0, "ViT-L-14-336": 60.0}  # first compile of a model, before one is measured
TESTS = ["tests/test_cuda.py", "tests/test_aggregate.py::TestDtypeDevice::test_cuda"]
NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False)"


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else common.OUT_DIR / "gpu_check.json"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# --- videos -----------------------------------------------------------------------------------------------


def make_videos(folder: Path, spec: dict) -> list[Path]:
    """The distinct clips (``common.cached_video``, seeds 0, 1, ...): needs PyAV."""
    return [common.cached_video(folder, spec["seconds"], spec["size"], seed=s) for s in range(spec["distinct"])]


def find_videos(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".mp4", ".mkv", ".webm", ".mov"))


def link_copies(sources: list[Path], folder: Path, count: int) -> None:
    """``count`` names for the clips in ``folder`` (hard links where the file system allows, else symlinks)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src, dst = sources[i % len(sources)].resolve(), folder / f"v{i:04d}{sources[i % len(sources)].suffix}"
        try:
            os.link(src, dst)
        except OSError:
            dst.symlink_to(src)


# --- 1. tests ---------------------------------------------------------------------------------------------


def junit_counts(path: Path) -> dict:
    """Counts and reasons from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    out = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "skip_reasons": {}, "problems": []}
    for suite in suites:
        for case in suite.iter("testcase"):
            out["tests"] += 1
            name = f"{case.get('classname')}::{case.get('name')}"
            kinds = {child.tag: child for child in case}
            if "skipped" in kinds:
                out["skipped"] += 1
                reason = kinds["skipped"].get("message", "")
                out["skip_reasons"][reason] = out["skip_reasons"].get(reason, 0) + 1
            elif "failure" in kinds or "error" in kinds:
                kind = "failed" if "failure" in kinds else "errors"
                out[kind] += 1
                out["problems"].append(f"{name}: {(kinds.get('failure') or kinds['error']).get('message', '')[:300]}")
            else:
                out["passed"] += 1
    return out


def run_tests(videos: list[Path], cuda: bool, timeout: float) -> dict:
    """pytest on the CUDA tests in a child process; counts, reasons and the command."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-tests-") as tmp:
        xml = Path(tmp) / "junit.xml"
        # -o addopts: not the suite's "-n 2" (pytest-xdist is not among the GPU machine's wheels; one GPU, serial)
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "--noconftest", "-p", "no:cacheprovider", "-o", "addopts=",
               f"--junitxml={xml}", *TESTS]  # fmt: skip
        env = {**os.environ, "SLOWFAST_TEST_VIDEO": str(videos[0])}
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = "timeout", str(exc)[-3000:]
        seconds = time.perf_counter() - t0
        counts = junit_counts(xml) if xml.exists() else {"problems": ["pytest wrote no JUnit XML"]}
    ok = rc in (0, 5) and "tests" in counts and not counts["failed"] and not counts["errors"]
    command = " ".join(["python", *cmd[1:]]).replace(str(xml), "JUNIT.xml")
    result = {"status": "ok" if ok else "failed", "returncode": rc, "seconds": seconds, "command": command, **counts,
              "output_tail": tail}  # fmt: skip
    skipped = {"status": "skipped", "reason": f"{NO_CUDA}: every CUDA test skips"}
    result["cuda"] = {"status": "ran"} if cuda else skipped
    return result


# --- 2. encoder ceiling -----------------------------------------------------------------------------------


def formula_flops(enc, mlp_ratio: float) -> float:
    """FLOPs of one frame through ``enc._tokens`` from the config (see the module docstring)."""
    gh, gw = enc.grid
    n, d, p = gh * gw + 1, enc.width, enc.patch_size[0] * enc.patch_size[1]
    per_block = (8 + 4 * mlp_ratio) * n * d * d + 4 * n * n * d
    return (enc.block_index + 1) * per_block + 2 * gh * gw * 3 * p * d


def counted_flops(enc) -> float | None:
    """FlopCounterMode's count of one frame (``bench_encoder.flops_per_frame``), None when it fails."""
    try:
        from bench_encoder import flops_per_frame

        return float(flops_per_frame(enc))
    except Exception:
        return None


def attention_kernels(enc, device) -> list[str]:
    """The attention ops and kernels one forward ran (profiler names matching attention/flash/fmha/sdp)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    x = torch.randn(2, 3, *enc.image_size, device=device, dtype=enc.dtype)
    with torch.inference_mode(), profile(activities=activities) as prof:
        enc._tokens(x)
        common.sync(device)
    pattern = re.compile(r"attention|flash|fmha|sdp|cudnn", re.IGNORECASE)
    return sorted({e.key for e in prof.key_averages() if pattern.search(e.key)})[:10]


def sdpa_backends(device) -> dict | None:
    if device.type != "cuda":
        return None
    import torch

    b = torch.backends.cuda
    return {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
            "cudnn": getattr(b, "cudnn_sdp_enabled", lambda: None)(), "math": b.math_sdp_enabled()}  # fmt: skip


def time_cell(fn, x, device, cell_s: float) -> tuple[float, float, object]:
    """(seconds of the first call, median seconds per call, output): first call, one warm-up, then repeats filling
    about ``cell_s`` seconds (3 to 50)."""
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = fn(x)
        common.sync(device)
        first = time.perf_counter() - t0
        warm = common.measure(lambda: fn(x), repeats=1, warmup=1, device=device).median
        repeats = int(min(50, max(3, cell_s / max(warm, 1e-6))))
        return first, common.measure(lambda: fn(x), repeats=repeats, warmup=0, device=device).median, out


def encoder_part(device, quick: bool, deadline: float, compile_cells: bool) -> dict:

    from slowfast_cli.config import EncoderCfg
    from slowfast_cli.encoder.device import DTYPES as TORCH_DTYPES
    from slowfast_cli.encoder.encoder import build_encoder
    from slowfast_cli.encoder.towers import model_config as _model_config

    cuda = device.type == "cuda"
    models, batches = (QUICK_MODELS, QUICK_BATCHES) if quick else (MODELS, BATCHES)
    cell_s = 1.0 if cuda else 0.3
    peak_n = 8192 if cuda else 256  # on a CPU without native bf16 or fp16 a large one takes seconds
    peaks = {d: common.matmul_peak(TORCH_DTYPES[d], device, peak_n) for d in DTYPES}
    out = {"peak_n": peak_n, "peaks_tflops": {d: v / 1e12 for d, v in peaks.items()}, "sdpa_backends":
           sdpa_backends(device), "models": {}, "rows": [], "skipped": []}  # fmt: skip
    encoders = {}
    for model in models:
        mlp = float(_model_config(model)["vision_cfg"].get("mlp_ratio", 4.0))
        for name in DTYPES:
            if time.monotonic() > deadline and not quick:  # the tiny model's eager cells always run
                out["skipped"].append({"model": model, "dtype": name, "reason": "the encoder part's time was up"})
                continue
            try:
                enc = build_encoder(EncoderCfg(model=model, pretrained="none", layer=-2), device, TORCH_DTYPES[name])
            except Exception as exc:
                out["skipped"].append({"model": model, "dtype": name, "reason": f"build failed: {first_line(exc)}"})
                continue
            encoders[model, name] = enc
            info = out["models"].setdefault(model, {"grid": list(enc.grid), "blocks": enc.block_index + 1})
            info.setdefault("gflop_per_frame", formula_flops(enc, mlp) / 1e9)
            if "gflop_counted" not in info:
                counted = counted_flops(enc)
                info["gflop_counted"] = None if counted is None else counted / 1e9
            try:
                info.setdefault("attention", {})[name] = attention_kernels(enc, device)
            except Exception as exc:
                info.setdefault("attention", {})[name] = [f"profiler failed: {first_line(exc)}"]
            for batch in batches:
                out["rows"].append(_cell(enc, model, name, batch, False, device, cell_s, peaks, info))
    compile_guess = dict(COMPILE_GUESS_S)
    order = [batches[len(batches) // 2]] + [b for b in batches if b != batches[len(batches) // 2]]
    for batch in order[:1] if quick else order:
        for (model, name), enc in encoders.items():
            if not compile_cells:
                reason = "not run: --no-compile" + (" (the default with --quick: 15-45 s of compiling on 2 cores)"
                                                    if quick else "")  # fmt: skip
                out["skipped"].append(
                    {"model": model, "dtype": name, "batch": batch, "compile": True, "reason": reason}
                )
                continue
            left = deadline - time.monotonic()
            guess = compile_guess.get(model, 15.0) + 5 * cell_s
            if left < guess:
                out["skipped"].append({"model": model, "dtype": name, "batch": batch, "compile": True,
                                       "reason": f"not run: {left:.0f} s left in the encoder part, compile "
                                                 f"estimated at {guess:.0f} s"})  # fmt: skip
                continue
            row = _cell(enc, model, name, batch, True, device, cell_s, peaks, out["models"][model])
            out["rows"].append(row)
            if row.get("compile_s"):
                compile_guess[model] = row["compile_s"]
            if quick:
                break
    encoders.clear()
    _COMPILED.clear()
    release(device)
    out["cuda"] = {"status": "ran"} if cuda else {
        "status": "skipped",
        "reason": f"{NO_CUDA}: the GPU grid ({', '.join(MODELS)}; {', '.join(DTYPES)}; batch "
                  f"{', '.join(map(str, BATCHES))}; eager and compiled) was not run; the tiny ViT ran on the CPU",
    }  # fmt: skip
    return out


_COMPILED: dict = {}


def _cell(enc, model, name, batch, compiled, device, cell_s, peaks, info) -> dict:
    """One encoder cell; a failure (out of memory, a compiler missing) is recorded, not raised."""
    import torch

    row = {"model": model, "dtype": name, "batch": batch, "compile": compiled}
    try:
        x = torch.randn(batch, 3, *enc.image_size, generator=torch.Generator().manual_seed(0)).to(device, enc.dtype)
        fn = enc._tokens
        if compiled:
            fn = _COMPILED.setdefault((model, name), torch.compile(enc._tokens, dynamic=False))
        common.cuda_reset_peak(device)
        first, median, output = time_cell(fn, x, device, cell_s)
        fps = batch / median
        flops = info["gflop_per_frame"] * 1e9
        achieved = flops * fps
        row.update(fps=fps, ms_per_batch=1e3 * median, tflops=achieved / 1e12, of_bf16_peak=achieved / peaks["bf16"],
                   of_dtype_peak=achieved / peaks[name], first_call_s=first, cuda_peak_mb=common.cuda_peak_mb(device),
                   status="ok")  # fmt: skip
        if compiled:
            with torch.inference_mode():
                eager = enc._tokens(x)
            row.update(compile_s=first, max_diff_vs_eager=(output.float() - eager.float()).abs().max().item())
    except Exception as exc:
        row.update(status=f"error: {first_line(exc)}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"  encoder {model} {name} batch {batch}{' compiled' if compiled else ''}: "
          f"{row.get('fps', 0):.1f} frames/s {row['status']}", flush=True)  # fmt: skip
    return row


# --- 3. batch end to end ----------------------------------------------------------------------------------


def in_process_rates(preset: str, overrides: dict, device, clips: list[Path], min_s: float) -> dict:
    """One decode process, the encoder alone and the model side of encode_clip on the distinct clips."""
    import torch

    from slowfast_cli.config import resolve_config
    from slowfast_cli.encoder.packing import Packer
    from slowfast_cli.pipeline import Pipeline
    from slowfast_cli.video.decode import DECODE_RESIZE_MIN, load_clip

    cfg = resolve_config(preset, {**overrides, "device": device.type})
    pipe = Pipeline(cfg)
    t0 = time.perf_counter()
    decoded = [load_clip(p, cfg.video, pipe.image_size, num_threads=1, min_scale=DECODE_RESIZE_MIN) for p in clips]
    decode_s = time.perf_counter() - t0
    frames = sum(len(c.indices) for c in decoded)

    def encoder_only():  # the clips packed into passes of batch_frames, as batch packs them (encoder.packing)
        packer = Packer(pipe.encoder, pipe.batch_frames)
        tokens = [p.tokens for i, c in enumerate(decoded) for p in packer.add(i, c.frames)] + [
            p.tokens for p in packer.flush()
        ]
        return tokens

    def model_side():
        for c in decoded:
            pipe.encode_clip(c)  # one video at a time: its last pass padded to batch_frames

    with torch.inference_mode():
        rates = {}
        for key, fn in (("encoder_only", encoder_only), ("model_side", model_side)):
            single = common.measure(fn, repeats=1, warmup=1, device=device).median
            t = common.measure(fn, repeats=int(max(1, min(10, min_s / max(single, 1e-6)))), warmup=0, device=device)
            rates[key] = frames / t.median
    out = {"dtype": str(pipe.dtype).removeprefix("torch."), "frames_per_video": frames / len(decoded),
           "decode_one_process_fps": frames / decode_s, "encoder_only_fps": rates["encoder_only"],
           "model_side_fps": rates["model_side"], "frame_shape": list(decoded[0].frames.shape[1:])}  # fmt: skip
    return out


def release(device) -> None:
    """Give the GPU memory of the last model back before the next one loads (the batch child needs it too)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def watch_batch(cmd: list[str], out_dir: Path, run_s: float, deadline: float) -> dict:
    """Run ``cmd`` and note when each manifest line appears; stop it (SIGTERM) after ``run_s`` s of lines."""
    manifest = out_dir / "manifest.jsonl"
    marks, seen = [], 0  # (seconds since start, cumulative ok frames)
    frames = 0
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        stopped = False
        while proc.poll() is None:
            time.sleep(0.05)
            if manifest.exists():
                lines = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
                for line in lines[seen:]:
                    with contextlib.suppress(ValueError):
                        row = json.loads(line)
                        if row.get("status") == "ok":
                            frames += int(row.get("frames") or 0)
                            marks.append((time.monotonic() - t0, frames))
                seen = len(lines)
            now = time.monotonic()
            if not stopped and ((marks and now - t0 - marks[0][0] > run_s) or now > deadline):
                proc.send_signal(signal.SIGTERM)
                stopped = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.seek(0)
        tail = log.read()[-2000:]
    return {"returncode": proc.returncode, "stopped": stopped, "wall_s": time.monotonic() - t0, "marks": marks,
            "output_tail": tail}  # fmt: skip


def steady_rate(marks: list[tuple[float, int]], skip: int) -> float | None:
    """Frames/s between the ``skip``-th finished video and the last (the first ones carry the start-up)."""
    if len(marks) < skip + 2:
        skip = 0
    if len(marks) < 2:
        return None
    (ta, fa), (tb, fb) = marks[skip], marks[-1]
    return (fb - fa) / (tb - ta) if tb > ta else None


def end_to_end_part(device, quick: bool, clips: list[Path], deadline: float, run_s: float, workers=None) -> dict:
    from slowfast_cli.batch.engines.local import default_workers

    cuda = device.type == "cuda"
    given, workers = workers, workers or default_workers()
    runs = []
    configs = QUICK_E2E if quick else E2E
    for i, (preset, overrides) in enumerate(configs):
        left = deadline - time.monotonic()
        if left < 30 and not quick:
            runs.append({"preset": preset, "status": f"not run: {left:.0f} s left in the end-to-end part"})
            continue
        row = {"preset": preset, "workers": workers, "videos_distinct": len(clips),
               "batch_frames": overrides.get("batch_frames")}  # fmt: skip
        try:
            row.update(in_process_rates(preset, overrides, device, clips, 0.5 if quick else 3.0))
        except Exception as exc:
            runs.append({**row, "status": f"error: {first_line(exc)}"})
            continue
        finally:
            release(device)
        share = (deadline - time.monotonic()) / (len(configs) - i)
        this_run = max(5.0, min(run_s, share - 25))
        work = Path(tempfile.mkdtemp(prefix="gpu-check-batch-"))
        try:
            link_copies(clips, work / "videos", QUICK_COPIES if quick else COPIES)
            flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in overrides.items()]
            cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(work / "videos"), "-o", str(work / "tokens"),
                   "--config", preset, *flags, "--device", device.type]  # fmt: skip
            cmd += ["--workers", str(given)] if given else []
            watched = watch_batch(cmd, work / "tokens", this_run, deadline)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        marks = watched.pop("marks")
        fps = steady_rate(marks, workers)
        row.update(watched, command=" ".join(["python", *cmd[1:]]).replace(str(work), "TMP"), videos_done=len(marks),
                   run_s=this_run, startup_s=marks[0][0] if marks else None, batch_fps=fps)  # fmt: skip
        if fps:
            row.update(ratio=fps / row["encoder_only_fps"], vs_model_side=fps / row["model_side_fps"],
                       decode_capacity_fps=workers * row["decode_one_process_fps"])  # fmt: skip
        ok = bool(marks) and watched["returncode"] in (0, 130, -signal.SIGTERM)
        row["status"] = "ok" if ok else f"failed (exit {watched['returncode']})"
        runs.append(row)
        print(f"  batch {preset}: {fps or 0:.1f} frames/s vs encoder-only {row['encoder_only_fps']:.1f}", flush=True)
    return {"runs": runs, "cuda": {"status": "ran"} if cuda else {
        "status": "skipped",
        "reason": f"{NO_CUDA}: batch was not measured on a GPU (presets {', '.join(p for p, _ in E2E)}, "
                  f"{COPIES} videos); the tiny preset ran on the CPU instead"}}  # fmt: skip


# --- output -----------------------------------------------------------------------------------------------


def summary_table(result: dict) -> str:
    s = result["sections"]
    rows = []
    t = s["tests"]
    note = f"{t.get('passed', 0)} passed, {t.get('failed', 0)} failed, {t.get('errors', 0)} errors, " \
           f"{t.get('skipped', 0)} skipped ({t['seconds']:.0f} s)"  # fmt: skip
    if t["cuda"]["status"] == "skipped":
        note += f"; CUDA: {t['cuda']['reason']}"
    rows.append({"part": "tests", "note": note})
    e = s["encoder"]
    for name, value in e.get("peaks_tflops", {}).items():
        note = "" if e.get("cuda", {}).get("status") == "ran" else "CPU smoke run: not a peak (no native bf16/fp16)"
        rows.append({"part": "matmul peak", "dtype": name, "batch": f"n={e['peak_n']}", "tflops": value, "note": note})
    for r in e.get("rows", []):
        rows.append({"part": "encoder ceiling", **r, "compile": "yes" if r["compile"] else "no",
                     "note": r["status"] if r["status"] != "ok" else (
                         f"compile {r['compile_s']:.0f} s" if r.get("compile_s") else "")})  # fmt: skip
    for r in e.get("skipped", []):
        rows.append({"part": "encoder ceiling", **r, "compile": "yes" if r.get("compile") else "-",
                     "note": r["reason"]})  # fmt: skip
    if e.get("cuda", {}).get("status") == "skipped":
        rows.append({"part": "encoder ceiling (CUDA)", "note": f"skipped: {e['cuda']['reason']}"})
    for r in s["end_to_end"]["runs"]:
        extra = ""
        if r.get("batch_fps"):
            extra = (
                f"encoder-only {r['encoder_only_fps']:.1f}, model side {r['model_side_fps']:.1f}, one decode "
                f"process {r['decode_one_process_fps']:.1f} frames/s; **batch / encoder-only {r['ratio']:.2f}**"
            )
        packed = f", batch_frames {r['batch_frames']}" if r.get("batch_frames") else ""
        rows.append({"part": "batch end to end", "model": r["preset"] + packed, "dtype": r.get("dtype"),
                     "batch": f"{r.get('workers', '-')} workers", "fps": r.get("batch_fps"),
                     "note": f"{r['status']}; {extra}" if extra else r["status"]})  # fmt: skip
    if s["end_to_end"]["cuda"]["status"] == "skipped":
        rows.append({"part": "batch end to end (CUDA)", "note": f"skipped: {s['end_to_end']['cuda']['reason']}"})
    cols = [("part", "part", ""), ("model", "model", ""), ("dtype", "dtype", ""), ("batch", "batch", ""),
            ("compile", "compile", ""), ("fps", "frames/s", ",.1f"), ("tflops", "TFLOP/s", ".3g"),
            ("of_bf16_peak", "of bf16 peak", ".0%"), ("note", "note", "")]  # fmt: skip
    return common.table(rows, cols)


def main() -> None:
    p = common.parser(__doc__, "gpu_check")
    p.set_defaults(out=None)
    p.add_argument("--videos", type=Path, default=None, help="folder of the distinct clips (default: generate them)")
    p.add_argument("--make-videos", type=Path, default=None, help="write the distinct clips into this folder, exit")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole run (default 450; --quick 60)")
    p.add_argument("--run-s", type=float, default=30.0, help="seconds of batch lines per preset (default 30)")
    p.add_argument("--workers", type=int, default=None, help="batch --workers (default: the CLI's default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="the torch.compile cells (default: on; off with --quick)")  # fmt: skip
    args = p.parse_args()
    spec = QUICK_VIDEO if args.quick else VIDEO
    if args.make_videos:
        for path in make_videos(args.make_videos, spec):
            print(path)
        return
    t0 = time.monotonic()
    budget = args.budget_s or (60.0 if args.quick else 450.0)
    device = common.setup_torch(args.device, args.threads)
    info = common.machine_info()
    common.header("GPU check: CUDA tests, encoder ceiling, batch end to end", info)
    clips = find_videos(args.videos) if args.videos else make_videos(common.OUT_DIR / "videos" / "gpu_check", spec)
    clips = clips[: spec["distinct"]]
    cuda = device.type == "cuda"
    sections = {}
    print("tests ...", flush=True)
    sections["tests"] = run_tests(clips, cuda, max(30.0, 0.25 * budget))
    print(f"  {sections['tests'].get('passed', 0)} passed, {sections['tests'].get('failed', 0)} failed, "
          f"{sections['tests'].get('skipped', 0)} skipped", flush=True)  # fmt: skip
    print("encoder ceiling ...", flush=True)
    compile_cells = not args.quick if args.compile is None else args.compile
    sections["encoder"] = encoder_part(device, args.quick, t0 + 0.6 * budget, compile_cells)
    print("batch end to end ...", flush=True)
    e2e_deadline = float("inf") if args.quick else t0 + 0.95 * budget  # --quick: the few tiny videos run to the end
    sections["end_to_end"] = end_to_end_part(device, args.quick, clips, e2e_deadline, args.run_s, args.workers)
    result = {"machine": info, "mode": "quick" if args.quick else "full", "device": str(device), "budget_s": budget,
              "videos": [str(c) for c in clips], "sections": sections}  # fmt: skip
    result["elapsed_s"] = time.monotonic() - t0
    result["table"] = summary_table(result)
    print("\n" + result["table"])
    common.write_json(args.out or default_out(), result)


if __name__ == "__main__":
    main()
