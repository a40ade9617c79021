"""Shared helpers for the benchmark scripts: timing, memory, machine info, tables and JSON.

Every script follows the same rules: warm up, take the median of repeats, synchronise CUDA before reading a
timer, fix torch's thread count to the core count (and report it), and report ratios measured side by side in
the same run, because absolute times on shared machines drift. torch is imported lazily here, so
``bench_startup.py`` can use these helpers without paying for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench-out"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


# --- command line -----------------------------------------------------------------------------------------


def parser(description: str, name: str, torch_options: bool = True) -> argparse.ArgumentParser:
    """An argparse parser with the options every benchmark shares; ``description`` is the script's docstring.

    ``torch_options`` adds ``--device`` and ``--threads`` (for the scripts that run torch in this process).
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: finishes in well under a minute")
    if torch_options:
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="torch device (default auto)")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable core count)")
    p.add_argument(
        "--out", type=Path, default=OUT_DIR / f"{name}.json", help=f"JSON result (default bench-out/{name}.json)"
    )
    return p


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --- torch setup ------------------------------------------------------------------------------------------


def setup_torch(device: str = "auto", threads: int | None = None):
    """Fix torch's thread count and pick the device.

    Args:
        device: auto (CUDA when present), cpu or cuda.
        threads: intra-op threads; the usable core count when None.

    Returns:
        torch.device.
    """
    import torch

    torch.set_num_threads(threads or cores())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but CUDA is not available here")
    return torch.device(device)


def sync(device) -> None:
    """Wait for queued CUDA work so that a timer read after it is right (no-op on CPU)."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def cuda_reset_peak(device) -> None:
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device) -> float | None:
    """torch.cuda.max_memory_allocated in MiB since the last reset, None on CPU."""
    if getattr(device, "type", "") != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


# --- timing -----------------------------------------------------------------------------------------------


@dataclass
class Timing:
    median: float  # seconds
    min: float
    max: float
    times: list[float]

    def rate(self, items: float) -> float:
        """Items per second at the median time."""
        return items / self.median


def measure(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device=None) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls, CUDA-synchronised."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), times)


def matmul_peak(dtype, device, n: int, repeats: int = 5) -> float:
    """Measured matmul peak in FLOP/s: an ``n`` x ``n`` by ``n`` x ``n`` product in ``dtype`` (2 n^3 FLOPs).

    The fastest of ``repeats`` calls: a ceiling, so interruptions by other processes lower it as little as can be.
    """
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    with torch.inference_mode():
        t = measure(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    return 2 * n**3 / t.min


# --- memory -----------------------------------------------------------------------------------------------


def _tree_rss(proc: psutil.Process) -> tuple[int, int, int]:
    """(RSS of ``proc``, of ``proc`` plus all its descendants, of its largest descendant) in bytes."""
    own = proc.memory_info().rss
    total, largest = own, 0
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child may exit while we look
            rss = child.memory_info().rss
            total, largest = total + rss, max(largest, rss)
    return own, total, largest


@dataclass
class RssPeak:
    """Peak resident memory while the context is open, sampled with psutil every ``interval`` seconds.

    ``self_mb`` is this process alone, ``tree_mb`` this process plus its children (e.g. decode workers), summed
    at each sample, ``child_mb`` the largest single child. Sampling can miss a peak shorter than the interval.
    (``getrusage``'s ru_maxrss for children is no substitute: a child forked from a big process reports the
    parent's size as its own peak, even when it exec's a small program right away.)
    """

    interval: float = 0.02
    self_mb: float = 0.0
    tree_mb: float = 0.0
    child_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def _sample(self) -> None:
        proc = psutil.Process()
        while True:
            own, total, largest = _tree_rss(proc)
            self.self_mb = max(self.self_mb, own / 2**20)
            self.tree_mb = max(self.tree_mb, total / 2**20)
            self.child_mb = max(self.child_mb, largest / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssPeak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rusage_mb() -> dict[str, float]:
    """Lifetime peak RSS (ru_maxrss) of this process and of its largest waited-for child, in MiB."""
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20,
        "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20,
    }


def run_measured(cmd: Sequence[str], **kwargs) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; its wall time, exit code and own peak RSS (``wait4``'s ru_maxrss).

    Returns:
        {"rc", "seconds", "maxrss_mb", "stdout", "stderr"}.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kwargs)
        _, status, ru = os.wait4(p.pid, 0)  # reaps the child itself, so its own rusage is known
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        scale = 1 if sys.platform == "darwin" else 1024
        return {
            "rc": p.returncode,
            "seconds": seconds,
            "maxrss_mb": ru.ru_maxrss * scale / 2**20,
            "stdout": out.read(),
            "stderr": err.read(),
        }


# --- machine ----------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                present = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FLAGS if f in present]
    except OSError:
        pass
    return []


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": run("rev-parse", "--short", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def machine_info(with_torch: bool = True) -> dict[str, Any]:
    """CPU model, cores, memory, load, Python, torch and CUDA device, git commit, date (UTC)."""
    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores_usable": cores(),
        "cores_logical": psutil.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git(),
    }
    if with_torch:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for a table caption."""
    parts = [info["cpu"], f"{info['cores_usable']} cores", f"{info['memory_gib']} GiB"]
    if "torch" in info:
        parts += [f"torch {info['torch']}", f"{info['torch_threads']} threads", f"CUDA: {info['cuda'] or 'none'}"]
    parts.append(f"load {info['loadavg_1m']}")
    return ", ".join(parts)


# --- output -----------------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``; ``columns`` are (key, header, format spec such as ``.2f`` or ``,``)."""

    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and spec:
            return format(value, spec)
        return str(value)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, k, s) for k, _, s in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON (dataclasses and paths become plain values)."""

    def plain(o: Any) -> Any:
        if hasattr(o, "__dataclass_fields__"):
            return asdict(o)
        return str(o)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=plain) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


def header(title: str, info: dict[str, Any], argv: Sequence[str] | None = None) -> None:
    """Print the command, the date and the machine before a benchmark's tables."""
    cmd = " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *(sys.argv[1:] if argv is None else argv)])
    print(f"# {title}\n\ncommand: `{cmd}`\ndate: {info['date_utc']}\nmachine: {machine_line(info)}\n")


# --- test videos ------------------------------------------------------------------------------------------


def _texture(width: int, height: int, seed: int):
    """A blocky random texture twice the frame's width (panned across it) with a vertical gradient."""
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
    tex = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:height, : 2 * width]
    gradient = np.linspace(0, 60, height, dtype=np.float32)[:, None, None]
    return (tex * 0.7 + gradient).clip(0, 255).astype(np.uint8)


def cached_video(
    folder: Path, seconds: float, size: tuple[int, int] = (640, 360), fps: int = 30, gop: int = 60, seed: int = 0
) -> Path:
    """An H.264 video (libx264, crf 23, keyframe every ``gop`` frames, no scene cuts) of a panning texture.

    Faint block noise that changes every frame keeps the bitrate near that of real footage (about 1 Mbit/s at
    640x360 30 fps), so decoding costs what it would on camera video rather than on a flat test pattern.

    Made once and cached under ``folder`` by its parameters; written to a temporary name first, so an
    interrupted run never leaves a broken cache entry.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import media

    w, h = size
    path = Path(folder) / f"pan_{w}x{h}_{fps}fps_{seconds:g}s_gop{gop}_seed{seed}.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    import numpy as np

    tex = _texture(w, h, seed).astype(np.int16)
    noise = np.random.default_rng(seed + 1).integers(-8, 9, size=(32, h // 4 + 1, w // 4 + 1, 1), dtype=np.int16)

    def pattern(index: int, width: int, height: int):
        x = (4 * index) % width
        grain = np.repeat(np.repeat(noise[index % len(noise)], 4, axis=0), 4, axis=1)[:height, :width]
        return (tex[:, x : x + width] + grain).clip(0, 255).astype(np.uint8)

    options = {
        "crf": "23",
        "preset": "veryfast",
        "g": str(gop),
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
    }
    tmp = Path(folder).parent / ".partial" / path.name  # outside ``folder``: a batch over it must not see it
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    media.make_video(
        tmp, frames=round(seconds * fps), size=size, fps=fps, codec="h264", pattern=pattern, options=options
    )
    tmp.rename(path)
    print(f"  made {path.name} in {time.perf_counter() - t0:.1f}s", flush=True)
    return path
