"""The one check of a tensor read from a user's file before it is used: tower and projector weights and features.

Floating point, values in it (no zero-width last dimension) and every value finite: a checkpoint with a NaN, an
integer tensor where weights belong or an empty layer fails with one line naming the file and the tensor, in
``encode``, ``batch`` (both engines) and ``aggregate`` alike.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import SlowfastError

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what tensors from users' files may hold


def tensor_problem(x: torch.Tensor, name: str) -> str | None:
    """What is wrong with ``x`` for use as weights or features, naming it ``name``; None when nothing is."""
    if not x.is_floating_point():
        return f"{name} must be floating point, got {x.dtype}"
    if x.dtype not in DTYPES:  # float8 and other storage formats: nothing here computes in them
        return f"{name} is {x.dtype}; weights and features must be float16, bfloat16, float32 or float64"
    if x.ndim and x.shape[-1] == 0:
        return f"{name} has no channels (its last dimension is 0: shape {tuple(x.shape)})"
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        return f"{name} holds {bad} NaN or infinite values"
    return None


def check_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise ``SlowfastError("{where}: {problem}")`` for the first tensor with a :func:`tensor_problem`.

    Args:
        tensors: name -> tensor, as the file names them.
        where: the file and what it holds, e.g. ``"vision weights w.safetensors"``.
    """
    for key, x in tensors.items():
        problem = tensor_problem(x, f"tensor {key!r}")
        if problem:
            raise SlowfastError(f"{where}: {problem}")
