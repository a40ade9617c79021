"""``slowfast aggregate IN_DIR -o OUT_DIR``: a folder of features files, shown and recorded as ``batch`` does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SlowfastError
from .batch import _exit, _run, _show, _write_report
from .failures import parse_max_failures
from .output import err, warn


def aggregate_folder(
    in_dir: Path,
    out_dir: Path,
    preset: str | None,
    flags: dict[str, Any],
    overwrite: bool,
    fail_fast: bool,
    max_failures: str | None,
    json_: bool,
) -> None:
    """Plan (lock, resume), name the settings that differ from the files' own, run, report, exit as batch does."""
    from ..reaggregate import AggregateRun, plan_folder

    allowed = parse_max_failures(max_failures)
    with plan_folder(in_dir, out_dir, preset, flags, overwrite) as folder:
        plan = folder.plan
        for problem in plan.problems:
            warn(problem)
        if plan.total == 0:
            raise SlowfastError(f"{in_dir}: no features files (*.pt) found")
        for change, n in sorted(folder.changes.items()):
            warn(f"re-aggregated with other settings than the features files record: {change} ({n} of {plan.total})")
        engine = AggregateRun(folder)
        outcome = _run(plan, None, engine, fail_fast, show_bar=err.is_terminal and not json_)
        report = _write_report(plan, engine, outcome)
        _show(report, outcome, plan.out_dir, json_)
        _exit(outcome, report, plan, allowed)
