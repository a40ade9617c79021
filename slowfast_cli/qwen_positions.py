"""A Qwen2.5-VL prompt from a token file: ``inputs_embeds`` with the video spliced in and M-RoPE ``position_ids``.

``qwen_inputs`` is the hand-off for the kept tokens of any layout: each video token's (temporal, height, width)
position comes from where it came from (``meta["positions"]``, see ``positions.py``), by the rule of transformers'
``Qwen2_5_VLModel.get_rope_index`` (5.25.0 models/qwen2_5_vl/modeling_qwen2_5_vl.py:882-1050):

- text tokens: one position per token on all three axes, counting on from the previous token's;
- a video starting at position ``s``: temporal ``s + long(p * tokens_per_second * second_per_grid_t)`` for
  temporal patch ``p``, height ``s + row``, width ``s + col``; the text after it continues at ``s + max(Gh, Gw)``
  (transformers 5.25's rule; Qwen's original code, and transformers 4, continue after the largest position).

For the model's own layout (every token) this is exactly ``get_rope_index``'s result (tests/test_qwen_models.py).
For a pooled layout each token keeps the position of the first cell of its window (``positions.py``): a slow
patch's tokens the same positions as in the full video, the fast pathway's 4x4 tokens of patch ``p`` the temporal
position of ``p`` and the rows and columns where their windows start; a temporal position may so occur twice (the
slow and the fast token of one patch), which M-RoPE allows. transformers is never imported here.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError
from .llm import splice_video
from .positions import token_positions


def _load(video: Any, model: str) -> dict:
    """``{"tokens", "meta"}`` of a token file that records positions and was encoded by ``model`` (hf:...)."""
    name = f"{video}" if isinstance(video, str) or hasattr(video, "__fspath__") else "the token file"
    if isinstance(video, (str, bytes)) or hasattr(video, "__fspath__"):
        from pathlib import Path

        if Path(video).suffix == ".safetensors":  # torch.load reads its tensor but not its meta
            from .formats.safetensors_file import load

            video = load(video)
        else:
            from .tokenfile import load_tokens

            video = load_tokens(video)
    meta = video.get("meta") if isinstance(video, dict) else getattr(video, "meta", None)
    if not isinstance(meta, dict) or "positions" not in meta:
        raise ConfigError(
            f"{name} records no positions (meta['positions']): encode it with a hf: model (slowfast >= this "
            "version) to build Qwen position ids"
        )
    if meta.get("model", model) != model:  # another family's tokens: their widths, positions or deepstack differ
        raise ConfigError(f"{name}: tokens of {meta['model']}, but these inputs are for {model}'s LLM")
    return {"tokens": video["tokens"] if isinstance(video, dict) else video.tokens, "meta": meta}


def video_position_ids(positions: dict[str, Any], start: int, tokens_per_second: float) -> tuple[torch.Tensor, int]:
    """(3, L) positions of one video's L tokens placed at ``start``, and the position the text after it takes."""
    t_all, gh, gw = positions["grid_thw"]
    interval = torch.tensor(tokens_per_second * positions["second_per_grid_t"], dtype=torch.float32)
    temporal = (torch.arange(t_all) * interval).long()  # (T',) as get_vision_position_ids computes it
    cells = torch.tensor(token_positions(positions), dtype=torch.long).reshape(-1, 3)  # (L, 3) patch, row, col
    ids = torch.stack([temporal[cells[:, 0]], cells[:, 1], cells[:, 2]]) + start  # (3, L)
    return ids, start + max(gh, gw)


def qwen_inputs(
    model: Any,
    input_ids: torch.Tensor,
    videos: Any,
    video_token_id: int,
    attention_mask: torch.Tensor | None = None,
    tokens_per_second: float | None = None,
) -> dict[str, torch.Tensor]:
    """``llm.splice_video``'s ``inputs_embeds`` and ``attention_mask`` (left padding), plus ``position_ids``
    (3, B, P') and ``rope_deltas`` (B, 1), for a Qwen2.5-VL LLM.

    Args:
        model: a ``Qwen2_5_VLForConditionalGeneration`` (its embeddings and ``config.vision_config
            .tokens_per_second``), or any embedding module with ``tokens_per_second`` given.
        input_ids: (B, P) or (P,) ids with one ``video_token_id`` placeholder per video, in reading order.
        videos: one token file (path, ``load_tokens`` dict or ``EncodeResult``) or a list, one per placeholder;
            each must record ``meta["positions"]``.
        attention_mask: (B, P), 1 for tokens to attend to; padded positions get position 0, as in transformers.
        tokens_per_second: M-RoPE's temporal scale (the checkpoint's ``vision_config.tokens_per_second``).

    Returns:
        ``{"inputs_embeds", "attention_mask", "position_ids", "rope_deltas"}``; pass the first three to the model or
        to ``generate``, which continues ``position_ids`` by one per new token on all three axes (what
        ``rope_deltas``, position minus index, gives a decoding loop of one's own).
    """
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    many = isinstance(videos, (list, tuple))
    loaded = [_load(v, "hf:qwen2_5_vl") for v in (videos if many else [videos])]
    if tokens_per_second is None:
        vision = getattr(getattr(model, "config", None), "vision_config", None)
        tokens_per_second = getattr(vision, "tokens_per_second", None)
        if tokens_per_second is None:
            raise ConfigError("pass tokens_per_second (the checkpoint's vision_config.tokens_per_second)")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.reshape(input_ids.shape)
    out = splice_video(model, input_ids, loaded, video_token_id, mask, padding_side="left")
    width = out["inputs_embeds"].shape[1]
    position_ids = torch.zeros(3, len(input_ids), width, dtype=torch.long)
    deltas, k = [], 0
    for b in range(len(input_ids)):
        parts, current, kept = [], 0, 0
        for token, keep in zip(input_ids[b].tolist(), mask[b].tolist()):
            if token == video_token_id:
                ids, after = video_position_ids(loaded[k]["meta"]["positions"], current, tokens_per_second)
                if ids.shape[1] != loaded[k]["tokens"].reshape(-1, loaded[k]["tokens"].shape[-1]).shape[0]:
                    raise ConfigError(f"video {k}: its positions do not match its token count")
                k += 1
            else:
                ids, after = torch.full((3, 1), current, dtype=torch.long), current + 1
            if keep:
                parts.append(ids)
                current, kept = after, kept + ids.shape[1]
            else:  # padding: position 0, as get_rope_index leaves it
                parts.append(torch.zeros_like(ids))
        row = torch.cat(parts, dim=1)  # (3, P_b) for the spliced row
        position_ids[:, b, width - row.shape[1] :] = row
        deltas.append(int(row.max()) + 1 - kept if kept else 0)
    device = out["inputs_embeds"].device
    out["position_ids"] = position_ids.to(device)
    out["rope_deltas"] = torch.tensor(deltas, device=device).unsqueeze(1)
    return out


class EncoderOutputs:
    """What Qwen3-VL's forward takes as ``mm_encoder_outputs["video"]``: the merger's tokens per video and, per
    deepstack merger, its tokens per video (the fields of transformers' ``BaseModelOutputWithDeepstackFeatures``)."""

    def __init__(self, pooler_output: tuple[torch.Tensor, ...], deepstack_features: list[tuple[torch.Tensor, ...]]):
        self.pooler_output, self.deepstack_features = pooler_output, deepstack_features

    def to_tuple(self) -> tuple:
        return self.pooler_output, self.deepstack_features


def _patch_runs(positions: dict[str, Any]) -> list[tuple[int, int, int]]:
    """(temporal patch, first token, end) of each run of consecutive tokens from one temporal patch, in order."""
    runs, start = [], 0
    for group in positions["groups"]:
        n = len(group["cells"])
        for p in group["patches"]:
            runs.append((int(p), start, start + n))
            start += n
    return runs


def qwen3_inputs(
    input_ids: torch.Tensor,
    video: Any,
    video_token_id: int,
    vision_start_id: int,
    vision_end_id: int,
    timestamp_ids: Any,
) -> dict[str, Any]:
    """Qwen3-VL's inputs for one prompt (P,) or (1, P) with one ``video_token_id`` placeholder, from a token file.

    Qwen3-VL's processor writes a video as, for each temporal patch, ``<t seconds>`` text then ``<|vision_start|>``,
    the patch's tokens and ``<|vision_end|>`` (transformers 5.25.0 processing_qwen3_vl.py:78-106), and its
    ``get_rope_index`` (modeling_qwen3_vl.py:918-1009) places each such run as an image of one temporal patch:
    temporal ``s``, height ``s + row``, width ``s + col``, the text after it from ``s + max(Gh, Gw)``. Here every run
    of consecutive tokens of one temporal patch (for ``slowfast``: each slow patch, then each patch's fast tokens)
    is written that way, with its recorded rows and columns.

    Args:
        input_ids: the prompt, the placeholder where the video goes.
        video: a token file (path, ``load_tokens`` dict or ``EncodeResult``) of a ``hf:qwen3_vl`` encode.
        timestamp_ids: seconds -> the token ids of ``f"<{seconds:.1f} seconds>"`` (e.g. ``lambda s:
            tokenizer(f"<{s:.1f} seconds>", add_special_tokens=False).input_ids``).

    Returns:
        ``input_ids`` (1, P'), ``attention_mask``, ``position_ids`` (3, 1, P'), ``mm_token_type_ids`` and
        ``mm_encoder_outputs``, for ``model(**inputs)``: the video's tokens (and its deepstack features) go in
        as precomputed encoder outputs, which the model scatters into the placeholders. ``generate(**inputs)``
        works too (it continues ``position_ids`` by one per new token).
    """
    ids = input_ids.reshape(-1).tolist()
    if ids.count(video_token_id) != 1:
        raise ConfigError(f"input_ids must hold exactly one video placeholder (id {video_token_id})")
    loaded = _load(video, "hf:qwen3_vl")
    tokens, positions = loaded["tokens"].reshape(-1, loaded["tokens"].shape[-1]), loaded["meta"]["positions"]
    k = int(positions.get("deepstack", 0))
    cells = token_positions(positions)
    if len(cells) != len(tokens) or tokens.shape[-1] % (k + 1):
        raise ConfigError("the token file's positions or width do not match its tokens")
    _, gh, gw = positions["grid_thw"]
    at = ids.index(video_token_id)
    out_ids, pos, current = [], [], 0

    def text(values: list[int]) -> None:
        nonlocal current
        out_ids.extend(values)
        pos.extend([current + i] * 3 for i in range(len(values)))
        current += len(values)

    text(ids[:at])
    for p, a, b in _patch_runs(positions):
        text([*timestamp_ids(positions["patch_seconds"][p]), vision_start_id])
        out_ids.extend([video_token_id] * (b - a))
        pos.extend([current, current + cells[i][1], current + cells[i][2]] for i in range(a, b))
        current += max(gh, gw)
        text([vision_end_id])
    text(ids[at + 1 :])
    blocks = tokens.chunk(k + 1, dim=-1)  # the merger's (L, D), then each deepstack merger's
    full = torch.tensor([out_ids])
    return {
        "input_ids": full,
        "attention_mask": torch.ones_like(full),
        "position_ids": torch.tensor(pos, dtype=torch.long).T[:, None],  # (3, 1, P')
        "mm_token_type_ids": (full == video_token_id).int() * 2,
        "mm_encoder_outputs": {"video": EncoderOutputs((blocks[0],), [(b,) for b in blocks[1:]])},  # fmt: skip
    }
