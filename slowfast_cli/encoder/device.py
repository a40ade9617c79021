"""Where and in what precision the model runs: ``--device`` and ``--dtype`` resolved on this machine."""

from __future__ import annotations

import torch

from ..errors import ConfigError, SlowfastError
from ..runtime import cpu_has_native_bf16  # torch-free, in runtime.py: batch planning uses it too

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        SlowfastError: CUDA is requested but absent, or ``cuda:N`` names a GPU that does not exist.
        ConfigError: an unknown device name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise SlowfastError(f"--device {name} requested but CUDA is not available here; use --device cpu or auto")
        device = torch.device(name)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SlowfastError(f"--device {name} requested but only {count} CUDA device(s) exist (cuda:0..)")
        return device
    raise ConfigError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and on CPUs with native bf16, else fp32; ``fp32``/``bf16``/``fp16`` as named.

    fp16 on a CPU works but is slow; bf16 on a CPU without native support works and is slower than fp32.

    Raises:
        ConfigError: an unknown dtype name.
    """
    if name == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[name]
