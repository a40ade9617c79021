"""Towers that run the model's own vision code from transformers (``encoder.model = "hf:<family>"``): the only
package that imports transformers. Install it with ``pip install "slowfast-cli[hf]"``.

Importing this package costs nothing (no torch, no transformers): ``families`` and ``checks`` (the Qwen-VL
families' geometry, for ``budget`` and preflight) are read without torch; the builders are imported when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import SlowfastError
from ...hf_families import family

if TYPE_CHECKING:
    import torch

    from ...config import EncoderCfg


def build_hf_encoder(cfg: EncoderCfg, device: torch.device, dtype: torch.dtype) -> Any:
    """The encoder of a transformers family (``hf_families.FAMILIES``), built from ``cfg.pretrained``: for
    InternVL the fields of an ``encoder.Encoder`` (``encoder.build_encoder`` wraps them; a fixed 16x16 grid), for
    Qwen-VL a ``qwen.QwenEncoder`` (a grid per video).

    Raises:
        SlowfastError: transformers is not installed, or the checkpoint does not fit (see each family's builder).
    """
    internvl = family(cfg.model).name == "internvl"
    try:
        if internvl:
            from .internvl import build_internvl_encoder
        else:
            from .qwen import build_qwen_encoder
    except ImportError as exc:
        raise SlowfastError(
            f'{cfg.model} needs transformers ({exc.name or exc}): pip install "slowfast-cli[hf]"'
        ) from None
    if internvl:
        return build_internvl_encoder(cfg, device, dtype)
    return build_qwen_encoder(cfg.model, cfg.pretrained, device, dtype)
