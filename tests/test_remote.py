"""``slowfast batch`` from and to object storage (README "Object storage"), against a real S3 API server.

The server is moto's (``moto.server.ThreadedMotoServer``, in this process, on a free loopback port): it speaks the S3
HTTP API that s3fs/botocore talk over real sockets (signatures, multipart, ranged GETs, listing pages), it is
maintained (monthly releases, the S3 implementation most Python projects test against, s3fs's own suite included)
and installs from PyPI with no service or container. Nothing of ours is mocked: the CLI runs as a user runs it, with
``AWS_ENDPOINT_URL`` and fake credentials in the environment. The bad-credentials test starts moto's server as a
separate process with its authentication on (``INITIAL_NO_AUTH_ACTION_COUNT=0``), so that it refuses unknown keys
as S3 does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import media
import pytest
import torch
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.tokenfile import load_tokens

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

TINY = ["--config", "tiny", "--workers", "1", "--frames", "8"]
BUCKET = "videos"
CLIPS = {"a.mp4": (24, (96, 64)), "sub/b.mp4": (20, (80, 48)), "sub/deep/c.mkv": (16, (64, 64))}
runner = CliRunner()


def wait_for_port(port: int) -> None:
    """Until a server listens on the loopback ``port`` (at most 10 s)."""
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A loopback S3 server holding the clips under ``s3://videos/in``, the environment pointing at it, and the
    local engine's batch of the same clips (the reference)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    root = tmp_path_factory.mktemp("remote")
    src = root / "in"
    for rel, (frames, size) in CLIPS.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        media.make_video(src / rel, frames=frames, size=size)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for rel in CLIPS:
        s3.upload_file(str(src / rel), BUCKET, f"in/{rel}")
    local = root / "local"
    r = runner.invoke(app, ["batch", str(src), "-o", str(local), *TINY, "--json"])
    assert r.exit_code == 0, r.output
    try:
        yield {"s3": s3, "src": src, "local": local, "root": root, "env": env}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def objects(s3, prefix: str) -> dict[str, dict]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix) :]: o for page in pages for o in page.get("Contents", [])}


def remote_tokens(s3, key: str) -> dict:
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return torch.load(io.BytesIO(data), weights_only=True)


def leftovers() -> list[str]:
    return sorted(p for p in os.listdir(tempfile.gettempdir()) if p.startswith(("slowfast-remote-", "slowfast-fetch-")))


def batch(*args: str):
    return runner.invoke(app, ["batch", *args, *TINY, "--json"])


def test_s3_to_s3_gives_the_local_engines_tokens_and_resumes(store):
    s3, local = store["s3"], store["local"]
    before = leftovers()
    r = batch(f"s3://{BUCKET}/in", "-o", f"s3://{BUCKET}/out")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run"]["ok"] == len(CLIPS)
    out = objects(s3, "out/")
    assert sorted(out) == sorted(["a.pt", "sub/b.pt", "sub/deep/c.pt", "manifest.jsonl", "report.json"])
    for rel in ("a.pt", "sub/b.pt", "sub/deep/c.pt"):
        mine, theirs = remote_tokens(s3, f"out/{rel}"), load_tokens(local / rel)
        assert torch.equal(mine["tokens"], theirs["tokens"]), rel  # bit for bit
        video = rel.replace(".pt", ".mkv" if rel.endswith("c.pt") else ".mp4")
        assert mine["meta"]["source"] == f"s3://{BUCKET}/in/{video}"  # the URL, not a temporary copy
        size = s3.head_object(Bucket=BUCKET, Key=f"in/{video}")["ContentLength"]
        assert mine["meta"]["video"]["bytes"] == theirs["meta"]["video"]["bytes"] == size
        assert mine["meta"]["video"]["fingerprint"] == theirs["meta"]["video"]["fingerprint"]
        assert isinstance(mine["meta"]["video"]["mtime_ns"], int)
        differ = {"source", "timings"}  # where it came from; how long it took
        assert {k: v for k, v in mine["meta"].items() if k not in differ | {"video"}} == {
            k: v for k, v in theirs["meta"].items() if k not in differ | {"video"}
        }
    report = json.loads(s3.get_object(Bucket=BUCKET, Key="out/report.json")["Body"].read())
    local_report = json.loads((local / "report.json").read_text())
    assert report["files"] == len(CLIPS)  # the folder's statistics count the remote folder's files
    assert {k: v for k, v in report.items() if k != "run"} == {k: v for k, v in local_report.items() if k != "run"}
    assert set(leftovers()) <= set(before)  # ours are gone (an orphan of a dead run, there before, may be swept)

    etags = {k: o["ETag"] for k, o in objects(s3, "out/").items() if k.endswith(".pt")}
    r = batch(f"s3://{BUCKET}/in", "-o", f"s3://{BUCKET}/out")  # resume: nothing to do
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run"] == {**json.loads(r.stdout)["run"], "ok": 0, "skipped": len(CLIPS)}
    assert {k: o["ETag"] for k, o in objects(s3, "out/").items() if k.endswith(".pt")} == etags
    manifest = s3.get_object(Bucket=BUCKET, Key="out/manifest.jsonl")["Body"].read().decode().splitlines()
    assert [json.loads(line)["status"] for line in manifest] == ["ok"] * 3 + ["skipped"] * 3  # appended to


def test_a_video_replaced_remotely_is_redone(store, tmp_path):
    s3 = store["s3"]
    for rel in CLIPS:
        s3.copy_object(Bucket=BUCKET, Key=f"re/in/{rel}", CopySource={"Bucket": BUCKET, "Key": f"in/{rel}"})
    assert batch(f"s3://{BUCKET}/re/in", "-o", f"s3://{BUCKET}/re/out").exit_code == 0
    other = media.make_video(tmp_path / "other.mp4", frames=24, size=(96, 64), fps=12)
    s3.upload_file(str(other), BUCKET, "re/in/a.mp4")
    r = batch(f"s3://{BUCKET}/re/in", "-o", f"s3://{BUCKET}/re/out")
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)["run"]
    assert (run["ok"], run["skipped"]) == (1, 2)
    redone = remote_tokens(s3, "re/out/a.pt")["meta"]["video"]
    assert redone["bytes"] == other.stat().st_size and redone["fps"] == 12


def test_a_new_upload_of_the_same_bytes_is_kept_and_of_other_bytes_of_the_same_size_is_redone(store):
    """The object's time changes with every upload; then its fingerprint (two ranged reads of the bucket) decides, as
    for a local file whose modification time changed."""
    s3, src = store["s3"], store["src"]
    for rel in CLIPS:
        s3.upload_file(str(src / rel), BUCKET, f"same/in/{rel}")
    assert batch(f"s3://{BUCKET}/same/in", "-o", f"s3://{BUCKET}/same/out").exit_code == 0
    time.sleep(1.1)  # S3 keeps seconds: the next uploads get another time
    s3.upload_file(str(src / "a.mp4"), BUCKET, "same/in/a.mp4")  # the same bytes again
    data = bytearray((src / "sub/b.mp4").read_bytes())
    data[-1] ^= 0xFF  # the same size, another last byte
    s3.put_object(Bucket=BUCKET, Key="same/in/sub/b.mp4", Body=bytes(data))
    r = batch(f"s3://{BUCKET}/same/in", "-o", f"s3://{BUCKET}/same/out")
    run = json.loads(r.stdout)["run"]
    assert run["skipped"] == 2 and run["ok"] + run["failed"] == 1, r.output  # b.mp4 redone (whatever its bytes give)
    assert [row["source"] for row in map(json.loads, read(s3, "same/out/manifest.jsonl").splitlines()[3:])
            if row["status"] != "skipped"] == ["sub/b.mp4"]  # fmt: skip


def test_remote_input_to_a_local_folder_and_a_remote_list(store, tmp_path):
    s3 = store["s3"]
    listed = f"sub/b.mp4\ns3://{BUCKET}/in/sub/deep/c.mkv\nsub/gone.mp4\n"
    s3.put_object(Bucket=BUCKET, Key="lists/some.txt", Body=listed.encode())
    out = tmp_path / "out"
    r = batch(f"s3://{BUCKET}/in", "-o", str(out), "--files-from", f"s3://{BUCKET}/lists/some.txt")
    assert r.exit_code == 1, r.output  # gone.mp4 does not exist
    run = json.loads(r.stdout)["run"]
    assert (run["ok"], run["failed"], run["failures_by_kind"]) == (2, 1, {"missing": 1})
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.pt")) == ["sub/b.pt", "sub/deep/c.pt"]
    assert torch.equal(load_tokens(out / "sub/b.pt")["tokens"], load_tokens(store["local"] / "sub/b.pt")["tokens"])

    s3.put_object(Bucket=BUCKET, Key="lists/outside.txt", Body=b"s3://elsewhere/in/a.mp4\n")
    r = batch(f"s3://{BUCKET}/in", "-o", str(out), "--files-from", f"s3://{BUCKET}/lists/outside.txt")
    assert r.exit_code == 2
    assert f"s3://{BUCKET}/lists/outside.txt:1: 's3://elsewhere/in/a.mp4' is not inside" in r.output


def test_local_input_to_a_remote_folder(store):
    r = batch(str(store["src"]), "-o", f"s3://{BUCKET}/from-local")
    assert r.exit_code == 0, r.output
    assert sorted(k for k in objects(store["s3"], "from-local/") if k.endswith(".pt")) == [
        "a.pt", "sub/b.pt", "sub/deep/c.pt"]  # fmt: skip


NOPE = "no-such-bucket"


@pytest.mark.parametrize(
    "args, message",
    [
        ([f"s3://{NOPE}/in", "-o", "OUT"], f"s3://{NOPE}/in: the bucket '{NOPE}' does not exist"),
        ([f"s3://{BUCKET}/nothing-here", "-o", "OUT"], f"s3://{BUCKET}/nothing-here: no such folder"),
        (["IN", "-o", f"s3://{NOPE}/out"], f"s3://{NOPE}/out: the bucket '{NOPE}' does not exist"),
        (["IN", "-o", f"s3://{BUCKET}/in/a.mp4"], f"s3://{BUCKET}/in/a.mp4: exists and is not a folder"),
        (["IN", "-o", "OUT", "--files-from", f"s3://{BUCKET}/no.txt"], f"s3://{BUCKET}/no.txt: does not exist"),
        ([f"s3://{BUCKET}/in", "-o", f"s3://{BUCKET}/in/"], f"s3://{BUCKET}/in/: is the input folder"),
        (["IN", "-o", "memory://out"], "memory://out: memory:// lives inside one process"),  # gone when the run ends
    ],
)
def test_what_does_not_exist_is_one_line_and_a_usage_error(store, tmp_path, args, message):
    args = [str(store["src"]) if a == "IN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    r = batch(*args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines == [f"error: {message}"] or (len(lines) == 1 and message in lines[0]), r.output


def test_webdataset_to_a_url_is_refused(store):
    r = batch(str(store["src"]), "-o", f"s3://{BUCKET}/wds", "--format", "webdataset")
    assert r.exit_code == 2 and "object storage cannot" in r.output


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", *args, *TINY]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_an_endpoint_that_does_not_answer_is_one_line(store, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = cli([f"s3://{BUCKET}/in", "-o", str(tmp_path / "out")], {"AWS_ENDPOINT_URL": dead})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: s3://{BUCKET}/in: the storage endpoint does not answer (EndpointConnectionError: Could not connect "
        f'to the endpoint URL: "{dead}/{BUCKET}/in"); check AWS_ENDPOINT_URL and the network'
    ]


def test_refused_credentials_are_one_line(tmp_path):
    """moto as its own process with authentication on: the fake key is unknown to it, as a wrong key is to S3."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "wrong",
               "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        r = cli([f"s3://{BUCKET}/in", "-o", str(tmp_path / "out")], env)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "the store refused the credentials (InvalidAccessKeyId" in lines[0], r.stderr


def test_a_second_run_into_the_same_remote_folder_is_refused(store):
    """The remote lock is an object created only if absent; one whose holder runs (pid 1: init) refuses the run."""
    s3 = store["s3"]
    holder = f"pid 1 on {socket.gethostname()} since 2026-01-01T00:00:00: slowfast batch ..."
    s3.put_object(Bucket=BUCKET, Key="locked/.slowfast.lock", Body=holder.encode())
    r = batch(str(store["src"]), "-o", f"s3://{BUCKET}/locked")
    assert r.exit_code == 1
    assert f"s3://{BUCKET}/locked: another slowfast batch is writing to this folder ({holder})" in r.output
    assert sorted(objects(s3, "locked/")) == [".slowfast.lock"]  # nothing written, the holder's lock kept


def start(args: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", *args, *TINY]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def wait_for(s3, key: str, proc: subprocess.Popen) -> None:
    """Until ``key`` is an object (``objects`` names them relative to the prefix) or the process ended."""
    prefix, _, name = key.rpartition("/")
    for _ in range(600):
        if name in objects(s3, prefix + "/") or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None and name in objects(s3, prefix + "/")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_run_leaves_only_whole_objects_and_resumes(store, sig):
    """A real signal while the second video decodes (it hangs, by the faults hook): every object under the output
    name is a whole token file, and a rerun finishes the folder. Ctrl-C cleans up at once and removes the lock;
    kill -9 leaves the staging folder and the lock, which the rerun on this machine takes over."""
    s3, prefix = store["s3"], f"killed-{sig.name}/"
    args = [str(store["src"]), "-o", f"s3://{BUCKET}/{prefix}".rstrip("/"), "--batch-frames", "8"]  # 1 video a pass
    proc = start(args, {"SLOWFAST_TEST_FAULTS": "decode-hang:b.mp4"})
    try:
        wait_for(s3, f"{prefix}a.pt", proc)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out = objects(s3, prefix)
    assert [k for k in out if k.endswith(".pt")] == ["a.pt"]
    assert torch.equal(remote_tokens(s3, f"{prefix}a.pt")["tokens"], load_tokens(store["local"] / "a.pt")["tokens"])
    staging = [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"slowfast-remote-{proc.pid}-")]
    if sig == signal.SIGINT:
        assert proc.returncode == 130, proc.stderr.read()
        assert ".slowfast.lock" not in out and staging == []
        assert [json.loads(line)["status"] for line in read(s3, f"{prefix}manifest.jsonl").splitlines()] == ["ok"]
    else:
        assert proc.returncode == -signal.SIGKILL and ".slowfast.lock" in out and len(staging) == 1
    r = cli(args, {})
    assert r.returncode == 0, r.stderr
    assert sorted(k for k in objects(s3, prefix) if k.endswith(".pt")) == ["a.pt", "sub/b.pt", "sub/deep/c.pt"]
    assert ".slowfast.lock" not in objects(s3, prefix)
    assert not [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"slowfast-remote-{proc.pid}-")]


def read(s3, key: str) -> str:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_the_ray_engine_refuses_a_url_for_out_dir(store):
    r = runner.invoke(app, ["batch", str(store["src"]), "-o", f"s3://{BUCKET}/ray", "--engine", "ray"])
    assert r.exit_code == 2 and "--engine ray writes OUT_DIR from every node" in r.output


@pytest.fixture(scope="module")
def ray_cluster(store, tmp_path_factory):
    """A one-node Ray cluster whose processes see the loopback S3 server (its endpoint and keys in their env)."""
    pytest.importorskip("ray")
    import raycluster

    c = raycluster.make_cluster(tmp_path_factory.mktemp("rc"), store["env"])
    try:
        c.start_head(num_cpus=2)
        yield c
    finally:
        c.stop()


def test_the_ray_engine_reads_a_bucket(store, ray_cluster, tmp_path):
    """IN_DIR as a URL on a Ray cluster: each decode task downloads its video; the same tokens as the local engine's,
    the URL as the source, and a rerun resumes (the driver's listing gives every video's size and time)."""
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", f"s3://{BUCKET}/in", "-o", str(out), "--engine", "ray",
           "--address", ray_cluster.address, "--config", "tiny", "--frames", "8", "--json"]  # fmt: skip
    env = {**ray_cluster.env, **store["env"]}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for rel in ("a.pt", "sub/b.pt", "sub/deep/c.pt"):
        mine, theirs = load_tokens(out / rel), load_tokens(store["local"] / rel)
        assert torch.equal(mine["tokens"], theirs["tokens"]), rel
        assert mine["meta"]["source"].startswith(f"s3://{BUCKET}/in/")
        assert mine["meta"]["video"]["fingerprint"] == theirs["meta"]["video"]["fingerprint"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["run"]["skipped"] == len(CLIPS)


@pytest.mark.parametrize("size", [0, 1000, (1 << 20) + 5, (2 << 20) + 7])
def test_an_objects_fingerprint_is_the_local_files(store, tmp_path, size):
    """Resume compares a video's fingerprint computed on its downloaded copy with the object's, read by ranges."""
    from slowfast_cli.provenance import file_fingerprint
    from slowfast_cli.remote import RemotePath

    data = os.urandom(size)
    (tmp_path / "v.mp4").write_bytes(data)
    store["s3"].put_object(Bucket=BUCKET, Key=f"fp/{size}.mp4", Body=data)
    assert RemotePath(f"s3://{BUCKET}/fp/{size}.mp4").fingerprint() == file_fingerprint(tmp_path / "v.mp4")


def test_keys_that_name_no_place_are_skipped_and_nothing_is_written_outside(store, tmp_path):
    """S3 keys are any text. ``odd/../up.mp4``, ``odd//twice.mp4`` and ``odd/./here.mp4`` name no place under a
    folder (as paths they would land outside OUT_DIR, at the file system's root, or on another key): listing
    problems, not videos. A key too long for a local file name fails alone (it stopped the whole run). A ``x.mp4/``
    folder marker is no video; IN_DIR may be an object and a prefix at once (``odd``); ``odd-out`` is not under
    ``odd``. A key under the output prefix that climbs out of it is never downloaded outside the staging folder."""
    s3, a, long = store["s3"], {"Bucket": BUCKET, "Key": "in/a.mp4"}, "L" * 300  # longer than a local name can be
    for key in ["odd/a.mp4", "odd/../up.mp4", "odd//twice.mp4", "odd/./here.mp4", "odd/x.mp4/b.mp4", f"odd/{long}.mp4"]:
        s3.copy_object(Bucket=BUCKET, Key=key, CopySource=a)
    for key in ["odd", "odd/x.mp4/"]:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    escaped = tmp_path / "escaped.pt"
    s3.put_object(Bucket=BUCKET, Key="odd-out/" + "../" * 40 + str(escaped).lstrip("/"), Body=b"not a token file")
    r = batch(f"s3://{BUCKET}/odd", "-o", f"s3://{BUCKET}/odd-out")
    assert r.exit_code == 1, r.output
    run = json.loads(r.stdout)["run"]
    assert (run["ok"], run["failed"], run["failures_by_kind"]) == (2, 1, {"write": 1})  # its name alone fails
    (row,) = [row for row in map(json.loads, read(s3, "odd-out/manifest.jsonl").splitlines()) if row["error"]]
    assert row["error"].startswith(f"s3://{BUCKET}/odd-out/{long}.pt: cannot write its local copy (File name too")
    assert sorted(problem.partition(": ")[0] for problem in run["listing_problems"]) == [
        f"s3://{BUCKET}/odd/{rel}" for rel in ("../up.mp4", "./here.mp4", "/twice.mp4")]  # fmt: skip
    written = sorted(k for k in objects(s3, "odd-out/") if k.endswith(".pt") and not k.startswith("../"))
    assert written == ["a.pt", "x.mp4/b.pt"]
    assert not escaped.exists() and not os.path.exists("/twice.pt")


def test_a_scheme_whose_package_is_missing_names_that_package(tmp_path):
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    r = batch(str(tmp_path), "-o", "gs://bucket/out")
    assert r.exit_code == 2 and "gs:// needs gcsfs" in r.output and "pip install gcsfs" in r.output, r.output


def test_a_full_staging_disk_names_the_url_and_the_staging_folder(store, small_disk, monkeypatch):
    """The token files of a URL OUT_DIR are written in a staging folder first (on TMPDIR's disk): a full one is each
    video's ``write`` failure naming the object and that folder, not a temporary path only, nor the bucket as full."""
    disk = small_disk("40k")  # the manifest fits, a token file (~50 kB) does not
    monkeypatch.setattr(tempfile, "tempdir", str(disk))
    r = batch(str(store["src"]), "-o", f"s3://{BUCKET}/full")
    assert r.exit_code == 1, r.output
    run = json.loads(r.stdout)["run"]
    assert run["failures_by_kind"] == {"write": len(CLIPS)}
    s3 = store["s3"]
    for row in map(json.loads, read(s3, "full/manifest.jsonl").splitlines()):
        assert row["error"].startswith(f"s3://{BUCKET}/full/{row['output']}: cannot write its local copy (No space")
        assert f"in the staging folder {disk}/slowfast-remote-" in row["error"], row["error"]
    assert sorted(objects(s3, "full/")) == ["manifest.jsonl", "report.json"]  # and the lock is gone


@pytest.mark.slow
def test_a_store_that_goes_away_mid_run_stops_it_and_keeps_its_manifest(tmp_path):
    """moto as its own process, killed once the first token file is in: the run stops after STORE_DOWN_RUN videos in
    a row fail for it (not every remaining one in turn), exit 1, and the manifest and report it could not upload
    are kept in a local folder that the error names (the staging folder goes with the run)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    try:
        wait_for_port(port)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
        s3.create_bucket(Bucket="gone")
        clip = media.make_video(tmp_path / "v.mp4", frames=8, size=(32, 32))
        for i in range(12):
            s3.upload_file(str(clip), "gone", f"in/v{i:02}.mp4")
        proc = start(["s3://gone/in", "-o", "s3://gone/out", "--batch-frames", "8"], env)
        try:
            for _ in range(600):
                keys = {o["Key"] for o in s3.list_objects_v2(Bucket="gone").get("Contents", [])}
                if proc.poll() is not None or "out/v00.pt" in keys:
                    break
                time.sleep(0.1)
            os.killpg(server.pid, signal.SIGKILL)
            _, stderr = proc.communicate(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    assert proc.returncode == 1, stderr
    assert "videos in a row failed because the store does not answer or refuses the credentials" in stderr
    kept = stderr.split("are kept in ", 1)[1].split(" ", 1)[0]
    try:
        with open(os.path.join(kept, "manifest.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        assert rows[0]["source"] == "v00.mp4" and rows[0]["status"] == "ok"
        assert 8 <= sum(row["status"] == "failed" for row in rows) < 12  # stopped before the end
        assert os.path.exists(os.path.join(kept, "report.json"))
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_outputs_are_downloaded_in_chunks_every_one_whole(store, tmp_path, monkeypatch):
    """``download_all`` fetches in chunks (so that Ctrl-C waits for one chunk, not the whole pull; BENCHMARKS.md §29):
    every object arrives, across chunk boundaries, with its bytes."""
    from slowfast_cli import remote

    monkeypatch.setattr(remote, "GET_CHUNK", 2)
    rels = [f"d{i % 2}/o{i}.pt" for i in range(5)]
    for rel in rels:
        store["s3"].put_object(Bucket=BUCKET, Key=f"chunks/{rel}", Body=rel.encode())
    remote.download_all(remote.RemotePath(f"s3://{BUCKET}/chunks"), rels, tmp_path)
    assert {rel: (tmp_path / rel).read_text() for rel in rels} == {rel: rel for rel in rels}
