"""The engine seam: ``slowfast batch`` drives any engine that implements ``batch.run.Engine`` the same way.

A third engine written here, against the protocol alone (decode and encode in this process, one video at a time),
is registered by name and run through the real CLI: it gives the local engine's token files bit for bit, its
manifest lines and its report, with only ``run.engine`` differing. Nothing in the CLI or the shared batch code
changes for it.
"""

from __future__ import annotations

import json

import media
import torch
from typer.testing import CliRunner

from slowfast_cli.batch import engines
from slowfast_cli.batch.records import Record, read_manifest
from slowfast_cli.batch.run import EngineOptions, Prepared, encode_one, write_one
from slowfast_cli.cli.app import app
from slowfast_cli.tokenfile import load_tokens

TINY = ["--config", "tiny", "--dtype", "fp32"]


class InlineEngine:
    """Decode and encode in this process, in plan order: the smallest engine the protocol allows."""

    name = "inline"
    verifies_outputs = True

    def __init__(self, options: EngineOptions):
        self.options, self.pipeline, self.done = options, None, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pipeline = None

    def prepare(self, config, root, out_dir):
        from slowfast_cli.pipeline import run_provenance

        return Prepared(config, run_provenance(config))

    def start(self, plan, config):
        from slowfast_cli.pipeline import Pipeline

        self.pipeline = Pipeline(config)
        return self.pipeline.warnings

    def outcomes(self, plan, config):
        from slowfast_cli.batch.workers import Done
        from slowfast_cli.video.decode import DECODE_RESIZE_MIN, load_clip

        for rel, out_rel in plan.todo:
            try:
                clip = load_clip(plan.root / rel, config.video, self.pipeline.image_size, min_scale=DECODE_RESIZE_MIN)
                done = Done(0, None, True, clip=clip)
            except Exception as exc:
                done = Done(0, None, False, error=str(exc))
            encoded = encode_one(done, rel, out_rel, plan.root, self.pipeline)
            self.done += 1

            def finish(encoded=encoded, rel=rel, out_rel=out_rel) -> Record:
                return encoded if isinstance(encoded, Record) else write_one(encoded, rel, out_rel, plan.out_dir)

            yield finish

    def summary(self):
        return {"name": self.name, "videos": self.done}


def test_a_third_engine_plugs_in_by_name_and_gives_the_local_engines_files(tmp_path, monkeypatch):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    media.make_video(src / "a.mp4", frames=12)
    media.make_video(src / "sub" / "b.mp4", frames=20, size=(80, 48))
    (src / "bad.mp4").write_bytes(b"not a video")
    monkeypatch.setitem(engines.ENGINES, "inline", (__name__, "InlineEngine", None))
    runner = CliRunner()
    results = {}
    for engine in ("local", "inline"):
        out = tmp_path / engine
        r = runner.invoke(
            app, ["batch", str(src), "-o", str(out), "--engine", engine, "--workers", "1", *TINY, "--json"]
        )
        assert r.exit_code == 1, r.output  # bad.mp4 failed; the others did not
        results[engine] = (out, json.loads(r.stdout))
    (local, lrep), (inline, irep) = results["local"], results["inline"]
    assert irep["run"]["engine"] == {"name": "inline", "videos": 3}
    own = ("engine", "timing", "config")  # which engine, how fast, its resolved config (Ray pins the dtype)
    assert {k: v for k, v in irep["run"].items() if k not in own} == {
        k: v for k, v in lrep["run"].items() if k not in own
    }
    assert {k: v for k, v in irep.items() if k != "run"} == {k: v for k, v in lrep.items() if k != "run"}
    for rel in ("a.pt", "sub/b.pt"):
        a, b = load_tokens(local / rel), load_tokens(inline / rel)
        assert torch.equal(a["tokens"], b["tokens"]), rel
    drop = ("seconds", "time")
    lines = [sorted((k, v) for k, v in row.items() if k not in drop) for row in read_manifest(local / "manifest.jsonl")]
    other = [
        sorted((k, v) for k, v in row.items() if k not in drop) for row in read_manifest(inline / "manifest.jsonl")
    ]
    assert sorted(map(str, lines)) == sorted(map(str, other))
    r = runner.invoke(app, ["batch", str(src), "-o", str(inline), "--engine", "inline", *TINY, "--json"])
    assert json.loads(r.stdout)["run"]["skipped"] == 2  # resume works for it as for every engine


class OrphaningEngine(InlineEngine):
    """The inline engine, whose first video leaves a temporary file behind, as an encoder actor killed mid-write on
    another node does (the retry writes the video again under another temporary name)."""

    name = "orphaning"

    def outcomes(self, plan, config):
        for i, finish in enumerate(super().outcomes(plan, config)):
            if i == 0:
                (plan.out_dir / ".slowfast-tmp-killed-actor.pt").write_bytes(b"x" * 4096)
            yield finish


def test_a_complete_run_leaves_no_temporary_file(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    media.make_video(src / "a.mp4", frames=12)
    media.make_video(src / "b.mp4", frames=12)
    monkeypatch.setitem(engines.ENGINES, "orphaning", (__name__, "OrphaningEngine", None))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "--engine", "orphaning", *TINY])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".slowfast-tmp")) == []
    assert (out / "a.pt").exists() and (out / "b.pt").exists()
