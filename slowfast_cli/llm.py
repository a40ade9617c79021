"""Video tokens into an LLM's prompt: ``splice_video`` replaces placeholder tokens with a token file's tokens.

Works with any Hugging Face causal LM (anything with ``get_input_embeddings()``) or a bare embedding module;
transformers is never imported here. The result goes to ``model(**inputs)`` or ``model.generate(**inputs)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

PADDING_SIDES = ("left", "right")


def video_tokens(video: Any) -> torch.Tensor:
    """(L, D) tokens from a token file path, a ``load_tokens`` dict, an ``EncodeResult`` or a (1, L, D) / (L, D)
    tensor."""
    if isinstance(video, (str, Path)):
        from .tokenfile import load_tokens

        video = load_tokens(video)
    if isinstance(video, dict):
        video = video.get("tokens")
    elif not isinstance(video, torch.Tensor) and hasattr(video, "tokens"):
        video = video.tokens
    if not isinstance(video, torch.Tensor):
        raise ConfigError(f"expected video tokens (a token file, its dict, a result or a tensor), got {type(video)}")
    if video.ndim == 3 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 2:
        raise ConfigError(f"video tokens must be (1, L, D) or (L, D), got {tuple(video.shape)}")
    return video


def _embedding(model: Any) -> torch.nn.Module:
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings()
    if isinstance(model, torch.nn.Module):
        return model
    raise ConfigError(f"expected an LLM (with get_input_embeddings()) or an embedding module, got {type(model)}")


def splice_video(
    model: Any,
    input_ids: torch.Tensor,
    videos: Any,
    video_token_id: int,
    attention_mask: torch.Tensor | None = None,
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Embed ``input_ids`` and put each video's tokens where its placeholder token stands.

    Every occurrence of ``video_token_id`` in ``input_ids`` (B, P) is replaced by one video's L_i tokens, taken in
    reading order (row 0's placeholders first); the rows then differ in length and are padded to the longest with
    zero embeddings and a 0 in the attention mask, on ``padding_side`` (``left``, what ``generate`` expects of a
    decoder-only model, or ``right``).

    Args:
        model: a Hugging Face model (``get_input_embeddings()``) or an embedding module, ids (B, P) -> (B, P, D).
        input_ids: (B, P) or (P,) token ids holding one placeholder per video.
        videos: one video's tokens, or a list of them, one per placeholder (see :func:`video_tokens`); their
            width must be the embeddings' D (a projector gives it: ``--projector-weights``).
        video_token_id: the placeholder's id (e.g. ``tokenizer.convert_tokens_to_ids("<video>")``).
        attention_mask: (B, P), 1 for tokens to attend to; default all ones. A placeholder's 1 or 0 applies to
            its whole video.
        padding_side: where the shorter rows are padded.

    Returns:
        ``{"inputs_embeds": (B, P', D), "attention_mask": (B, P')}`` with P' the longest row's length, in the
        embeddings' dtype and device.

    Raises:
        ConfigError: the placeholder count differs from the number of videos, a width differs, or a bad argument.
    """
    if padding_side not in PADDING_SIDES:
        raise ConfigError(f"padding_side must be one of {', '.join(PADDING_SIDES)}, got {padding_side!r}")
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if input_ids.ndim != 2:
        raise ConfigError(f"input_ids must be (B, P) or (P,), got {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.reshape(input_ids.shape)
    many = isinstance(videos, Sequence) and not isinstance(videos, (str, Path))
    tokens = [video_tokens(v) for v in (videos if many else [videos])]
    found = int((input_ids == video_token_id).sum())
    if found != len(tokens):
        raise ConfigError(
            f"input_ids hold {found} video placeholder(s) (id {video_token_id}) but {len(tokens)} video(s) were given"
        )
    embed = _embedding(model)
    text = embed(input_ids.masked_fill(input_ids == video_token_id, 0))  # (B, P, D); the id may lie past the vocab
    width = text.shape[-1]
    for i, t in enumerate(tokens):
        if t.shape[-1] != width:
            raise ConfigError(
                f"video {i} has tokens {t.shape[-1]} wide but the LLM's embeddings are {width}: encode with a "
                f"projector to {width} (--projector-weights, or --llm-dim {width} with --projector)"
            )
    rows, masks, k = [], [], 0
    for b in range(input_ids.shape[0]):
        parts, part_masks, start = [], [], 0
        for pos in (input_ids[b] == video_token_id).nonzero().flatten().tolist():
            video = tokens[k].to(text)  # (L_k, D)
            parts += [text[b, start:pos], video]
            part_masks += [attention_mask[b, start:pos], attention_mask[b, pos].expand(len(video))]
            start, k = pos + 1, k + 1
        parts.append(text[b, start:])
        part_masks.append(attention_mask[b, start:])
        rows.append(torch.cat(parts))  # (P_b, D)
        masks.append(torch.cat(part_masks))  # (P_b,)
    longest = max(len(r) for r in rows)
    embeds = text.new_zeros(len(rows), longest, width)  # (B, P', D)
    mask = attention_mask.new_zeros(len(rows), longest)  # (B, P')
    for b, (r, m) in enumerate(zip(rows, masks)):
        where = slice(longest - len(r), longest) if padding_side == "left" else slice(0, len(r))
        embeds[b, where], mask[b, where] = r, m
    return {"inputs_embeds": embeds, "attention_mask": mask}


def frame_segments(video: Any) -> list[tuple[int, torch.Tensor]]:
    """A token file's tokens cut per frame, in the file's order: ``[(k, (n_k, D)), ...]``.

    ``k`` is the frame's 1-based position among the T sampled frames (``Frame{k}`` in InternVL's prompt: the model
    card writes ``"Frame{i + 1}: <image>\\n"`` per frame, and ``<image>`` stands for ``<img>`` + the frame's tokens +
    ``</img>``). The ``frames`` layout gives T segments; ``slowfast`` gives the S slow frames first, then all T
    frames' fast tokens (so a slow frame's number appears twice). Build the prompt with one placeholder per
    segment and pass the segments' tensors to :func:`splice_video` in the same order.

    Args:
        video: a token file path or its ``load_tokens`` dict (the meta says how the tokens were laid out).

    Raises:
        ConfigError: a layout with newline tokens, or a meta whose counts do not add up to the tokens.
    """
    if isinstance(video, (str, Path)):
        from .tokenfile import load_tokens

        video = load_tokens(video)
    if not isinstance(video, dict) or not isinstance(video.get("meta"), dict):
        raise ConfigError("frame_segments needs a token file (or its load_tokens dict), whose meta lays out the tokens")
    tokens, meta = video_tokens(video), video["meta"]
    if meta.get("newline_tokens"):
        raise ConfigError("frame_segments: the tokens hold newline tokens; encode with --newline no_token")
    frames, slow = int(meta["frames"]), [int(i) for i in meta.get("slow_frame_indices") or []]
    if meta.get("layout", "slowfast") == "frames":
        groups = [(k + 1, int(meta["output_tokens"]) // frames) for k in range(frames)]
    else:
        per_slow = int(meta["slow_tokens"]) // max(len(slow), 1)
        per_fast = int(meta["fast_tokens"]) // frames
        groups = [(i + 1, per_slow) for i in slow] + [(k + 1, per_fast) for k in range(frames)]
    if sum(n for _, n in groups) != len(tokens):
        laid = sum(n for _, n in groups)
        raise ConfigError(f"frame_segments: the meta lays out {laid} tokens, but the file has {len(tokens)}")
    out, start = [], 0
    for k, n in groups:
        out.append((k, tokens[start : start + n]))
        start += n
    return out
