"""``benchmarks/gpu_check.py --quick`` on the CPU, so the script the GPU machine runs cannot rot unnoticed.

It runs in a child process as it would there (its own pytest, the encoder grid with one compiled cell, ``slowfast
batch`` through the CLI); without CUDA every part must say that its CUDA run was skipped and why. Timings are
not checked here (they are measured, never asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import media
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu-check")
    videos = work / "videos"
    videos.mkdir()
    for seed in range(2):
        media.make_video(videos / f"clip{seed}.mp4", frames=40, size=(128, 96), fps=10)
    out = work / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--videos", str(videos),
           "--out", str(out)]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def test_every_part_is_there(quick_run):
    result, _ = quick_run
    assert result["mode"] == "quick" and set(result["sections"]) == {"tests", "encoder", "end_to_end"}
    tests = result["sections"]["tests"]
    assert tests["status"] == "ok" and tests["failed"] == tests["errors"] == 0 and tests["tests"] >= 9
    encoder = result["sections"]["encoder"]
    assert set(encoder["peaks_tflops"]) == {"bf16", "fp16"} and all(v > 0 for v in encoder["peaks_tflops"].values())
    info = encoder["models"]["slowfast-tiny-vit"]
    assert info["gflop_counted"] == pytest.approx(info["gflop_per_frame"], rel=0.02)  # the formula, checked
    eager = [r for r in encoder["rows"] if not r["compile"]]
    assert len(eager) == 4 and all(r["status"] == "ok" and r["fps"] > 0 and r["tflops"] > 0 for r in eager)
    assert len([r for r in encoder["rows"] if r["compile"]]) + len(encoder["skipped"]) >= 1
    (run,) = result["sections"]["end_to_end"]["runs"]
    assert run["status"] == "ok" and run["batch_fps"] > 0 and run["encoder_only_fps"] > 0 and run["ratio"] > 0
    assert run["videos_done"] >= 2 and run["workers"] >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the CUDA parts run")
def test_cuda_parts_are_skipped_with_a_reason(quick_run):
    result, _ = quick_run
    for name, section in result["sections"].items():
        assert section["cuda"]["status"] == "skipped", name
        assert "no CUDA device" in section["cuda"]["reason"], name
    reasons = result["sections"]["tests"]["skip_reasons"]
    assert sum(reasons.values()) == result["sections"]["tests"]["skipped"] >= 9
    assert all("CUDA" in reason for reason in reasons)


def test_one_markdown_table_is_printed(quick_run):
    result, stdout = quick_run
    table = result["table"]
    assert table in stdout and table.startswith("| part | model | dtype |")
    parts = {line.split("|")[1].strip() for line in table.splitlines()[2:]}
    assert {"tests", "matmul peak", "encoder ceiling", "batch end to end"} <= parts
    if not torch.cuda.is_available():
        assert {"encoder ceiling (CUDA)", "batch end to end (CUDA)"} <= parts
