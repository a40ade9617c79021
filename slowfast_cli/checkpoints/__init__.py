"""Checkpoints as users have them: ``files`` reads (files, folders, sharded indexes; only the shards needed) and
``hf`` maps a checkpoint's naming into a tower's or a projector's, one function per family.

The names other modules use are re-exported here.
"""

from .files import FOLDER_FILES, Checkpoint, open_checkpoint, read_weights
from .hf import (
    UNUSED_BY_TOKENS,
    HFTower,
    describe_tower,
    find_hf_tower,
    hf_clip_to_open_clip,
    newline_keys,
    projector_keys,
)

__all__ = [
    "FOLDER_FILES",
    "UNUSED_BY_TOKENS",
    "Checkpoint",
    "HFTower",
    "describe_tower",
    "find_hf_tower",
    "hf_clip_to_open_clip",
    "newline_keys",
    "open_checkpoint",
    "projector_keys",
    "read_weights",
]
