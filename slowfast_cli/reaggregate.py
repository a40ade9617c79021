"""Re-aggregation: which settings a features file is re-compressed with, and a folder of them in one process.

Settings: the features file's own recorded config (the ``encode --save-features`` or ``batch --save-features``
run's), so that ``slowfast aggregate F.pt -o T.pt`` with no flags gives the tokens that run wrote, bit for bit;
``--config`` takes the aggregator settings from a preset instead; flags override either. A file that records no
config (made by other code) gets the ``default`` preset. Every setting that differs from the recorded one is named
(``aggregator_changes``).

A folder (``aggregate IN_DIR -o OUT_DIR``) runs as a batch does: ``OUT_DIR`` locked, ``a/b.pt`` -> ``OUT_DIR/a/b.pt``,
a manifest line per file, ``report.json``, and resume: an output is skipped when it is intact (CRC-32), made from
the same features (source video and its fingerprint, or the features file's path) with the same aggregator
settings; damaged or stale outputs are redone; outputs with other settings stop the run before any work (exit 2)
unless ``--overwrite``. No torch while planning: only the files' headers are read.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .api import make_config
from .batch.plan import BatchPlan, OutputLock, clean_stale_temp_files, prepare_output_dir
from .batch.records import Record
from .config import Config, config_from_dict, resolve_config
from .errors import ConfigError, SlowfastError
from .header import TMP_PREFIX, ForeignFile, read_header, read_token_header
from .policies import check_grid


def features_meta(path: str | Path) -> dict | None:
    """A features file's ``meta`` from its header (no torch, tensors unread), or None if it cannot be read (loading
    it then says why)."""
    try:
        return read_header(path, key="features", what="features file")["meta"]
    except SlowfastError:
        return None


def recorded_config(meta: dict | None) -> Config | None:
    """The config a features file records, or None (none recorded, or not a valid one: loading it says why)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        return None
    try:
        return config_from_dict(meta["config"])
    except SlowfastError:
        return None


def reaggregation_config(meta: dict | None, preset: str | None = None, flags: dict[str, Any] | None = None) -> Config:
    """The settings to re-aggregate a features file with (see the module docstring): recorded < ``--config`` <
    flags. Only the aggregator part is used; the rest of a token file's config stays the recorded one."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    recorded = recorded_config(meta)
    if preset is not None or recorded is None:
        return resolve_config(preset or "default", flags)
    return make_config(recorded, **flags)


def aggregator_changes(meta: dict | None, config: Config) -> list[str]:
    """``aggregator.KEY: recorded -> used`` for every aggregator setting that differs from the recorded one."""
    recorded = recorded_config(meta)
    if recorded is None:
        return []
    old, new = _aggregator(recorded), _aggregator(config)
    return [f"aggregator.{k}: {_shown(old.get(k))} -> {_shown(new[k])}" for k in new if old.get(k) != new[k]]


def _aggregator(cfg: Config) -> dict[str, Any]:
    return cfg.to_dict()["aggregator"]


def _shown(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, list) else str(v)


@dataclasses.dataclass
class FolderPlan:
    """A batch plan over features files, with each file's settings and the changes from what they record."""

    plan: BatchPlan
    configs: dict[Path, Config]  # relative features file -> the settings it is re-aggregated with
    changes: Counter  # "aggregator.KEY: a -> b" -> how many files

    def __enter__(self) -> FolderPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.plan.release()


def plan_folder(
    in_dir: Path, out_dir: Path, preset: str | None, flags: dict[str, Any], overwrite: bool = False
) -> FolderPlan:
    """Lock ``out_dir``, list ``*.pt`` under ``in_dir``, settle each file's settings and what is already done.

    Raises:
        ConfigError: ``out_dir`` cannot be an output folder, a file's pool does not fit its grid, or outputs exist
            that were made with other settings (without ``overwrite``); nothing is written then.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    prepare_output_dir(in_dir, out_dir)
    lock = OutputLock(out_dir).acquire()
    try:
        fp = _plan(in_dir, out_dir, preset, flags, overwrite)
    except BaseException:
        lock.release()
        raise
    fp.plan.lock = lock
    return fp


def _list(in_dir: Path, out_dir: Path) -> list[Path]:
    inside = out_dir.resolve()
    found = []
    for p in sorted(in_dir.rglob("*.pt")):
        if p.name.startswith(TMP_PREFIX) or p.resolve().is_relative_to(inside) or not p.is_file():
            continue
        found.append(p.relative_to(in_dir))
    return found


def _plan(in_dir: Path, out_dir: Path, preset: str | None, flags: dict[str, Any], overwrite: bool) -> FolderPlan:
    clean_stale_temp_files(out_dir)
    todo, records, problems, other, foreign, unfit = [], [], [], [], [], []
    configs: dict[Path, Config] = {}
    changes: Counter = Counter()
    for rel in _list(in_dir, out_dir):
        meta = features_meta(in_dir / rel)
        if meta is None:  # loading it names the problem, as a failure of this file
            todo.append((rel, rel))
            configs[rel] = resolve_config(preset or "default", flags)
            continue
        cfg = reaggregation_config(meta, preset, flags)
        a = cfg.aggregator
        grid = meta.get("grid")
        if isinstance(grid, list) and len(grid) == 2:
            try:
                check_grid(tuple(grid), a.slow_pool, a.fast_size, a.layout)
            except ConfigError as exc:  # this file's grid (Qwen-VL grids follow each video): this file fails
                unfit.append(Record.failed(rel, rel, f"{in_dir / rel}: {exc}"))
                continue
        configs[rel] = cfg
        changes.update(aggregator_changes(meta, cfg))
        target = out_dir / rel
        if not overwrite and (target.exists() or target.is_symlink()):
            state, why = existing_aggregate(target, rel, meta, cfg)
            if state == "done":
                records.append(Record.skipped(rel, rel))
                continue
            if state in ("damaged", "stale"):
                problems.append(f"{why}; it is redone")
            elif state == "foreign":
                foreign.append(why)
            else:
                other.append((rel, why))
        todo.append((rel, rel))
    if unfit and not configs:
        raise ConfigError(unfit[0].error)  # no file fits these settings: a bad setting, not bad files
    records += unfit  # some files' grids do not fit: they fail (named in the manifest and the summary), not the run
    if foreign:
        raise ConfigError(
            f"{out_dir}: {len(foreign)} file(s) where token files would go are another program's (e.g. {foreign[0]}); "
            "move them away, pass --overwrite, or choose a new output folder"
        )
    if other:
        first, why = other[0]
        raise ConfigError(
            f"{out_dir}: {len(other)} existing token file(s) were made with other settings than this run's (e.g. "
            f"{first}: {why}); pass --overwrite to redo them with these settings, or choose a new output folder"
        )
    return FolderPlan(BatchPlan(in_dir, out_dir, todo, records, problems), configs, changes)


def existing_aggregate(target: Path, rel: Path, fmeta: dict, cfg: Config) -> tuple[str, str | None]:
    """What an existing output is for resume (``done``, ``damaged``, ``stale``, ``foreign`` or ``other``; see
    ``batch.plan.existing_output``): done when intact and made from these features with these settings."""
    try:
        meta = read_token_header(target, verify=True)["meta"]
    except ForeignFile as exc:
        return "foreign", str(exc)
    except SlowfastError as exc:
        return "damaged", str(exc)
    made_from = str(meta.get("features_file", ""))
    same_source = meta.get("source") == fmeta.get("source", meta.get("source")) and meta.get("video") == fmeta.get(
        "video"
    )
    if not (made_from.endswith(str(rel)) and same_source):
        return "stale", f"{target}: made from other features than {rel}"
    old = (meta.get("config") or {}).get("aggregator") if isinstance(meta.get("config"), dict) else None
    new = _aggregator(cfg)
    if old != new:
        diff = [f"aggregator.{k}: {_shown((old or {}).get(k))} -> {_shown(new[k])}" for k in new
                if (old or {}).get(k) != new[k]]  # fmt: skip
        return "other", "; ".join(diff)
    return "done", None


class AggregateRun:
    """Re-aggregates a ``FolderPlan``'s files in this process; the ``batch.run.Engine`` protocol, so that
    ``slowfast aggregate IN_DIR`` shares ``batch``'s recording, progress, report and exit codes."""

    name = "aggregate"
    verifies_outputs = True

    def __init__(self, folder: FolderPlan):
        self.folder = folder

    def __enter__(self) -> AggregateRun:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, plan: BatchPlan, config: Config | None) -> list[str]:
        return []

    def outcomes(self, plan: BatchPlan, config: Config | None) -> Iterator:
        from .pipeline import aggregate_file

        for rel, out_rel in plan.todo:

            def finish(rel=rel, out_rel=out_rel) -> Record:
                t0 = time.perf_counter()
                target = plan.out_dir / out_rel
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    result = aggregate_file(plan.root / rel, target, self.folder.configs[rel], overwrite=True)
                except (SlowfastError, OSError) as exc:
                    msg = str(exc) if isinstance(exc, SlowfastError) else f"{out_rel}: cannot write ({exc.strerror})"
                    return Record.failed(rel, out_rel, msg, seconds=time.perf_counter() - t0)
                return Record.ok(result.meta, rel, out_rel, time.perf_counter() - t0)

            yield finish

    def summary(self) -> dict[str, Any]:
        return {"name": self.name}
