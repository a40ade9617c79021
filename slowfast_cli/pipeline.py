"""Wires the stages for one video: decode -> encode -> project -> aggregate -> token file.

``Pipeline`` holds the loaded encoder and projector so a batch loads the model once (the Python API, ``api.py``,
wraps it). Decoding and model code are imported lazily so that ``aggregate_file`` (re-compressing
saved features) needs neither decord nor open_clip.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .aggregate import slow_fast
from .config import AggregatorCfg, Config, config_from_dict
from .encoder.device import DTYPE_NAMES, resolve_device, resolve_dtype
from .errors import ConfigError, SlowfastError
from .policies import check_grid, check_layout
from .positions import check_video_grid, clip_positions, position_groups
from .provenance import file_fingerprint, provenance
from .reading import path_problem
from .tokenfile import (
    commit_together,
    features_object,
    load_features,
    save_all,
    save_pending,
    save_tokens,
    token_object,
)
from .version import __version__


@dataclass
class EncodeResult:
    tokens: torch.Tensor  # (1, L, D) on the CPU
    meta: dict  # plain values, as written to the token file
    features: torch.Tensor | None = None  # (T, N, D) pre-aggregation tokens, when asked for
    warnings: list[str] = field(default_factory=list)


def default_output(video: str | Path) -> Path:
    """``clip.mp4`` -> ``clip.tokens.pt`` beside it."""
    video = Path(video)
    return video.with_name(video.stem + ".tokens.pt")


def aggregation_meta(agg, frame_indices: list[int] | None) -> dict:
    """The counts and indices a report needs, from an ``Aggregated``."""
    b = agg.budget
    meta = {
        "frames": b.frames,
        "grid": list(b.grid),
        "tokens_per_frame": b.tokens_per_frame,
        "input_tokens": b.input_tokens,
        "slow_frames": b.slow_frames,
        "slow_frame_indices": agg.slow_indices,  # positions among the T sampled frames
        "slow_tokens": b.slow_tokens,
        "fast_tokens": b.fast_tokens,
        "output_tokens": b.output_tokens,
        "ratio": b.ratio,
        "layout": b.layout,  # slowfast | frames (see layout.py: where each group and newline token sits)
        "newline": b.newline,
        "newline_tokens": b.newline_tokens,
    }
    if frame_indices is not None:
        meta["slow_video_indices"] = [frame_indices[i] for i in agg.slow_indices]  # frame numbers in the video
    return meta


def _check_overwrite(path: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output that exists (unless ``overwrite``), sits in no folder, or is one of the ``inputs``.

    "Is one of the inputs" is decided by the file system (``os.path.samefile``), so ``-o clip.mp4``, ``-o
    ./x/../clip.mp4`` and a symlink to the video are all refused, even with ``--overwrite``.
    """
    try:
        path.exists()
    except OSError as exc:  # ENAMETOOLONG and the like: Path.exists raises them on Python 3.11
        raise ConfigError(f"{path}: not a usable output name ({exc.strerror or exc})") from None
    for source in inputs:
        if path.exists() and os.path.samefile(path, source):
            raise ConfigError(f"{path}: is the input file {source}; choose another output (-o)")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the output file's name (-o FILE.pt)")
    problem = path_problem(path) if path.exists() else None
    if problem:  # a device or a FIFO: replacing it with a regular file is never what was meant
        raise ConfigError(f"{path}: {problem}; give the output file's name (-o FILE.pt)")
    if path.exists() and not overwrite:
        raise SlowfastError(f"{path}: already exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise SlowfastError(f"{path.parent}: output folder does not exist")


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def run_provenance(config: Config) -> dict:
    """The provenance (see ``provenance.py``) a Pipeline of ``config`` will stamp on its token files, without
    building the model: the device and dtype resolved as the Pipeline resolves them, weights hashed."""
    rt = config.runtime
    return provenance(config, DTYPE_NAMES[resolve_dtype(rt.dtype, resolve_device(rt.device))])


class Pipeline:
    """The loaded model stages for one config; call :meth:`encode` per video."""

    def __init__(self, config: Config):
        from .encoder.encoder import build_encoder
        from .encoder.packing import pass_frames
        from .projector import build_projector, load_newline

        self.config = config
        rt = config.runtime
        self.device = resolve_device(rt.device)
        self.dtype = resolve_dtype(rt.dtype, self.device)
        self.encoder = build_encoder(config.encoder, self.device, self.dtype)
        self.batch_frames = pass_frames(config.encoder.batch_frames, self.device.type)  # frames per ViT pass
        self.projector, self.projector_info = build_projector(
            config.projector, self.encoder.width, self.device, self.dtype, config.encoder.model
        )
        self.newline, self.newline_info = None, None
        if config.aggregator.newline != "no_token":
            info = self.projector_info
            self.newline, self.newline_info = load_newline(config.projector, info, self.device, self.dtype)
        self.provenance = provenance(config, DTYPE_NAMES[self.dtype])  # what batch resume compares
        self.warnings: list[str] = []
        if self.encoder.random_weights:
            self.warnings.append(
                f"{config.encoder.model} has random weights (--pretrained none): the tokens carry no meaning"
            )
        if self.projector_info.get("random"):
            self.warnings.append("the projector has random weights (--random-projector): the tokens carry no meaning")
        if self.newline_info and self.newline_info.get("random") and not self.projector_info.get("random"):
            self.warnings.append("the newline token is random (--random-projector): the tokens carry no meaning")

    @property
    def image_size(self) -> int | None:
        """The side the decoder may scale frames to (``video.decode.load_clip``'s ``image_size``), or None: decode-time
        scaling makes the shortest side that size and crops the centre, which is only what the encoder would do
        for the ``shortest`` resize mode; a ``squash`` (``--resize squash``, SigLIP's tags) or ``longest`` model
        gets full-size frames and resizes them itself."""
        return max(self.encoder.image_size) if self.encoder.resize_mode == "shortest" else None

    def load(self, video: str | Path):
        """Decode the sampled frames of one video (uint8, at the model's size when decode_resize)."""
        from .video.decode import DECODE_RESIZE_MIN, load_clip

        return load_clip(video, self.config.video, self.image_size, min_scale=DECODE_RESIZE_MIN)

    def encode_clip(
        self, clip, keep_features: bool = False, timings: dict | None = None, progress: Callable | None = None
    ) -> EncodeResult:
        """Encoder -> projector -> aggregator for an already decoded clip (``progress``: see ``Encoder.encode``)."""
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        if hasattr(self.encoder, "check_frames"):  # a hf: tower refusing this frame size: one line naming the video
            self.encoder.check_frames(clip.info.path or "frames", *clip.frames.shape[:3])
        feats = self.encoder.encode(clip.frames, self.batch_frames, progress)  # (T, N, D_vision)
        timings["encode"] = time.perf_counter() - t0
        return self.finish_clip(clip, feats, keep_features, timings)

    def finish_clip(self, clip, feats: torch.Tensor, keep_features: bool = False, timings: dict | None = None):
        """Projector -> aggregator for a clip whose patch tokens ``feats`` (T, N, D_vision) the encoder gave (alone,
        or packed with other videos' frames by ``encoder.packing.Packer``: the same bits). A tower whose grid varies
        per video (``encoder.hfvl``, ``encoder.grid`` None) gives (T', Gh, Gw, D): this clip's grid is taken from it,
        and the token file records where each token came from (``meta["positions"]``, ``positions.py``)."""
        timings = {} if timings is None else timings
        a = self.config.aggregator
        t1 = time.perf_counter()
        grid = self.encoder.grid
        if feats.ndim == 4:  # (T', Gh, Gw, D): a tower whose grid varies per video (encoder.hfvl), this clip's
            grid = (int(feats.shape[1]), int(feats.shape[2]))
            feats = feats.flatten(1, 2)  # (T', N, D)
            check_video_grid(clip.info.path, grid, a)
        with torch.inference_mode():
            before = a.pool_stage == "before"  # pool the tower's tokens, then project (llava-hf LlavaNextVideo)
            pooled = feats
            if not before or keep_features:
                feats = self.projector(feats)  # (T, N, D_llm)
            t2 = time.perf_counter()
            agg = slow_fast(
                pooled if before else feats, grid, a.slow_frames, a.slow_pool, a.fast_size,
                a.slow_index, a.layout, a.newline, self.newline, self.projector if before else None,
            )  # fmt: skip
            # agg.tokens: (1, L, D)
            tokens = agg.tokens.cpu()
            features = feats.cpu() if keep_features else None  # .cpu() waits for the device: t3 is honest
        t3 = time.perf_counter()
        if not torch.isfinite(tokens).all():  # fp16 overflow, bad weights: never write tokens an LLM cannot take
            raise SlowfastError(
                f"{clip.info.path}: the model produced non-finite tokens (NaN or inf) in "
                f"{DTYPE_NAMES.get(self.dtype, self.dtype)}; check the weights, or try --dtype fp32"
            )
        timings.update(project=t2 - t1, aggregate=t3 - t2)
        meta = self.clip_meta(clip)
        varying = self.encoder.grid is None  # frames come in temporal patches: each patch's first frame
        meta.update(
            aggregation_meta(agg, clip.indices[:: self.encoder.family.temporal_patch] if varying else clip.indices)
        )
        meta.update(dim=int(tokens.shape[-1]), timings=timings)
        if varying:  # where each token came from, for an LLM's position ids (positions.py)
            temporal = self.encoder.family.temporal_patch
            meta["positions"] = clip_positions(clip, grid, len(feats), temporal, agg.slow_indices, a)
            meta["positions"]["deepstack"] = self.encoder.deepstack  # width: (1 + deepstack) blocks of D
        return EncodeResult(tokens=tokens, meta=meta, features=features, warnings=list(self.warnings))

    def clip_meta(self, clip) -> dict:
        """Everything about the source and the model, shared by token and features files."""
        info = clip.info
        st = _stat(info.path)
        return {
            "source": str(clip.info.path),
            "video": {
                "num_frames": info.num_frames,
                "fps": info.fps,
                "duration": info.duration,
                "width": info.width,
                "height": info.height,
                "bytes": st.st_size if st else None,  # the file's size: resume redoes a token file whose video changed
                "mtime_ns": st.st_mtime_ns if st else None,  # and, when its time changed, compares its fingerprint:
                "fingerprint": file_fingerprint(info.path),  # a same-size replacement is redone too
                **(info.identity or {}),  # a video fetched from a URL: its object's, not the temporary copy's
                "stream": info.stream,  # the container's index of the stream decoded (decord picks it)
                "video_streams": info.video_streams,  # how many video streams the file has
            },
            "short_video": bool(clip.short),
            "frame_indices": [int(i) for i in clip.indices],
            "timestamps": [float(t) for t in clip.timestamps],
            "model": self.config.encoder.model,
            "pretrained": self.config.encoder.pretrained,
            "random_weights": self.encoder.random_weights,
            "layer": self.config.encoder.layer,
            "activation": self.encoder.activation,  # quick_gelu, gelu, or gelu_tanh (SigLIP checkpoints)
            "projector": self.projector_info,
            "newline_token": self.newline_info,  # where the image_newline came from, None without newlines
            "pool_stage": self.config.aggregator.pool_stage,
            "dtype": DTYPE_NAMES.get(self.dtype, str(self.dtype)),
            "device": str(self.device),
            "config": self.config.to_dict(),
            "provenance": self.provenance,
            "version": __version__,
        }

    def encode(self, video: str | Path, keep_features: bool = False) -> EncodeResult:
        """Decode and encode one video."""
        t0 = time.perf_counter()
        clip = self.load(video)
        timings = {"decode": time.perf_counter() - t0}
        return self.encode_clip(clip, keep_features, timings)


def write_result(result: EncodeResult, out: str | Path, features_out: str | Path | None = None, fmt=None) -> None:
    """Write the token file (and the features file) atomically: both appear, or neither does. ``fmt``: the output
    format (``formats.OutputFormat``; default ``pt``), through its writer."""
    from .formats import make_writer

    t0 = time.perf_counter()
    out = Path(out)
    writer = make_writer(fmt, out.parent)
    meta = writer.sample_meta(result.meta, Path(out.name))
    if features_out is None:
        writer.write(result.tokens, meta, Path(out.name))
    else:
        fmeta = {k: v for k, v in result.meta.items() if k in FEATURE_META_KEYS}
        features = features_object(result.features, fmeta)
        if writer.name == "pt" and writer.save_dtype is None:
            save_all([(out, token_object(result.tokens, meta)), (features_out, features)])
        else:
            pending = [(writer.pending(result.tokens, meta, Path(out.name)), out)]
            try:
                pending.append((save_pending(features_out, features), features_out))
            finally:
                commit_together(pending, complete=len(pending) == 2)  # both, or neither (temporary files removed)
    result.meta["timings"]["write"] = time.perf_counter() - t0


FEATURE_META_KEYS = ("source", "video", "short_video", "frame_indices", "timestamps", "model", "pretrained",
                     "random_weights", "layer", "projector", "dtype", "device", "config", "version", "grid",
                     "tokens_per_frame", "frames", "dim", "provenance", "positions")  # fmt: skip


def encode_to_file(
    video: str | Path,
    out: str | Path,
    config: Config,
    features_out: str | Path | None = None,
    overwrite: bool = False,
    fmt=None,
    stage: Callable[..., None] | None = None,
) -> EncodeResult:
    """``slowfast encode``: one video to one token file (and optionally a features file), atomically, in the output
    format ``fmt`` (``formats.OutputFormat``, default ``pt``); ``stage`` is told what is happening (loading the
    model, decoding, encoding: ``stage(text, done, total)`` after each pass of the ViT), for a status display."""
    out, video = Path(out), Path(video)
    _check_overwrite(out, overwrite, (video,))
    if features_out is not None:
        features_out = Path(features_out)
        _check_overwrite(features_out, overwrite, (video,))
        same = out.exists() and features_out.exists() and os.path.samefile(out, features_out)  # links included
        if features_out.resolve() == out.resolve() or same:
            raise ConfigError(f"{out}: the token file and --save-features must be different files")
    stage = stage or (lambda text, done=None, total=None: None)
    stage(f"loading {config.encoder.model} ({config.encoder.pretrained})")
    pipe = Pipeline(config)
    stage(f"decoding {video.name}")
    t0 = time.perf_counter()
    clip = pipe.load(video)
    timings = {"decode": time.perf_counter() - t0}
    t = len(clip.indices)
    encoding = f"encoding {t} frames ({config.encoder.model}, {pipe.device}, {DTYPE_NAMES[pipe.dtype]})"
    stage(encoding)
    result = pipe.encode_clip(clip, features_out is not None, timings, lambda done: stage(encoding, done, t))
    stage(f"writing {out.name}")
    write_result(result, out, features_out, fmt)
    return result


def aggregate_file(features_path: str | Path, out: str | Path, config: Config, overwrite: bool = False) -> EncodeResult:
    """``slowfast aggregate``: re-compress a features file with ``config.aggregator``; no model, no video."""
    out = Path(out)
    _check_overwrite(out, overwrite, (Path(features_path),))
    obj = load_features(features_path)
    x, fmeta = obj["features"], obj["meta"]
    grid = tuple(fmeta["grid"])
    a = config.aggregator
    if isinstance(fmeta.get("positions"), dict):  # a hf: tower's features: the grid is this video's own
        check_video_grid(features_path, grid, a)
    check_grid(grid, a.slow_pool, a.fast_size, a.layout)  # a usage error (exit 2) before any tensor work
    check_layout(grid, a.slow_pool, a.layout, a.newline)
    if a.newline != "no_token" or a.pool_stage != "after":  # both need the model's weights, not only its features
        raise ConfigError(
            f"{features_path}: aggregate re-pools saved features without the model, so it cannot place newline tokens "
            f"(newline {a.newline}) or pool before the projector (pool_stage {a.pool_stage}), which these settings "
            "(the recorded ones, or --config's) ask for; pass --newline no_token for tokens without newlines, or "
            "encode with the checkpoint"
        )
    agg = slow_fast(x, grid, a.slow_frames, a.slow_pool, a.fast_size, a.slow_index, a.layout)
    meta: dict[str, Any] = {k: v for k, v in fmeta.items() if k != "config"}
    meta.setdefault("source", str(features_path))
    base = config_from_dict(fmeta["config"]) if "config" in fmeta else config  # validated by load_features
    warnings = _aggregator_changes(base, a, features_path)
    base.aggregator = a
    firsts = fmeta.get("frame_indices")
    if isinstance(fmeta.get("positions"), dict) and firsts is not None:  # one per temporal patch
        firsts = firsts[:: fmeta["positions"].get("temporal_patch", 1)]
    meta.update(aggregation_meta(agg, firsts))
    if isinstance(fmeta.get("positions"), dict):  # a hf: tower's features: the new groups' positions (positions.py)
        groups = position_groups(len(x), grid, agg.slow_indices, a.slow_pool, a.fast_size, a.layout)
        meta["positions"] = {**fmeta["positions"], "groups": groups}
    meta.update(
        dim=int(agg.tokens.shape[-1]),
        dtype=DTYPE_NAMES.get(x.dtype, str(x.dtype)),
        features_file=str(features_path),
        config=base.to_dict(),
        version=__version__,
    )
    prov = fmeta.get("provenance")
    if isinstance(prov, dict) and isinstance(prov.get("settings"), dict):  # the features' origin, re-aggregated
        meta["provenance"] = {**prov, "settings": {**prov["settings"], "aggregator": base.to_dict()["aggregator"]}}
    save_tokens(out, agg.tokens, meta)
    return EncodeResult(tokens=agg.tokens, meta=meta, warnings=warnings)


def _aggregator_changes(recorded: Config, used: AggregatorCfg, features_path: str | Path) -> list[str]:
    """A warning naming every aggregator setting that differs from the one the features file records (from the
    ``encode --save-features`` run), so a re-aggregation with other settings is never silent."""
    old, new = dataclasses.asdict(recorded.aggregator), dataclasses.asdict(used)
    changed = [f"{k}: {_plain(old[k])} -> {_plain(new[k])}" for k in old if _plain(old[k]) != _plain(new[k])]
    if not changed:
        return []
    return [
        f"{features_path}: re-aggregated with other settings than the features were saved with "
        f"(aggregator.{'; aggregator.'.join(changed)}; recorded -> used)"
    ]


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
