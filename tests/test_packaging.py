"""Packaging: the wheel holds every module and every preset, and works without the source tree.

The wheel is built from a copy of the checkout (so the build leaves nothing in it) and installed into a fresh
virtual environment whose only other path is the test environment's site-packages (for torch, typer, ...: a
``.pth`` line, which does not run that environment's own ``.pth`` files, so its editable install of slowfast is not
seen). The commands then run from an empty folder without PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    """pyproject.toml names its packages (the presets' mapping needs a list): a new sub-package must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.relative_to(ROOT).parts)
        for p in (ROOT / "slowfast_cli").rglob("*")
        if p.is_dir() and p.name != "__pycache__" and (any(p.glob("*.py")) or any(p.glob("*.json")))
    }
    assert found | {"slowfast_cli"} <= listed, sorted(found - listed)
    assert listed - found - {"slowfast_cli"} == {"slowfast_cli.configs"}  # the top-level configs/, shipped inside


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed: its ``bin`` folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("slowfast_cli", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                            str(src)], capture_output=True, text=True, env=env, cwd=tmp, timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp / "dist").glob("slowfast_cli-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, env=env, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    inst = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index",
                           "--ignore-installed", str(wheel)], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=300)  # fmt: skip
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return venv / "bin"


def run_installed(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(bin_dir / "slowfast"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)  # fmt: skip


def test_the_wheel_runs_every_preset_without_the_source_tree(installed, tmp_path):
    r = run_installed(installed, "configs", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    shipped = {p.stem for p in (ROOT / "configs").glob("*.toml")}
    assert {row["name"] for row in rows} == shipped
    assert all(Path(row["path"]).is_relative_to(installed.parent) for row in rows)  # the wheel's, not the checkout's
    r = run_installed(installed, "configs", cwd=tmp_path)
    assert r.returncode == 0 and "sf-llava-7b" in r.stdout, r.stderr
    r = run_installed(installed, "budget", "--config", "sf-llava-7b", cwd=tmp_path)
    assert r.returncode == 0 and "3,680" in r.stdout, r.stderr
    for name in sorted(shipped):  # every preset resolves and counts its tokens from the wheel
        r = run_installed(installed, "budget", "--config", name, "--json", cwd=tmp_path)
        assert r.returncode == 0 and json.loads(r.stdout)["output_tokens"] > 0, (name, r.stderr)
