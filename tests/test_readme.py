"""The README's code blocks run: every fenced block names its kind, and each kind is checked.

- ``bash``: run, in order, as one script in a folder holding ``clip.mp4`` (a real clip) and ``videos/`` (two small
  ones), with ``slowfast`` meaning this checkout's; a block whose first line starts with ``# needs`` (weights, a
  network, a Ray cluster) is not run, and says so to the reader;
- ``console``: ``$ COMMAND`` lines, each followed by its output, which must be what the command prints;
- ``python``: the Python API example (``tests/test_cli.py::test_readme_python_example_runs`` runs it);
- ``toml``: parses, and names only the config's sections;
- ``text``: diagrams and listings, not code.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import media
import pytest

from slowfast_cli.config import SECTIONS

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)
KINDS = {"bash", "console", "python", "toml", "text"}


def blocks(kind: str | None = None) -> list:
    """Every fenced block as (kind, body), or the bodies of one kind."""
    found = BLOCK.findall(README.read_text(encoding="utf-8"))
    return found if kind is None else [body for k, body in found if k == kind]


def test_every_block_names_its_kind():
    kinds = [k for k, _ in blocks()]
    assert kinds and set(kinds) <= KINDS, sorted(set(kinds) - KINDS)


def test_python_blocks_run_in_a_test():
    """Each Python block sits under a heading that a test reads its code from (as ``## Python API``)."""
    text = README.read_text(encoding="utf-8")
    tests = "".join(p.read_text(encoding="utf-8") for p in README.parent.joinpath("tests").glob("test_*.py"))
    for m in BLOCK.finditer(text):
        if m.group(1) == "python":
            heading = re.findall(r"^(#{2,4} .+)$", text[: m.start()], re.M)[-1]
            assert heading in tests, f"no test reads the Python block under {heading!r}"


def test_toml_blocks_parse():
    for body in blocks("toml"):
        assert set(tomllib.loads(body)) <= {"name", "description", *SECTIONS}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    (d / "clip.mp4").symlink_to(media.sample_clip("bikes.mp4"))
    (d / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        media.make_video(d / "videos" / name, frames=20)
    shim = d / "bin" / "slowfast"  # `slowfast` is this checkout's, whatever the environment installed
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m slowfast_cli "$@"\n')
    shim.chmod(0o755)
    return d


def environment(workdir: Path) -> dict[str, str]:
    root = str(README.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    bins = os.pathsep.join([str(workdir / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": bins, "PYTHONPATH": path, "COLUMNS": "120"}


def test_bash_blocks_run(workdir):
    run = [b for b in blocks("bash") if not b.lstrip().startswith("# needs")]
    assert run, "no bash block is run"
    script = "set -euo pipefail\n" + "\n".join(run)
    r = subprocess.run(["bash", "-c", script], cwd=workdir, env=environment(workdir), capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"


def test_console_blocks_print_what_they_show(workdir):
    shown = blocks("console")
    assert shown
    for body in shown:
        for part in re.split(r"^\$ ", body, flags=re.M)[1:]:
            command, _, expected = part.partition("\n")
            r = subprocess.run(["bash", "-c", command], cwd=workdir, env=environment(workdir), capture_output=True,
                               text=True, timeout=300)  # fmt: skip
            assert r.returncode == 0, r.stderr
            got = [line.rstrip() for line in r.stdout.strip("\n").splitlines()]
            assert got == [line.rstrip() for line in expected.strip("\n").splitlines()], command
