"""The command line, driven through typer's CliRunner: output, JSON and exit codes, error paths included."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import ctrl_c_inside_torch_save
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.tokenfile import load_tokens, save_features, save_tokens

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


class TestBudget:
    def test_seed_demo_json(self):
        r = run("budget", "--frames", 64, "--grid", "14x14", "--slow-frames", 32, "--slow-pool", "none",
                "--fast-size", "4x4", "--json")  # fmt: skip
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["output_tokens"] == 7296 and round(d["ratio"], 2) == 0.58
        for key in ("frames", "grid", "tokens_per_frame", "input_tokens", "slow_frames", "slow_tokens",
                    "fast_tokens", "output_tokens", "ratio"):  # fmt: skip
            assert key in d
        assert d["grid"] == [14, 14] and d["input_tokens"] == 12544

    def test_seed_demo_1d_max(self):
        r = run("budget", "--frames", 64, "--grid", "14x14", "--slow-frames", 32, "--slow-pool", "1d_max", "--json")
        d = json.loads(r.stdout)
        assert (d["output_tokens"], round(d["ratio"], 2)) == (4160, 0.33)

    def test_grid_from_preset_model(self):
        d = json.loads(run("budget", "--config", "llava-l14-336", "--json").stdout)
        assert d["grid"] == [24, 24] and d["tokens_per_frame"] == 576

    def test_table(self):
        r = run("budget")
        assert r.exit_code == 0
        assert "4,160" in r.stdout and "0.33" in r.stdout and "14x14" in r.stdout

    def test_context_fit(self):
        d = json.loads(run("budget", "--context", 4096, "--json").stdout)
        assert d["fits"] is False and d["spare"] == 4096 - 4160 and d["context"] == 4096
        r = run("budget", "--context", 8192)
        assert "fits, 4,032 spare" in r.stdout
        assert "over by 64" in run("budget", "--context", 4096).stdout

    def test_expansion_warns(self):
        r = run("budget", "--frames", 4, "--slow-pool", "none", "--json")
        d = json.loads(r.stdout)
        assert d["ratio"] > 1 and d["warnings"]
        assert "expands" in r.stderr

    @pytest.mark.parametrize(
        "args,match",
        [
            (["--slow-pool", "3x3"], "valid: none, 1d_max, 1d_avg, 2x2_max, 2x2_avg"),
            (["--fast-size", "20x20"], "larger than the 14x14 patch grid"),
            (["--fast-size", "4by4"], "HxW"),
            (["--frames", "0"], "must be a positive integer"),
            (["--grid", "7x7"], "odd count"),
            (["--model", "ViT-Q-99"], "unknown model 'ViT-Q-99'"),
            (["--config", "nope"], "unknown preset 'nope'"),
            (["--plan"], "--plan needs --context"),
        ],
    )
    def test_usage_errors_exit_2_with_one_line(self, args, match):
        r = run("budget", *args)
        assert r.exit_code == 2, r.output
        assert match in r.stderr and r.stderr.count("error:") == 1

    def test_typer_usage_error_exits_2(self):
        assert run("budget", "--frames", "many").exit_code == 2


class TestPlan:
    def test_table_and_json(self):
        r = run("budget", "--plan", "--context", 8192, "--config", "llava-l14-336")
        assert r.exit_code == 0, r.output
        assert "Pareto front" in r.stdout and "use #1 with: --frames" in r.stdout
        rows = json.loads(run("budget", "--plan", "--context", 8192, "--grid", "24x24", "--json").stdout)
        assert rows and all(row["output_tokens"] <= 8192 for row in rows)
        assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))

    def test_range_and_reserve(self):
        rows = json.loads(run("budget", "--plan", "--context", 3000, "--reserve", 500, "--frames-range", "16:32",
                              "--json").stdout)  # fmt: skip
        assert rows and all(16 <= r["frames"] <= 32 and r["output_tokens"] <= 2500 for r in rows)

    def test_nothing_fits_is_an_error(self):
        r = run("budget", "--plan", "--context", 5)
        assert r.exit_code == 1 and "nothing fits" in r.stderr


class TestConfigs:
    def test_lists_presets(self):
        r = run("configs")
        assert r.exit_code == 0 and "tiny" in r.stdout and "ViT-B-16" in r.stdout

    def test_json(self):
        rows = json.loads(run("configs", "--json").stdout)
        names = {r["name"] for r in rows}
        assert {"default", "tiny"} <= names
        tiny = next(r for r in rows if r["name"] == "tiny")
        assert tiny["encoder"]["pretrained"] == "none"

    def test_broken_preset_is_a_usage_error(self, tmp_path, monkeypatch):
        import slowfast_cli.config as config

        (tmp_path / "broken.toml").write_text("[aggregator]\nslow_pool = 'max'\n")
        monkeypatch.setattr(config, "PRESET_DIR", tmp_path)
        r = run("configs")
        assert r.exit_code == 2 and "unknown slow pool 'max'" in r.stderr


def token_file(path, length, input_tokens):
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"input_tokens": input_tokens, "frames": 1, "tokens_per_frame": input_tokens, "output_tokens": length}
    save_tokens(path, torch.zeros(1, length, 8), meta)


class TestReport:
    def test_folder(self, tmp_path):
        token_file(tmp_path / "a.pt", 10, 100)
        token_file(tmp_path / "b" / "c.pt", 20, 100)
        r = run("report", tmp_path)
        assert r.exit_code == 0 and "token files" in r.stdout
        d = json.loads(run("report", tmp_path, "--json").stdout)
        assert d["files"] == 2 and d["output_tokens"] == 30 and d["ratio"] == pytest.approx(0.15)

    def test_bad_file_alone_exits_1(self, tmp_path):
        (tmp_path / "x.pt").write_text("nope")
        r = run("report", tmp_path / "x.pt")
        assert r.exit_code == 1 and "x.pt: not a token file" in r.stderr

    def test_empty_folder_exits_1(self, tmp_path):
        r = run("report", tmp_path)
        assert r.exit_code == 1 and "no token files" in r.stderr

    def test_missing_path_exits_2(self, tmp_path):
        assert run("report", tmp_path / "nope").exit_code == 2


class TestAggregate:
    @pytest.fixture
    def features(self, tmp_path):
        torch.manual_seed(0)
        x = torch.randn(12, 36, 16)
        p = tmp_path / "clip.features.pt"
        save_features(p, x, {"grid": [6, 6]})
        return p, x

    def test_recompress(self, tmp_path, features):
        from slowfast_cli.aggregate import slow_fast

        path, x = features
        out = tmp_path / "out.pt"
        r = run("aggregate", path, "-o", out, "--slow-frames", 4, "--slow-pool", "2x2_avg", "--fast-size", "3x3")
        assert r.exit_code == 0, r.output
        obj = load_tokens(out)
        assert torch.equal(obj["tokens"], slow_fast(x, (6, 6), 4, "2x2_avg", (3, 3)).tokens)
        m = obj["meta"]
        assert (m["slow_tokens"], m["fast_tokens"], m["output_tokens"]) == (36, 108, 144)
        assert m["slow_frame_indices"] == [0, 3, 7, 11] and m["config"]["aggregator"]["slow_pool"] == "2x2_avg"
        assert m["input_tokens"] == 12 * 36 and m["ratio"] == 144 / (12 * 36)
        budget = json.loads(run("budget", "--frames", 12, "--grid", "6x6", "--slow-frames", 4, "--slow-pool",
                                "2x2_avg", "--fast-size", "3x3", "--json").stdout)  # fmt: skip
        assert budget["output_tokens"] == obj["tokens"].shape[1]

    @pytest.mark.parametrize("pool", ["none", "1d_max", "1d_avg", "2x2_max", "2x2_avg"])
    @pytest.mark.parametrize("t,grid,slow,fast", [(12, (6, 6), 4, "3x3"), (5, (4, 6), 8, "2x3"), (7, (6, 5), 3, "2x2")])
    def test_output_equals_the_written_out_reference(self, tmp_path, pool, t, grid, slow, fast):
        from test_aggregate import reference

        if pool.startswith("1d") and grid[0] * grid[1] % 2:
            pytest.skip("1d pools need an even token count")
        torch.manual_seed(t)
        x = torch.randn(t, grid[0] * grid[1], 8)
        feat, out = tmp_path / "f.pt", tmp_path / "o.pt"
        save_features(feat, x, {"grid": list(grid)})
        r = run("aggregate", feat, "-o", out, "--slow-frames", slow, "--slow-pool", pool, "--fast-size", fast)
        assert r.exit_code == 0, r.output
        h, w = (int(v) for v in fast.split("x"))
        assert torch.equal(load_tokens(out)["tokens"], reference(x, grid, slow, pool, (h, w)))

    def test_refuses_overwrite(self, tmp_path, features):
        out = tmp_path / "out.pt"
        out.write_bytes(b"keep me")
        r = run("aggregate", features[0], "-o", out)
        assert r.exit_code == 1 and "--overwrite" in r.stderr and out.read_bytes() == b"keep me"
        assert run("aggregate", features[0], "-o", out, "--overwrite").exit_code == 0

    def test_json(self, tmp_path, features):
        d = json.loads(run("aggregate", features[0], "-o", tmp_path / "o.pt", "--json").stdout)
        assert d["output_tokens"] == 12 * 18 + 12 * 16  # default preset: min(12, 32) slow frames, 1d_max, 4x4

    @pytest.mark.parametrize(
        "obj,match",
        [
            ({"tokens": torch.zeros(1, 2, 3)}, "not a features file"),
            ({"features": torch.zeros(3, 4)}, "rank 2"),
            ({"features": torch.zeros(3, 10, 4), "meta": {"grid": [3, 3]}}, "grid 3x3 has 9 tokens"),
        ],
    )
    def test_bad_features_files(self, tmp_path, obj, match):
        p = tmp_path / "bad.pt"
        torch.save(obj, p)
        out = tmp_path / "out.pt"
        r = run("aggregate", p, "-o", out)
        assert r.exit_code == 1 and match in r.stderr and "bad.pt" in r.stderr
        assert r.stderr.strip().count("\n") == 0 and not out.exists()

    def test_text_file(self, tmp_path):
        p = tmp_path / "notes.pt"
        p.write_text("hello")
        r = run("aggregate", p, "-o", tmp_path / "o.pt")
        assert r.exit_code == 1 and "notes.pt: not a features file" in r.stderr

    def test_pool_that_does_not_fit_the_grid(self, tmp_path):
        p = tmp_path / "odd.pt"
        save_features(p, torch.zeros(2, 9, 4), {"grid": [3, 3]})
        r = run("aggregate", p, "-o", tmp_path / "o.pt", "--slow-pool", "1d_max", "--fast-size", "2x2")
        assert r.exit_code == 2 and "odd count" in r.stderr


class TestErrors:
    def test_debug_shows_traceback(self, tmp_path):
        (tmp_path / "x.pt").write_text("nope")
        r = runner.invoke(app, ["--debug", "report", str(tmp_path / "x.pt")])
        assert r.exit_code == 1 and "Traceback" in r.stderr

    def test_help_lists_commands(self):
        r = run("--help")
        for cmd in ("encode", "aggregate", "budget", "report", "configs"):
            assert cmd in r.stdout


def test_python_m_and_light_imports():
    """`python -m slowfast_cli budget` works and imports neither torch, open_clip, decord nor transformers (for
    the hf: families' presets too)."""
    code = (
        "import sys, runpy\n"
        "for extra in ([], ['--config', 'internvl3-8b-slowfast']):\n"
        "    sys.argv = ['slowfast', 'budget', '--json', *extra]\n"
        "    try:\n        runpy.run_module('slowfast_cli', run_name='__main__')\n"
        "    except SystemExit as e:\n        assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'open_clip', 'decord', 'torchvision', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split("\n}\n", 1)
    assert json.loads(first + "}")["output_tokens"] == 4160 and json.loads(second)["output_tokens"] == 3072


def test_report_imports_neither_torch_nor_model_libraries(tmp_path):
    token_file(tmp_path / "a.pt", 3, 30)
    code = (
        "import sys; from typer.testing import CliRunner; from slowfast_cli.cli.app import app;\n"
        f"r = CliRunner().invoke(app, ['report', {str(tmp_path)!r}]); assert r.exit_code == 0, r.output;\n"
        "heavy = [m for m in ('open_clip', 'decord', 'torch') if m in sys.modules]; assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python API example, run as written on a real clip: encode (a path and frames), load, and a
    (tiny, random) Llama from transformers generating from the token file spliced into its inputs_embeds."""
    import re
    from pathlib import Path

    import media

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = re.search(r"## Python API\s+```python\n(.*?)```", readme, re.S).group(1)
    clip = tmp_path / "clip.mp4"
    clip.symlink_to(media.sample_clip("bikes.mp4"))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["encode", "clip.mp4", "--config", "tiny", "-o", "clip.pt"]).exit_code == 0
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["tokens"].shape == namespace["from_frames"].tokens.shape == (1, 8 * 32 + 8 * 16, 64)
    assert namespace["saved"]["tokens"].shape == (1, 512, 64)  # the `tiny` preset's 16 frames
    assert namespace["inputs"]["inputs_embeds"].shape == (1, 4 + 512, 64)  # the token file went into inputs_embeds
    assert namespace["answer"].shape == (1, 8)  # ... and the LLM generated from it


# --- bad values and bad files (issue 8 §5), refusals (§2) --------------------------------------------------------
class TestUsageErrorsUpFront:
    def test_version_alone(self):
        r = run("--version")
        assert r.exit_code == 0 and r.stdout.startswith("slowfast ")

    @pytest.mark.parametrize(
        "args, match",
        [
            (["--context", "-1"], "--context must be at least 1"),
            (["--plan", "--context", "4096", "--top", "0"], "--top must be at least 1"),
            (["--plan", "--context", "4096", "--reserve", "-5"], "--reserve must be at least 0"),
            (["--plan", "--context", "4096", "--frames-range", "64:8"], "MIN <= MAX"),
        ],
    )
    def test_budget_bounds(self, args, match):
        r = run("budget", *args)
        assert r.exit_code == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0"])
    def test_non_finite_timeout(self, small_video, tmp_path, value):
        r = run("batch", small_video.parent, "-o", tmp_path / "out", "--config", "tiny", "--timeout", value)
        assert r.exit_code == 2 and "--timeout must be a positive number" in r.stderr
        assert not (tmp_path / "out").exists()

    def test_grid_that_does_not_fit_fails_before_any_video(self, tmp_path):
        """ViT-B-32 has a 7x7 grid: 1d_max cannot pair 49 tokens. No decoding, no model, no output folder."""
        src = tmp_path / "in"
        src.mkdir()
        (src / "v.mp4").write_bytes(b"never opened")
        for cmd in (["batch", src, "-o", tmp_path / "out"], ["encode", src / "v.mp4", "-o", tmp_path / "v.pt"]):
            r = run(*cmd, "--model", "ViT-B-32", "--pretrained", "none")
            assert r.exit_code == 2, r.output
            assert "odd count (49)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists() and not (tmp_path / "v.pt").exists()


class TestSameFile:
    def test_encode_never_replaces_its_input_video(self, small_video, tmp_path):
        video = tmp_path / "x.mp4"
        video.write_bytes(small_video.read_bytes())
        (tmp_path / "link.pt").symlink_to(video)
        (tmp_path / "sub").mkdir()
        for target in (video, tmp_path / "sub" / ".." / "x.mp4", tmp_path / "link.pt"):
            r = run("encode", video, "--config", "tiny", "-o", target, "--overwrite")
            assert r.exit_code == 2 and "is the input file" in r.stderr, r.output
            r = run("encode", video, "--config", "tiny", "--save-features", target, "--overwrite")
            assert r.exit_code == 2 and "is the input file" in r.stderr, r.output
        assert video.read_bytes() == small_video.read_bytes()

    def test_aggregate_never_replaces_its_features_file(self, tmp_path):
        feat = tmp_path / "f.pt"
        save_features(feat, torch.randn(4, 9, 2), {"grid": [3, 3]})
        before = feat.read_bytes()
        r = run("aggregate", feat, "-o", tmp_path / "." / "f.pt", "--overwrite", "--slow-pool", "none")
        assert r.exit_code == 2 and "is the input file" in r.stderr
        assert feat.read_bytes() == before


class TestMalformedFeatures:
    @pytest.mark.parametrize(
        "meta, match",
        [
            ({"grid": [3, 3], "x": torch.zeros(1)}, "meta.x holds a Tensor"),
            ({"grid": [3, 3], "frame_indices": [0, 1]}, r"frame_indices'\] must be a list of 4"),
            ({"grid": [3, 3], "frame_indices": "0,1,2,3"}, "got a str"),
            ({"grid": [3, 3], "timestamps": [0.0, 1.0, float("nan"), 2.0]}, "finite numbers"),
            ({"grid": [3, 3], "config": {"video": 5}}, r"meta\['config'\] is not a slowfast config"),
            ({"grid": [3, 3], "config": [1, 2]}, r"meta\['config'\] is not a slowfast config"),
            ({"grid": [True, 9]}, "positive integers"),
        ],
    )
    def test_one_line_exit_1(self, tmp_path, meta, match):
        feat = tmp_path / "f.pt"
        torch.save({"features": torch.randn(4, 9, 2), "meta": meta}, feat)
        r = run("aggregate", feat, "-o", tmp_path / "o.pt", "--slow-pool", "none")
        assert r.exit_code == 1, r.output
        assert len(r.stderr.strip().splitlines()) == 1 and str(feat) in r.stderr
        assert re.search(match, r.stderr), r.stderr
        assert not (tmp_path / "o.pt").exists()

    def test_no_frames_is_a_bad_file_not_a_usage_error(self, tmp_path):
        feat = tmp_path / "f.pt"
        torch.save({"features": torch.randn(0, 9, 2), "meta": {"grid": [3, 3]}}, feat)
        r = run("aggregate", feat, "-o", tmp_path / "o.pt")
        assert r.exit_code == 1 and "no frames" in r.stderr


class TestReportTrustsNothing:
    def test_bad_counts_bare_tensors_and_odd_entries_are_listed_not_counted(self, tmp_path):
        token_file(tmp_path / "good.pt", 10, 100)
        meta = {"frames": 1, "tokens_per_frame": 1, "output_tokens": 10}
        save_tokens(tmp_path / "bool.pt", torch.zeros(1, 10, 8), {**meta, "input_tokens": True})
        save_tokens(tmp_path / "huge.pt", torch.zeros(1, 10, 8), {**meta, "input_tokens": 10**30})
        save_tokens(tmp_path / "length.pt", torch.zeros(1, 10, 8), {"output_tokens": 11})
        torch.save(torch.zeros(1, 10, 8), tmp_path / "bare.pt")
        (tmp_path / "dangling.pt").symlink_to(tmp_path / "gone.pt")
        (tmp_path / "dir.pt").mkdir()
        r = run("report", tmp_path, "--json")
        assert r.exit_code == 1 and "6 entries skipped: damaged, not token files" in r.stderr, r.output
        d = json.loads(r.stdout)  # the report is still printed whole
        assert d["files"] == 1 and d["input_tokens"] == 100 and d["output_tokens"] == 10
        why = {Path(s["path"]).name: s["error"] for s in d["skipped"]}
        assert set(why) == {"bool.pt", "huge.pt", "length.pt", "bare.pt", "dangling.pt", "dir.pt"}
        assert "must be a positive integer, got True" in why["bool.pt"]
        assert "frames x tokens_per_frame is 1" in why["huge.pt"]
        assert "the tensor holds 10 tokens" in why["length.pt"]
        assert "a bare tensor" in why["bare.pt"] and "TensorHeader" not in why["bare.pt"]
        assert "dangling symlink" in why["dangling.pt"] and "is a folder" in why["dir.pt"]


class TestEncodeFaults:
    def test_full_disk_names_the_problem_and_leaves_neither_file(self, small_video, small_disk):
        disk = small_disk("160k")  # the token file (~70-130 kB) fits; the features file (~130-260 kB) does not
        r = run("encode", small_video, "--config", "tiny", "-o", disk / "t.pt", "--save-features", disk / "f.pt")
        assert r.exit_code == 1, r.output
        assert "No space left on device" in r.stderr and "Traceback" not in r.output
        assert len(r.stderr.strip().splitlines()) == 1
        assert os.listdir(disk) == []

    def test_ctrl_c_while_writing_exits_130_and_leaves_nothing(self, small_video, tmp_path, monkeypatch):
        ctrl_c_inside_torch_save(monkeypatch)
        r = run("encode", small_video, "--config", "tiny", "-o", tmp_path / "t.pt")
        assert r.exit_code == 130 and "interrupted" in r.stderr and "unexpected pos" not in r.output
        assert os.listdir(tmp_path) == []


class TestNonFinite:
    @pytest.mark.parametrize(
        "features, match",
        [
            (torch.tensor([1.0, float("nan")]).repeat(18).reshape(4, 9, 1), "NaN or infinite"),
            (torch.full((4, 9, 2), float("inf")), "72 NaN or infinite"),
            (torch.zeros(4, 9, 0), "no channels"),
        ],
    )
    def test_aggregate_refuses_features_an_llm_cannot_take(self, tmp_path, features, match):
        feat = tmp_path / "f.pt"
        save_features(feat, features, {"grid": [3, 3]})
        r = run("aggregate", feat, "-o", tmp_path / "o.pt", "--slow-pool", "none")
        assert r.exit_code == 1 and match in r.stderr and not (tmp_path / "o.pt").exists()

    def test_encode_refuses_to_write_non_finite_tokens(self, small_video, tmp_path):
        import open_clip

        from slowfast_cli.encoder.towers import register_own_models

        register_own_models()
        model = open_clip.create_model("slowfast-tiny-vit")
        state = model.state_dict()
        state["visual.conv1.weight"][0, 0, 0, 0] = float("nan")  # one bad weight would poison every token
        weights = tmp_path / "bad.pt"
        torch.save(state, weights)
        r = run("encode", small_video, "--config", "tiny", "--pretrained", weights, "-o", tmp_path / "o.pt")
        assert r.exit_code == 1 and "tensor 'conv1.weight' holds 1 NaN or infinite values" in r.stderr, r.output
        state["visual.conv1.weight"][:] = 3e38  # finite weights whose activations overflow: caught in the tokens
        torch.save(state, weights)
        r = run("encode", small_video, "--config", "tiny", "--pretrained", weights, "-o", tmp_path / "o.pt")
        assert r.exit_code == 1 and "non-finite tokens" in r.stderr, r.output
        assert not (tmp_path / "o.pt").exists()
