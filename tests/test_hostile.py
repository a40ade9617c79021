"""Nothing silently wrong (issue 19): every input that decides the tokens is recorded and validated, every file the
tool reads is bounded, every exit code and message tells the truth. One test per case the adversarial pass found;
each failed before its fix."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
from safetensors.torch import save_file
from test_checkpoints import TINY_HF, hf_tower, tower_state
from typer.testing import CliRunner

from slowfast_cli.checkpoints import open_checkpoint
from slowfast_cli.cli.app import app
from slowfast_cli.config import EncoderCfg, ProjectorCfg
from slowfast_cli.encoder.encoder import build_encoder
from slowfast_cli.errors import ConfigError, SlowfastError
from slowfast_cli.projector import build_projector
from slowfast_cli.tokenfile import load_tokens, save_tokens
from slowfast_cli.video.decode import probe

TINY = ["--config", "tiny", "--dtype", "fp32"]
CPU = torch.device("cpu")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(r) -> str:
    """The one error line of a failed command (never a traceback)."""
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


class TestEveryInputIsRecorded:
    def test_an_edited_config_json_is_not_resumed_over(self, tmp_path, small_video):
        """config.json decides the activation: editing it makes a resumed batch refuse, then --overwrite recompute."""
        folder, src = tmp_path / "ckpt", tmp_path / "in"
        hf_tower(hidden_act="quick_gelu").save_pretrained(folder)
        src.mkdir()
        shutil.copy(small_video, src / "v.mp4")
        args = ["batch", src, "-o", tmp_path / "out", *TINY, "--pretrained", folder, "--workers", "1"]
        assert run(*args).exit_code == 0
        before = load_tokens(tmp_path / "out" / "v.pt")["tokens"]
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
        r = run(*args)
        assert r.exit_code == 2 and "weights_config: sha256:" in one_line(r)
        assert run(*args, "--overwrite").exit_code == 0
        after = load_tokens(tmp_path / "out" / "v.pt")["tokens"]
        assert not torch.equal(before, after)  # the activation changed the numbers: keeping them was wrong

    def test_the_record_names_the_decoder_and_older_files_count_as_made_with_decord_0_6_0(self):
        from slowfast_cli.config import resolve_config
        from slowfast_cli.provenance import differences, provenance

        new = provenance(resolve_config("tiny"), "fp32")
        assert new["decoder"] == "decord2 3.4.0" and "weights_config" not in new  # no checkpoint, no config.json
        old = {k: v for k, v in new.items() if k != "decoder"}  # written before the decoder was recorded
        assert differences(old, new) == ["decoder: decord 0.6.0 -> decord2 3.4.0"]  # made with decord 0.6.0
        assert differences({**new, "decoder": "decord 0.6.0"}, new) == ["decoder: decord 0.6.0 -> decord2 3.4.0"]
        assert differences(new, new) == []
        pillow = new["libraries"]["Pillow"]
        other = {**new, "libraries": {**new["libraries"], "Pillow": "1.0"}}  # squash pixels differ between Pillows
        assert differences(other, new) == [f"libraries.Pillow: 1.0 -> {pillow}"]
        assert differences({k: v for k, v in new.items() if k != "libraries"}, new) == []  # files from before

    def test_aggregate_says_when_its_settings_differ_from_the_features_files(self, tmp_path, small_video):
        feat = tmp_path / "f.pt"
        assert run("encode", small_video, *TINY, "-o", tmp_path / "t.pt", "--save-features", feat).exit_code == 0
        r = run("aggregate", feat, "-o", tmp_path / "a.pt", "--config", "default")  # 32 slow frames, not tiny's 8
        assert r.exit_code == 0 and "aggregator.slow_frames: 8 -> 32" in r.stderr, r.output
        r = run("aggregate", feat, "-o", tmp_path / "b.pt")  # the features file's own settings (tiny's)
        assert r.exit_code == 0 and "warning" not in r.stderr


class TestBoundedReads:
    @pytest.mark.parametrize(
        "make, problem",
        [
            (lambda d: "/dev/zero", "is a character device, not a file"),
            (lambda d: d.joinpath("long.txt").write_bytes(b"a" * 100_000) and d / "long.txt", "line 1 is longer"),
            (lambda d: d.joinpath("nul.txt").write_bytes(b"a.mp4\0b.mp4\0") and d / "nul.txt", "holds NUL bytes"),
        ],
    )
    def test_files_from_is_read_line_by_line_with_a_limit(self, tmp_path, small_video, make, problem):
        listing = make(tmp_path)
        r = run("batch", small_video.parent, "-o", tmp_path / "out", *TINY, "--files-from", listing)
        assert r.exit_code == 2 and problem in one_line(r)
        assert not (tmp_path / "out" / "manifest.jsonl").exists()

    def test_a_preset_that_is_not_a_file(self, tmp_path):
        (tmp_path / "p.toml").mkdir()
        r = run("budget", "--config", tmp_path / "p.toml")
        assert r.exit_code == 2 and "is a folder, not a file" in one_line(r)


class TestCheckpointsTellTheRealProblem:
    @pytest.mark.parametrize(
        "key, value",
        [("layer_norm_eps", "abc"), ("layer_norm_eps", None), ("layer_norm_eps", [1]), ("hidden_act", ["gelu"]),
         ("num_attention_heads", "2"), ("num_attention_heads", 0), ("layer_norm_eps", -1)],
    )  # fmt: skip
    def test_malformed_config_json_values_are_one_line(self, tmp_path, key, value):
        folder = tmp_path / "ckpt"
        hf_tower().save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(SlowfastError, match=rf"config.json (has|says) {key} {repr(value).replace('[', '.')}"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(folder)), CPU, torch.float32)

    def test_a_config_json_that_is_not_json_is_not_taken_as_absent(self, tmp_path):
        folder = tmp_path / "ckpt"
        hf_tower().save_pretrained(folder)
        (folder / "config.json").write_text("{not json")
        with pytest.raises(SlowfastError, match="config.json: cannot be read as a Hugging Face config.json"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(folder)), CPU, torch.float32)

    def test_a_device_as_projector_weights_says_what_it_is(self):
        cfg = ProjectorCfg(kind="linear", weights="/dev/null")
        with pytest.raises(SlowfastError, match="/dev/null is a character device, not a weights file"):
            build_projector(cfg, 64, CPU, torch.float32)

    @pytest.mark.parametrize("shard", ["", "..", "."])
    def test_an_index_naming_a_shard_that_is_not_a_file(self, tmp_path, shard):
        index = tmp_path / "model.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": {"a.weight": shard}}))
        with pytest.raises(SlowfastError, match=rf"names shards that are not files beside it: '{shard}'"):
            open_checkpoint(index)

    def test_a_safetensors_name_on_a_text_file(self, tmp_path):
        (tmp_path / "notes.txt").write_text("these are not weights, " * 10)
        (tmp_path / "w.safetensors").symlink_to(tmp_path / "notes.txt")
        with pytest.raises(SlowfastError, match="w.safetensors: not a safetensors file"):
            open_checkpoint(tmp_path / "w.safetensors")

    @pytest.mark.parametrize("bad", [float("nan"), float("inf")])
    def test_non_finite_weights_are_refused_before_use(self, tmp_path, bad):
        state = tower_state(hf_tower())
        state["vision_model.post_layernorm.bias"][0] = bad  # even a tensor the tokens never use
        save_file(state, tmp_path / "w.safetensors")
        with pytest.raises(SlowfastError, match="tensor 'vision_model.post_layernorm.bias' holds 1 NaN or infinite"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(tmp_path / "w.safetensors")), CPU,
                          torch.float32)  # fmt: skip

    def test_integer_or_empty_projector_weights_are_refused(self, tmp_path):
        d = TINY_HF["hidden_size"]
        for state, problem in (
            ({"weight": torch.ones(8, d, dtype=torch.int64), "bias": torch.zeros(8)}, "must be floating point"),
            ({"weight": torch.ones(8, 0), "bias": torch.zeros(8)}, "has no channels"),
        ):
            save_file(state, tmp_path / "p.safetensors")
            with pytest.raises(SlowfastError, match=problem):
                build_projector(ProjectorCfg(kind="linear", weights=str(tmp_path / "p.safetensors")), d, CPU,
                                torch.float32)  # fmt: skip


class TestExitCodesAndMessages:
    def test_encode_overwrite_with_a_new_features_file(self, tmp_path, small_video):
        out, feat = tmp_path / "a.pt", tmp_path / "feat.pt"
        assert run("encode", small_video, *TINY, "-o", out).exit_code == 0
        r = run("encode", small_video, *TINY, "-o", out, "--overwrite", "--save-features", feat)
        assert r.exit_code == 0, r.output
        assert out.exists() and feat.exists()

    def test_report_exits_1_when_a_file_fails_its_crc_check(self, tmp_path):
        save_tokens(tmp_path / "t.pt", torch.randn(1, 4000, 8), {"output_tokens": 4000})
        save_tokens(tmp_path / "ok.pt", torch.randn(1, 10, 8), {"output_tokens": 10})
        data = bytearray((tmp_path / "t.pt").read_bytes())
        data[len(data) // 2 : len(data) // 2 + 3000] = bytes(3000)
        (tmp_path / "t.pt").write_bytes(bytes(data))
        r = run("report", tmp_path)
        assert r.exit_code == 1 and "1 entry skipped: damaged" in one_line(r)
        assert run("report", tmp_path / "ok.pt").exit_code == 0

    def test_decords_own_error_line_never_reaches_stderr(self, tmp_path, capfd):
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"not a video at all" * 100)
        with pytest.raises(SlowfastError, match="bad.mp4: not a readable video"):
            probe(bad)
        assert "ERROR" not in capfd.readouterr().err

    def test_an_unreachable_ray_address_fails_at_once_and_writes_nothing(self, tmp_path, small_video):
        """ray.init retries an address that does not answer for minutes without a word (issue 20): a HOST:PORT
        that refuses the connection is one line, exit 1, before anything is planned or written."""
        with socket.socket() as s:  # a loopback port nobody listens on once this socket is closed
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        (tmp_path / "in").mkdir()
        shutil.copy(small_video, tmp_path / "in" / "a.mp4")
        r = run("batch", tmp_path / "in", "-o", tmp_path / "out", *TINY, "--engine", "ray", "--address",
                f"127.0.0.1:{port}")  # fmt: skip
        assert r.exit_code == 1 and f"cannot connect to the Ray cluster at 127.0.0.1:{port}" in one_line(r)
        assert "does not accept a connection" in one_line(r) and not (tmp_path / "out").exists()

    def test_a_ray_node_that_sees_another_file_refuses_it(self, tmp_path, small_video):
        """The driver stats each video; a decoding node that sees another size or time there (another copy of
        IN_DIR, swapped files) or no file (an empty mount point) fails that video with one line naming the node,
        instead of encoding another video's frames under its name (issue 20)."""
        from dataclasses import replace
        from pathlib import Path

        from slowfast_cli.batch.engines.ray_plan import plan_table, planned
        from slowfast_cli.batch.engines.ray_tasks import check_video

        (tmp_path / "in").mkdir()
        shutil.copy(small_video, tmp_path / "in" / "a.mp4")
        table = plan_table(tmp_path / "in", [(Path("a.mp4"), Path("a.pt")), (Path("b.mp4"), Path("b.pt"))], set(), {})
        a, b = planned(table.to_pydict())
        st = (tmp_path / "in" / "a.mp4").stat()
        assert a.expect == (st.st_size, st.st_mtime_ns) and b.expect is None  # b: the driver sees no file
        job = {"root": str(tmp_path / "in"), "out_dir": str(tmp_path / "out")}
        assert check_video(a, job, "hostA/1a2b") == (None, None)
        swapped, _ = check_video(replace(a, expect=(st.st_size + 1, st.st_mtime_ns)), job, "hostA/1a2b")
        assert swapped.status == "failed" and swapped.record.kind == "mismatch"
        assert "Ray node hostA/1a2b sees another file than the driver" in swapped.record.error
        assert f"{st.st_size + 1:,} bytes" in swapped.record.error
        gone, _ = check_video(replace(b, expect=a.expect), job, "hostA/1a2b")
        assert gone.record.kind == "mismatch" and "does not exist on Ray node hostA/1a2b" in gone.record.error
        empty, _ = check_video(a, {**job, "root": str(tmp_path / "mount")}, "hostB/3c4d")  # an empty mount point
        assert empty.record.kind == "missing" and "not visible on Ray node hostB/3c4d" in empty.record.error

    def test_ray_nodes_that_resolve_the_model_differently_are_named(self):
        """Every node that will encode builds the model in the probe; one that computes in another dtype under
        --dtype auto, or sees other weights at the same path, stops the run before it starts (issue 20)."""
        from slowfast_cli.batch.engines.ray_checks import Sizing, agree, sizing
        from slowfast_cli.config import resolve_config

        cfg = resolve_config("tiny")
        a = {"node": "hostA/1a2b", "dtype": "bf16", "provenance": {"weights": "sha256:1", "dtype": "bf16"}}
        decoder_only = {"node": "hostC/9f9f", "provenance": None}
        assert agree({"a": a, "c": decoder_only}, cfg) is a
        with pytest.raises(ConfigError, match="Ray node hostB/3c4d computes in fp32 and hostA/1a2b in bf16"):
            agree({"a": a, "b": {**a, "node": "hostB/3c4d", "dtype": "fp32"}}, cfg)
        other = {**a, "node": "hostB/3c4d", "provenance": {"weights": "sha256:2", "dtype": "bf16"}}
        with pytest.raises(
            SlowfastError, match=r"Ray node hostB/3c4d sees other model files than hostA/1a2b \(weights"
        ):
            agree({"a": a, "b": other}, cfg)
        one, two = {"CPU": 4.0}, {"CPU": 2.0}
        assert sizing([one], "auto", None, None) == Sizing(gpus=0, encoders=1, cpus=4, decoders=3)
        assert sizing([one, two], "auto", None, None) == Sizing(0, 3, 2, 1)  # actors the size of the smallest node
        assert sizing([one, two], "auto", 2, 6) == Sizing(0, 2, 2, 3)
        assert sizing([{"CPU": 8.0, "GPU": 2.0}], "auto", None, None) == Sizing(1, 2, 4, 3)
        with pytest.raises(ConfigError, match="--encoders 2: the Ray cluster has 1 GPU and each encoder holds one"):
            sizing([{"CPU": 8.0, "GPU": 1.0}], "auto", 2, None)
        with pytest.raises(ConfigError, match="--encoders 7: the Ray cluster has 6 CPUs .* use --encoders 6 or fewer"):
            sizing([one, two], "auto", 7, None)

    def test_a_token_file_named_for_another_format_is_refused(self, tmp_path, small_video):
        """-o x.safetensors with the default --format pt wrote a torch file that every safetensors reader refuses
        (the third hostile pass); the name and the format must agree, before anything runs."""
        r = run("encode", small_video, *TINY, "-o", tmp_path / "x.safetensors")
        assert r.exit_code == 2 and "the name says safetensors but --format is pt" in one_line(r)
        r = run("encode", small_video, *TINY, "-o", tmp_path / "x.pt", "--format", "safetensors")
        assert r.exit_code == 2 and "the name says pt but --format is safetensors" in one_line(r)
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(SlowfastError, match="save_tokens writes the .pt format"):
            save_tokens(tmp_path / "y.safetensors", torch.zeros(1, 2, 3), {})
        with pytest.raises(SlowfastError, match="NaN or inf"):
            save_tokens(tmp_path / "nan.pt", torch.full((1, 2, 3), float("nan")), {})
        r = run("encode", small_video, *TINY, "-o", f"{tmp_path}/newdir/")
        assert r.exit_code == 2 and "names a folder" in r.output and not (tmp_path / "newdir").exists()

    def test_encode_json_names_the_layout_and_its_newline_tokens(self, tmp_path, small_video):
        r = run("encode", small_video, *TINY, "-o", tmp_path / "n.pt", "--newline", "frame", "--projector", "linear",
                "--random-projector", "--llm-dim", "8", "--json")  # fmt: skip
        d = json.loads(r.stdout)
        assert (d["layout"], d["newline"]) == ("slowfast", "frame")
        assert d["slow_tokens"] + d["fast_tokens"] + d["newline_tokens"] == d["output_tokens"]

    def test_a_clip_checkpoint_for_a_siglip_model_says_so(self, tmp_path):
        hf_tower(projection=False).save_pretrained(tmp_path / "clip")
        cfg = EncoderCfg(model="ViT-B-16-SigLIP", pretrained=str(tmp_path / "clip"), layer=1)
        with pytest.raises(SlowfastError, match="hold a CLIP tower .* but ViT-B-16-SigLIP is a SigLIP"):
            build_encoder(cfg, torch.device("cpu"), torch.float32)

    def test_more_third_pass_findings(self, tmp_path, small_video):
        """A CSV list with Excel's byte-order mark; --save-features inside IN_DIR; export of a folder without .pt
        files; aggregate with the slowfast layout's flags under the frames layout."""
        src = tmp_path / "in"
        src.mkdir()
        shutil.copy(small_video, src / "a.mp4")
        (tmp_path / "list.csv").write_bytes("path,caption\na.mp4,hello\n".encode("utf-8-sig"))
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / "list.csv")
        assert r.exit_code == 0, r.output
        assert load_tokens(tmp_path / "out" / "a.pt")["meta"]["columns"] == {"caption": "hello"}
        r = run("batch", src, "-o", tmp_path / "out2", *TINY, "--save-features", src / "feats")
        assert r.exit_code == 2 and "is inside the input folder" in one_line(r)
        (tmp_path / "empty").mkdir()
        r = run("export", tmp_path / "empty", "-o", tmp_path / "shards")
        assert r.exit_code == 1 and "no .pt token files found" in one_line(r)
        feats = tmp_path / "a.f.pt"
        assert run("encode", src / "a.mp4", *TINY, "-o", tmp_path / "a.pt", "--save-features", feats).exit_code == 0
        r = run("aggregate", feats, "-o", tmp_path / "b.pt", "--layout", "frames", "--slow-pool", "2x2_avg",
                "--fast-size", "2x2")  # fmt: skip
        assert r.exit_code == 2 and "--fast-size does not apply to the frames layout" in one_line(r)

    def test_a_rerun_in_another_format_is_refused(self, tmp_path, small_video):
        """pt, then safetensors, then webdataset into one folder encoded everything three times and report counted
        each video thrice (the third hostile pass): another format in a used folder is a usage error."""
        src = tmp_path / "in"
        src.mkdir()
        shutil.copy(small_video, src / "a.mp4")
        out = tmp_path / "out"
        assert run("batch", src, "-o", out, *TINY).exit_code == 0
        for fmt in ("safetensors", "webdataset"):
            r = run("batch", src, "-o", out, *TINY, "--format", fmt)
            assert r.exit_code == 2 and "from a run in another format" in one_line(r), fmt
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
            "a.pt", "manifest.jsonl", "report.json"]  # fmt: skip
        assert run("batch", src, "-o", tmp_path / "w", *TINY, "--format", "webdataset").exit_code == 0
        r = run("batch", src, "-o", tmp_path / "w", *TINY)
        assert r.exit_code == 2 and "holds webdataset shards" in one_line(r)


class TestReservedNames:
    def test_a_video_named_like_slowfasts_own_files_fails_and_no_output_is_ever_cleaned_away(
        self, tmp_path, small_video
    ):
        """A video whose output would be named like slowfast's temporary files (or sit in its Ray attempt folder)
        was skipped without a word when walking, and deleted as a stale temporary file by the next run when
        listed: now it is a failure that says why, and the other videos' outputs stay."""
        src = tmp_path / "in"
        (src / ".slowfast-attempts").mkdir(parents=True)
        for name in ("ok.mp4", ".slowfast-tmp-a.mp4", ".slowfast-attempts/b.mp4"):
            shutil.copy(small_video, src / name)
        out = tmp_path / "out"
        listing = tmp_path / "list.txt"
        listing.write_text("ok.mp4\n.slowfast-tmp-a.mp4\n.slowfast-attempts/b.mp4\n")
        for extra in ([], ["--files-from", listing]):
            r = run("batch", src, "-o", out, *TINY, "--workers", "1", "--json", *extra)
            assert r.exit_code == 1, r.output
            report = json.loads(r.stdout)["run"]
            assert report["failed_files"] == [".slowfast-attempts/b.mp4", ".slowfast-tmp-a.mp4"]
            assert report["failures_by_kind"] == {"collision": 2}
            assert "named like slowfast's own files" in r.stdout + r.stderr
            assert (out / "ok.pt").exists() and not list(out.rglob(".slowfast-tmp-*"))


class TestEmptyNames:
    @pytest.mark.parametrize(
        "args",
        [["encode", "V", "-o", ""], ["encode", "V", "--save-features", ""], ["batch", "D", "-o", ""],
         ["encode", "V", "--projector", "linear", "--projector-weights", ""], ["aggregate", "V", "-o", ""],
         ["encode", "V", "--config", ""]],
    )  # fmt: skip
    def test_an_empty_name_is_a_usage_error_never_the_current_folder(self, tmp_path, small_video, monkeypatch, args):
        monkeypatch.chdir(tmp_path)  # where an empty name would have landed
        args = [str(small_video) if a == "V" else str(small_video.parent) if a == "D" else a for a in args]
        r = run(*args, *(["--config", "tiny"] if "--config" not in args else []))
        assert r.exit_code == 2 and ("an empty name" in r.output or "--config is empty" in r.output), r.output
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize(
        "args",
        [["batch", "D", "-o", "OUT", "--save-features", "s3://b/feats"], ["encode", "V", "-o", "gs://b/v.pt"],
         ["aggregate", "V", "-o", "s3://b/out"], ["encode", "V", "--save-features", "s3://b/f.pt"]],
    )  # fmt: skip
    def test_a_url_where_only_a_local_path_goes_is_a_usage_error(self, tmp_path, small_video, monkeypatch, args):
        """Only batch's IN_DIR, -o and --files-from take URLs; elsewhere ``Path`` folded ``s3://b/x`` into the local
        folder ``s3:/b/x`` and wrote there without a word (found by the hostile20 pass)."""
        monkeypatch.chdir(tmp_path)
        args = [str(small_video) if a == "V" else str(small_video.parent) if a == "D" else a for a in args]
        r = run(*[str(tmp_path / "out") if a == "OUT" else a for a in args], "--config", "tiny")
        assert r.exit_code == 2 and "a URL; this option takes a local path" in r.output, r.output
        assert list(tmp_path.iterdir()) == []


class TestSpecialFiles:
    def test_a_fifo_among_the_videos_fails_alone_and_never_blocks(self, tmp_path, small_video):
        import os

        src = tmp_path / "in"
        src.mkdir()
        shutil.copy(small_video, src / "ok.mp4")
        os.mkfifo(src / "pipe.mp4")  # opening it to sniff its first bytes would wait for a writer forever
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--workers", "1", "--json", "--timeout", "60")
        assert r.exit_code == 1
        run_ = json.loads(r.stdout)["run"]
        assert run_["failed_files"] == ["pipe.mp4"] and run_["failures_by_kind"] == {"not_a_video": 1}
        assert "pipe.mp4: is a FIFO, not a video file" in r.stdout + r.stderr

    def test_a_device_as_the_video(self, tmp_path):
        r = run("encode", "/dev/zero", *TINY, "-o", tmp_path / "z.pt")
        assert r.exit_code == 1 and "/dev/zero: is a character device, not a video file" in one_line(r)

    def test_a_fifo_as_a_token_file_or_a_dangling_link_as_weights(self, tmp_path, small_video):
        import os

        os.mkfifo(tmp_path / "t.pt")
        r = run("report", tmp_path / "t.pt")
        assert r.exit_code == 1 and "t.pt: is a FIFO, not a file" in one_line(r)
        (tmp_path / "w.safetensors").symlink_to(tmp_path / "gone.safetensors")
        r = run("encode", small_video, *TINY, "--pretrained", tmp_path / "w.safetensors", "-o", tmp_path / "o.pt")
        assert r.exit_code == 2 and "w.safetensors is a broken symlink" in one_line(r)


class TestSecondPass:
    """What a hostile pass over the first fixes found (each failed before its fix)."""

    def test_a_same_size_replacement_of_a_video_is_redone(self, tmp_path, small_video):
        import os

        import media

        src = tmp_path / "in"
        src.mkdir()
        a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"  # two videos padded to one size (trailing bytes are ignored)
        shutil.copy(small_video, a)
        media.make_video(b, frames=20)
        size = max(a.stat().st_size, b.stat().st_size) + 8
        for f in (a, b):
            f.write_bytes(f.read_bytes().ljust(size, b"\0"))
        shutil.copy(a, src / "v.mp4")
        args = ["batch", src, "-o", tmp_path / "out", *TINY, "--workers", "1", "--json"]
        assert run(*args).exit_code == 0
        shutil.copy(b, src / "v.mp4")  # same name, same size, another video
        r = run(*args)
        assert r.exit_code == 0 and "made from another video of the same size as v.mp4" in r.stderr
        assert json.loads(r.stdout)["run"]["skipped"] == 0
        os.utime(src / "v.mp4")  # touched only: the bytes are the same, so it is kept
        assert json.loads(run(*args).stdout)["run"]["skipped"] == 1

    def test_a_sharded_checkpoint_swapped_for_one_of_the_same_layout_differs(self, tmp_path):
        from slowfast_cli.provenance import checkpoint_identity

        ids = []
        for seed in (0, 1):
            folder = tmp_path / f"ckpt{seed}"
            hf_tower(seed=seed, projection=False).save_pretrained(folder, max_shard_size="100KB")
            index = folder / "model.safetensors.index.json"
            assert index.exists()
            ids.append(checkpoint_identity(folder))
        assert (tmp_path / "ckpt0" / "model.safetensors.index.json").read_bytes() == (
            tmp_path / "ckpt1" / "model.safetensors.index.json"
        ).read_bytes()  # the same index: only the shards' bytes tell them apart
        assert ids[0] != ids[1]

    def test_another_programs_file_where_an_output_goes_is_never_replaced_unasked(self, tmp_path, small_video):
        src, out = tmp_path / "in", tmp_path / "out"
        src.mkdir()
        out.mkdir()
        shutil.copy(small_video, src / "v.mp4")
        torch.save({"w": torch.ones(3)}, out / "v.pt")  # someone's weights, named like the output
        r = run("batch", src, "-o", out, *TINY, "--workers", "1")
        assert r.exit_code == 2 and "are another program's" in one_line(r)
        assert torch.load(out / "v.pt", weights_only=True)["w"].sum() == 3
        assert run("batch", src, "-o", out, *TINY, "--workers", "1", "--overwrite").exit_code == 0

    def test_a_config_json_without_model_type_that_describes_a_tower_is_refused(self, tmp_path):
        folder = tmp_path / "ckpt"
        hf_tower().save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        del config["model_type"]
        (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
        with pytest.raises(SlowfastError, match="but no model_type"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(folder)), CPU, torch.float32)

    def test_cleanup_never_takes_an_input_for_a_temporary_file(self, tmp_path, small_video):
        out = tmp_path / "out"
        src = out / "in"  # IN_DIR inside OUT_DIR
        src.mkdir(parents=True)
        shutil.copy(small_video, src / ".slowfast-tmp-v.mp4")
        r = run("batch", src, "-o", out, *TINY, "--workers", "1")
        assert r.exit_code == 1 and (src / ".slowfast-tmp-v.mp4").exists()

    def test_videos_under_the_output_folder_are_named_not_dropped_silently(self, tmp_path, small_video):
        src = tmp_path / "in"
        (src / "out").mkdir(parents=True)
        shutil.copy(small_video, src / "out" / "v.mp4")
        r = run("batch", src, "-o", src / "out", *TINY, "--workers", "1")
        assert "1 video(s) under the output folder" in r.stderr and "no videos found" in r.stderr

    def test_a_device_as_the_output_is_refused(self, tmp_path, small_video):
        import os

        os.mkfifo(tmp_path / "o.pt")
        r = run("encode", small_video, *TINY, "-o", tmp_path / "o.pt", "--overwrite")
        assert r.exit_code == 2 and "is a FIFO, not a file" in one_line(r)
        assert not (tmp_path / "o.pt").is_file()

    def test_a_fifo_config_json_never_blocks(self, tmp_path):
        import os

        folder = tmp_path / "ckpt"
        hf_tower().save_pretrained(folder)
        (folder / "config.json").unlink()
        os.mkfifo(folder / "config.json")
        with pytest.raises(SlowfastError, match="config.json: cannot be read .*is a FIFO"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(folder)), CPU, torch.float32)

    def test_devices_as_weights_are_refused_before_any_hashing(self, tmp_path, small_video):
        for flags in (["--pretrained", "/dev/zero"], ["--projector", "linear", "--projector-weights", "/dev/zero"]):
            r = run("batch", small_video.parent, "-o", tmp_path / "out", *TINY, *flags)
            assert r.exit_code == 2 and "/dev/zero is a character device" in one_line(r)

    @pytest.mark.parametrize("shape", ["shared", "deep"])
    def test_a_meta_that_explodes_when_walked_is_one_line(self, tmp_path, shape):
        bomb: object = {"leaf": 1}
        for _ in range(40 if shape == "shared" else 100):
            bomb = {"a": bomb, "b": bomb} if shape == "shared" else {"a": bomb}
        torch.save({"tokens": torch.zeros(1, 4, 2), "meta": {"output_tokens": 4, "x": bomb}}, tmp_path / "t.pt")
        r = run("report", tmp_path / "t.pt")
        assert r.exit_code == 1 and "larger or deeper than a token file's can be" in one_line(r)
        torch.save({"features": torch.zeros(2, 4, 2), "meta": {"grid": [2, 2], "x": bomb}}, tmp_path / "f.pt")
        r = run("aggregate", tmp_path / "f.pt", "-o", tmp_path / "a.pt", "--slow-pool", "none", "--fast-size", "1x1")
        assert r.exit_code == 1 and "larger or deeper" in one_line(r)

    def test_q_k_v_of_other_shapes_are_one_line(self, tmp_path):
        state = tower_state(hf_tower())
        key = "vision_model.encoder.layers.0.self_attn.k_proj.weight"
        state[key] = state[key][:32].contiguous()
        save_file(state, tmp_path / "w.safetensors")
        with pytest.raises(SlowfastError, match="do not fit slowfast-tiny-vit"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(tmp_path / "w.safetensors")), CPU,
                          torch.float32)  # fmt: skip

    def test_float8_and_overflowing_float64_weights_are_named(self, tmp_path):
        state = tower_state(hf_tower())
        key = "vision_model.post_layernorm.weight"
        f8 = {**state, key: state[key].to(torch.float8_e4m3fn)}
        save_file(f8, tmp_path / "w8.safetensors")
        with pytest.raises(SlowfastError, match="is torch.float8_e4m3fn; weights and features must be"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(tmp_path / "w8.safetensors")), CPU,
                          torch.float32)  # fmt: skip
        big = {k: v.double() for k, v in state.items()}
        big["vision_model.embeddings.patch_embedding.weight"][0, 0, 0, 0] = 1e300  # finite, but not in float32
        save_file(big, tmp_path / "w64.safetensors")
        with pytest.raises(SlowfastError, match="conv1.weight' holds 1 NaN or infinite values"):
            build_encoder(EncoderCfg(model="slowfast-tiny-vit", pretrained=str(tmp_path / "w64.safetensors")), CPU,
                          torch.float32)  # fmt: skip

    def test_frame_counts_that_cannot_be_held_are_usage_errors(self):
        for flags in (["--frames", "2000000000"], ["--slow-index", "segment_start", "--slow-frames", "2000000000"]):
            r = run("budget", *flags)
            assert r.exit_code == 2 and "at most 100,000 frames" in one_line(r)

    def test_report_refuses_integer_or_empty_tokens_and_plan_json_exits_like_the_table(self, tmp_path):
        torch.save({"tokens": torch.zeros(1, 4, 2, dtype=torch.int64), "meta": {"output_tokens": 4}}, tmp_path / "i.pt")
        torch.save({"tokens": torch.zeros(1, 4, 0), "meta": {"output_tokens": 4}}, tmp_path / "z.pt")
        d = json.loads(run("report", tmp_path, "--json").stdout)
        why = {s["path"].rsplit("/", 1)[-1]: s["error"] for s in d["skipped"]}
        assert "must be floating point" in why["i.pt"] and "no channels" in why["z.pt"]
        r = run("budget", "--plan", "--context", "5", "--json")
        assert r.exit_code == 1 and json.loads(r.stdout) == []


def test_a_features_file_with_a_huge_pickle_is_refused_before_it_is_read(tmp_path):
    """torch.load reads the pickled part whole: a lying file of a few hundred MB of meta is refused first."""
    torch.save({"features": torch.zeros(2, 4, 2), "meta": {"grid": [2, 2], "pad": "x" * (65 << 20)}}, tmp_path / "f.pt")
    r = run("aggregate", tmp_path / "f.pt", "-o", tmp_path / "a.pt", "--slow-pool", "none", "--fast-size", "1x1")
    assert r.exit_code == 1 and "its data.pkl holds" in one_line(r)
    r = run("report", tmp_path / "f.pt")
    assert r.exit_code == 1 and "its data.pkl holds" in one_line(r)


class TestFourthPass:
    """What the fourth hostile pass found (each failed before its fix)."""

    def test_max_frames_where_it_does_not_apply_is_refused(self, tmp_path, small_video):
        for preset, extra in (("llava-video-7b-lmms-eval", []), ("tiny", [])):
            r = run("encode", small_video, "--config", preset, "-o", tmp_path / "x.pt", "--max-frames", "8", *extra)
            assert r.exit_code == 2 and "--max-frames caps sampling by rate" in one_line(r), r.output
        r = run("encode", small_video, *TINY, "-o", tmp_path / "y.pt", "--max-frames", "8", "--sample-fps", "2")
        assert r.exit_code == 0, r.output
        # and --frames where T follows each video's length (sampling by rate; the qwen presets) was ignored too
        r = run("encode", small_video, *TINY, "-o", tmp_path / "z.pt", "--frames", "4", "--sample-fps", "2")
        assert r.exit_code == 2 and "--frames does not apply to --sampling centers" in one_line(r)
        # --sample-fps 0 (no rate, a fixed --frames) where sampling is by rate whatever it says: refused, not 1 fps
        for sampling in ("llava_next", "qwen"):
            r = run("encode", small_video, *TINY, "-o", tmp_path / "w.pt", "--sampling", sampling, "--sample-fps", "0")
            assert r.exit_code == 2 and f"does not apply to --sampling {sampling}" in one_line(r), r.output
        assert not (tmp_path / "w.pt").exists()
        assert not (tmp_path / "z.pt").exists()

    def test_export_never_keeps_what_was_not_asked_for(self, tmp_path, small_video):
        """A second export with another --save-dtype kept the first's samples and said "already there"; another
        --format into the same folder mixed formats. Both are refused; the same settings resume."""
        src = tmp_path / "in"
        src.mkdir()
        shutil.copy(small_video, src / "a.mp4")
        assert run("batch", src, "-o", tmp_path / "pt", *TINY).exit_code == 0
        out = tmp_path / "st"
        assert run("export", tmp_path / "pt", "-o", out, "--format", "safetensors").exit_code == 0
        r = run("export", tmp_path / "pt", "-o", out, "--format", "safetensors", "--save-dtype", "fp16")
        assert r.exit_code == 2 and "stored as the computed dtype, but --save-dtype asks for fp16" in one_line(r)
        r = run("export", tmp_path / "pt", "-o", out, "--format", "webdataset")
        assert r.exit_code == 2 and "holds safetensors token files (a.safetensors)" in one_line(r)
        r = run("export", tmp_path / "pt", "-o", out, "--format", "safetensors", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["kept"] == 1

    def test_keys_and_columns_survive_save_features_and_aggregate(self, tmp_path, small_video):
        src = tmp_path / "in"
        src.mkdir()
        shutil.copy(small_video, src / "a.mp4")
        (tmp_path / "list.csv").write_text("path,key,caption\na.mp4,clip/one,hello\n")
        feats = tmp_path / "feats"
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / "list.csv",
                "--save-features", feats)  # fmt: skip
        assert r.exit_code == 0, r.output
        r = run("aggregate", feats, "-o", tmp_path / "agg", "--slow-frames", "4")
        assert r.exit_code == 0, r.output
        meta = load_tokens(tmp_path / "agg" / "clip" / "one.pt")["meta"]
        assert (meta["key"], meta["columns"]) == ("clip/one", {"caption": "hello"})
