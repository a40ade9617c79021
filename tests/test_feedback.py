"""Feedback: progress lines where stderr is a pipe, the model's loading named, report.json's run times, --debug
anywhere, usage errors without importing torch, and --max-failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import media
import pytest
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.cli.failures import parse_max_failures
from slowfast_cli.errors import ConfigError

TINY = ["--config", "tiny", "--dtype", "fp32", "--workers", "1"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three good videos and one that is not a video."""
    d = tmp_path_factory.mktemp("in")
    for i in range(3):
        media.make_video(d / f"v{i}.mp4", frames=12)
    media.make_text(d / "broken.mp4")
    return d


@pytest.fixture(scope="module")
def piped(videos, tmp_path_factory):
    """``slowfast batch`` in a real process whose stderr is a pipe (as under Slurm or ``| tee``)."""
    out = tmp_path_factory.mktemp("piped") / "out"
    env = {**os.environ, "SLOWFAST_PROGRESS_SECONDS": "0"}  # a line after every video, not every 30 s
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(videos), "-o", str(out), *TINY, "--max-failures", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    return r, out


class TestPiped:
    def test_progress_lines_with_rate_and_eta(self, piped):
        r, _ = piped
        assert r.returncode == 0, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.startswith("progress: ")]
        assert len(lines) == 4, r.stderr
        assert lines[-1].startswith("progress: 4/4 videos (100%), 1 failed, ")
        assert all(" videos/s, " in line and " frames/s, elapsed 0:" in line and ", ETA " in line for line in lines)
        assert "\x1b[" not in r.stderr  # no terminal codes in a log file

    def test_the_model_loading_is_named(self, piped):
        r, _ = piped
        assert "loading slowfast-tiny-vit (none) …" in r.stderr and "loaded slowfast-tiny-vit (none) in " in r.stderr

    def test_report_has_times_throughput_and_the_config(self, piped):
        run_ = json.loads((piped[1] / "report.json").read_text())["run"]
        timing = run_["timing"]
        assert timing["started"] <= timing["finished"] and timing["wall_seconds"] > 0
        assert timing["videos_per_second"] > 0 and timing["frames_per_second"] > 0
        config = run_["config"]
        assert config["encoder"]["model"] == "slowfast-tiny-vit" and config["runtime"]["dtype"] == "fp32"

    def test_failures_within_max_failures_exit_0_and_are_listed(self, piped):
        r, _ = piped
        assert "broken.mp4" in r.stdout and "within --max-failures 1" in r.stderr

    def test_a_resumed_run_counts_the_done_videos_at_once(self, piped, videos):
        """Resumed videos get no line each (the first line used to say 1/4 done for a video done before), and the
        clock starts after the model is loaded, so the rates are over the work."""
        _, out = piped
        (out / "v1.pt").unlink()
        env = {**os.environ, "SLOWFAST_PROGRESS_SECONDS": "0"}
        cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(videos), "-o", str(out), *TINY, "--max-failures", "1"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        lines = [line for line in r.stderr.splitlines() if line.startswith("progress: ")]
        assert lines and all(int(line.split()[1].split("/")[0]) >= 3 for line in lines), r.stderr
        assert lines[-1].startswith("progress: 4/4 videos (100%)") and (out / "v1.pt").exists()


class TestMaxFailures:
    @pytest.mark.parametrize(("given", "code"), [("0", 1), ("1", 0), ("50%", 0), ("0.2", 1), ("0.25", 0)])
    def test_the_limit_decides_the_exit_code(self, videos, piped, tmp_path, given, code):
        out = tmp_path / "out"
        shutil.copytree(piped[1], out)  # the good ones are done: only broken.mp4 is tried again
        r = run("batch", videos, "-o", out, *TINY, "--max-failures", given)
        assert r.exit_code == code, r.output
        assert "broken.mp4" in r.stdout

    @pytest.mark.parametrize("given", ["-1", "two", "1.5", "nan", "150%"])
    def test_bad_values_are_usage_errors(self, given):
        with pytest.raises(ConfigError, match="--max-failures"):
            parse_max_failures(given)

    def test_counts_and_fractions(self):
        assert parse_max_failures("10").allowed(5) == 10
        assert parse_max_failures("0.01").allowed(1000) == 10 and parse_max_failures("1%").allowed(1000) == 10


def test_debug_anywhere_on_the_line(tmp_path):
    (tmp_path / "x.pt").write_text("nope")
    for args in (["report", tmp_path / "x.pt", "--debug"], ["--debug", "report", tmp_path / "x.pt"]):
        r = run(*args)
        assert r.exit_code == 1 and "Traceback" in r.stderr, r.output
    r = run("report", tmp_path / "x.pt")
    assert r.exit_code == 1 and "Traceback" not in r.stderr


def test_a_settings_mismatch_is_found_without_importing_torch(videos, piped):
    """The usage error on an existing output folder made with other settings comes before torch is imported (the
    dtype `auto` resolves without it on the CPU: runtime.planned_dtype); BENCHMARKS.md has the time it takes."""
    out = piped[1]
    code = (
        "import sys; from typer.testing import CliRunner; from slowfast_cli.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['batch', {str(videos)!r}, '-o', {str(out)!r}, '--config', 'tiny',"
        " '--slow-pool', 'none', '--device', 'cpu'])\n"
        "assert r.exit_code == 2 and 'aggregator.slow_pool: 1d_max -> none' in r.stderr, r.output\n"
        "heavy = [m for m in ('torch', 'open_clip', 'decord') if m in sys.modules]; assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_encode_shows_its_stages_on_a_terminal(small_video, tmp_path):
    """On a pseudo-terminal `encode` shows what it is doing: the model loading, then the frames through the ViT."""
    import pty
    import select
    import time

    primary, secondary = pty.openpty()
    cmd = [sys.executable, "-m", "slowfast_cli", "encode", str(small_video), "-o", str(tmp_path / "t.pt"),
           "--config", "tiny", "--batch-frames", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=secondary, stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
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
    assert proc.wait(timeout=30) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "loading slowfast-tiny-vit (none)" in screen and "encoding 16 frames (slowfast-tiny-vit" in screen
    assert (tmp_path / "t.pt").exists()  # (frames done, "4/16", show only if a pass outlasts a refresh: not tested)
