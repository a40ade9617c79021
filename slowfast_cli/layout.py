"""Where a video's tokens sit in the sequence: groups of pooled frames, the newline tokens between them.

The aggregator (``aggregate.py``) pools frames into groups: the ``slowfast`` layout has two (S slow frames, then T
fast frames), the ``frames`` layout one (every frame, pooled alike: LLaVA-Video, LLaVA-OneVision and
LLaVA-NeXT-Video feed their LLM this way). :func:`add_newlines` then puts the checkpoint's learned ``image_newline``
token where LLaVA-NeXT's ``mm_newline_position`` says (LLaVA-VL/LLaVA-NeXT, ``llava/model/llava_arch.py``,
``add_token_per_grid``, ``add_token_per_frame`` and the ``one_token`` / ``no_token`` branches of
``prepare_inputs_labels_for_multimodal``):

- ``grid``: one after every row of every frame: a 14x14 frame becomes 14 x (14 + 1) = 210 tokens;
- ``frame``: one after every frame;
- ``one_token``: one at the very end of the video (also what transformers' ``LlavaOnevision`` appends);
- ``no_token``: none.

In the ``slowfast`` layout the rule applies to each group in turn (slow frames, then fast frames), and
``one_token``'s single token ends the whole sequence. Pure functions; shapes in the docstrings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError, SlowfastError
from .policies import NEWLINES


@dataclass
class Group:
    """Pooled frames that share a shape: (F, n, D) tokens, n = rows * columns row-major (rows None: not a grid)."""

    tokens: torch.Tensor  # (F, n, D)
    rows: int | None


def add_newlines(groups: list[Group], newline: str, token: torch.Tensor | None) -> torch.Tensor:
    """Concatenate ``groups`` in order, with newline tokens placed by ``newline`` (one of ``policies.NEWLINES``).

    Args:
        groups: pooled frames, in sequence order.
        newline: grid | frame | one_token | no_token.
        token: (D,) the checkpoint's ``image_newline``, cast to the groups' dtype and device; unused (may be None)
            for ``no_token``.

    Returns:
        (1, L, D): for each group its frames in order, each frame's tokens row-major with its newline tokens.

    Raises:
        ConfigError: an unknown position, or ``grid`` for a group whose tokens keep no rows.
        SlowfastError: a newline position other than ``no_token`` without a token, or a token of another width.
    """
    if newline not in NEWLINES:
        raise ConfigError(f"unknown newline position {newline!r}; valid: {', '.join(NEWLINES)}")
    parts = []
    if newline != "no_token":
        width = groups[0].tokens.shape[-1]
        token = check_newline(token, width)
        token = token.to(device=groups[0].tokens.device, dtype=groups[0].tokens.dtype)
    for group in groups:
        x = group.tokens  # (F, n, D)
        f, n, d = x.shape
        if newline == "grid":
            if group.rows is None:
                raise ConfigError("grid newlines need frames whose tokens keep rows (1d pools of odd widths do not)")
            rows = x.reshape(f, group.rows, n // group.rows, d)  # (F, r, c, D)
            x = torch.cat([rows, token.expand(f, group.rows, 1, d)], dim=2).reshape(f, -1, d)  # (F, r * (c + 1), D)
        elif newline == "frame":
            x = torch.cat([x, token.expand(f, 1, d)], dim=1)  # (F, n + 1, D)
        parts.append(x.reshape(f * x.shape[1], d))
    if newline == "one_token":
        parts.append(token.reshape(1, -1))
    return torch.cat(parts, dim=0).unsqueeze(0)


def check_newline(token: torch.Tensor | None, width: int, name: str = "the newline token") -> torch.Tensor:
    """``token`` as a (D,) vector when it is one of width ``width``; else one line saying what is wrong."""
    if token is None:
        raise SlowfastError(
            "this layout places newline tokens (aggregator.newline, --newline) but no image_newline was loaded: give "
            "the model's checkpoint with --projector-weights, or --newline no_token"
        )
    if token.ndim != 1 or token.shape[0] != width:
        raise SlowfastError(
            f"{name} has shape {tuple(token.shape)} but the tokens are {width} wide: the newline must be a vector "
            "of the LLM's width (the checkpoint's image_newline, beside its projector)"
        )
    return token
