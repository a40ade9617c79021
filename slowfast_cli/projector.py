"""Vision-to-LLM projectors: identity, linear, or LLaVA-1.5's ``mlp2x_gelu``, loaded from a LLaVA checkpoint.

The modules are exactly LLaVA's (``nn.Linear``; ``nn.Sequential(Linear, GELU, Linear)``), so a LLaVA
``mm_projector.bin`` loads once its ``model.mm_projector.`` prefix is stripped; so does the projector inside a whole
(sharded) LLaVA checkpoint, read from its shards alone (``checkpoints`` reads and names them). Shapes:
(T, N, D_vision) in, (T, N, D_llm) out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import newline_keys, open_checkpoint, projector_keys
from .config import PROJECTORS, ProjectorCfg
from .errors import ConfigError, SlowfastError
from .preflight import check_projector
from .tensors import check_tensors

EXPECTED_KEYS = {
    "linear": ("weight", "bias"),
    "mlp2x_gelu": ("0.weight", "0.bias", "2.weight", "2.bias"),
}


def load_projector_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Projector weights with keys normalised to the module's own names (``0.weight``... or ``weight``/``bias``).

    Accepts a LLaVA ``mm_projector.bin`` (``model.mm_projector.0.weight``...; other keys such as
    ``model.embed_tokens.weight`` are ignored), the same with a bare ``mm_projector.`` prefix, or a plain state
    dict of the module; ``.safetensors`` too. Also a whole LLaVA checkpoint, as a folder or its ``*.index.json``
    (sharded or not): only the shards holding ``mm_projector.*`` (or llava-hf's ``multi_modal_projector.*``) are
    read.

    Raises:
        SlowfastError: unreadable files, or a checkpoint folder without a projector.
    """
    checkpoint = open_checkpoint(path, "projector weights")
    names = projector_keys(checkpoint.keys, f"projector weights {path}")
    if names:
        state = checkpoint.read(names)
        check_tensors(state, f"projector weights {path}")
        return {names[k]: v for k, v in state.items()}
    if checkpoint.model_folder:
        raise SlowfastError(
            f"projector weights {path}: the checkpoint has no mm_projector.* (LLaVA) or multi_modal_projector.* "
            "(llava-hf) keys"
        )
    state = checkpoint.read_all()
    check_tensors(state, f"projector weights {path}")
    return state


def make_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """An untrained projector module of LLaVA's layout (``nn.Linear`` default init)."""
    if kind == "identity":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ConfigError(f"unknown projector {kind!r}; valid: {', '.join(PROJECTORS)}")


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


def build_projector(
    cfg: ProjectorCfg, vision_width: int, device: torch.device, dtype: torch.dtype, tower: str = "the vision tower"
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
    if cfg.kind not in PROJECTORS:
        raise ConfigError(f"unknown projector {cfg.kind!r}; valid: {', '.join(PROJECTORS)}")
    check_projector(cfg, vision_width, tower)  # the combinations preflight refuses, refused here the same way
    random = False
    if cfg.kind == "identity":
        module, out_dim = nn.Identity(), vision_width
    elif cfg.weights:
        module, out_dim = _from_weights(cfg, vision_width)
    else:
        module, out_dim, random = _random(cfg, vision_width), cfg.llm_dim, True
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


def load_newline(
    cfg: ProjectorCfg, info: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, dict[str, Any]]:
    """LLaVA-NeXT's learned newline token (D_llm,) for the newline layouts, and plain-value info for ``meta``.

    From the projector's checkpoint (``--projector-weights``: ``model.image_newline`` in a LLaVA-NeXT /
    LLaVA-OneVision / LLaVA-Video checkpoint, ``image_newline`` or ``model.image_newline`` in a llava-hf one);
    with a random projector (``--random-projector``), ``randn(D) / sqrt(D)`` under ``manual_seed(seed + 1)``
    (LLaVA-NeXT's own initialisation, ``llava_arch.py``: ``torch.randn(hidden_size) * embed_std``).

    Raises:
        SlowfastError: no projector checkpoint and no random projector, a checkpoint without ``image_newline``
            (or with two), or a token that is not a vector of the projector's output width.
    """
    width = info["out_dim"]
    if info.get("random"):
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        token = torch.randn(width, generator=generator) / width**0.5
        source = {"weights": None, "random": True, "seed": cfg.seed + 1}
    elif cfg.weights and cfg.kind != "identity":
        checkpoint = open_checkpoint(cfg.weights, "projector weights")
        keys = newline_keys(checkpoint.keys)
        if len(keys) != 1:
            found = "no image_newline" if not keys else f"{len(keys)} image_newline keys ({', '.join(keys)})"
            raise SlowfastError(
                f"projector weights {cfg.weights}: the layout places newline tokens (--newline) but the checkpoint "
                f"has {found}; give the LLaVA-NeXT / OneVision / Video checkpoint folder, or --newline no_token"
            )
        token = checkpoint.read(keys)[keys[0]]
        check_tensors({keys[0]: token}, f"projector weights {cfg.weights}")
        if token.ndim != 1 or token.shape[0] != width:
            raise SlowfastError(
                f"projector weights {cfg.weights}: {keys[0]} has shape {tuple(token.shape)} but the projector gives "
                f"{width}-wide tokens; the newline must be a vector of the LLM's width"
            )
        source = {"weights": str(cfg.weights), "key": keys[0], "random": False, "seed": None}
    else:
        raise SlowfastError(
            "the layout places newline tokens (aggregator.newline, --newline) but there is no image_newline to place: "
            "give the model's checkpoint with --projector linear|mlp2x_gelu --projector-weights FOLDER, use "
            "--random-projector for a dry run, or --newline no_token"
        )
    return token.to(device=device, dtype=dtype), source


def project(x: torch.Tensor, projector: nn.Module) -> torch.Tensor:
    """Apply ``projector`` under inference mode: (T, N, D_vision) -> (T, N, D_llm), cast to its device and dtype."""
    param = next(projector.parameters(), None)
    with torch.inference_mode():
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        return projector(x)
