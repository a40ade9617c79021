"""Vision-to-LLM projectors: identity, linear, or LLaVA-1.5's ``mlp2x_gelu``, loaded from a LLaVA checkpoint.

The modules are exactly LLaVA's (``nn.Linear``; ``nn.Sequential(Linear, GELU, Linear)``), so a LLaVA
``mm_projector.bin`` loads once its ``model.mm_projector.`` prefix is stripped. Shapes: (T, N, D_vision) in,
(T, N, D_llm) out. ``read_weights`` is the one safe checkpoint reader (``weights_only`` / safetensors); the
encoder uses it too.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .config import ProjectorCfg
from .errors import ConfigError, SlowfastError, first_line, load_failure

KINDS = ("identity", "linear", "mlp2x_gelu")
EXPECTED_KEYS = {
    "linear": ("weight", "bias"),
    "mlp2x_gelu": ("0.weight", "0.bias", "2.weight", "2.bias"),
}
LLAVA_PREFIX = "mm_projector."
STATE_DICT = "a state dict (a mapping of names to tensors) saved with torch.save or safetensors"
TORCHSCRIPT_HINT = (
    "it is a TorchScript archive (like OpenAI's original CLIP .pt); convert it once with "
    "python -c \"import torch; torch.save(torch.jit.load('IN.pt', map_location='cpu').state_dict(), 'OUT.pt')\""
)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.split("/")[1:2] == ["code"] for name in zf.namelist())


def _unreadable(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` or safetensors refused a file, never with torch's own advice (to load
    with ``weights_only=False``, which would run code from the file): see ``errors.load_failure``."""
    reason = load_failure(exc, STATE_DICT)
    return first_line(exc, 200) if reason.startswith("cannot be loaded") else reason


def read_weights(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a state dict safely: safetensors by suffix, else ``torch.load(weights_only=True)`` on the CPU.

    A ``{"state_dict": ...}`` wrapper is unwrapped, ``module.`` prefixes (DataParallel) are stripped and
    non-tensor entries dropped.

    Args:
        path: a ``.safetensors``, ``.bin``, ``.pt`` or ``.pth`` file.
        what: what the file holds, for error messages ("projector weights", "vision weights").

    Raises:
        SlowfastError: the file is missing, unreadable, unsafe to unpickle, or holds no tensors; the message says
            which (``_unreadable``), never with torch's advice to load it with ``weights_only=False``.
    """
    p = Path(path)
    if not p.is_file():
        raise SlowfastError(f"{what} file {p} does not exist")
    if p.suffix != ".safetensors" and _is_torchscript(p):
        raise SlowfastError(f"could not read {what} file {p}: {TORCHSCRIPT_HINT}")
    try:
        obj = load_file(p) if p.suffix == ".safetensors" else torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise SlowfastError(f"could not read {what} file {p}: {_unreadable(exc)}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    tensors = (
        {str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        raise SlowfastError(f"{what} file {p} holds no state dict (a mapping of names to tensors)")
    return tensors


def load_projector_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Projector weights with keys normalised to the module's own names (``0.weight``... or ``weight``/``bias``).

    Accepts a LLaVA ``mm_projector.bin`` (``model.mm_projector.0.weight``...; other keys such as
    ``model.embed_tokens.weight`` are ignored), the same with a bare ``mm_projector.`` prefix, or a plain state
    dict of the module; ``.safetensors`` too.
    """
    state = read_weights(path, "projector weights")
    llava = {k.rsplit(LLAVA_PREFIX, 1)[1]: v for k, v in state.items() if LLAVA_PREFIX in k}
    return llava or state


def make_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """An untrained projector module of LLaVA's layout (``nn.Linear`` default init)."""
    if kind == "identity":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ConfigError(f"unknown projector {kind!r}; valid: {', '.join(KINDS)}")


def _kind_of(keys: set[str]) -> str | None:
    return next((kind for kind, expected in EXPECTED_KEYS.items() if keys == set(expected)), None)


def _check_keys(kind: str, state: dict[str, torch.Tensor], name: str) -> None:
    keys = set(state)
    if keys == set(EXPECTED_KEYS[kind]):
        return
    found = ", ".join(sorted(keys)[:6]) + (", ..." if len(keys) > 6 else "")
    other = _kind_of(keys)
    hint = f"; they look like {other} weights: pass --projector {other}" if other else ""
    expected = ", ".join(EXPECTED_KEYS[kind])
    raise SlowfastError(f"projector weights {name} have keys {found} but --projector {kind} expects {expected}{hint}")


def _weight_dims(kind: str, state: dict[str, torch.Tensor], name: str) -> tuple[int, int]:
    """(in_dim, out_dim) read from the first weight matrix, after checking every shape agrees with it."""
    first = state["weight" if kind == "linear" else "0.weight"]
    if first.ndim != 2:
        raise SlowfastError(f"projector weights {name}: the first weight must be a matrix, got {tuple(first.shape)}")
    out_dim, in_dim = first.shape
    if kind == "linear":
        expected = {"weight": (out_dim, in_dim), "bias": (out_dim,)}
    else:
        expected = {
            "0.weight": (out_dim, in_dim),
            "0.bias": (out_dim,),
            "2.weight": (out_dim, out_dim),
            "2.bias": (out_dim,),
        }
    if any(tuple(state[k].shape) != shape for k, shape in expected.items()):
        shapes = ", ".join(f"{k} {tuple(state[k].shape)}" for k in expected)
        raise SlowfastError(f"projector weights {name} have inconsistent shapes: {shapes}")
    return in_dim, out_dim


def _from_weights(cfg: ProjectorCfg, vision_width: int) -> tuple[nn.Module, int]:
    name = Path(cfg.weights).name
    state = load_projector_state(cfg.weights)
    _check_keys(cfg.kind, state, name)
    in_dim, out_dim = _weight_dims(cfg.kind, state, name)
    if in_dim != vision_width:
        raise SlowfastError(
            f"projector weights {name} expect {in_dim}-wide features but the vision tower gives {vision_width}; "
            "pick the --model these weights were trained with"
        )
    if cfg.llm_dim is not None and cfg.llm_dim != out_dim:
        raise SlowfastError(f"projector weights {name} give {out_dim}-wide tokens but --llm-dim is {cfg.llm_dim}")
    module = make_projector(cfg.kind, in_dim, out_dim)
    module.load_state_dict(state)
    return module, out_dim


def _random(cfg: ProjectorCfg, vision_width: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return make_projector(cfg.kind, vision_width, cfg.llm_dim)


def _identity(cfg: ProjectorCfg, vision_width: int) -> nn.Module:
    if cfg.weights:
        raise ConfigError(
            "--projector identity takes no weights; pass --projector linear or mlp2x_gelu with --projector-weights"
        )
    if cfg.llm_dim is not None and cfg.llm_dim != vision_width:
        raise ConfigError(
            f"--projector identity keeps the vision width {vision_width} but --llm-dim is {cfg.llm_dim}; "
            "drop --llm-dim or pick a linear / mlp2x_gelu projector"
        )
    return nn.Identity()


def build_projector(
    cfg: ProjectorCfg, vision_width: int, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, dict[str, Any]]:
    """The projector for ``cfg``, in eval mode on ``device`` in ``dtype``, and plain-value info for ``meta``.

    Weights, when given, fix the output width and must take ``vision_width`` inputs. Without weights a
    linear / mlp2x_gelu projector is built only when ``cfg.random_init`` and ``cfg.llm_dim`` are set
    (``nn.Linear``'s default init under ``manual_seed(cfg.seed)``, so the same seed gives the same weights).

    Returns:
        (module, info) where info has kind, in_dim, out_dim, weights (path or None), random, seed (int or None).

    Raises:
        ConfigError: flags that do not go together (exit code 2): weights or another ``llm_dim`` for identity,
            or linear / mlp2x_gelu without weights and without both ``random_init`` and ``llm_dim``.
        SlowfastError: unreadable weights, keys of another kind, or widths that disagree with the vision tower or
            ``llm_dim``.
    """
    if cfg.kind not in KINDS:
        raise ConfigError(f"unknown projector {cfg.kind!r}; valid: {', '.join(KINDS)}")
    random = False
    if cfg.kind == "identity":
        module, out_dim = _identity(cfg, vision_width), vision_width
    elif cfg.weights:
        module, out_dim = _from_weights(cfg, vision_width)
    elif cfg.random_init and cfg.llm_dim is not None:
        module, out_dim, random = _random(cfg, vision_width), cfg.llm_dim, True
    else:
        raise ConfigError(
            f"--projector {cfg.kind} needs weights: pass --projector-weights PATH (e.g. a LLaVA mm_projector.bin), "
            "or --random-projector with --llm-dim N for a dry run"
        )
    module = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    info = {
        "kind": cfg.kind,
        "in_dim": vision_width,
        "out_dim": out_dim,
        "weights": str(cfg.weights) if cfg.weights and cfg.kind != "identity" else None,
        "random": random,
        "seed": cfg.seed if random else None,
    }
    return module, info


def project(x: torch.Tensor, projector: nn.Module) -> torch.Tensor:
    """Apply ``projector`` under inference mode: (T, N, D_vision) -> (T, N, D_llm), cast to its device and dtype."""
    param = next(projector.parameters(), None)
    with torch.inference_mode():
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        return projector(x)
