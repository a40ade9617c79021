"""Vision-language models whose towers run through transformers' own code: ``encoder.model = "hf:<family>"``.

No open_clip model holds these towers (InternViT with its pixel shuffle and ``mlp1``; Qwen-VL's windowed ViT and
merger), so slowfast runs the model's own vision code from transformers (``encoder/hfvl/``, ``pip install
"slowfast-cli[hf]"``) and keeps decoding, sampling, batching, provenance and the engines. The family's projector
is part of the tower: its tokens are already the LLM's width, so ``projector.kind`` stays ``identity``.

This module knows the families without torch or transformers (``budget``, ``configs`` and preflight ask here);
the encoder checks the checkpoint it loads against these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .policies import check_grid, check_layout
from .reading import path_problem

HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Family:
    name: str  # what follows "hf:" (transformers' model_type)
    model_types: tuple[str, ...]  # config.json model_type values read as this family (transformers' and original)
    grid: tuple[int, int] | None  # tokens per frame as (rows, columns), after the family's own merging; None: the
    # grid follows each video's size (Qwen-VL's dynamic resolution: encoder/hfvl/families.py computes it)
    image_size: int | None  # the square side the tower takes; None: dynamic
    description: str
    example: str = "OpenGVLab/InternVL3-8B"  # a checkpoint to name in messages


FAMILIES = {
    "internvl": Family(
        "internvl",
        ("internvl", "internvl_chat"),  # OpenGVLab/InternVL3-8B-hf (transformers) and OpenGVLab/InternVL3-8B
        (16, 16),  # 448 / 14 = 32x32 patches, pixel shuffle 0.5 -> 16x16 = 256 tokens per frame
        448,
        "InternVL 2.5 / 3: InternViT at 448, class token dropped, pixel shuffle 0.5, mlp1 -> 256 tokens per frame",
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl", ("qwen2_5_vl",), None, None,
        "Qwen2.5-VL: its ViT over temporal patches of 2 frames, merger 2x2 -> (H/28) x (W/28) tokens per 2 frames",
        "Qwen/Qwen2.5-VL-7B-Instruct",
    ),
    "qwen3_vl": Family(
        "qwen3_vl", ("qwen3_vl",), None, None,
        "Qwen3-VL: patch 16, temporal patch 2, merger 2x2 (+ deepstack) -> (H/32) x (W/32) tokens per 2 frames",
        "Qwen/Qwen3-VL-8B-Instruct",
    ),
}  # fmt: skip


def is_hf_model(model: str) -> bool:
    """Whether ``encoder.model`` names a transformers family (``hf:internvl``) rather than an open_clip model."""
    return isinstance(model, str) and model.startswith(HF_PREFIX)


def family(model: str) -> Family:
    """The family of ``hf:<name>``.

    Raises:
        ConfigError: an unknown family, listing the valid ``hf:`` names.
    """
    name = model[len(HF_PREFIX) :] if is_hf_model(model) else model
    if name not in FAMILIES:
        valid = ", ".join(HF_PREFIX + n for n in FAMILIES)
        raise ConfigError(f"unknown model {model!r} (encoder.model, --model); transformers families: {valid}")
    return FAMILIES[name]


def hf_grid(model: str) -> tuple[int, int]:
    """Tokens per frame (rows, columns) of a family's tower: (16, 16) for ``hf:internvl``.

    Raises:
        ConfigError: a family whose grid follows each video's size (Qwen-VL): ``budget --size WxH`` computes it.
    """
    grid = family(model).grid
    if grid is None:
        raise ConfigError(f"{model}: the grid follows each video's size; pass --size WxH (or --grid HxW)")
    return grid


def hf_preflight(cfg) -> tuple[int, int] | None:
    """``preflight.preflight`` for a transformers family: what can be checked without torch or the checkpoint.

    The weights must be a checkpoint on disk (its ``config.json`` decides the tower): random weights and open_clip
    tags are refused. The projector is the family's own (identity here); no newline tokens (these models have
    none); the layout must fit the family's grid.

    Raises:
        ConfigError: naming the setting and how to fix it.
    """
    e, p, a = cfg.encoder, cfg.projector, cfg.aggregator
    fam = family(e.model)
    path = Path(e.pretrained)
    if e.pretrained.lower() == "none" or not path.exists():
        what = "random weights (none)" if e.pretrained.lower() == "none" else f"{e.pretrained}, which does not exist"
        raise ConfigError(
            f"{e.model} runs the model's own vision code from its checkpoint, so encoder.pretrained (--pretrained) "
            f"must be a checkpoint folder with its config.json (e.g. {fam.example} downloaded), not {what}"
        )
    problem = None if path.is_dir() else path_problem(path, "checkpoint file or folder")
    if problem:  # a device or a FIFO: reading it (its hash for the settings record) would never end
        raise ConfigError(f"weights {e.pretrained} {problem} (encoder.pretrained, --pretrained)")
    if p.kind != "identity" or p.weights or p.llm_dim is not None:
        raise ConfigError(
            f"{e.model}: the projector is the model's own and is read with the tower from --pretrained; keep "
            "projector.kind (--projector) identity, without --projector-weights or --llm-dim"
        )
    if a.newline != "no_token":
        raise ConfigError(f"{e.model} has no newline token; pass --newline no_token (aggregator.newline)")
    if a.pool_stage != "after":
        raise ConfigError(f"{e.model}: the projector is inside the tower, so aggregator.pool_stage must be after")
    if fam.grid is None:  # checked per video (positions.check_video_grid); the family's own rules: preflight.py
        return None
    try:
        check_grid(fam.grid, a.slow_pool, a.fast_size, a.layout)
        check_layout(fam.grid, a.slow_pool, a.layout, a.newline)
    except ConfigError as exc:
        raise ConfigError(f"{e.model}: {exc}") from None
    return fam.grid
