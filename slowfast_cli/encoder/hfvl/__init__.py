"""Vision towers that only transformers holds (Qwen2.5-VL, Qwen3-VL, InternVL3), selected by ``--model hf:TYPE``.

The only package that imports transformers. ``families`` knows each family's geometry without torch (``budget``,
preflight); ``build_hf_encoder`` builds the family's encoder (imported lazily, so that importing this package
costs nothing).
"""

from __future__ import annotations

from .families import HF_PREFIX, family_of, is_hf_model

__all__ = ["HF_PREFIX", "build_hf_encoder", "family_of", "is_hf_model"]


def build_hf_encoder(cfg, device, dtype):
    """The encoder of ``cfg.model`` (``hf:MODEL_TYPE``) from ``cfg.pretrained``: see ``qwen.build_qwen_encoder``."""
    family_of(cfg.model)  # an unknown family: one line listing the known ones
    from .qwen import build_qwen_encoder

    return build_qwen_encoder(cfg.model, cfg.pretrained, device, dtype)
