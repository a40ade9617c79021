"""Frames to patch tokens with a ViT tower.

- ``encoder``: ``build_encoder`` (the factory) and the thin ``Encoder``;
- ``towers``: one ``TowerAdapter`` per tower family, and open_clip's registry (the only module importing open_clip);
- ``weights``: ``--pretrained`` (tags, local checkpoints, none) and strict loading (huggingface_hub only here);
- ``preprocess``: the model's own resize/crop/squash, exact, on tensors (PIL only here);
- ``device``: ``--device`` and ``--dtype`` resolved on this machine.
"""
