"""What the command line shows and how it fails: the consoles, names shown literally, one red line per error.

Only the ``cli`` package imports typer and rich; rich is imported on first use, so ``--help`` and ``--json`` never
pay for it. ``handles_errors`` turns the library's ``SlowfastError`` into one line and an exit code: 1 a runtime
failure, 2 a usage error (``ConfigError``), 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from typing import Any

import typer

from ..errors import ConfigError, SlowfastError


class _LazyConsole:
    """A rich Console created on first use: `--help` and `--json` never pay for importing rich."""

    def __init__(self, **kwargs: Any):
        self._kwargs, self._console = kwargs, None

    def get(self):
        """The real ``rich.console.Console`` (for rich objects that need one, e.g. ``Progress``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


def Table(*args: Any, **kwargs: Any):  # noqa: N802 - stands in for rich.table.Table, imported on use
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


def printable(text: str) -> str:
    """``text`` with what a terminal would hide or act on shown as escapes: control characters (a newline in a
    file name cannot forge a log line: it shows as ``\\n``), and the lone surrogates that stand for bytes of a
    name that is not valid UTF-8 (shown as ``\\xe9``, the byte itself)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    return "".join(out)


def shown(text: Any) -> str:
    """A user string (a path, an error naming one) made safe to print through rich: :func:`printable`, then every
    ``[`` escaped so that rich never reads it as markup (``[/]`` in a file name, ``[final] take.mp4``)."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(str(text)))


# Not a terminal (a pipe, a file, CliRunner): rich would assume 80 columns and squash the tables.
out = _LazyConsole(highlight=False, width=None if sys.stdout.isatty() else 120)


err = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": bool(os.environ.get("SLOWFAST_DEBUG"))}


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red error line (``message`` is shown literally, see :func:`shown`); the Exit to raise."""
    err.print(f"[bold red]error:[/] {shown(message)}", markup=True, highlight=False)
    return typer.Exit(code)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {shown(message)}")


def handles_errors(fn):
    """Turn SlowfastError into one red line on stderr and exit 1 (ConfigError: exit 2); --debug adds the traceback.

    An OSError that reaches here (a name too long for the file system, a folder that vanished) is reported the
    same way, as ``FILE: reason``, exit 1: the library names its files in its own errors, and this is the net for
    the ones it did not foresee.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlowfastError as exc:
            if _state["debug"]:
                traceback.print_exc()
            raise fail(str(exc), 2 if isinstance(exc, ConfigError) else 1) from None
        except OSError as exc:
            if _state["debug"]:
                traceback.print_exc()
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}", 1) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def progress_bar(show: bool):
    """A rich progress bar on stderr: videos done/total, frames/s, failures, elapsed, remaining; off unless ``show``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:.1f} frames/s"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err.get(),
        disable=not show,
    )


def stage_spinner():
    """A one-line transient status on stderr (spinner, text, elapsed time), for the stages of one command."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err.get(),
                    transient=True)  # fmt: skip
