"""`slowfast batch` on real folders: bad inputs recorded and survived, resume, interruption, accounting."""

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import media
import pytest
import torch
from faults import ctrl_c_inside_torch_save
from typer.testing import CliRunner

from slowfast_cli.batch.engines.local import LocalEngine
from slowfast_cli.batch.listing import find_videos
from slowfast_cli.batch.plan import plan_batch
from slowfast_cli.batch.records import error_kind, read_manifest
from slowfast_cli.batch.run import EngineOptions, run_batch
from slowfast_cli.batch.workers import DecodePool
from slowfast_cli.cli.app import app
from slowfast_cli.config import resolve_config
from slowfast_cli.header import TMP_PREFIX, read_token_header
from slowfast_cli.tokenfile import load_tokens

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


@pytest.fixture(scope="module")
def four_videos(tmp_path_factory):
    """v0-v3.mp4 (10-13 frames), made once for the module; tests get a copy (see ``folder``)."""
    src = tmp_path_factory.mktemp("four") / "in"
    src.mkdir()
    for i in range(4):
        media.make_video(src / f"v{i}.mp4", frames=10 + i)
    return src


@pytest.fixture
def folder(four_videos, tmp_path):
    """A test's own ``in`` folder of v0-v3.mp4: fresh copies (new files, new times) of the module's videos."""
    return Path(shutil.copytree(four_videos, tmp_path / "in", copy_function=shutil.copyfile))


def hang_on(name: str) -> dict[str, str]:
    """The environment of a batch whose decoder hangs on ``name`` (``workers.test_fault``): a batch that cannot
    finish before the signal a test sends it, however fast the machine (the decode times out after --timeout,
    120 s by default, and the SIGINT comes first)."""
    return {**os.environ, "SLOWFAST_TEST_FAULTS": f"decode-hang:{name}"}


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
        records = list(run_batch(plan, LocalEngine(EngineOptions(workers=1)), cfg))
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

        real = Pipeline.finish_clip  # after the ViT: a pass's own failures are tests/test_packing.py's

        def finish_clip(self, clip, *args, **kwargs):
            if Path(clip.info.path).name == "v1.mp4":
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nsecond line of torch's message")
            return real(self, clip, *args, **kwargs)

        monkeypatch.setattr(Pipeline, "finish_clip", finish_clip)
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
        # a stopped worker never answers: the pool's timeout ends the wait (never before 1 s; the upper bound is
        # only "it did not wait forever", generous for a loaded machine)
        assert done[0].ok is False and done[0].kind == "timeout" and 1.0 <= time.monotonic() - t0 < 120
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


@pytest.fixture(scope="module")
def ten_clips(tmp_path_factory):
    """Ten clips and their uninterrupted batch, made once: the reference both killed batches are compared with (the
    clips are only read, the outputs go to each test's own folder)."""
    root = tmp_path_factory.mktemp("ten")
    src = root / "in"
    src.mkdir()
    for i in range(10):
        media.make_video(src / f"clip{i:02d}.mp4", frames=48, size=(160, 120))
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(src), *TINY, "--frames", "16"]
    full = root / "full"
    assert subprocess.run([*cmd, "-o", str(full)], capture_output=True, timeout=300).returncode == 0
    return cmd, full


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_batch_resumes_to_the_same_result(ten_clips, tmp_path, sig):
    """A real signal to a real `slowfast batch` subprocess, then a rerun: same files as an uninterrupted run."""
    cmd, full = ten_clips
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
        "import json; from slowfast_cli.batch.listing import find_videos;"
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


# --- names and paths (issue 8 §2) ------------------------------------------------------------------------------
class TestNames:
    def test_a_name_that_is_not_utf8_is_encoded_and_the_manifest_stays_valid(self, tmp_path):
        src, out = tmp_path / "in", tmp_path / "out"
        src.mkdir()
        raw = os.fsencode(src) + b"/\xe9t\xe9.mp4"
        media.make_video(tmp_path / "plain.mp4", frames=12)
        os.rename(tmp_path / "plain.mp4", raw)
        media.make_video(src / "other.mp4", frames=12)
        r = run("batch", src, "-o", out, *TINY)
        assert r.exit_code == 0, r.output
        text = (out / "manifest.jsonl").read_bytes().decode("utf-8")  # valid UTF-8 ...
        rows = [json.loads(line) for line in text.splitlines()]  # ... and valid JSON, one object per line
        by_source = {os.fsencode(row["source"]): row for row in rows}  # the names round-trip to the bytes
        assert set(by_source) == {b"\xe9t\xe9.mp4", b"other.mp4"}
        assert by_source[b"\xe9t\xe9.mp4"]["status"] == "ok"
        assert os.path.exists(os.fsencode(out) + b"/\xe9t\xe9.pt")
        report = json.loads((out / "report.json").read_text())
        assert report["run"]["ok"] == 2 and report["files"] == 2
        again = run("batch", src, "-o", out, *TINY, "--json")  # and the rerun resumes instead of crashing
        assert again.exit_code == 0 and json.loads(again.stdout)["run"]["skipped"] == 2
        enc = run("encode", os.fsdecode(raw), "--config", "tiny", "-o", tmp_path / "one.pt")
        assert enc.exit_code == 0, enc.output
        assert "\\xe9t\\xe9.mp4" in enc.stdout  # shown with the bytes escaped, never a UnicodeEncodeError

    def test_names_are_never_read_as_markup_or_forge_log_lines(self, tmp_path):
        src, out = tmp_path / "in", tmp_path / "out"
        src.mkdir()
        media.make_video(src / "[final] take.mp4", frames=12)
        (src / "a[").mkdir()
        media.make_text(src / "a[" / "]b.mp4")  # the path a[/]b.mp4 closes a rich markup tag
        media.make_text(src / "x\nerror: forged.mp4")
        r = run("batch", src, "-o", out, *TINY)
        assert r.exit_code == 1, r.output  # two bad files, reported; no MarkupError after the work is done
        assert "a[/]b.mp4" in r.stderr and "a[/]b.mp4" in r.stdout
        assert "x\\nerror: forged.mp4" in r.stderr
        assert not [line for line in r.stderr.splitlines() if line.startswith("error: forged")]
        assert (out / "[final] take.pt").is_file() and load_tokens(out / "[final] take.pt")
        rep = run("report", out / "[final] take.pt")
        assert rep.exit_code == 0 and "[final] take.pt" in rep.stdout

    def test_output_folder_is_the_input_folder(self, folder):
        r = run("batch", folder, "-o", folder / "." / "", *TINY)
        assert r.exit_code == 2 and "is the input folder" in r.stderr
        assert not (folder / "manifest.jsonl").exists()

    def test_output_folder_is_a_file(self, folder, tmp_path):
        (tmp_path / "out").write_text("a file")
        r = run("batch", folder, "-o", tmp_path / "out", *TINY)
        assert r.exit_code == 2 and "exists and is not a folder" in r.stderr

    def test_outputs_get_the_usual_mode(self, folder, tmp_path):
        old = os.umask(0o022)
        try:
            assert run("batch", folder, "-o", tmp_path / "out", *TINY).exit_code == 0
        finally:
            os.umask(old)
        for p in [*token_files(tmp_path / "out").values(), tmp_path / "out" / "report.json"]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p

    def test_pattern_matches_in_any_case_like_the_extensions(self, tmp_path):
        media.make_video(tmp_path / "s1.mov", frames=3)
        media.make_video(tmp_path / "s2.MOV", frames=3)
        assert [str(v) for v in find_videos(tmp_path, "*.mov").videos] == ["s1.mov", "s2.MOV"]
        assert [str(v) for v in find_videos(tmp_path, "S2*").videos] == ["s2.MOV"]

    def test_names_differing_in_case_collide_only_where_the_file_system_folds_case(self, tmp_path):
        src = tmp_path / "in"
        src.mkdir()
        media.make_video(src / "A.mp4", frames=5)
        media.make_video(src / "a.MP4", frames=6)
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--json")
        assert r.exit_code == 0, r.output  # ext4/tmpfs: A.pt and a.pt are two files
        assert sorted(token_files(tmp_path / "out")) == ["A.pt", "a.pt"]
        assert load_tokens(tmp_path / "out" / "a.pt")["meta"]["video"]["num_frames"] == 6


# --- resume never keeps wrong data (issue 8 §3) ----------------------------------------------------------------
class TestResumeKeepsNothingWrong:
    def test_other_settings_are_refused_naming_what_differs(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        before = {n: p.read_bytes() for n, p in token_files(out).items()}
        r = run("batch", folder, "-o", out, *TINY, "--slow-pool", "none", "--frames", "4")
        assert r.exit_code == 2, r.output
        msg = r.stderr
        assert "4 existing token file(s) were made with other settings" in msg
        assert "aggregator.slow_pool: 1d_max -> none" in msg and "video.frames: 16 -> 4" in msg
        assert "--overwrite" in msg and "new output folder" in msg
        assert {n: p.read_bytes() for n, p in token_files(out).items()} == before  # nothing touched
        r = run("batch", folder, "-o", out, *TINY, "--slow-pool", "none", "--frames", "4", "--overwrite", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["run"]["ok"] == 4
        assert {load_tokens(p)["tokens"].shape[1] for p in token_files(out).values()} == {4 * 64 + 4 * 16}
        again = run("batch", folder, "-o", out, *TINY, "--slow-pool", "none", "--frames", "4", "--json")
        assert json.loads(again.stdout)["run"]["skipped"] == 4  # the same settings resume as before

    def test_dtype_and_weights_are_part_of_the_settings(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY, "--dtype", "fp32").exit_code == 0
        r = run("batch", folder, "-o", out, *TINY, "--dtype", "bf16")
        assert r.exit_code == 2 and "dtype: fp32 -> bf16" in r.stderr
        weights = tmp_path / "w.pt"
        _tiny_checkpoint(weights)
        r = run("batch", folder, "-o", out, *TINY, "--dtype", "fp32", "--pretrained", weights)
        assert r.exit_code == 2 and "weights: none -> sha256:" in r.stderr
        # what does not change the numbers' meaning does not count: the ViT's batch size, the preset's name
        r = run("batch", folder, "-o", out, *TINY, "--dtype", "fp32", "--batch-frames", "3", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["run"]["skipped"] == 4

    def test_damaged_bytes_inside_a_complete_looking_file_are_redone_and_reported(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        victim = out / "v2.pt"
        good = victim.read_bytes()
        data = bytearray(good)
        mid = len(data) // 2
        data[mid : mid + 3000] = bytes(3000)  # zeros over the tensor data; the zip directory is intact
        victim.write_bytes(bytes(data))
        rep = run("report", out, "--json")
        assert json.loads(rep.stdout)["files"] == 3 and "CRC-32" in rep.stderr and "v2.pt" in rep.stderr
        r = run("batch", folder, "-o", out, *TINY, "--json")
        assert r.exit_code == 0
        assert json.loads(r.stdout)["run"] == {**json.loads(r.stdout)["run"], "ok": 1, "skipped": 3}
        assert "v2.pt" in r.stderr and "CRC-32" in r.stderr and "redone" in r.stderr
        assert torch.equal(load_tokens(victim)["tokens"], torch.load(io.BytesIO(good), weights_only=True)["tokens"])

    def test_a_second_run_into_the_same_folder_is_refused_and_deletes_nothing(self, folder, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from pathlib import Path; from slowfast_cli.batch.plan import "
             "OutputLock; OutputLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
             str(out)], stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout.readline().strip() == "held"
            in_flight = out / f"{TMP_PREFIX}inflight.pt"
            in_flight.write_bytes(b"the first run's file being written")
            r = run("batch", folder, "-o", out, *TINY)
            assert r.exit_code == 1 and "another slowfast batch is writing to this folder" in r.stderr
            assert f"pid {holder.pid}" in r.stderr
            assert in_flight.exists() and not (out / "manifest.jsonl").exists()
        finally:
            holder.kill()
            holder.wait()
        r = run("batch", folder, "-o", out, *TINY)  # the holder is gone (killed): its lock went with it
        assert r.exit_code == 0 and not in_flight.exists()

    def test_two_real_batches_at_once(self, folder, tmp_path):
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(folder), "-o", str(out), *TINY]
        procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in "ab"]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes in ([0, 0], [0, 1]), results  # the second either waited for nothing or was refused
        for code, stderr in results:
            if code == 1:
                assert "another slowfast batch is writing to this folder" in stderr
        assert sorted(token_files(out)) == ["v0.pt", "v1.pt", "v2.pt", "v3.pt"]
        assert all(load_tokens(p) for p in token_files(out).values())
        assert [r["status"] for r in manifest(out)].count("ok") == 4


def _tiny_checkpoint(path: Path) -> None:
    import open_clip

    from slowfast_cli.encoder.towers import register_own_models

    register_own_models()
    torch.manual_seed(0)
    torch.save(open_clip.create_model("slowfast-tiny-vit").state_dict(), path)


# --- faults while writing (issue 8 §4) -------------------------------------------------------------------------
class TestFaultsWhileWriting:
    def test_ctrl_c_while_a_token_file_is_written_stops_the_batch(self, folder, tmp_path, monkeypatch):
        """A real SIGINT in the middle of torch.save: exit 130, interrupted, that video complete and recorded."""
        ctrl_c_inside_torch_save(monkeypatch, on_save=2)  # while the second video's token file is written
        out = tmp_path / "out"
        r = run("batch", folder, "-o", out, *TINY)
        assert r.exit_code == 130, r.output
        report = json.loads((out / "report.json").read_text())
        assert report["run"]["interrupted"] is True and report["run"]["failed"] == 0
        rows = manifest(out)
        assert [row["status"] for row in rows] == ["ok", "ok"]  # the file being written was finished, and recorded
        assert sorted(token_files(out)) == ["v0.pt", "v1.pt"]
        assert not list(out.rglob(f"{TMP_PREFIX}*"))

    def test_a_full_disk_fails_each_video_as_write_and_leaves_nothing_partial(self, folder, small_disk):
        out = small_disk("48k")  # room for the manifest and the report, not for a 65-130 kB token file
        r = run("batch", folder, "-o", out, *TINY, "--json")
        assert r.exit_code == 1
        rows = manifest(out)
        assert [row["kind"] for row in rows] == ["write"] * 4
        assert all("No space left on device" in row["error"] for row in rows)
        assert not list(out.rglob("*.pt")) and not list(out.rglob(f"{TMP_PREFIX}*"))
        assert json.loads((out / "report.json").read_text())["run"]["failures_by_kind"] == {"write": 4}

    def test_a_manifest_that_cannot_be_written_stops_the_batch_cleanly(self, folder, small_disk):
        from disks import fill

        out = small_disk("64k")
        (out / ".slowfast.lock").write_text("x")  # the lock file's page, allocated before the disk fills
        (out / "manifest.jsonl").write_bytes(b"")
        fill(out)
        r = run("batch", folder, "-o", out, *TINY)
        assert r.exit_code == 1, r.output
        assert "manifest.jsonl: cannot write (No space left on device)" in r.stderr
        assert "Traceback" not in r.output
        assert (out / "manifest.jsonl").read_bytes() == b""  # no torn line
        assert not list(out.rglob("*.pt")) and not list(out.rglob(f"{TMP_PREFIX}*"))


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    """12 small videos: a batch of them runs long enough after its first manifest line to be interrupted."""
    src = tmp_path_factory.mktemp("twelve")
    for i in range(12):
        media.make_video(src / f"v{i:02d}.mp4", frames=10)
    return src


@pytest.mark.parametrize("when", ["starting", "first line", "first line + 60 ms"])
def test_sigint_at_any_moment_exits_130_and_leaves_only_complete_files(twelve, tmp_path, when):
    """A real SIGINT at several moments of a real `slowfast batch`: always exit 130, never a temp file, every
    output complete and intact, every manifest line whole; `interrupted: true` wherever a report was written."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(twelve), "-o", str(out), *TINY]
    env = hang_on("v11.mp4")  # the last video never decodes: the batch is still running when the signal comes
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if when == "starting":
        time.sleep(1.0)
    else:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not manifest(out) and proc.poll() is None:
            time.sleep(0.002)
        time.sleep({"first line": 0.0, "first line + 60 ms": 0.06}[when])
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TMP_PREFIX)]
    if (out / "report.json").exists():
        assert json.loads((out / "report.json").read_text())["run"]["interrupted"] is True
    if (out / "manifest.jsonl").exists():
        lines = (out / "manifest.jsonl").read_text().splitlines()
        assert [json.loads(line)["status"] for line in lines] == ["ok"] * len(lines)
        assert sorted(token_files(out)) == sorted(json.loads(line)["output"] for line in lines)
    for p in token_files(out).values():
        read_token_header(p, verify=True)
    rerun = subprocess.run(cmd, capture_output=True, timeout=300)  # without the fault: a rerun finishes the job
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(token_files(out)) == [f"v{i:02d}.pt" for i in range(12)]


# --- found by an adversarial pass over the above ---------------------------------------------------------------
class TestHostile:
    def test_names_too_long_for_the_file_system_are_one_line(self, folder, tmp_path):
        long = tmp_path / ("L" * 300)
        r = run("batch", folder, "-o", long, *TINY)
        assert r.exit_code == 2 and "File name too long" in r.stderr and "Traceback" not in r.output
        r = run("encode", folder / "v0.mp4", "--config", "tiny", "-o", f"{long}.pt")
        assert r.exit_code == 2 and "File name too long" in r.stderr and "Traceback" not in r.output

    def test_integers_beyond_int32_are_usage_errors_before_any_work(self, folder, tmp_path):
        r = run("batch", folder, "-o", tmp_path / "out", *TINY, "--batch-frames", "99999999999999999999")
        assert r.exit_code == 2 and "out of range" in r.stderr
        assert not (tmp_path / "out").exists()

    def test_a_torn_last_manifest_line_is_cut_before_appending(self, folder, tmp_path):
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        data = (out / "manifest.jsonl").read_bytes()
        (out / "manifest.jsonl").write_bytes(data[:-40])  # a run killed in the middle of its last append
        (out / "v1.pt").unlink()
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        lines = (out / "manifest.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]  # every line whole: none glued onto the torn fragment
        assert len(rows) == 3 + 4 and [r["status"] for r in rows[3:]].count("ok") == 1

    def test_control_files_are_never_written_through_a_symlink(self, folder, tmp_path):
        precious = tmp_path / "precious.mp4"
        precious.write_bytes(b"someone's video")
        for name in (".slowfast.lock", "manifest.jsonl"):
            out = tmp_path / f"out-{name}"
            out.mkdir()
            (out / name).symlink_to(precious)
            r = run("batch", folder, "-o", out, *TINY)
            assert r.exit_code == 1 and "is a symlink" in r.stderr, r.output
            assert precious.read_bytes() == b"someone's video"

    def test_a_token_file_from_another_video_or_an_older_version_of_it_is_redone(self, folder, tmp_path):
        src = tmp_path / "copy"
        src.mkdir()
        for p in folder.iterdir():
            (src / p.name).write_bytes(p.read_bytes())
        out = tmp_path / "out"
        assert run("batch", src, "-o", out, *TINY).exit_code == 0
        (out / "v0.pt").write_bytes((out / "v1.pt").read_bytes())  # v1's tokens under v0's name
        media.make_video(src / "v2.mp4", frames=20)  # v2 replaced by another video
        r = run("batch", src, "-o", out, *TINY, "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["run"]["ok"] == 2, r.output
        assert "made from another video" in r.stderr and "made from an earlier version of v2.mp4" in r.stderr
        assert load_tokens(out / "v0.pt")["meta"]["source"].endswith("v0.mp4")
        assert load_tokens(out / "v2.pt")["meta"]["video"]["num_frames"] == 20

    def test_max_frames_without_sample_fps_is_refused_not_ignored(self, folder, tmp_path):
        """It caps sampling by rate only; given without --sample-fps it was ignored without a word (and did not
        count as other settings on resume): now a usage error, before any work."""
        out = tmp_path / "out"
        assert run("batch", folder, "-o", out, *TINY).exit_code == 0
        r = run("batch", folder, "-o", out, *TINY, "--max-frames", "7", "--json")
        assert r.exit_code == 2 and "--max-frames caps sampling by rate" in r.stderr
        r = run("batch", folder, "-o", out, *TINY, "--sample-fps", "2", "--max-frames", "7")
        assert r.exit_code == 2 and "video.sample_fps" in r.stderr

    def test_ctrl_c_while_the_model_loads_still_reports_an_interrupted_run(self, folder, tmp_path, monkeypatch):
        from slowfast_cli.encoder import encoder

        real = encoder.build_encoder

        def build(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, while the model is being built
            return real(*args, **kwargs)

        monkeypatch.setattr(encoder, "build_encoder", build)
        out = tmp_path / "out"
        r = run("batch", folder, "-o", out, *TINY)
        assert r.exit_code == 130
        report = json.loads((out / "report.json").read_text())
        assert report["run"]["interrupted"] is True and report["run"]["attempts"] == 0

    def test_sigterm_stops_like_ctrl_c(self, folder, tmp_path):
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(folder), "-o", str(out), *TINY]
        env = hang_on("v3.mp4")  # the last video never decodes: the batch is still running when the signal comes
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not manifest(out) and proc.poll() is None:
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in stderr, stderr
        assert json.loads((out / "report.json").read_text())["run"]["interrupted"] is True
        assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]

    def test_a_video_written_but_not_recorded_is_taken_back(self, tmp_path, small_disk):
        """Room for the token file but then none for its manifest line: neither remains (a rerun redoes it)."""
        from disks import fill

        src = tmp_path / "in"
        src.mkdir()
        media.make_video(src / "v.mp4", frames=12)
        flags = [*TINY, "--dtype", "fp32"]
        probe_out = tmp_path / "probe"
        assert run("batch", src, "-o", probe_out, *flags).exit_code == 0
        size = (probe_out / "v.pt").stat().st_size
        out = small_disk("512k")
        (out / ".slowfast.lock").write_text("x")
        (out / "manifest.jsonl").write_bytes(b"")
        fill(out, leave=-(-size // 4096) * 4096)  # the token file (written under a temp name) fits; nothing more
        r = run("batch", src, "-o", out, *flags)
        assert r.exit_code == 1 and "manifest.jsonl: cannot write (No space left on device)" in r.stderr, r.output
        assert not (out / "v.pt").exists() and (out / "manifest.jsonl").read_bytes() == b""
        assert not list(out.rglob(f"{TMP_PREFIX}*"))


def test_report_names_folders_it_cannot_list(tmp_path):
    prefix = media.permission_enforcing_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: permissions are not enforced")
    from slowfast_cli.tokenfile import save_tokens

    meta = {"input_tokens": 10, "frames": 1, "tokens_per_frame": 10, "output_tokens": 5}
    save_tokens(tmp_path / "a.pt", torch.zeros(1, 5, 2), meta)
    (tmp_path / "locked").mkdir()
    save_tokens(tmp_path / "locked" / "b.pt", torch.zeros(1, 5, 2), meta)
    (tmp_path / "locked").chmod(0o000)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "slowfast_cli", "report", str(tmp_path), "--json"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert r.returncode == 1 and "1 entry skipped" in r.stderr, r.stderr  # an incomplete report says so
    d = json.loads(r.stdout)
    assert d["files"] == 1 and any("locked" in s["path"] and "cannot be listed" in s["error"] for s in d["skipped"])


# --- --files-from (issue 10) -------------------------------------------------------------------------------------
class TestFilesFrom:
    def test_only_the_listed_videos_are_encoded_and_a_missing_one_is_a_failure(self, folder, tmp_path):
        listing = tmp_path / "list.txt"
        raw = b"# a comment\nv2.mp4\r\n\n" + os.fsencode(folder / "v0.mp4") + b"\nv2.mp4\ngone.mp4\n"
        raw += b"file://" + os.fsencode(folder / "v2.mp4") + b"\n"  # file:///x is the path /x (a repeat here)
        listing.write_bytes(raw)  # CRLF, blank lines, an absolute path, a repeat, a file that is not there
        out = tmp_path / "out"
        r = run("batch", folder, "-o", out, *TINY, "--files-from", listing, "--json")
        assert r.exit_code == 1
        rows = {row["source"]: row for row in manifest(out)}
        assert sorted(rows) == ["gone.mp4", "v0.mp4", "v2.mp4"]
        assert rows["gone.mp4"]["kind"] == "missing" and rows["v2.mp4"]["status"] == "ok"
        assert sorted(token_files(out)) == ["v0.pt", "v2.pt"]

    def test_a_non_utf8_name_in_the_list_works(self, tmp_path):
        src = tmp_path / "in"
        src.mkdir()
        media.make_video(tmp_path / "plain.mp4", frames=12)
        os.rename(tmp_path / "plain.mp4", os.fsencode(src) + b"/\xe9.mp4")
        (tmp_path / "list").write_bytes(b"\xe9.mp4\n")
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / "list")
        assert r.exit_code == 0, r.output
        assert os.path.exists(os.fsencode(tmp_path / "out") + b"/\xe9.pt")

    @pytest.mark.parametrize("line", ["../outside.mp4", "/etc/passwd", "a/../../x.mp4", ".", "s3://bucket/v1.mp4"])
    def test_a_path_outside_in_dir_is_a_usage_error_naming_its_line(self, folder, tmp_path, line):
        (tmp_path / "list").write_text(f"v1.mp4\n{line}\n")
        r = run("batch", folder, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / "list")
        assert r.exit_code == 2 and "list:2:" in r.output
        assert not (tmp_path / "out").exists()  # refused before anything was written

    def test_a_name_as_long_as_the_file_system_allows_is_encoded(self, tmp_path):
        """A 254-character video name: planning probed its 262-character ``.safetensors`` sibling (another format's
        output), and the file system's ENAMETOOLONG stopped the whole batch (found by the hostile20 pass)."""
        src = tmp_path / "in"
        src.mkdir()
        media.make_video(src / ("y" * 250 + ".mp4"), frames=12)
        r = run("batch", src, "-o", tmp_path / "out", *TINY)
        assert r.exit_code == 0, r.output
        assert (tmp_path / "out" / ("y" * 250 + ".pt")).exists()

    def test_pattern_filters_the_list_too(self, folder, tmp_path):
        (tmp_path / "list").write_text("v1.mp4\nv3.mp4\n")
        r = run("batch", folder, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / "list", "--pattern", "v3*")
        assert r.exit_code == 0 and [row["source"] for row in manifest(tmp_path / "out")] == ["v3.mp4"]


class TestSharedFrames:
    """Decoded frames cross from a decode worker through shared memory when they are large (workers.SharedFrames)."""

    def test_a_large_clip_arrives_through_shared_memory_with_the_same_frames_and_no_block_left(self, tmp_path):
        from slowfast_cli.batch.workers import SHM_DIR
        from slowfast_cli.config import VideoCfg
        from slowfast_cli.video.decode import load_clip

        video = media.make_video(tmp_path / "big.mp4", frames=24, size=(640, 360))  # 24 x 0.69 MB: over 1 MiB
        cfg = VideoCfg(frames=8, decode_resize=False)
        before = set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()
        with DecodePool(cfg, None, workers=1, timeout=60) as pool:
            pool.submit("big", str(video))
            done = []
            while pool.busy:
                done += pool.get()
        (d,) = done
        assert d.ok and d.clip.frames.shape == (8, 360, 640, 3)
        assert (d.clip.frames == load_clip(video, cfg).frames).all()  # the same frames as decoded here
        if os.path.isdir(SHM_DIR):
            assert not {n for n in set(os.listdir(SHM_DIR)) - before if n.startswith("psm_")}

    def test_small_frames_and_a_full_tmpfs_stay_on_the_pipe(self, monkeypatch):
        import numpy as np

        from slowfast_cli.batch import workers
        from slowfast_cli.errors import SlowfastError
        from slowfast_cli.video.info import Clip, VideoInfo

        info = VideoInfo("x.mp4", 2, 1.0, 2.0, 8, 8)
        small = Clip(np.zeros((2, 8, 8, 3), np.uint8), [0, 1], [0.0, 1.0], info, False)
        assert workers.share_frames(small) is small
        big = Clip(np.ones((8, 360, 640, 3), np.uint8), list(range(8)), [0.0] * 8, info, False)
        monkeypatch.setattr(workers, "SHM_ROOM", 10**12)  # no tmpfs has that much room
        assert workers.share_frames(big) is big
        monkeypatch.setattr(workers, "SHM_ROOM", 1)
        shared = workers.share_frames(big)
        if isinstance(shared.frames, workers.SharedFrames):  # where /dev/shm exists
            assert (workers.take_frames(shared).frames == big.frames).all()
            with pytest.raises(SlowfastError, match="x.mp4: its decoded frames were lost"):
                workers.take_frames(shared)  # taken once: the block is gone
