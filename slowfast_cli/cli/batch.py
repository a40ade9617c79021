"""``slowfast batch``: the command, and the run it drives the same way for every engine (progress, report, exit).

The engine is chosen by name (``batch.engines.make_engine``); this module knows no engine. Exit code 1 when any
video failed, 130 when interrupted (the report is still written), 2 for a usage error before any work.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..config import Config
from ..errors import ConfigError, SlowfastError
from ..preflight import preflight
from .failures import MaxFailures, parse_max_failures
from .formats import FormatOpt, SaveDtypeOpt, ShardSizeOpt, output_format
from .options import (
    BatchFramesOpt,
    ConfigOpt,
    DecodeResizeOpt,
    DeviceOpt,
    DtypeOpt,
    FastSizeOpt,
    FramesOpt,
    JsonOpt,
    LayerOpt,
    LayoutOpt,
    LlmDimOpt,
    MaxFailuresOpt,
    MaxFramesOpt,
    ModelOpt,
    NewlineOpt,
    OverwriteOpt,
    PoolStageOpt,
    PretrainedOpt,
    ProjectorOpt,
    ProjectorWeightsOpt,
    RandomProjectorOpt,
    ResizeOpt,
    SampleFpsOpt,
    SamplingOpt,
    SlowFramesOpt,
    SlowIndexOpt,
    SlowPoolOpt,
    build_config,
    flags_of,
    path_named,
    refuse_frames_by_rate,
)
from .output import err, fail, handles_errors, out, print_json, progress_bar, shown, warn
from .process import loaded
from .progress import ProgressLines, loading
from .tables import batch_table
from .urls import folder_or_url, list_or_url, name_or_url

if TYPE_CHECKING:  # imported when used, so that --help never pays for them
    from ..batch.plan import BatchPlan
    from ..batch.records import Record
    from ..batch.run import Engine


@handles_errors
def batch(
    in_dir: Annotated[
        str,  # a Path, or a URL as a str (cli.urls; typer would make a URL a Path, folding s3:// into s3:/)
        typer.Argument(
            help="Folder of videos (searched recursively), or a URL: s3://bucket/videos, gs://...",
            parser=folder_or_url,
            metavar="IN_DIR",
        ),
    ],  # fmt: skip
    output: Annotated[
        str,  # as in_dir
        typer.Option(
            "--output", "-o", help="Folder (or URL) for the token files.", parser=name_or_url, metavar="OUT_DIR"
        ),
    ],
    pattern: Annotated[
        str | None, typer.Option(help="Only videos whose relative path or name match this glob.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Decoding processes of the local engine (default: cores - 1).")
    ] = None,
    files_from: Annotated[
        str | None,  # as in_dir
        typer.Option(
            "--files-from",
            help="Encode the videos listed in this file (one path per line, relative to IN_DIR) instead of "
            "searching IN_DIR; a .csv (with a header) or .jsonl file has a 'path' column, an optional 'key' (the "
            "output's name) and any other columns, kept in each sample's meta. May be a URL.",
            parser=list_or_url,
            metavar="FILE",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="local (this machine) or ray (a Ray cluster; needs the ray extra: pip install 'slowfast-cli[ray]'). "
            "With ray, IN_DIR and OUT_DIR must be on a file system every node sees at the same path."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster: auto, or HOST:PORT (default: RAY_ADDRESS, else a cluster on this machine, else a "
            "new local one). Not ray://: Ray Data does not run over Ray Client."
        ),
    ] = None,
    decoders: Annotated[
        int | None,
        typer.Option(help="Ray decoding processes in all, inside the encoders (default: each encoder's CPUs - 1)."),
    ] = None,
    encoders: Annotated[
        int | None, typer.Option(help="Ray encoder actors (default: one per GPU, else one per node).")
    ] = None,
    stall_warn: Annotated[
        float | None,
        typer.Option(help="Ray: say so when no video finished for this many seconds while Ray waits (default 60)."),
    ] = None,
    stall_timeout: Annotated[
        float | None, typer.Option(help="Ray: stop (exit 1) when such a stall lasts this many seconds.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds one video may take to decode before it counts as failed.")
    ] = 300.0,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed video.")] = False,
    max_failures: MaxFailuresOpt = None,
    save_features: Annotated[
        Path | None,
        typer.Option(
            help="Also keep each video's pre-aggregation features in this folder (same names as the token files), "
            "for `slowfast aggregate FOLDER -o OUT_DIR`.",
            parser=path_named,
        ),
    ] = None,
    format_: FormatOpt = "pt",
    shard_size: ShardSizeOpt = 1000,
    save_dtype: SaveDtypeOpt = None,
    config: ConfigOpt = "default",
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    layer: LayerOpt = None,
    frames: FramesOpt = None,
    sample_fps: SampleFpsOpt = None,
    max_frames: MaxFramesOpt = None,
    slow_frames: SlowFramesOpt = None,
    slow_pool: SlowPoolOpt = None,
    fast_size: FastSizeOpt = None,
    slow_index: SlowIndexOpt = None,
    layout: LayoutOpt = None,
    newline: NewlineOpt = None,
    pool_stage: PoolStageOpt = None,
    sampling: SamplingOpt = None,
    resize: ResizeOpt = None,
    projector: ProjectorOpt = None,
    projector_weights: ProjectorWeightsOpt = None,
    llm_dim: LlmDimOpt = None,
    random_projector: RandomProjectorOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    batch_frames: BatchFramesOpt = None,
    decode_resize: DecodeResizeOpt = None,
    overwrite: OverwriteOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Encode every video under a folder into token files, resumably.

    Example: slowfast batch videos/ -o tokens/ --config tiny
    """
    from ..batch.engines import make_engine
    from ..batch.plan import plan_batch
    from ..batch.remote_io import places
    from ..batch.run import EngineOptions
    from ..formats import make_writer

    cfg = build_config(config, **flags_of(locals()))
    refuse_frames_by_rate(cfg, flags_of(locals()))
    allowed = parse_max_failures(max_failures)
    fmt = output_format(format_, shard_size, save_dtype)
    for flag, value in (("--workers", workers), ("--decoders", decoders), ("--encoders", encoders)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--timeout", timeout), ("--stall-warn", stall_warn), ("--stall-timeout", stall_timeout)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")
    if save_features is not None:
        check_features_dir(save_features, output, engine, in_dir)
    if engine != "local" and isinstance(output, str):  # a URL (cli.urls)
        raise ConfigError(f"--engine {engine} writes OUT_DIR from every node: a URL for it is not supported yet; "
                          "give a folder every node sees (then copy it to the bucket), or --engine local")  # fmt: skip
    options = EngineOptions(workers=workers, address=address, decoders=decoders, encoders=encoders, timeout=timeout,
                            stall_warn=stall_warn, stall_timeout=stall_timeout, features_dir=save_features)  # fmt: skip
    runner = make_engine(engine, options)
    preflight(cfg)
    with runner, places(in_dir, output, files_from) as where:  # URLs: batch.remote_io
        prepared = runner.prepare(cfg, where.root, where.out_dir)
        verify = runner.verifies_outputs  # else outputs that look done are CRC-checked by the engine, as it goes
        writer = where.writer(make_writer(fmt, where.out_dir))
        with plan_batch(where.root, where.out_dir, pattern, overwrite, prepared.provenance, where.files_from, verify,
                        writer) as plan:  # fmt: skip
            plan.problems[:] = [where.shown(problem) for problem in plan.problems]
            for problem in plan.problems:
                warn(problem)
            if plan.total == 0:
                raise SlowfastError(f"{in_dir}: no videos found" + (f" matching {pattern!r}" if pattern else ""))
            outcome = _run(plan, prepared.config, runner, fail_fast, show_bar=err.is_terminal and not json_)
            report = _write_report(plan, runner, outcome)
            unsent = where.save_state()  # a URL OUT_DIR: manifest and report uploaded now, or kept locally and said
            if unsent is not None and outcome.interrupted:
                warn(unsent)  # the exit stays 130
            elif unsent is not None:
                outcome.stopped.append(unsent)
            _show(report, outcome, output, json_)
            if save_features is not None:
                _features_missing(outcome, save_features)
            _exit(outcome, report, plan, allowed, output)


def check_features_dir(features: Path, output: Path, engine: str, in_dir: Path | None = None) -> None:
    """``--save-features`` needs the local engine and a folder apart from OUT_DIR (``report`` would count its files)
    and from IN_DIR (its files would land among the videos, and a rerun would list them)."""
    if engine != "local":
        raise ConfigError("--save-features works with --engine local only")
    a, b = features.resolve(), output.resolve() if isinstance(output, Path) else None  # a URL: apart by nature
    if b is not None and (a == b or a.is_relative_to(b) or b.is_relative_to(a)):
        raise ConfigError(f"--save-features {features}: needs a folder apart from the output folder {output}")
    if isinstance(in_dir, Path) and (a == in_dir.resolve() or a.is_relative_to(in_dir.resolve())):
        raise ConfigError(f"--save-features {features}: is inside the input folder {in_dir}; give a folder of its own")
    if features.exists() and not features.is_dir():
        raise ConfigError(f"--save-features {features}: exists and is not a folder")


def _features_missing(outcome: _Outcome, features: Path) -> None:
    """Videos skipped as done keep their token files; say how many have no features file (an earlier run's)."""
    from ..batch.run import features_path

    missing = [
        r for r in outcome.records if r.status == "skipped" and not features_path(features, Path(r.output)).exists()
    ]
    if missing:
        warn(f"{len(missing)} video(s) already done have no features file in {features} (e.g. {missing[0].source}); "
             "rerun with --overwrite to redo them with features")  # fmt: skip


@dataclass
class _Outcome:
    """What a run did: its records, and whether it was interrupted or stopped (and why)."""

    records: list[Record] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))  # for report.json's run times
    t0: float = field(default_factory=time.monotonic)
    config: dict | None = None  # the resolved config the run computed with
    interrupted: bool = False
    stopped: list[str] = field(default_factory=list)  # errors that stopped it (a manifest that cannot be written)


def _run(plan: BatchPlan, cfg: Config, engine: Engine, fail_fast: bool, show_bar: bool) -> _Outcome:
    """Start the engine and record every video, with a progress bar (on a terminal) and failures logged above it."""
    from ..batch.remote_io import StoreWatch
    from ..batch.run import run_batch

    outcome, warned = _Outcome(config=cfg.to_dict() if cfg is not None else None), len(plan.problems)
    lines = None
    try:
        if plan.todo:
            with loading(f"{cfg.encoder.model} ({cfg.encoder.pretrained})") if cfg else contextlib.nullcontext():
                warnings = engine.start(plan, cfg)  # loads the model, before the bar
            loaded()  # the model's objects frozen: the collector walks only the run's own (cli/process.py)
            for w in warnings:
                warn(w)
        if not err.is_terminal:  # Slurm, nohup, | tee: a line now and then; its clock starts once the model is loaded
            lines = ProgressLines(plan.total)
        with progress_bar(show_bar) as progress:
            task = progress.add_task("videos", total=plan.total, failed=0, fps=0.0)
            if hasattr(engine, "notify"):  # an engine that speaks while no video finishes (the Ray stall watchdog)
                engine.notify = lambda msg: progress.console.print(f"[yellow]warning:[/] {shown(msg)}")
            frames_done, t0, nfail, attempted, store = 0, time.monotonic(), 0, 0, StoreWatch()
            gen = run_batch(plan, engine, cfg, fail_fast)
            try:
                for rec in gen:
                    outcome.records.append(rec)
                    frames_done += rec.frames or 0
                    nfail, attempted = nfail + (rec.status == "failed"), attempted + (rec.status != "skipped")  # O(1)
                    rate = frames_done / max(1e-9, time.monotonic() - t0)
                    progress.update(task, advance=1, failed=nfail, fps=rate)
                    last = len(outcome.records) == plan.total
                    if lines is not None and (rec.status != "skipped" or last):  # resumed ones: no line of their own
                        lines.update(len(outcome.records), attempted, nfail, frames_done)
                    if rec.status == "failed":
                        progress.console.print(f"[red]failed[/] {shown(rec.error or rec.source)}")
                    while warned < len(plan.problems):  # the Ray engine finds damaged outputs as it goes
                        progress.console.print(f"[yellow]warning:[/] {shown(plan.problems[warned])}")
                        warned += 1
                    store.see(rec)  # a store that went away mid-run stops it (SlowfastError), not every video in turn
            finally:
                gen.close()
    except KeyboardInterrupt:
        outcome.interrupted = True
    except SlowfastError as exc:  # the manifest cannot be written (a full disk): stop, but still summarise
        outcome.stopped.append(str(exc))
    return outcome


def run_times(outcome: _Outcome) -> dict:
    """report.json's ``run.timing`` (start and end in UTC, wall time, throughput over the videos encoded: skipped
    ones are not work) and ``run.config`` (the resolved config the run computed with)."""
    wall = time.monotonic() - outcome.t0
    ok = [r for r in outcome.records if r.status == "ok"]
    frames = sum(r.frames or 0 for r in ok)
    timing = {
        "started": outcome.started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 3),
        "videos_per_second": round(len(ok) / wall, 4) if wall > 0 else None,
        "frames_per_second": round(frames / wall, 3) if wall > 0 else None,
    }
    return {"timing": timing, "config": outcome.config}


def _write_report(plan: BatchPlan, engine: Engine, outcome: _Outcome) -> dict:
    """``report.json``, written with Ctrl-C held; an interrupt while counting or writing is noted in ``outcome``."""
    from ..atomic import sigint_deferred, write_json
    from ..batch.run import REPORT, batch_report

    summary = engine.summary()
    try:
        report = batch_report(plan.out_dir, outcome.records, plan.problems, outcome.interrupted, engine=summary)
    except KeyboardInterrupt:  # while counting the folder's files: the run's own counts are still known
        outcome.interrupted = True
        report = batch_report(plan.out_dir, outcome.records, plan.problems, True, folder=False, engine=summary)
    report["run"].update(run_times(outcome))
    try:
        with sigint_deferred(reraise=False) as held:
            write_json(plan.out_dir / REPORT, report)
        outcome.interrupted = outcome.interrupted or held.pending
    except SlowfastError as exc:
        outcome.stopped.append(str(exc))
    return report


def _show(report: dict, outcome: _Outcome, out_dir: Path, json_: bool) -> None:
    if json_:
        print_json(report)
        return
    out.print(batch_table(report, out_dir))
    if report["run"]["failed_files"]:
        out.print("[bold red]failed files:[/]")
        for r in outcome.records:
            if r.status == "failed":
                out.print(f"  {shown(r.error or r.source)}")


def _exit(
    outcome: _Outcome,
    report: dict,
    plan: BatchPlan,
    allowed: MaxFailures | None = None,
    shown_as: Path | str | None = None,
) -> None:
    """The exit policy: 130 interrupted, 1 stopped or a video failed (more than ``--max-failures``), else 0."""
    done = f"{len(outcome.records)} of {plan.total} videos"
    manifest = f"{shown_as}/manifest.jsonl" if isinstance(shown_as, str) else plan.out_dir / "manifest.jsonl"  # URL
    if outcome.interrupted:
        raise fail(f"interrupted after {done}; rerun the same command to resume", 130)
    if outcome.stopped:
        for msg in outcome.stopped[:-1]:
            err.print(f"[bold red]error:[/] {shown(msg)}")
        raise fail(f"{outcome.stopped[-1]} (after {done}; rerun to resume)", 1)
    failed = report["run"]["failed"]
    if failed and allowed is not None and failed <= allowed.allowed(plan.total):
        warn(f"{failed} of {plan.total} videos failed, within --max-failures {allowed.text}; see "
             f"{manifest}")  # fmt: skip
        return
    if failed:
        raise fail(f"{failed} of {plan.total} videos failed; see {manifest}", 1)
