"""The GPU path: ``--device cuda`` end to end, low precision against fp32, pinned copies, everything after the ViT
on the device, and token files made on a GPU that load on a machine without one.

Every test needs a CUDA device and is skipped with the reason elsewhere; ``benchmarks/gpu_check.py`` runs this
file on the GPU machine. The video is ``$SLOWFAST_TEST_VIDEO`` when set (that machine has no PyAV to write one),
else a clip generated with PyAV. Nothing of ours is mocked.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import media  # PyAV loads its FFmpeg before decord does (see conftest.py); absent on the GPU check's machine
except ImportError:
    media = None

from typer.testing import CliRunner

from slowfast_cli import load_tokens
from slowfast_cli.aggregate import slow_fast
from slowfast_cli.cli.app import app
from slowfast_cli.config import resolve_config

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    """A video: ``$SLOWFAST_TEST_VIDEO``, else 48 frames of 320x240 H.264 written with PyAV."""
    given = os.environ.get("SLOWFAST_TEST_VIDEO")
    if given:
        return Path(given)
    if media is None:
        pytest.skip("no video: set SLOWFAST_TEST_VIDEO or install PyAV (av) to generate one")
    return media.make_video(tmp_path_factory.mktemp("cuda") / "clip.mp4", frames=48, size=(320, 240))


class TestDeviceCudaEndToEnd:
    def test_encode(self, clip_path, tmp_path):
        out = tmp_path / "clip.pt"
        r = run("encode", clip_path, "--config", "tiny", "--device", "cuda", "-o", out, "--json")
        assert r.exit_code == 0, r.output
        saved = load_tokens(out)
        budget = json.loads(run("budget", "--json", "--config", "tiny").stdout)
        assert saved["meta"]["device"].startswith("cuda") and saved["meta"]["dtype"] == "bf16"  # auto on CUDA
        assert saved["tokens"].shape == (1, budget["output_tokens"], 64) and saved["tokens"].device.type == "cpu"
        assert torch.isfinite(saved["tokens"].float()).all()

    def test_batch(self, clip_path, tmp_path):
        videos = tmp_path / "videos"
        videos.mkdir()
        for name in ("a.mp4", "b.mp4"):
            (videos / name).symlink_to(Path(clip_path).resolve())
        out = tmp_path / "tokens"
        r = run("batch", videos, "-o", out, "--config", "tiny", "--device", "cuda", "--workers", 2, "--json")
        assert r.exit_code == 0, r.output
        lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert [row["status"] for row in lines] == ["ok", "ok"]
        a, b = load_tokens(out / "a.pt"), load_tokens(out / "b.pt")
        assert torch.equal(a["tokens"], b["tokens"]) and a["meta"]["device"].startswith("cuda")


class TestLowPrecision:
    """bf16 and fp16 on the GPU against fp32 on the GPU (and fp32 on the GPU against the CPU), same decoded clip."""

    @pytest.fixture(scope="class")
    @classmethod
    def tokens(cls, clip_path):
        from slowfast_cli.pipeline import Pipeline

        out, clip = {}, None
        for device, dtype in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16"), ("cuda", "fp16")):
            cfg = resolve_config("default", {"pretrained": "none", "frames": 8, "device": device, "dtype": dtype})
            pipe = Pipeline(cfg)
            clip = clip or pipe.load(clip_path)
            out[device, dtype] = pipe.encode_clip(clip).tokens
            del pipe
        return out

    @pytest.mark.parametrize("dtype, limit", [("bf16", 0.05), ("fp16", 0.01)])
    def test_close_to_fp32(self, tokens, dtype, limit):
        low, ref = tokens["cuda", dtype], tokens["cuda", "fp32"]
        assert low.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype] and low.shape == ref.shape
        assert torch.isfinite(low.float()).all()
        err = relative_error(low, ref)
        assert err < limit, f"{dtype} tokens are {err:.4f} (relative) away from fp32"
        cos = torch.nn.functional.cosine_similarity(low.float().flatten(1), ref.flatten(1)).item()
        assert cos > 0.998

    def test_cuda_fp32_matches_the_cpu(self, tokens):
        err = relative_error(tokens["cuda", "fp32"], tokens["cpu", "fp32"])
        assert err < 5e-3, f"CUDA fp32 tokens are {err:.2e} (relative) away from the CPU's"  # TF32 convolutions


class TestPinnedCopies:
    def test_frames_go_through_pinned_memory_without_blocking(self):
        from torch.profiler import ProfilerActivity, profile

        from slowfast_cli.encoder.preprocess import _to_device

        frames = torch.randint(0, 256, (32, 224, 224, 3), dtype=torch.uint8)
        device = torch.device("cuda")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            moved = _to_device(frames, device)
            torch.cuda.synchronize()
        names = [e.key for e in prof.key_averages()]
        copies = [n for n in names if "Memcpy" in n and "HtoD" in n]
        if not copies:
            pytest.skip(f"the profiler recorded no CUDA copies (CUPTI missing?): {names[:8]}")
        assert any("Pinned" in n for n in copies), copies
        assert moved.device.type == "cuda" and moved.dtype == torch.uint8 and torch.equal(moved.cpu(), frames)
        assert _to_device(moved, device) is moved  # already there: no copy


class TestAfterTheVitOnTheDevice:
    def test_projector_and_aggregator_run_on_the_gpu(self, clip_path):
        from slowfast_cli.pipeline import Pipeline

        flags = {"frames": 8, "projector": "mlp2x_gelu", "llm_dim": 96, "random_projector": True}
        pipe = Pipeline(resolve_config("tiny", {**flags, "device": "cuda", "dtype": "fp32"}))
        assert all(p.device.type == "cuda" for p in pipe.projector.parameters())
        clip = pipe.load(clip_path)
        a = pipe.config.aggregator
        with torch.inference_mode():
            feats = pipe.encoder.encode(clip.frames)  # (T, N, 64)
            projected = pipe.projector(feats)  # (T, N, 96)
            agg = slow_fast(projected, pipe.encoder.grid, a.slow_frames, a.slow_pool, a.fast_size, a.slow_index)
            cpu_projector = copy.deepcopy(pipe.projector).cpu()
            cpu_projected = cpu_projector(feats.cpu())
            cpu_agg = slow_fast(cpu_projected, pipe.encoder.grid, a.slow_frames, a.slow_pool, a.fast_size, a.slow_index)
        assert feats.device.type == projected.device.type == agg.tokens.device.type == "cuda"
        assert projected.shape[-1] == 96 and agg.tokens.dtype == torch.float32
        torch.testing.assert_close(projected.cpu(), cpu_projected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(agg.tokens.cpu(), cpu_agg.tokens, rtol=1e-4, atol=1e-5)
        assert torch.equal(pipe.encode_clip(clip).tokens, agg.tokens.cpu())  # the pipeline does just this


LOAD_ON_CPU = """
import json, sys, torch
from slowfast_cli.header import read_token_header
assert not torch.cuda.is_available()
found = {}
for path in sys.argv[1:]:
    obj = torch.load(path, weights_only=True)
    tensor = obj.get("tokens", obj.get("features"))
    found[path] = [tensor.device.type, str(tensor.dtype), list(tensor.shape), obj["meta"]["device"]]
print(json.dumps({"files": found, "header": list(read_token_header(sys.argv[1], verify=True)["tokens"].shape)}))
"""


class TestTokenFilesFromCuda:
    def test_load_with_weights_only_where_there_is_no_gpu(self, clip_path, tmp_path):
        out, feats = tmp_path / "clip.pt", tmp_path / "clip.features.pt"
        r = run("encode", clip_path, "--config", "tiny", "--device", "cuda", "-o", out, "--save-features", feats)
        assert r.exit_code == 0, r.output
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        p = subprocess.run([sys.executable, "-c", LOAD_ON_CPU, str(out), str(feats)], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert p.returncode == 0, p.stderr
        loaded = json.loads(p.stdout)
        tokens, features = loaded["files"][str(out)], loaded["files"][str(feats)]
        assert tokens[0] == features[0] == "cpu" and tokens[1] == "torch.bfloat16" and tokens[3].startswith("cuda")
        assert loaded["header"] == tokens[2]
