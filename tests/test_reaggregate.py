"""Re-aggregation at scale: ``aggregate`` takes the features file's own settings, ``batch --save-features`` keeps
features for a whole folder, and ``aggregate IN_DIR -o OUT_DIR`` re-compresses a folder in one process, resumably."""

from __future__ import annotations

import json
import shutil

import media
import pytest
import torch
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.tokenfile import load_features, load_tokens

TINY = ["--config", "tiny", "--dtype", "fp32"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, small_video):
    """One video encoded with the tiny preset (8 slow frames) and its features saved."""
    d = tmp_path_factory.mktemp("enc")
    r = run("encode", small_video, *TINY, "-o", d / "t.pt", "--save-features", d / "f.pt")
    assert r.exit_code == 0, r.output
    return d / "t.pt", d / "f.pt"


class TestOneFile:
    def test_no_flags_gives_the_encodes_tokens_bit_for_bit(self, encoded, tmp_path):
        tokens, feat = encoded
        r = run("aggregate", feat, "-o", tmp_path / "a.pt")
        assert r.exit_code == 0 and "warning" not in r.stderr, r.output
        again, orig = load_tokens(tmp_path / "a.pt"), load_tokens(tokens)
        assert torch.equal(again["tokens"], orig["tokens"])
        assert again["meta"]["config"]["aggregator"] == orig["meta"]["config"]["aggregator"]

    def test_flags_override_and_the_change_is_printed(self, encoded, tmp_path):
        r = run("aggregate", encoded[1], "-o", tmp_path / "a.pt", "--slow-frames", 4)
        assert r.exit_code == 0 and "aggregator.slow_frames: 8 -> 4" in r.stderr, r.output
        m = load_tokens(tmp_path / "a.pt")["meta"]
        assert m["slow_frames"] == 4 and m["config"]["aggregator"]["slow_pool"] == "1d_max"  # the rest: recorded

    def test_a_preset_replaces_the_recorded_settings(self, encoded, tmp_path):
        r = run("aggregate", encoded[1], "-o", tmp_path / "a.pt", "--config", "default")
        assert r.exit_code == 0 and "aggregator.slow_frames: 8 -> 32" in r.stderr, r.output


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    """A batch of 3 videos (one in a sub-folder) with --save-features."""
    d = tmp_path_factory.mktemp("batch")
    for name, n in (("a.mp4", 20), ("sub/b.mp4", 24), ("c.mp4", 12)):
        (d / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        media.make_video(d / "in" / name, frames=n)
    r = run("batch", d / "in", "-o", d / "tok", "--save-features", d / "feat", *TINY, "--workers", 1)
    assert r.exit_code == 0, r.output
    return d


class TestFolder:
    def test_batch_keeps_features_under_the_token_files_names(self, batched):
        names = sorted(str(p.relative_to(batched / "feat")) for p in (batched / "feat").rglob("*.pt"))
        assert names == ["a.pt", "c.pt", "sub/b.pt"]

    def test_a_folder_in_one_process_gives_the_batchs_tokens_and_resumes(self, batched, tmp_path):
        out = tmp_path / "agg"
        r = run("aggregate", batched / "feat", "-o", out, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["run"]["ok"] == 3
        for name in ("a.pt", "c.pt", "sub/b.pt"):
            assert torch.equal(load_tokens(out / name)["tokens"], load_tokens(batched / "tok" / name)["tokens"])
        lines = (out / "manifest.jsonl").read_text().splitlines()
        assert len(lines) == 3 and (out / "report.json").exists()
        (out / "c.pt").write_bytes((out / "c.pt").read_bytes()[:-100])  # damaged: redone
        r = run("aggregate", batched / "feat", "-o", out, "--json")
        assert r.exit_code == 0 and "c.pt" in r.stderr and "redone" in r.stderr, r.output
        assert json.loads(r.stdout)["run"]["skipped"] == 2 and json.loads(r.stdout)["run"]["ok"] == 1

    def test_other_settings_stop_before_any_work_unless_overwrite(self, batched, tmp_path):
        out = tmp_path / "agg"
        assert run("aggregate", batched / "feat", "-o", out).exit_code == 0
        before = (out / "a.pt").read_bytes()
        r = run("aggregate", batched / "feat", "-o", out, "--slow-pool", "none")
        assert r.exit_code == 2 and "aggregator.slow_pool: 1d_max -> none" in r.stderr, r.output
        assert (out / "a.pt").read_bytes() == before
        r = run("aggregate", batched / "feat", "-o", out, "--slow-pool", "none", "--overwrite")
        assert r.exit_code == 0 and "1d_max -> none (3 of 3)" in r.stderr, r.output
        assert load_tokens(out / "a.pt")["meta"]["slow_tokens"] == 8 * 64

    def test_a_file_that_is_not_features_fails_alone(self, batched, tmp_path):
        feat = tmp_path / "feat"
        shutil.copytree(batched / "feat", feat)
        (feat / "notes.pt").write_text("hello")
        r = run("aggregate", feat, "-o", tmp_path / "agg")
        assert r.exit_code == 1 and "notes.pt: not a features file" in r.output, r.output
        assert (tmp_path / "agg" / "a.pt").exists()

    def test_a_pool_that_does_not_fit_is_a_usage_error_first(self, batched, tmp_path):
        r = run("aggregate", batched / "feat", "-o", tmp_path / "agg", "--fast-size", "9x9")
        assert r.exit_code == 2 and not list((tmp_path / "agg").glob("*.pt")), r.output


class TestSaveFeaturesOption:
    def test_inside_the_output_folder_is_refused(self, small_video, tmp_path):
        r = run("batch", small_video.parent, "-o", tmp_path / "o", "--save-features", tmp_path / "o" / "f", *TINY)
        assert r.exit_code == 2 and "apart from the output folder" in r.stderr

    def test_ray_is_refused(self, small_video, tmp_path):
        args = ["--engine", "ray", "--save-features", tmp_path / "f"]
        r = run("batch", small_video.parent, "-o", tmp_path / "o", *args, *TINY)
        assert r.exit_code == 2 and "--engine local only" in r.stderr

    @pytest.mark.parametrize("fmt", ["safetensors", "webdataset"])
    def test_features_are_pt_files_whatever_the_tokens_format(self, batched, tmp_path, fmt):
        feat = tmp_path / "feat"
        r = run("batch", batched / "in", "-o", tmp_path / "tok", "--format", fmt, "--save-features", feat, *TINY)
        assert r.exit_code == 0, r.output
        names = sorted(str(p.relative_to(feat)) for p in feat.rglob("*.pt"))
        assert names == ["a.pt", "c.pt", "sub/b.pt"]
        for name in names:
            a, b = load_features(feat / name), load_features(batched / "feat" / name)
            assert torch.equal(a["features"], b["features"])

    def test_done_videos_without_features_are_named(self, batched, tmp_path):
        r = run("batch", batched / "in", "-o", batched / "tok", "--save-features", tmp_path / "f2", *TINY)
        assert r.exit_code == 0 and "3 video(s) already done have no features file" in r.stderr, r.output
