"""`slowfast batch` on real folders: bad inputs recorded and survived, resume, interruption, accounting."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import media
import pytest
import torch
from typer.testing import CliRunner

from slowfast_cli.batch import error_kind, find_videos, plan_batch, read_manifest, run_batch
from slowfast_cli.cli import app
from slowfast_cli.config import resolve_config
from slowfast_cli.header import TMP_PREFIX
from slowfast_cli.io import load_tokens
from slowfast_cli.workers import DecodePool

runner = CliRunner()
TINY = ["--config", "tiny", "--workers", "1"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def manifest(out: Path) -> list[dict]:
    return read_manifest(out / "manifest.jsonl")


def token_files(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*.pt"))}


# name -> (maker, expected status); every bad input of the issue, generated here
GOOD = {
    "one frame.mp4": lambda p: media.make_video(p, frames=1),
    "short.mp4": lambda p: media.make_video(p, frames=5),
    "tiny16.mp4": lambda p: media.make_video(p, frames=12, size=(16, 16)),
    "portrait.mp4": lambda p: media.make_video(p, frames=12, size=(64, 160)),
    "rotated.mp4": lambda p: media.make_rotated(p, 90),
    "vp9.webm": lambda p: media.make_video(p, frames=12, codec="vp9"),
    "h264.mkv": lambda p: media.make_video(p, frames=12),
    "vp9 in matroska.mkv": lambda p: media.make_video(p, frames=12, codec="vp9"),
    "sub dir/spaces and ünïcødé 視頻.mp4": lambda p: media.make_video(p, frames=12),
}
BAD = {
    "zero.mp4": (media.make_empty, "empty"),
    "random.mp4": (media.make_random_bytes, "not_a_video"),
    "text.mp4": (media.make_text, "not_a_video"),
    "trunc_moov_end.mp4": (lambda p: media.make_truncated(p, moov_front=False), None),
    "trunc_moov_front.mp4": (lambda p: media.make_truncated(p, moov_front=True), None),
    "audio.mp4": (media.make_audio_only, "no_video_stream"),
    "half zeros.mp4": (lambda p: media.make_truncated(p, moov_front=True, zero_fill=True), "truncated"),
}


@pytest.mark.parametrize(
    "message, kind",
    [
        ("v.mp4: file is empty", "empty"),
        ("v.mp4: not a readable video (unknown format, or a damaged or truncated container)", "not_a_video"),
        ("v.mp4: truncated or damaged video data (demuxing failed: x)", "truncated"),
        ("v.mp4: damaged video data: the sampled frames do not decode (FFmpeg rejected a packet: invalid data)",
         "truncated"),
        ("v.mp4: no video stream", "no_video_stream"),
        ("v.mp4: decoding took longer than --timeout 5 s", "timeout"),
    ],
)  # fmt: skip
def test_error_kind(message, kind):
    assert error_kind(message) == kind


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    src = root / "in"
    for name, maker in GOOD.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        maker(src / name)
    for name, (maker, _) in BAD.items():
        maker(src / name)
    (src / "notes.txt").write_text("not a video, not even by name")
    out = root / "out"
    r = run("batch", src, "-o", out, *TINY, "--frames", 8)
    return src, out, r


class TestMixedFolder:
    def test_exit_code_1_and_failures_listed(self, mixed):
        _, _, r = mixed
        assert r.exit_code == 1, r.output
        for name in BAD:
            assert name in r.stdout
        assert f"{len(BAD)} of {len(GOOD) + len(BAD)} videos failed" in r.stderr

    def test_every_good_video_written(self, mixed):
        src, out, _ = mixed
        files = token_files(out)
        for name in GOOD:
            rel = str(Path(name).with_suffix(".pt"))
            assert rel in files, rel
            obj = load_tokens(files[rel])
            assert obj["tokens"].shape[1] == obj["meta"]["output_tokens"]
        assert len(files) == len(GOOD)

    def test_every_bad_video_in_manifest_with_its_message(self, mixed):
        _, out, _ = mixed
        rows = {r["source"]: r for r in manifest(out)}
        assert set(rows) == set(GOOD) | set(BAD)
        for name, (_, kind) in BAD.items():
            row = rows[name]
            assert row["status"] == "failed" and name in row["error"], row
            assert "\n" not in row["error"]
            if kind:
                assert row["kind"] == kind, row
        for name in GOOD:
            assert rows[name]["status"] == "ok", rows[name]

    def test_report_consistent_with_manifest(self, mixed):
        _, out, _ = mixed
        report = json.loads((out / "report.json").read_text())
        rows = manifest(out)
        ok = [r for r in rows if r["status"] == "ok"]
        assert report["run"]["ok"] == len(ok) and report["run"]["failed"] == len(BAD)
        assert sum(report["run"]["failures_by_kind"].values()) == len(BAD)
        assert report["files"] == len(ok)
        assert report["output_tokens"] == sum(r["output_tokens"] for r in ok)
        assert report["input_tokens"] == sum(r["input_tokens"] for r in ok)
        assert sorted(report["run"]["failed_files"]) == sorted(BAD)
        cli = json.loads(run("report", out, "--json").stdout)
        assert {k: v for k, v in report.items() if k != "run"} == cli

    def test_damaged_video_fails_as_damaged(self, mixed):
        """An unfinished pre-allocated download (second half zeros): failed, not encoded from a guessed prefix."""
        _, out, _ = mixed
        row = next(r for r in manifest(out) if r["source"] == "half zeros.mp4")
        assert "damaged video data" in row["error"], row
        assert not (out / "half zeros.pt").exists()

    def test_short_video_meta(self, mixed):
        _, out, _ = mixed
        m = load_tokens(out / "one frame.pt")["meta"]
        assert m["frame_indices"] == [0] and m["short_video"] is True

    def test_rerun_skips_done_and_retries_failed(self, mixed):
        src, out, _ = mixed
        before = {k: p.stat().st_mtime_ns for k, p in token_files(out).items()}
        r = run("batch", src, "-o", out, *TINY, "--frames", 8)
        assert r.exit_code == 1
        last = manifest(out)[-(len(GOOD) + len(BAD)) :]
        assert sum(r["status"] == "skipped" for r in last) == len(GOOD)
        assert sum(r["status"] == "failed" for r in last) == len(BAD)
        assert {k: p.stat().st_mtime_ns for k, p in token_files(out).items()} == before


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        media.make_video(src / f"v{i}.mp4", frames=10 + i)
    return src


class TestResumeAndSafety:
    def test_corrupt_output_is_redone(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        good = load_tokens(out / "v1.pt")["tokens"]
        (out / "v1.pt").write_bytes((out / "v1.pt").read_bytes()[:100])  # a torn file, e.g. from another tool
        r = run("batch", folder, "-o", out, *TINY, "--json")
        assert r.exit_code == 0
        assert json.loads(r.stdout)["run"] == {**json.loads(r.stdout)["run"], "ok": 1, "skipped": 3}
        assert torch.equal(load_tokens(out / "v1.pt")["tokens"], good)

    def test_overwrite_redoes_everything(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        d = json.loads(run("batch", folder, "-o", out, *TINY, "--overwrite", "--json").stdout)
        assert d["run"]["ok"] == 4 and d["run"]["skipped"] == 0

    def test_stale_temp_files_are_removed(self, folder, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        (out / f"{TMP_PREFIX}abc.pt").write_bytes(b"half a file")
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        assert not list(out.rglob(f"{TMP_PREFIX}*"))

    def test_unwritable_output_folder_fails_before_any_work(self, folder, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("a file where a folder should be")
        r = run("batch", folder, "-o", blocker / "out", *TINY)
        assert r.exit_code == 1 and "cannot create the output folder" in r.stderr and str(blocker) in r.stderr

    def test_fail_fast(self, folder, tmp_path):
        media.make_empty(folder / "a_empty.mp4")  # sorts first
        out = tmp_path / "out"
        r = run("batch", folder, "-o", out, *TINY, "--fail-fast")
        assert r.exit_code == 1
        assert [row["status"] for row in manifest(out)] == ["failed"]
        assert not token_files(out)

    def test_pattern(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY, "--pattern", "v[12].mp4").exit_code == 0
        assert sorted(token_files(out)) == ["v1.pt", "v2.pt"]

    def test_no_videos(self, tmp_path):
        (tmp_path / "in").mkdir()
        r = run("batch", tmp_path / "in", "-o", tmp_path / "out", *TINY)
        assert r.exit_code == 1 and "no videos found" in r.stderr

    def test_file_deleted_between_listing_and_decoding(self, folder, tmp_path):
        cfg = resolve_config("tiny")
        plan = plan_batch(folder, tmp_path / "out")
        (folder / "v2.mp4").unlink()
        records = list(run_batch(plan, cfg, workers=1))
        by = {r.source: r for r in records}
        assert by["v2.mp4"].status == "failed" and by["v2.mp4"].kind == "missing"
        assert "v2.mp4" in by["v2.mp4"].error
        assert [by[f"v{i}.mp4"].status for i in (0, 1, 3)] == ["ok"] * 3

    def test_slow_decodes_are_recorded_as_timeouts(self, folder, tmp_path):
        out = tmp_path / "out"
        r = run("batch", folder, "-o", out, *TINY, "--timeout", "0.001")
        assert r.exit_code == 1
        rows = manifest(out)
        assert len(rows) == 4 and all(row["kind"] == "timeout" for row in rows)
        assert "--timeout 0.001" in rows[0]["error"] and not token_files(out)

    def test_an_encoding_error_fails_that_video_and_the_batch_goes_on(self, folder, tmp_path, monkeypatch):
        """torch raising while encoding one video (out of memory, say): that video fails, the rest are written.

        The ViT cannot be made to run out of memory here, so the error is injected; decoding, the other videos'
        encoding and every file written are real."""
        from slowfast_cli.pipeline import Pipeline

        real = Pipeline.encode_clip

        def encode_clip(self, clip, *args, **kwargs):
            if Path(clip.info.path).name == "v1.mp4":
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsecond line of torch's message")
            return real(self, clip, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "encode_clip", encode_clip)
        out = tmp_path / "out"
        r = run("batch", folder, "-o", out, *TINY)
        assert r.exit_code == 1 and "1 of 4 videos failed" in r.stderr
        row = {row["source"]: row for row in manifest(out)}["v1.mp4"]
        assert row["status"] == "failed" and row["kind"] == "encode"
        assert "v1.mp4: encoding failed (RuntimeError: CUDA out of memory" in row["error"] and "\n" not in row["error"]
        assert sorted(token_files(out)) == ["v0.pt", "v2.pt", "v3.pt"]
        assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]

    def test_symlink_loop_does_not_stop_the_listing(self, folder):
        (folder / "loop").symlink_to(folder, target_is_directory=True)
        listing = find_videos(folder)
        assert [str(v) for v in listing.videos] == [f"v{i}.mp4" for i in range(4)]
        assert any("symlink loop" in p for p in listing.problems)

    def test_output_inside_input_is_not_re_encoded(self, folder):
        out = folder / "tokens"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        media.make_video(out / "stray.mp4", frames=4)
        d = json.loads(run("batch", folder, "-o", out, *TINY, "--json").stdout)
        assert d["run"]["attempts"] == 4


def test_hung_worker_is_killed_and_replaced(small_video):
    cfg = resolve_config("tiny")
    with DecodePool(cfg.video, 64, workers=1, timeout=1.0) as pool:
        pool.submit("hung", str(small_video))
        os.kill(pool._pool[0].process.pid, signal.SIGSTOP)  # a decode that never returns
        t0, done = time.monotonic(), []
        while pool.busy:
            done += pool.get()
        assert done[0].ok is False and done[0].kind == "timeout" and 1.0 <= time.monotonic() - t0 < 10
        pool.submit("next", str(small_video))
        while pool.busy:
            done += pool.get()
        assert done[1].ok and done[1].payload == "next"


def test_crashed_worker_is_replaced(small_video):
    cfg = resolve_config("tiny")
    with DecodePool(cfg.video, 64, workers=1, timeout=60) as pool:
        pool.submit("first", str(small_video))
        os.kill(pool._pool[0].process.pid, signal.SIGKILL)
        done = []
        while pool.busy:
            done += pool.get()
        assert done[0].ok is False and done[0].kind == "crash" and "crashed" in done[0].error
        pool.submit("second", str(small_video))
        while pool.busy:
            done += pool.get()
        assert done[1].ok and done[1].clip.frames.shape[0] == 16


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_batch_resumes_to_the_same_result(tmp_path, sig):
    """A real signal to a real `slowfast batch` subprocess, then a rerun: same files as an uninterrupted run."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(10):
        media.make_video(src / f"clip{i:02d}.mp4", frames=48, size=(160, 120))
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(src), *TINY, "--frames", "16"]
    full = tmp_path / "full"
    assert subprocess.run([*cmd, "-o", str(full)], capture_output=True, timeout=300).returncode == 0

    out = tmp_path / "out"
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(manifest(out)) < 2 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    done_before = manifest(out)
    assert 0 < len(done_before) < 10, "the batch was not interrupted in the middle"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"interrupted" in stderr
        assert json.loads((out / "report.json").read_text())["run"]["interrupted"] is True
    for p in token_files(out).values():
        load_tokens(p)  # only complete files under final names, whatever the signal

    assert subprocess.run([*cmd, "-o", str(out)], capture_output=True, timeout=300).returncode == 0
    assert sorted(token_files(out)) == sorted(token_files(full)) == [f"clip{i:02d}.pt" for i in range(10)]
    for name, p in token_files(full).items():
        a, b = load_tokens(p), load_tokens(out / name)
        assert torch.equal(a["tokens"], b["tokens"]), name
        assert a["meta"]["frame_indices"] == b["meta"]["frame_indices"]
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    statuses = [r["status"] for r in manifest(out)]
    assert statuses.count("ok") == 10  # each video encoded exactly once over both runs


def test_progress_bar_on_a_terminal(folder, tmp_path):
    """On a real pseudo-terminal the bar is drawn (videos done/total, failures), the warning comes first."""
    import pty
    import select

    media.make_empty(folder / "broken.mp4")
    primary, secondary = pty.openpty()
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(folder), "-o", str(tmp_path / "out"), *TINY]
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                data = os.read(primary, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=30) == 1
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "5/5" in screen and "1 failed" in screen and "━" in screen  # the bar, drawn
    assert screen.index("random weights") < screen.index("videos")
    assert "broken.mp4: file is empty" in screen


def test_unreadable_folder_is_reported_not_fatal(tmp_path):
    """A folder the user may not list is reported and skipped. Root ignores permissions, so as root the listing
    runs in a child that has lost the capabilities that let root read anything (setpriv)."""
    prefix = media.permission_enforcing_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions are not enforced")
    (tmp_path / "in" / "locked").mkdir(parents=True)
    (tmp_path / "in" / "ok.mp4").write_bytes(b"x")
    (tmp_path / "in" / "locked" / "hidden.mp4").write_bytes(b"x")
    (tmp_path / "in" / "locked").chmod(0o000)
    code = (
        "import json; from slowfast_cli.batch import find_videos;"
        f"l = find_videos({str(tmp_path / 'in')!r}); print(json.dumps([[str(v) for v in l.videos], l.problems]))"
    )
    try:
        r = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        (tmp_path / "in" / "locked").chmod(0o755)
    assert r.returncode == 0, r.stderr
    videos, problems = json.loads(r.stdout)
    assert videos == ["ok.mp4"]
    assert len(problems) == 1 and "locked" in problems[0] and "cannot be listed" in problems[0]
