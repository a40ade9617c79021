"""Transcriptions of the upstream code that slowfast's policies reproduce; tests compare against these.

Written out by hand from the upstream sources, kept as close to them as a test allows (same operations, same
order, same dtypes), and deliberately not sharing code with ``slowfast_cli``:

- SlowFast-LLaVA, apple/ml-slowfast-llava at commit bea0f73:
  - ``dataset.py``:36-100, ``load_video`` and ``get_seq_frames`` (frame sampling);
  - ``slowfast_llava/llava/model/llava_arch.py``:142-191 ``temporal_aggregation`` (its ``spatial_1d_max_pool``
    branch, 148-154, and the final ``unsqueeze(0)``, 190) and 193-226 ``prepare_slowfast``.
- LLaVA-NeXT, LLaVA-VL/LLaVA-NeXT (commit df17966): ``llava/model/llava_arch.py`` ``get_2dPool`` (171-190), the
  ``mm_spatial_pool_mode == "bilinear"`` branch; ``playground/demo/video_demo.py``:70-82 ``load_video`` with
  ``force_sample`` (frame sampling).
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from einops import rearrange
from torch import nn


def get_seq_frames(total_num_frames: int, desired_num_frames: int) -> list[int]:
    """dataset.py:77-100: the middle of each of ``desired_num_frames`` segments, numpy's round half to even."""
    seg_size = float(total_num_frames - 1) / desired_num_frames
    seq = []
    for i in range(desired_num_frames):
        start = int(np.round(seg_size * i))
        end = int(np.round(seg_size * (i + 1)))
        seq.append((start + end) // 2)
    return seq


def sf_llava_frame_indices(total_num_frames: int, num_frms: int = 50) -> list[int]:
    """dataset.py:53-64 ``load_video``: ``desired_num_frames = min(len(vr), num_frms)``, then get_seq_frames."""
    desired_num_frames = min(total_num_frames, num_frms)
    return get_seq_frames(total_num_frames, desired_num_frames)


def llava_next_frame_indices(total_frame_num: int, frames: int) -> list[int]:
    """video_demo.py:80-82 (``force_sample``): ``np.linspace(0, total_frame_num - 1, frames, dtype=int)``."""
    return np.linspace(0, total_frame_num - 1, frames, dtype=int).tolist()


def temporal_aggregation_1d_max(image_features: torch.Tensor) -> torch.Tensor:
    """llava_arch.py:148-154 and 190, ``spatial_1d_max_pool``: (T, N, D) -> (1, T * N/2, D)."""
    T, N, D = image_features.shape
    pool2 = nn.MaxPool1d(kernel_size=2, stride=2)
    image_features = rearrange(image_features, "t n d -> t d n")
    image_features = pool2(image_features)
    image_features = rearrange(image_features, "t d n -> t n d", t=T)
    # upstream: .view(-1, D), which fails for T > 1 on the CPU with torch 2.14, whose max_pool1d returns a
    # contiguous (T, D, N/2) (torch 2.2, upstream's pin, kept the input's strides); reshape gives the same values
    image_features = image_features.reshape(-1, D)
    return image_features.unsqueeze(0)


def prepare_slowfast(image_features: torch.Tensor, temporal_aggregation: str) -> torch.Tensor:
    """llava_arch.py:193-226 for ``slowfast-slow_{S}frms_spatial_1d_max_pool-fast_{h}x{w}``: (T, N, D) -> (1, L, D).

    As upstream, the grid is square (``n0 = n1 = int(math.sqrt(N))``) and the slow indices are not clamped.
    """
    T, N, D = image_features.shape
    m = re.match(r"^slowfast-slow_(\d+)frms_(\w+)-fast_(\d+)x(\d+)$", temporal_aggregation)
    assert m and m.group(2) == "spatial_1d_max_pool", temporal_aggregation
    num_slowpath = int(m.group(1))
    fastpath_output_size = (int(m.group(3)), int(m.group(4)))

    slowpath_idx = torch.linspace(0, T, num_slowpath + 1)
    slowpath_idx = slowpath_idx.to(torch.int32).tolist()
    slowpath_idx.pop()
    slowpath_features = temporal_aggregation_1d_max(image_features[slowpath_idx])

    fastpath_features = image_features  # [T N D]
    pool2 = nn.AdaptiveAvgPool2d(fastpath_output_size)
    n0 = n1 = int(math.sqrt(N))
    fastpath_features = rearrange(fastpath_features, "t (n0 n1) d -> d t n0 n1", n0=n0, n1=n1)
    fastpath_features = pool2(fastpath_features)
    fastpath_features = rearrange(fastpath_features, "d t n0 n1 -> (t n0 n1) d")
    fastpath_features = fastpath_features.unsqueeze(0)

    return torch.cat((slowpath_features, fastpath_features), dim=1)


def slowpath_indices(T: int, num_slowpath: int) -> list[int]:
    """llava_arch.py:208-210, the slow frames prepare_slowfast picks."""
    idx = torch.linspace(0, T, num_slowpath + 1).to(torch.int32).tolist()
    idx.pop()
    return idx


def get_2d_pool_bilinear(image_feature: torch.Tensor, num_patches_per_side: int, stride: int = 2) -> torch.Tensor:
    """LLaVA-NeXT get_2dPool, bilinear mode: (F, N, D) -> (F, ceil(side/2)^2, D)."""
    height = width = num_patches_per_side
    num_frames, num_tokens, num_dim = image_feature.shape
    image_feature = image_feature.view(num_frames, height, width, -1)
    image_feature = image_feature.permute(0, 3, 1, 2).contiguous()
    height, width = image_feature.shape[2:]
    scaled_shape = [math.ceil(height / stride), math.ceil(width / stride)]
    image_feature = nn.functional.interpolate(image_feature, size=scaled_shape, mode="bilinear")
    image_feature = image_feature.permute(0, 2, 3, 1)
    image_feature = image_feature.view(num_frames, -1, num_dim)
    return image_feature
