"""Frames to the ViT's input exactly as the model's own preprocessing makes it, batched on tensors.

``preprocess`` is open_clip's eval transform (resize by ``resize_mode``, centre crop or pad, ``/255``, mean/std)
for uint8 frames (T, H, W, 3): ``shortest``/``longest`` mimic PIL's two rounded passes in torch, with memory
bounded whatever the aspect ratio; ``squash`` is PIL itself, bit for bit. The only module that imports PIL.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from ..errors import SlowfastError

PIXEL_TOLERANCE = 2 / 255  # max |ours - PIL| in pixel units after a shortest/longest resize, measured (preprocess)
PIL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
SQUASH_THREADS = 8  # at most this many frames squashed by PIL at once (it lets go of the GIL while it resizes)
PIECE_ELEMENTS = 1 << 22  # fp32 values per preprocessing temporary (16 MiB), whatever the frame shape
RESIZE_TAPS = {"bicubic": 4, "bilinear": 2}  # filter width in input pixels at scale 1 (PIL, torch antialias)


def _resized_shape(h: int, w: int, target: tuple[int, int], mode: str) -> tuple[int, int]:
    """(h, w) after open_clip's resize step: torchvision ``Resize`` / ``ResizeKeepRatio`` arithmetic.

    Each side is at least 1 pixel (``longest`` would round a 4000x2 frame's short side to 0, which PIL refuses).
    """
    th, tw = target
    if mode == "squash":
        return th, tw
    if mode == "shortest" and th == tw:
        return (int(th * h / w), th) if w <= h else (th, int(th * w / h))
    ratio = max(h / th, w / tw) if mode == "longest" else min(h / th, w / tw)
    return max(1, round(h / ratio)), max(1, round(w / ratio))


def _crop_window(n: int, target: int) -> tuple[int, int, int, int]:
    """(start, stop, pad_before, pad_after) along one axis of ``n`` resized pixels.

    torchvision's ``center_crop`` (open_clip's ``CenterCropOrPad``) keeps pixels [start, stop) of that axis and
    pads it with the fill colour when it is shorter than ``target``.
    """
    if target > n:
        return 0, n, (target - n) // 2, (target - n + 1) // 2
    start = int(round((n - target) / 2.0))
    return start, start + target, 0, 0


def _aa_filter(x: np.ndarray, interpolation: str) -> np.ndarray:
    """PIL's resampling filters, which torch's ``antialias=True`` copies: Keys' cubic (a = -0.5) or the triangle."""
    x = np.abs(x)
    if interpolation == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=32)
def _aa_window(n_in: int, n_out: int, start: int, stop: int, interpolation: str) -> tuple[int, int, np.ndarray]:
    """Outputs ``start..stop-1`` of an antialiased resize from ``n_in`` to ``n_out`` pixels, as a matrix.

    PIL's ``precompute_coeffs`` (which torch's antialiased kernels follow) in float64, for only the outputs asked
    for. Returns (first, last, weights): the outputs read input pixels [first, last) only, and output ``start + k``
    is ``weights[k] @ input[first:last]``.
    """
    scale = n_in / n_out
    support = RESIZE_TAPS[interpolation] / 2 * max(scale, 1.0)  # in input pixels; wider when downscaling
    spans = []
    for i in range(start, stop):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        w = _aa_filter((np.arange(lo, hi) - center + 0.5) / max(scale, 1.0), interpolation)
        spans.append((lo, w / w.sum()))
    first, last = spans[0][0], max(lo + len(w) for lo, w in spans)
    weights = np.zeros((stop - start, last - first))
    for k, (lo, w) in enumerate(spans):
        weights[k, lo - first : lo - first + len(w)] = w
    return first, last, weights


def _interpolate(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=interpolation, antialias=True, align_corners=False)


def _resize_width(x: torch.Tensor, width: int, cols: tuple[int, int], interpolation: str) -> torch.Tensor:
    """PIL's horizontal pass, (B, 3, R, W) uint8 -> (B, 3, R, C) fp32 8-bit levels, keeping columns [cols).

    Rows are independent in this pass, so it runs on bands of rows of at most ``PIECE_ELEMENTS`` values each and
    keeps only the wanted columns of each band: the same numbers as one call on the whole frame.
    """
    c0, c1 = cols
    if x.shape[-1] == width:
        return x[..., c0:c1].float()
    band = max(1, PIECE_ELEMENTS // (x.shape[0] * 3 * max(x.shape[-1], width)))
    parts = [
        _interpolate(part.float(), (part.shape[-2], width), interpolation)[..., c0:c1].round().clamp_(0, 255)
        for part in x.split(band, dim=2)
    ]
    return torch.cat(parts, dim=2)


def _resize_and_crop(
    frames: torch.Tensor, size: tuple[int, int], target: tuple[int, int], interpolation: str, fill: float
) -> torch.Tensor:
    """PIL-like resize of (T, H, W, 3) uint8 frames to ``size``, then centre crop or pad to ``target``.

    The result, (T, 3, Ht, Wt) fp32 8-bit levels, is what resizing whole frames (a width pass, then a height pass,
    each rounded to 8 bits) and then cropping gives, but only the pixels the crop keeps are kept past each pass,
    and frames go through in groups, so no temporary is much larger than ``PIECE_ELEMENTS`` values whatever the
    aspect ratio (a 4000x2 frame resized whole to a 224 short side would be 224 x 448,000 floats).

    - Width pass: rows are independent, so it runs on bands of rows and keeps the cropped columns: bit-identical.
    - Height pass: columns are independent, so it runs on the cropped columns only. When its whole output for one
      frame fits in ``PIECE_ELEMENTS`` it is torch's own pass over all rows, cropped: bit-identical. Past that (a
      frame more than about 28 times taller than wide for a 224 model, 12 times for a 336 one) it computes only
      the kept rows, from the input rows they read, with PIL's weights in float64 (``_aa_window``), and the width
      pass runs on those input rows only. torch computes its weights in float32, so the two differ by one 8-bit
      level on rare values (measured at 224 on 2 x 4000 photos: 6 in 10,000), and these are closer to PIL
      (there, equal to it, where torch's whole pass is one level off on 3 in 10,000).

    The planes stay channels-last (the layout of a permuted (T, H, W, 3) view, as the whole-frame passes had
    them): torch's antialiased height pass gives wrong numbers on contiguous (N, C, H, 1) tensors (torch 2.14),
    and a ``longest``-mode resize of a very tall frame is one pixel wide.
    """
    t, h, w, _ = frames.shape
    (h1, w1), (th, tw) = size, target
    if t == 0:
        return frames.new_zeros((0, 3, th, tw), dtype=torch.float32)
    r0, r1, pad_top, pad_bottom = _crop_window(h1, th)
    c0, c1, pad_left, pad_right = _crop_window(w1, tw)
    kw = c1 - c0
    whole = h != h1 and 3 * h1 * kw <= PIECE_ELEMENTS  # height pass over all rows, then crop
    windowed = h != h1 and not whole
    rows = (0, h) if whole else (r0, r1)
    if windowed:
        first, last, weights = _aa_window(h, h1, r0, r1, interpolation)
        rows, matrix = (first, last), torch.from_numpy(weights).to(frames.device)  # (r1 - r0, last - first) fp64
    per_frame = 3 * max((rows[1] - rows[0]) * max(w, w1), h1 * kw if whole else 0)
    out = []
    for part in frames[:, rows[0] : rows[1]].split(max(1, PIECE_ELEMENTS // per_frame)):
        x = _resize_width(rearrange(part, "t h w c -> t c h w"), w1, (c0, c1), interpolation)  # (t, 3, rows, kw)
        if whole:
            x = x.contiguous(memory_format=torch.channels_last)  # already so, normally: see the docstring's end
            x = _interpolate(x, (h1, kw), interpolation)[:, :, r0:r1].round().clamp_(0, 255)
        elif windowed:
            x = torch.matmul(matrix, x.double()).round_().clamp_(0, 255).float()
        out.append(x)  # (t, 3, r1 - r0, kw)
    x = torch.cat(out)
    if pad_top or pad_bottom or pad_left or pad_right:
        x = F.pad(x, (pad_left, pad_right, pad_top, pad_bottom), value=fill)
    return x  # (T, 3, Ht, Wt)


def _squash(frames: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Each uint8 frame (T, H, W, 3) resized to exactly ``size`` (Hs, Ws), no crop, by PIL itself, on the CPU.

    PIL is what the references run: open_clip's squash transform (``Resize((Hs, Ws))`` on a PIL image), LLaVA's
    ``image.resize((336, 336))`` before ``CLIPImageProcessor``, LLaVA-NeXT's SigLIP processor. A torch copy of its
    fixed-point passes is exact too, but PIL changes the order of its two passes between versions (Pillow 13 runs
    the vertical one first for some portrait shapes; 12.2 for frames over 100 times taller than wide; earlier
    ones never), which changes up to a few levels; so the pixels are PIL's own, those of the Pillow installed,
    as upstream code in the same environment computes them. PIL lets go of the GIL while it resizes, so up to
    ``SQUASH_THREADS`` frames go at once. Frames already of that size are returned as they are (PIL copies them).

    Returns:
        (T, Hs, Ws, 3) uint8 on the CPU (or ``frames`` itself when no resize is needed).
    """
    h, w = size
    if tuple(frames.shape[1:3]) == (h, w):
        return frames
    if len(frames) == 0:
        return frames.new_zeros((0, h, w, 3), device="cpu")
    resample = PIL_FILTERS[interpolation]

    def one(frame: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((w, h), resample))

    with ThreadPoolExecutor(max_workers=min(SQUASH_THREADS, len(frames))) as pool:
        return torch.from_numpy(np.stack(list(pool.map(one, frames.cpu().numpy()))))  # (T, Hs, Ws, 3)


def as_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check and wrap uint8 frames (T, H, W, 3)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames if frames.flags.writeable else frames.copy())
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        raise SlowfastError(f"frames must be uint8 RGB, got {getattr(frames, 'dtype', type(frames).__name__)}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise SlowfastError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    return frames


def _to_device(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move uint8 frames to ``device``; on CUDA through pinned memory with a non-blocking copy (4x less to copy
    than float, and the copy overlaps the previous chunk's compute)."""
    if device.type != "cuda" or frames.device.type == "cuda":
        return frames.to(device)
    return frames.pin_memory().to(device, non_blocking=True)


def preprocess(
    frames: torch.Tensor | np.ndarray,
    cfg: dict[str, Any],
    image_size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """open_clip's eval preprocessing, batched on tensors: (T, H, W, 3) uint8 -> (T, 3, Hs, Ws) normalized.

    The same steps as ``open_clip.image_transform(..., is_train=False)`` for ``cfg`` (open_clip's
    ``PreprocessCfg`` fields: resize by ``resize_mode`` with antialiasing, center crop or pad, ``/255``, mean/std
    in fp32).

    - ``squash`` (SigLIP's tags, ``encoder.resize = squash``): PIL resizes each frame to (Hs, Ws) on the CPU
      (``_squash``), so the result is bit-identical in fp32 to open_clip's own transform, and to LLaVA's PIL
      squash followed by ``CLIPImageProcessor`` (transformers' PIL backend: ``x * (1/255)`` in float64, then
      float32 mean/std; its default torchvision backend folds the 1/255 into mean and std, 1 ulp away).
    - ``shortest`` / ``longest``: computed on ``device``; the resize mimics PIL (a width pass and a height pass,
      each rounded to 8 bits) in floating point where PIL uses fixed point, so it differs from open_clip's PIL
      pipeline by at most 1/255 in pixel units when frames are scaled down, 2/255 when they are scaled up
      (``PIXEL_TOLERANCE``; measurements in BENCHMARKS.md); bit-identical when no resize is needed. Memory does not
      grow with the aspect ratio: only the pixels the crop keeps are resized, a few frames at a time
      (``_resize_and_crop``).

    Frames whose size already matches the resize target (e.g. resized by the decoder) skip the resize.

    Returns:
        (T, 3, Hs, Ws) on ``device`` in ``dtype``.
    """
    if cfg["interpolation"] not in RESIZE_TAPS:
        raise SlowfastError(f"unsupported interpolation {cfg['interpolation']!r} (bicubic or bilinear)")
    frames = as_frames(frames)  # (T, H, W, 3) uint8
    if cfg["resize_mode"] == "squash":
        squashed = _to_device(_squash(frames, image_size, cfg["interpolation"]), device)
        x = rearrange(squashed, "t h w c -> t c h w").float()  # (T, 3, Hs, Ws) 8-bit levels
    else:
        frames = _to_device(frames, device)
        size = _resized_shape(frames.shape[1], frames.shape[2], image_size, cfg["resize_mode"])
        x = _resize_and_crop(frames, size, image_size, cfg["interpolation"], float(cfg["fill_color"]))
    mean = torch.tensor(cfg["mean"], device=device).view(3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(3, 1, 1)
    return ((x / 255 - mean) / std).to(dtype)  # (T, 3, Hs, Ws)
