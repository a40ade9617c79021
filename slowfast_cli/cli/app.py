"""The ``slowfast`` command line: the typer app, its root options and the console-script entry point.

The commands live in ``commands.py`` and ``batch.py`` and are registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from ..version import __version__
from .batch import batch
from .commands import aggregate, budget, configs, encode, report
from .formats import export, show
from .output import _state, err
from .process import begin, end


class _Slowfast(TyperGroup):
    """The root command: ``--debug`` is taken anywhere on the line (``slowfast encode x.mp4 --debug``), not only
    before the command; an argument after ``--`` is left alone."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *[a for a in args[:end] if a != "--debug"], *args[end:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="slowfast",
    cls=_Slowfast,
    help="Turn videos into short, fixed-budget SlowFast token sequences for video LLMs.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rendering rich help panels imports rich.markdown (+50 ms)
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"slowfast {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """Turn videos into short, fixed-budget SlowFast token sequences for video LLMs."""
    _state["debug"] = debug or bool(os.environ.get("SLOWFAST_DEBUG"))  # per invocation: CliRunner reuses the app


def main() -> None:
    """Console-script entry point.

    SIGTERM is handled as Ctrl-C (see :func:`_terminated`). Once the command has finished (click ends it with
    SystemExit), both are ignored: there is nothing left to interrupt, and a KeyboardInterrupt during the
    interpreter's shutdown would kill the process by the signal (exit status -2) instead of giving the
    command's own exit code. ``process.begin`` / ``end``: OpenMP's wait policy and the collector's start-up
    settings, before any torch import (BENCHMARKS.md §28).
    """
    signal.signal(signal.SIGTERM, _terminated)
    begin()
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        err.print("[red]interrupted[/]")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end()


def _terminated(signum, frame) -> None:
    """SIGTERM (``kill PID``, a job scheduler's stop) stops the command as Ctrl-C does: cleanly, exit 130."""
    raise KeyboardInterrupt


for command in (budget, configs, report, aggregate, encode, batch, export, show):
    app.command()(command)
