"""``--device``/``--dtype`` decided without torch where that is certain, so that planning a batch (resume's settings
check) never waits for torch to import.

``planned_dtype`` names the dtype ``encoder.device.resolve_dtype`` will pick, or None when only torch can tell
(``auto`` on a machine where CUDA might be usable): an explicit dtype is itself; ``auto`` on the CPU is bf16 on CPUs
with native bf16, else fp32; ``auto`` on device ``auto`` is the CPU's when torch cannot use CUDA here (a CPU-only
torch build, or no NVIDIA driver library to load). The local engine checks the pick against the loaded model.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
from pathlib import Path

CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512 / AMX; "bf16" is the aarch64 feature name


@functools.cache
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 / AMX-BF16 on x86, BF16 on Arm).

    Args:
        cpuinfo: text in the format of ``/proc/cpuinfo``; read from there when None (False where it is absent).
    """
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False


@functools.cache
def cuda_impossible() -> bool:
    """True when torch certainly cannot use CUDA here: its build has no CUDA (``torch/version.py`` says
    ``cuda = None``), or the NVIDIA driver library does not load. False means "maybe" (ask torch)."""
    spec = importlib.util.find_spec("torch")
    for root in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(root) / "version.py").read_text()
        except OSError:
            continue
        if re.search(r"^cuda(: [^=]+)? = None$", text, re.M):
            return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


def planned_dtype(device: str, dtype: str) -> str | None:
    """The dtype name (fp32, bf16, fp16) the model will run in for these settings, or None if only torch can tell."""
    if dtype != "auto":
        return dtype
    if device == "cpu" or (device == "auto" and cuda_impossible()):
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return None  # a CUDA device: torch says whether it works (bf16) or not (an error)
