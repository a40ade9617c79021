"""``slowfast batch --engine ray`` against the local engine, on real Ray clusters started here on loopback.

One head node (2 CPUs) serves the module; the two-node test starts its own head (with the dashboard, for
``ray job submit``) and a second node. Every Ray run is a real ``slowfast`` subprocess, as users run it. Crashes
and hangs come from ``workers.test_fault`` (``SLOWFAST_TEST_FAULTS``, set in the clusters' environment only).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import media
import psutil
import pytest
import raycluster
import torch
from test_batch import BAD, GOOD
from typer.testing import CliRunner

from slowfast_cli.batch.records import read_manifest
from slowfast_cli.cli.app import app
from slowfast_cli.header import TMP_PREFIX

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra")

TINY = ["--config", "tiny", "--dtype", "fp32"]
FAULTS = "decode-crash:*crash_decode*,decode-hang:*hang_decode*,encode-crash:*crash_encode*"
NON_UTF8 = os.fsdecode(b"caf\xe9 [bold]x.mp4")  # not UTF-8, and rich markup


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = raycluster.make_cluster(tmp_path_factory.mktemp("rc"), {"SLOWFAST_TEST_FAULTS": FAULTS})
    try:
        c.start_head(num_cpus=2)
        yield c
    finally:
        c.stop()


def slowfast(cluster, *args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slowfast_cli", *map(str, args)]
    return subprocess.run(cmd, env=env or cluster.env, capture_output=True, timeout=timeout)


def ray_batch(cluster, src, out, *args, **kw) -> subprocess.CompletedProcess:
    args = ["-o", out, "--engine", "ray", "--address", cluster.address, *TINY, *args]
    return slowfast(cluster, "batch", src, *args, **kw)


def local_batch(src, out, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(src), "-o", str(out), *TINY, *map(str, args)]
    return subprocess.run(cmd, env=env or os.environ, capture_output=True, timeout=300)


def in_background(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread (a local engine run beside a Ray run: they share nothing but the CPUs, and
    each waits on its own decode timeouts); the returned future's ``result()`` is what ``fn`` returned."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def lines(out: Path) -> list[dict]:
    """The manifest's records without what differs from run to run, in a fixed order: time and seconds, and which
    check a damaged file fails first ("the first frame" or "the sampled frames do not decode"), which decord's
    reader races into (video.py's docstring) with either engine; its kind, ``truncated``, is kept."""
    rows = []
    for r in read_manifest(out / "manifest.jsonl"):
        row = {k: v for k, v in r.items() if k not in ("time", "seconds")}
        if row["kind"] == "truncated" and "damaged video data: the " in (row["error"] or ""):
            row["error"] = row["error"].split("damaged video data: the ")[0]
        rows.append(row)
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def summary(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    run = dict(report.pop("run"))
    for own in ("engine", "timing", "config"):  # which engine, how fast, its resolved config (the dtype pinned)
        run.pop(own)
    run["failed_files"] = sorted(run["failed_files"])
    return {**report, "run": run}


def token_files(out: Path) -> dict[str, dict]:
    return {
        os.fsdecode(p.relative_to(out)): torch.load(p, weights_only=True)
        for p in sorted(out.rglob("*.pt"))
        if not p.name.startswith(TMP_PREFIX)
    }


def assert_same_files(a: Path, b: Path) -> None:
    fa, fb = token_files(a), token_files(b)
    assert sorted(fa) == sorted(fb) and fa
    for name in fa:
        assert torch.equal(fa[name]["tokens"], fb[name]["tokens"]), name  # bit for bit
        ma, mb = ({k: v for k, v in f["meta"].items() if k != "timings"} for f in (fa[name], fb[name]))
        assert ma == mb, name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The local engine's corpus (``test_batch.GOOD`` and ``BAD``), plus nesting, a name that is not UTF-8, and a
    decoder that hangs and one that crashes."""
    src = tmp_path_factory.mktemp("corpus") / "in"
    for name, make in {**GOOD, **{k: v[0] for k, v in BAD.items()}}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        make(src / name)
    (src / "a").mkdir()
    (src / "b" / "deep").mkdir(parents=True)
    media.make_video(src / "a" / "v0.mp4", frames=48, size=(160, 120))
    media.make_video(src / "a" / "v1.mp4", frames=30)
    media.make_video(src / "b" / "deep" / "v2.mkv", frames=20)
    media.make_video(src / "plain.mp4", frames=12)
    os.rename(src / "plain.mp4", os.fsencode(src / NON_UTF8))  # PyAV cannot open a name that is not UTF-8
    media.make_video(src / "hang_decode.mp4", frames=10)
    media.make_video(src / "crash_decode.mp4", frames=10)
    return src


@pytest.fixture(scope="module")
def both(corpus, cluster, tmp_path_factory):
    """The corpus through both engines (same fault settings), once for the module."""
    work = tmp_path_factory.mktemp("both")
    local = in_background(local_batch, corpus, work / "local", "--workers", "1", "--timeout", "8", env=cluster.env)
    ray = ray_batch(cluster, corpus, work / "ray", "--timeout", "8")
    return local.result(), ray, work / "local", work / "ray"


class TestSameAsLocal:
    def test_exit_codes_and_summary(self, both):
        local, ray, lout, rout = both
        assert local.returncode == ray.returncode == 1, ray.stderr.decode()
        assert summary(lout) == summary(rout)
        run = summary(rout)["run"]
        assert run["ok"] >= len(GOOD) + 4 and run["failed"] >= 4 + 2  # BAD's sure failures, the hang, the crash
        assert run["ok"] + run["failed"] == len(GOOD) + len(BAD) + 6
        kinds = run["failures_by_kind"]
        assert kinds["timeout"] == 1 and kinds["crash"] == 1 and kinds["empty"] == 1, kinds
        engine = json.loads((rout / "report.json").read_text())["run"]["engine"]
        assert engine["name"] == "ray" and engine["encoders"] == 1 and engine["decoders"] == 1

    def test_manifest_has_the_same_lines(self, both):
        _, _, lout, rout = both
        assert lines(lout) == lines(rout)
        assert len(lines(rout)) == len(GOOD) + len(BAD) + 6

    def test_token_files_are_bit_identical(self, both):
        _, _, lout, rout = both
        assert_same_files(lout, rout)
        assert NON_UTF8.replace(".mp4", ".pt") in token_files(rout)

    def test_one_line_per_failure_and_nothing_left_over(self, both):
        _, ray, _, rout = both
        err = ray.stderr.decode("utf-8", "replace")
        assert "hang_decode.mp4: decoding took longer than --timeout 8s" in err
        assert "crash_decode.mp4: decoder process crashed (signal 9)" in err
        assert "Traceback" not in err and "core_worker" not in err
        assert not [p for p in rout.rglob("*") if p.name.startswith((TMP_PREFIX, ".slowfast-parts"))]

    def test_webdataset_shards_hold_the_local_engines_tensors(self, both, corpus, cluster, tmp_path):
        """The Ray driver writes through the same shard writer: its samples equal the local engine's .pt tensors."""
        import tarfile

        from safetensors.torch import load as st_load

        _, _, lout, _ = both
        good = tmp_path / "in"
        good.mkdir()
        for name in ("a/v0.mp4", "a/v1.mp4", "b/deep/v2.mkv"):
            (good / name).parent.mkdir(parents=True, exist_ok=True)
            (good / name).symlink_to(corpus / name)
        r = ray_batch(cluster, good, tmp_path / "wds", "--format", "webdataset", "--shard-size", "2")
        assert r.returncode == 0, r.stderr.decode()
        samples = {}
        for shard in sorted((tmp_path / "wds").glob("shard-*.tar")):
            with tarfile.open(shard) as tar:
                for m in tar.getmembers():
                    if m.name.endswith(".safetensors"):
                        samples[m.name.removesuffix(".safetensors")] = st_load(tar.extractfile(m).read())["tokens"]
        assert sorted(samples) == ["a/v0", "a/v1", "b/deep/v2"]
        for key, tokens in samples.items():
            ref = next(p for p in lout.rglob("*.pt") if str(p.relative_to(lout).with_suffix("")) == key)
            assert torch.equal(tokens, torch.load(ref, weights_only=True)["tokens"]), key


class TestResume:
    def test_rerun_skips_what_is_done_and_retries_the_failures(self, both, cluster, tmp_path):
        _, _, _, rout = both
        out = tmp_path / "out"
        shutil.copytree(rout, out)
        r = ray_batch(cluster, both_src(rout), out, "--timeout", "8", "--json")
        run = json.loads(r.stdout)["run"]
        first = summary(rout)["run"]
        assert r.returncode == 1 and (run["ok"], run["skipped"], run["failed"]) == (0, first["ok"], first["failed"])

    def test_damaged_output_is_redone_and_other_settings_refused(self, both, cluster, tmp_path):
        _, _, _, rout = both
        out = tmp_path / "out"
        shutil.copytree(rout, out)
        good = token_files(rout)["a/v0.pt"]["tokens"]
        data = bytearray((out / "a" / "v0.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte: only the CRC check of the whole file sees it
        (out / "a" / "v0.pt").write_bytes(bytes(data))
        src = both_src(rout)
        r = ray_batch(cluster, src, out, "--pattern", "a/*", "--json")
        assert r.returncode == 0, r.stderr.decode()
        run = json.loads(r.stdout)["run"]
        assert (run["ok"], run["skipped"]) == (1, 1)
        assert "a/v0.pt" in r.stderr.decode() and "it is redone" in r.stderr.decode()
        assert torch.equal(token_files(out)["a/v0.pt"]["tokens"], good)

        r = ray_batch(cluster, src, out, "--pattern", "a/*", "--dtype", "bf16")
        assert r.returncode == 2 and b"dtype: fp32 -> bf16" in r.stderr and b"--overwrite" in r.stderr
        r = ray_batch(cluster, src, out, "--pattern", "a/*", "--dtype", "bf16", "--overwrite", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["run"]["ok"] == 2


def both_src(rout: Path) -> Path:
    """The corpus folder the ``both`` fixture encoded (from a token file's meta)."""
    meta = token_files(rout)["a/v0.pt"]["meta"]
    return Path(meta["source"]).parent.parent


def test_dead_workers_are_retried_a_bounded_number_of_times(cluster, tmp_path):
    """An encoder actor killed on a video: Ray restarts it and runs its block again; the block's part says what is
    recorded already (not done or recorded again) and counts a death for each video the actor had in hand, which
    are then encoded alone, so the video that kills it is given up after MAX_ATTEMPTS deaths with a crash record
    while the videos packed beside it are encoded. 6 videos, one encoder: blocks of 2, the crash with d_ok."""
    src = tmp_path / "in"
    src.mkdir()
    names = ("a_ok.mp4", "b_ok.mp4", "crash_encode.mp4", "d_ok.mp4", "e_ok.mp4", "f_ok.mp4")
    for name in names:
        media.make_video(src / name, frames=10)
    r = ray_batch(cluster, src, tmp_path / "out", "--json", timeout=600)
    assert r.returncode == 1, r.stderr.decode()
    d = json.loads(r.stdout)
    assert d["run"]["ok"] == 5 and d["run"]["failures_by_kind"] == {"crash": 1}
    rows = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert sorted(row["source"] for row in rows) == sorted(names)  # one line each: none twice after the reruns
    errors = {row["source"]: row["error"] for row in rows}
    assert "Ray encode worker died 3 times" in errors["crash_encode.mp4"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith((".slowfast-parts", TMP_PREFIX))]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.pt")) == [n[:-4] + ".pt" for n in names if "ok" in n]


def test_more_encoders_than_the_cluster_can_hold_is_refused_up_front(cluster, tmp_path):
    """Each encoder actor holds at least one CPU for the whole run (it decodes there too): --encoders above the
    cluster's CPU count (2) could never start (issue 20: 0 of 5 after 150 s). One line, exit 2, nothing written."""
    src = tmp_path / "in"
    src.mkdir()
    media.make_video(src / "a.mp4", frames=10)
    r = ray_batch(cluster, src, tmp_path / "out", "--encoders", "3")
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "--encoders 3: the Ray cluster has 2 CPUs" in err and "use --encoders 2 or fewer" in err
    assert not (tmp_path / "out").exists()


def test_a_stall_is_named_and_stops_the_run_with_stall_timeout(cluster, tmp_path):
    """Another job holds one of the cluster's 2 CPUs, so one of 2 encoder actors can never be placed: the run says
    what Ray cannot grant and which nodes are alive (--stall-warn), then stops with exit 1 (--stall-timeout)."""
    src = tmp_path / "in"
    src.mkdir()
    media.make_video(src / "a.mp4", frames=10)
    code = (
        "import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR')\n"
        "@ray.remote(num_cpus=1)\nclass Hold:\n    def ping(self): return 1\n"
        "h = Hold.remote(); ray.get(h.ping.remote()); print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, cluster.address], env=cluster.env, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        r = ray_batch(cluster, src, tmp_path / "out", "--encoders", "2", "--stall-warn", "2", "--stall-timeout", "12")
    finally:
        holder.kill()
        holder.wait()
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "warning: the Ray run has stalled: no video finished for" in err and "1 x {CPU: 1}" in err, err
    assert f"alive nodes: {socket.gethostname()}/" in err and "(CPU 2/2 used)" in err, err
    assert "stopped after --stall-timeout 12 s" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ctrl_c_leaves_files_and_lines_together_and_resumes(cluster, tmp_path, sig):
    """SIGTERM (a scheduler's stop; the CLI treats it as Ctrl-C, and ray.init must not take it over) or SIGINT (Ctrl-C)
    mid-run: exit 130,
    every token file recorded (its line merged into the manifest, or in its block's part, which the next run merges
    first), and a rerun completes to the local engine's files, each video ``ok`` once in the manifest."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        media.make_video(src / f"clip{i:02d}.mp4", frames=48, size=(160, 120))
    full = tmp_path / "full"
    local = in_background(local_batch, src, full)  # the reference, while the Ray runs go
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", src, "-o", out, "--engine", "ray"]
    cmd += ["--address", cluster.address, *TINY]
    proc = subprocess.Popen(list(map(str, cmd)), env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(r["status"] == "ok" for r in recorded_in_parts(out)) >= 2:  # recorded by the actors (merged later)
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    merged = {r["output"] for r in read_manifest(out / "manifest.jsonl") if r["status"] == "ok"}
    recorded = merged | {r["output"] for r in recorded_in_parts(out) if r["status"] == "ok"}  # the next run merges
    assert set(token_files(out)) <= recorded and len(merged) >= 2 and len(recorded) < 12  # every file recorded
    assert json.loads((out / "report.json").read_text())["run"]["interrupted"] is True
    again = ray_batch(cluster, src, out)
    assert again.returncode == 0, again.stderr.decode()
    assert local.result().returncode == 0
    assert_same_files(full, out)
    assert not [p for p in out.rglob("*") if p.name.startswith((TMP_PREFIX, ".slowfast-parts"))]
    ok = sorted(r["source"] for r in read_manifest(out / "manifest.jsonl") if r["status"] == "ok")
    assert ok == sorted(f"clip{i:02d}.mp4" for i in range(12))


def kill_ray_driver_after(cluster, src, out, ok: int, *extra: str) -> None:
    """A Ray batch of ``src`` into ``out`` killed with SIGKILL once its parts record ``ok`` videos written, and its
    actors given the time Ray takes to end a dead driver's actors."""
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", src, "-o", out, "--engine", "ray", "--address"]
    cmd += [cluster.address, *TINY, *extra]
    proc = subprocess.Popen(list(map(str, cmd)), env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if sum(r["status"] == "ok" for r in recorded_in_parts(out)) >= ok:
                break
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    time.sleep(2)  # Ray ends the dead driver's actors


def recorded_in_parts(out: Path) -> list[dict]:
    """The records the actors wrote in the blocks' parts so far (``batch.parts``), merged or not."""
    from slowfast_cli.batch.parts import read_lines

    return [e["record"] for p in (out / ".slowfast-parts").glob("block-*.jsonl") for e in read_lines(p)[0]
            if "record" in e]  # fmt: skip


def test_a_driver_killed_with_sigkill_leaves_only_recorded_shards_and_resumes(cluster, tmp_path):
    """kill -9 of the driver mid-run (webdataset, 3 samples a shard): every finished shard's samples are recorded in
    the parts; the rerun merges what the parts hold first (their open shards finished), does only the rest, and the
    samples equal the local engine's tensors, each key once in the index and once ``ok`` in the manifest."""
    from slowfast_cli.dataset import TokenDataset
    from slowfast_cli.formats import index

    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        media.make_video(src / f"clip{i:02d}.mp4", frames=48, size=(160, 120))
    full = tmp_path / "full"
    local = in_background(local_batch, src, full)  # the reference, while the Ray runs go
    out = tmp_path / "out"
    kill_ray_driver_after(cluster, src, out, 4, "--format", "webdataset", "--shard-size", "3")
    recorded = {r["source"][:-4] for r in recorded_in_parts(out) if r["status"] == "ok"}
    in_shards = {k for p in out.glob("shard-*.tar") for k in (m["key"] for m in index.shard_rows(p))}
    assert in_shards <= recorded and len(recorded) < 12  # only recorded samples under a final name
    again = ray_batch(cluster, src, out, "--format", "webdataset", "--shard-size", "3", "--json")
    assert again.returncode == 0, again.stderr.decode()
    assert json.loads(again.stdout)["run"]["ok"] == 12 - len(recorded)
    assert not (out / ".slowfast-parts").exists()
    rows = read_manifest(out / "manifest.jsonl")
    ok = sorted(r["source"] for r in rows if r["status"] == "ok")
    assert ok == sorted(f"clip{i:02d}.mp4" for i in range(12))  # each once: merged once, never redone
    keys = [r["key"] for r in index.read_index(out / index.INDEX)]
    assert sorted(keys) == sorted(k[:-4] for k in ok)
    assert local.result().returncode == 0
    ds = TokenDataset(out)
    reference = token_files(full)
    assert len(ds) == 12
    for i in range(len(ds)):
        sample = ds[i]
        assert torch.equal(sample["tokens"][None], reference[sample["key"] + ".pt"]["tokens"]), sample["key"]


def test_a_local_run_resumes_a_killed_ray_run_of_one_sample_shards(cluster, tmp_path):
    """kill -9 of a Ray driver (webdataset, one sample a shard, 4 blocks), then the local engine resumes: it merges
    the parts first (recover serves both engines), its own shards take numbers after the Ray blocks', and every
    video ends up once in the manifest, once in the index and once in the shards."""
    from slowfast_cli.dataset import TokenDataset
    from slowfast_cli.formats import index

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(8):
        media.make_video(src / f"clip{i}.mp4", frames=24, size=(96, 72))
    wds = ["--format", "webdataset", "--shard-size", "1"]
    kill_ray_driver_after(cluster, src, out, 3, *wds)
    again = local_batch(src, out, *wds, "--json")
    assert again.returncode == 0, again.stderr.decode()
    assert not (out / ".slowfast-parts").exists()
    ok = sorted(r["source"] for r in read_manifest(out / "manifest.jsonl") if r["status"] == "ok")
    assert ok == [f"clip{i}.mp4" for i in range(8)]  # each once
    rows = index.read_index(out / index.INDEX)
    assert sorted(r["key"] for r in rows) == [f"clip{i}" for i in range(8)]
    assert len({r["shard"] for r in rows}) == 8 == len(list(out.glob("shard-*.tar")))  # one sample a shard
    assert len(TokenDataset(out)) == 8


PLAN_IN_BLOCKS = """
import json, pickle, sys
from pathlib import Path
from slowfast_cli.batch.engines.ray import RayEngine
from slowfast_cli.batch.engines.ray_plan import plan_dataset, plan_table
from slowfast_cli.batch.plan import plan_batch
from slowfast_cli.batch.run import EngineOptions
from slowfast_cli.config import resolve_config

address, src, tmp, listing = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
with RayEngine(EngineOptions(address=address)) as engine:
    cfg = resolve_config("tiny", {"dtype": "fp32"})
    engine.size(cfg)
    cfg, current, _ = engine.probe(cfg, src, tmp)
    with plan_batch(src, tmp / "out", provenance=current, files_from=listing, verify=False) as plan:
        table = plan_table(plan.root, plan.todo, plan.unverified, plan.columns)
        blocks = plan_dataset(table, 1).num_blocks()
        ds = engine.dataset(plan, engine.job(plan, cfg))
        rows = [out for item in ds.iter_rows() for out in pickle.loads(item["items"])]
        text = ds.stats()
print(json.dumps({"runtime": [cfg.runtime.device, cfg.runtime.dtype], "blocks": blocks, "stats": text,
                  "rows": [[r.status, r.record.kind if r.record else None] for r in rows]}))
"""


def test_the_plan_is_read_in_blocks_by_one_actor_operator(cluster, tmp_path):
    """The plan is an Arrow table in blocks (no object per video); decoding runs inside the encoder actors (one
    operator, frames never leave their node); 400 planned videos, 397 of them missing, all come back as rows.

    The engine runs in a process of its own, as the CLI's does: a ``ray.init`` inside the pytest process can find
    the raylets of clusters that earlier tests (or other programs on the machine) started and fail to connect."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        media.make_video(src / f"v{i}.mp4", frames=10)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"v{i}.mp4\n" for i in range(3)) + "".join(f"gone/m{i}.mp4\n" for i in range(397)))
    args = [sys.executable, "-c", PLAN_IN_BLOCKS, cluster.address, str(src), str(tmp_path), str(listing)]
    r = subprocess.run(args, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["runtime"] == ["auto", "fp32"]
    assert got["blocks"] == 4  # 100 videos a block: 4 blocks for one encoder
    assert sorted(status for status, _ in got["rows"]) == ["failed"] * 397 + ["written"] * 3
    assert {kind for status, kind in got["rows"] if status == "failed"} == {"missing"}
    text = got["stats"]
    assert "MapBatches(SlowfastEncoder)" in text and "decode" not in text.lower().replace("decoded", "")


class TestUsage:
    def test_ray_client_address_is_refused_with_the_reason(self, tmp_path, small_video):
        r = CliRunner().invoke(
            app, ["batch", str(small_video.parent), "-o", str(tmp_path), "--engine", "ray", "--address", "ray://h:1"]
        )
        assert r.exit_code == 2 and "Ray Client" in r.output and "48682" in r.output

    def test_ray_flags_need_the_ray_engine(self, tmp_path, small_video):
        r = CliRunner().invoke(app, ["batch", str(small_video.parent), "-o", str(tmp_path), "--decoders", "2"])
        assert r.exit_code == 2 and "--engine ray" in r.output

    def test_without_the_extra_it_is_one_usage_line_naming_it(self, tmp_path, small_video):
        code = (
            "import sys; sys.modules['ray'] = None; from slowfast_cli.cli.app import main; "
            "sys.argv = ['slowfast', *sys.argv[1:]]; main()"
        )
        args = ["batch", str(small_video.parent), "-o", str(tmp_path / "o"), "--engine", "ray", *TINY]
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120)
        err = r.stderr.decode()
        assert r.returncode == 2 and "slowfast-cli[ray]" in err and len(err.strip().splitlines()) == 1, err

    @pytest.mark.parametrize("args", [["--help"], ["budget", "--config", "tiny"], ["report", "."], ["batch", "--help"]])
    def test_help_budget_and_report_never_import_ray(self, args, tmp_path):
        code = (
            "import sys; from typer.testing import CliRunner; from slowfast_cli.cli.app import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code); print('ray' in sys.modules)"
        )
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=120, cwd=tmp_path)
        assert r.stdout.split()[-1] == b"False", r.stdout


def test_two_node_cluster_through_ray_job_submit(tmp_path):
    """A head and a second node on loopback; the batch runs as a Ray job; both nodes work, each decoding what it
    encodes (frames stay on their node); the files equal the local engine's. Then, in a longer run, the second node's
    raylet is killed: the run either finishes on the head or stops with a line naming the stall, never hangs."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        media.make_video(src / f"v{i}.mp4", frames=24, size=(128, 96))
    many = tmp_path / "many"
    many.mkdir()
    for i in range(48):
        (many / f"w{i:02d}.mp4").symlink_to(src / f"v{i % 6}.mp4")
    local = in_background(local_batch, src, tmp_path / "local")  # the reference, while the cluster starts
    c = raycluster.make_cluster(tmp_path / "rc")
    try:
        c.start_head(num_cpus=1, dashboard=True)
        c.add_node(num_cpus=1)
        out = tmp_path / "out"
        cmd = [raycluster.ray_exe(), "job", "submit", "--address", c.dashboard, "--"]
        cmd += [sys.executable, "-m", "slowfast_cli", "batch", str(src), "-o", str(out), "--engine", "ray", *TINY]
        r = subprocess.run(cmd, env=c.env, capture_output=True, timeout=600)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]
        lost = lose_a_node(c, many, tmp_path / "lost")
    finally:
        c.stop()
    assert not c.ours()
    nodes = json.loads((out / "report.json").read_text())["run"]["engine"]["nodes"]
    assert len(nodes) == 2, nodes  # an encoder actor on each node (one CPU each), decoding there
    assert all(n.get("decoded", 0) == n.get("encoded", 0) > 0 for n in nodes.values()), nodes
    assert local.result().returncode == 0
    assert_same_files(tmp_path / "local", out)
    assert lines(tmp_path / "local") == lines(out)
    err = lost.stderr.decode()
    if lost.returncode == 0:  # finished on the head: every video written
        assert json.loads((tmp_path / "lost" / "report.json").read_text())["run"]["ok"] == 48
    else:
        assert lost.returncode == 1 and "the Ray run has stalled" in err.strip().splitlines()[-1], err[-3000:]
    recorded = {r["output"] for r in read_manifest(tmp_path / "lost" / "manifest.jsonl") if r["status"] == "ok"}
    assert recorded == set(token_files(tmp_path / "lost"))  # files and manifest lines agree either way


def lose_a_node(c, src: Path, out: Path) -> subprocess.CompletedProcess:
    """A batch of ``src`` on cluster ``c``, whose second node's raylet is killed (by PID) once 3 videos are done."""
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", src, "-o", out, "--engine", "ray", "--address", c.address]
    cmd += [*TINY, "--stall-warn", "5", "--stall-timeout", "30"]
    proc = subprocess.Popen(list(map(str, cmd)), env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(r["status"] == "ok" for r in read_manifest(out / "manifest.jsonl")) >= 3:
            break
        time.sleep(0.05)
    raylets = [p for p in psutil.Process(c.nodes[1].pid).children(recursive=True) if p.name() == "raylet"]
    assert len(raylets) == 1
    raylets[0].kill()
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, b"", err)
