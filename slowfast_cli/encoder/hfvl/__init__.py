"""Towers that run the model's own vision code from transformers (``encoder.model = "hf:<family>"``): the only
package that imports transformers. Install it with ``pip install "slowfast-cli[hf]"``."""

from __future__ import annotations

from typing import Any

import torch

from ...config import EncoderCfg
from ...errors import SlowfastError
from ...hf_families import family


def build_hf_encoder(cfg: EncoderCfg, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The fields of the ``encoder.Encoder`` of a transformers family (``hf_families.FAMILIES``), built from
    ``cfg.pretrained`` (``encoder.build_encoder`` wraps them).

    Raises:
        SlowfastError: transformers is not installed, or the checkpoint does not fit (see each family's builder).
    """
    fam = family(cfg.model)
    try:
        if fam.name == "internvl":
            from .internvl import build_internvl_encoder as build
    except ImportError as exc:
        raise SlowfastError(
            f'{cfg.model} needs transformers ({exc.name or exc}): pip install "slowfast-cli[hf]"'
        ) from None
    return build(cfg, device, dtype)
