"""Frames of several videos in one ViT forward pass: ``Packer``.

Every forward pass has exactly ``pass_frames`` frames: the frames of the videos queued, in order, a video's frames
split across passes where a pass ends, and the last pass of a stream padded with zero frames. The shape of every
pass is therefore the same whatever the videos around a frame are, so the kernels (GEMM blocking, the attention's
split, the patch convolution's algorithm), which may depend on the batch size, run the same way for every pass; each
frame's tokens depend on that frame alone. That is why a video's tokens are bit-identical however it is packed: alone
(``Encoder.encode``, one video padded), next to other videos (``slowfast batch``), at any offset in a pass. The tests
prove it in fp32 and bf16 (``tests/test_packing.py``); BENCHMARKS.md §17 has what padding costs and what a pass
size buys on a CPU.

Failures stay per video: preprocessing runs per video slice before packing (a bad frame array fails its video only),
and a pass that raises (out of memory, a kernel error) is run again one video slice at a time, each padded to the
same pass size (so the bits stay the same); only a slice that fails alone fails its video.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import SlowfastError
from .preprocess import as_frames

PASS_FRAMES = {"cpu": 16, "cuda": 128}  # frames per pass when encoder.batch_frames is 0 (BENCHMARKS.md §17)


def pass_frames(batch_frames: int, device_type: str) -> int:
    """Frames per forward pass: ``batch_frames`` as set, or for 0 the device's default (``PASS_FRAMES``; 16 for
    any other device). On the CPUs measured a pass of 16 frames costs the least per frame; a GPU needs more to
    be busy."""
    return batch_frames or PASS_FRAMES.get(device_type, 16)


@dataclass
class Packed:
    """One video out of the packer: its tokens (T, N, D), or the exception that failed it."""

    key: Hashable  # what the caller gave ``add``
    tokens: torch.Tensor | None = None  # (T, N, D) on the encoder's device in its dtype
    error: BaseException | None = None
    seconds: float = 0.0  # its share of the forward passes' time (by frames)


@dataclass(eq=False)
class _Video:
    key: Hashable
    frames: torch.Tensor  # (T, H, W, 3) uint8, not yet preprocessed
    queued: int = 0  # frames handed to passes so far
    parts: list[torch.Tensor] = field(default_factory=list)  # (t_i, N, D) token slices, in order
    done: int = 0  # frames whose tokens are in ``parts``
    error: BaseException | None = None
    seconds: float = 0.0


class Packer:
    """Queue videos with :meth:`add`, get them back encoded, in the order they complete; :meth:`flush` at the end.

    ``add`` runs every pass that is full; a video comes back once its last frame went through a pass. The caller
    keeps at most ``pass_frames - 1`` frames waiting plus the video just added.
    """

    def __init__(self, encoder: Any, pass_frames: int):
        if not isinstance(pass_frames, int) or pass_frames <= 0:
            raise SlowfastError(f"batch_frames (frames per forward pass) must be a positive integer, got {pass_frames}")
        self.encoder = encoder
        self.pass_frames = pass_frames
        self._queue: list[_Video] = []  # videos with frames not yet through a pass, in order
        self.passes = 0  # forward passes run
        self.padded = 0  # zero frames added to fill the last passes

    @property
    def waiting(self) -> int:
        """Frames queued but not yet through a pass."""
        return sum(len(v.frames) - v.queued for v in self._queue)

    def add(self, key: Hashable, frames: Any) -> list[Packed]:
        """Queue one video's uint8 frames (T, H, W, 3); returns the videos completed by the passes this filled."""
        if getattr(self.encoder, "whole_videos", False):  # a grid per video (encoder.hfvl): one video per pass
            return [self._whole(key, frames)]
        try:
            video = _Video(key, as_frames(frames))
        except Exception as exc:  # a bad frame array fails its own video, at once
            return [Packed(key, error=exc)]
        if len(video.frames) == 0:
            n = self.encoder.grid[0] * self.encoder.grid[1]
            empty = torch.empty(0, n, self.encoder.width, device=self.encoder.device, dtype=self.encoder.dtype)
            return [Packed(key, tokens=empty)]
        self._queue.append(video)
        out: list[Packed] = []
        while self.waiting >= self.pass_frames:
            out += self._run_pass()
        return out

    def _whole(self, key: Hashable, frames: Any) -> Packed:
        t0 = time.perf_counter()
        try:
            tokens = self.encoder.encode(frames)
        except Exception as exc:  # fails this video only, as a pass that fails alone does
            return Packed(key, error=exc, seconds=time.perf_counter() - t0)
        self.passes += 1
        return Packed(key, tokens=tokens, seconds=time.perf_counter() - t0)

    def flush(self) -> list[Packed]:
        """Run the passes left (the last one padded); returns every video still queued."""
        out: list[Packed] = []
        while self._queue:
            out += self._run_pass()
        return out

    def _take(self) -> list[tuple[_Video, int, int]]:
        """The next pass's slices: (video, first frame, end), at most ``pass_frames`` frames in all."""
        slices, room = [], self.pass_frames
        for v in self._queue:
            if room == 0:
                break
            n = min(room, len(v.frames) - v.queued)
            if n:
                slices.append((v, v.queued, v.queued + n))
                v.queued += n
                room -= n
        return slices

    def _inputs(self, slices: list[tuple[_Video, int, int]]) -> list[tuple[_Video, int, int, torch.Tensor]]:
        """Each slice preprocessed, (t, 3, Hs, Ws); a slice that fails fails its video (its frames leave the pass)."""
        ready = []
        for v, a, b in slices:
            if v.error is not None:
                continue
            try:
                ready.append((v, a, b, self.encoder.preprocess(v.frames[a:b])))
            except Exception as exc:
                v.error = exc
        return ready

    def _forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """(sum t_i, 3, Hs, Ws) slices, zero-padded to (pass_frames, 3, Hs, Ws) -> (sum t_i, N, D)."""
        x = torch.cat(xs)  # (t, 3, Hs, Ws)
        pad = self.pass_frames - len(x)
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])  # (pass_frames, 3, Hs, Ws)
            self.padded += pad
        self.passes += 1
        return self.encoder._tokens(x)[: self.pass_frames - pad]  # (t, N, D)

    @torch.inference_mode()
    def _run_pass(self) -> list[Packed]:
        ready = self._inputs(self._take())
        t0 = time.perf_counter()
        if ready:
            try:
                tokens = self._forward([x for *_, x in ready]).split([b - a for _, a, b, _ in ready])
            except Exception:  # one video slice at a time: only a slice that fails alone fails its video
                tokens = [self._alone(v, x) for v, _, _, x in ready]
            per_frame = (time.perf_counter() - t0) / sum(b - a for _, a, b, _ in ready)
            for (v, a, b, _), t in zip(ready, tokens, strict=True):
                if t is not None:
                    v.parts.append(t)
                    v.done = b
                    v.seconds += per_frame * (b - a)
        return self._finished()

    def _alone(self, v: _Video, x: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._forward([x])
        except Exception as exc:
            v.error = exc
            return None

    def _finished(self) -> list[Packed]:
        """Remove and return the videos that failed or whose every frame has its tokens."""
        out, keep = [], []
        for v in self._queue:
            if v.error is not None:
                out.append(Packed(v.key, error=v.error, seconds=v.seconds))
            elif v.done == len(v.frames):
                out.append(Packed(v.key, tokens=torch.cat(v.parts), seconds=v.seconds))
            else:
                keep.append(v)
        self._queue = keep
        return out
