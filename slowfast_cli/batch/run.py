"""Running a plan: the ``Engine`` protocol every engine implements, the recording loop they share, the report.

An engine only moves videos through decode -> encode -> write and hands back *outcomes*; planning, records, the
manifest, the report and atomic writes are shared here and in ``plan``/``records``, so the engines' outputs are
bit-identical.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..atomic import sigint_deferred
from ..config import Config
from ..errors import SlowfastError, first_line
from ..formats import make_writer
from .plan import BatchPlan, clean_stale_temp_files
from .records import MANIFEST, Manifest, Record

REPORT = "report.json"
Outcome = Callable[[], Record]  # puts one video's token file in place (or does nothing) and returns its Record


@dataclass(frozen=True)
class EngineOptions:
    """The engine settings ``slowfast batch`` takes; each engine refuses the ones that are not its own."""

    workers: int | None = None  # local: decoding processes (default: cores - 1)
    address: str | None = None  # ray: the cluster
    decoders: int | None = None  # ray: decoding processes in all (inside the encoder actors)
    encoders: int | None = None  # ray: model actors
    timeout: float = 300.0  # both: seconds one video may take to decode
    stall_warn: float | None = None  # ray: seconds without a finished video (while Ray waits) before it says so
    stall_timeout: float | None = None  # ray: seconds of such a stall before the run stops (exit 1)
    features_dir: Path | None = None  # local: --save-features, pre-aggregation features mirroring OUT_DIR's names


@dataclass(frozen=True)
class Prepared:
    """What an engine settled before planning."""

    config: Config  # the config the run computes with (the Ray engine pins dtype and device for the cluster)
    provenance: dict  # what resume compares existing token files with (``provenance.provenance``)


class Engine(Protocol):
    """What ``slowfast batch`` calls, the same way for every engine (see ``engines.ENGINES``).

    Used as a context manager around the whole run (a connection to a cluster, say); then ``prepare`` before
    planning, ``start`` once a plan has work (loads what the run needs, such as the model, and returns the warnings
    to show first), ``outcomes`` of the plan, in the order videos finish, and ``summary`` for ``report.json``'s
    ``run.engine``.
    """

    name: str
    verifies_outputs: bool  # plan_batch CRC-checks outputs that look done (True), or leaves plan.unverified to it

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def prepare(self, config: Config, root: Path, out_dir: Path) -> Prepared: ...

    def start(self, plan: BatchPlan, config: Config) -> list[str]: ...

    def outcomes(self, plan: BatchPlan, config: Config) -> Iterator[Outcome]: ...

    def summary(self) -> dict[str, Any]: ...


def run_batch(plan: BatchPlan, engine: Engine, config: Config, fail_fast: bool = False) -> Iterator[Record]:
    """Encode every video of ``plan`` with ``engine``; yields a Record per attempt (also appended to the manifest).

    Every engine gives the same records and files; see :func:`record_all` for what an interrupt leaves. An engine
    whose workers record their own work (``record``: the Ray engine's blocks, ``batch.parts``) gives the records
    itself, with the same guarantees.
    """
    own = getattr(engine, "record", None)
    if own is not None:
        return own(plan, config, fail_fast)
    return record_all(plan, engine.outcomes(plan, config), fail_fast)


def record_all(plan: BatchPlan, outcomes: Iterator[Outcome], fail_fast: bool = False) -> Iterator[Record]:
    """Write the plan's known records, then finish each engine outcome; yield every record once it is recorded.

    An outcome is a callable that puts its video's token file in place (or does nothing, for a failure) and
    returns its Record. Ctrl-C is held while an outcome is finished and its manifest line appended, so an
    interrupt leaves either both or neither; the generator then yields that record and raises KeyboardInterrupt.
    A manifest line that cannot be written takes its token file back (a rerun redoes it) and stops the batch.
    """
    manifest = Manifest(plan.out_dir / MANIFEST)
    complete = False
    try:
        for r in plan.records:
            manifest.write(r)
            yield r
            if fail_fast and r.status == "failed":
                return
        for finish in outcomes:
            with sigint_deferred(reraise=False) as held:
                record = finish()
                try:
                    manifest.write(record)
                except SlowfastError:  # written but not recorded: take it back, a rerun redoes it
                    if record.status == "ok" and plan.writer is not None:
                        plan.writer.discard(Path(record.output))
                    elif record.status == "ok":
                        with contextlib.suppress(OSError):
                            (plan.out_dir / record.output).unlink()
                    raise
            yield record
            if held.pending:
                raise KeyboardInterrupt
            if fail_fast and record.status == "failed":
                return
        if plan.writer is not None:
            plan.writer.finish()  # a complete run: the last, partly filled shard is finished too
        complete = True
    finally:
        close = getattr(outcomes, "close", None)
        try:
            if close is not None:
                close()  # the engine stops its workers
        finally:
            manifest.close()
    if complete:  # workers stopped, lock held: a temporary file now is an orphan (a killed Ray actor's, issue 20)
        clean_stale_temp_files(plan.out_dir)


def encode_one(done, rel: Path, out_rel: Path, root: Path, pipe, packed=None, keep_features: bool = False):
    """The EncodeResult of a decoded video, or the failure Record of one that did not decode or encode.

    ``packed``: the video's ``encoder.packing.Packed`` when its frames went through the ViT packed with other videos'
    (its patch tokens, or what failed it); without it the clip is encoded here, alone (the same bits).
    ``keep_features``: the result keeps its pre-aggregation features too (``--save-features``).
    """
    if not done.ok:
        return Record.decode_failed(done, rel, out_rel)
    try:
        if packed is None:
            result = pipe.encode_clip(done.clip, keep_features, timings={"decode": done.seconds})
        elif packed.error is not None:
            raise packed.error
        else:
            timings = {"decode": done.seconds, "encode": packed.seconds}
            result = pipe.finish_clip(done.clip, packed.tokens, keep_features, timings=timings)
    except SlowfastError as exc:
        return Record.failed(rel, out_rel, str(exc))
    except Exception as exc:  # torch's errors (out of memory, a kernel), any bug: this video fails, the batch goes on
        msg = f"{rel}: encoding failed ({type(exc).__name__}: {first_line(exc, 200)})"
        return Record.failed(rel, out_rel, msg, "encode")
    result.meta["source"] = str(root / rel)
    return result


def features_path(features_dir: Path, out_rel: Path) -> Path:
    """Where ``--save-features`` keeps a video's features: its output's name as a ``.pt`` features file under
    ``features_dir`` (``a/b.pt`` and ``a/b.safetensors`` -> ``a/b.pt``; a webdataset key ``a/b`` -> ``a/b.pt``)."""
    name = out_rel.name.removesuffix(".safetensors").removesuffix(".pt") + ".pt"
    return features_dir / out_rel.parent / name


def write_one(
    result,
    rel: Path,
    out_rel: Path,
    out_dir: Path,
    writer=None,
    columns: dict | None = None,
    features_dir: Path | None = None,
) -> Record:
    """Write one video's tokens in place through the output format's ``writer`` (default ``pt``); a failure of the
    disk is this video's ``write`` failure. ``columns``: the video's row of a CSV/JSONL ``--files-from``.
    ``features_dir`` (``--save-features``): its features file is written first and removed again if the tokens
    cannot be written, so a failure leaves neither."""
    writer = writer or make_writer(None, out_dir)
    t0 = time.perf_counter()
    features = features_path(features_dir, out_rel) if features_dir is not None else None
    try:
        if features is not None:
            from ..pipeline import FEATURE_META_KEYS
            from ..tokenfile import save_features

            features.parent.mkdir(parents=True, exist_ok=True)
            fmeta = {k: v for k, v in result.meta.items() if k in FEATURE_META_KEYS}
            if columns is not None:  # a CSV/JSONL row's key and columns: `aggregate` carries them to its token files
                fmeta.update(key=writer.key_of(out_rel), columns=columns)
            save_features(features, result.features, fmeta)
        try:
            writer.write(result.tokens, writer.sample_meta(result.meta, out_rel, columns), out_rel)
        except BaseException:
            if features is not None:
                features.unlink(missing_ok=True)
            raise
    except (SlowfastError, OSError) as exc:
        return Record.write_failed(exc, rel, out_rel)
    result.meta["timings"]["write"] = time.perf_counter() - t0
    return Record.ok(result.meta, rel, out_rel)


def batch_report(
    out_dir: Path,
    records: list[Record],
    problems: list[str],
    interrupted: bool = False,
    folder: bool = True,
    engine: dict | None = None,
) -> dict:
    """What ``report.json`` holds: the folder's token statistics (as ``slowfast report --json``) plus this run's
    counts. ``folder=False`` leaves the statistics empty (``run.folder_counted: false``), for a run interrupted while
    they were being counted. ``engine`` describes the engine (``run.engine``)."""
    from ..report import Report, build_report

    # outputs were verified when planned, or just written: headers are enough here
    report = (build_report(out_dir, verify=False) if folder else Report()).to_dict()
    report["run"] = {
        "attempts": len(records),
        "ok": sum(r.status == "ok" for r in records),
        "failed": sum(r.status == "failed" for r in records),
        "skipped": sum(r.status == "skipped" for r in records),
        "failures_by_kind": dict(Counter(r.kind or "other" for r in records if r.status == "failed")),
        "failed_files": [r.source for r in records if r.status == "failed"],
        "listing_problems": problems,
        "interrupted": interrupted,
        "folder_counted": folder,
        "engine": engine or {"name": "local"},  # which engine ran, and for Ray the work done per node
    }
    return report
