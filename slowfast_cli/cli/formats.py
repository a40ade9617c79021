"""The output-format options (``--format``, ``--shard-size``, ``--save-dtype``) and the commands about formats and
outputs: ``export`` (a ``.pt`` folder to another format) and ``show`` (a contact sheet of what a token file saw)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, SlowfastError
from .options import JsonOpt, path_named
from .output import handles_errors, out, print_json, shown, warn

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="pt (one torch.save file per video), safetensors (one file per video) or webdataset (tar shards of "
        "KEY.safetensors + KEY.json, and index.jsonl).",
    ),
]
ShardSizeOpt = Annotated[int, typer.Option(help="webdataset: samples per shard.")]
SaveDtypeOpt = Annotated[
    str | None, typer.Option(help="Store the tokens as fp32, fp16 or bf16 (default: the dtype computed in).")
]


FILE_SUFFIXES = {".pt": "pt", ".safetensors": "safetensors"}  # a token file's name says its format


def check_suffix(path: Path | None, fmt_name: str) -> None:
    """Refuse a token file named for another format than the one written (``-o x.safetensors`` with the default
    ``--format pt`` would be a torch file that every safetensors reader, slowfast's included, refuses)."""
    named = FILE_SUFFIXES.get(path.suffix.lower()) if path is not None else None
    if named is not None and named != fmt_name:
        raise ConfigError(
            f"{path}: the name says {named} but --format is {fmt_name}; pass --format {named}, or name the file "
            f"{path.with_suffix('.pt' if fmt_name == 'pt' else '.safetensors').name}"
        )


def output_format(name: str, shard_size: int = 1000, save_dtype: str | None = None, files: bool = False):
    """The ``formats.OutputFormat`` of the flags; ``files``: the command writes one file (not webdataset)."""
    from ..formats import DEFAULT_SHARD_SIZE, OutputFormat

    fmt = OutputFormat(name, shard_size, save_dtype)
    if files and fmt.name == "webdataset":
        raise ConfigError("--format webdataset writes shards of many videos: use `slowfast batch` (or `export`)")
    if fmt.name != "webdataset" and shard_size != DEFAULT_SHARD_SIZE:
        raise ConfigError("--shard-size is for --format webdataset")
    return fmt


@handles_errors
def export(
    in_dir: Annotated[Path, typer.Argument(help="Folder of .pt token files (searched recursively).", exists=True)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write.", parser=path_named)],
    format_: FormatOpt = "webdataset",
    shard_size: ShardSizeOpt = 1000,
    save_dtype: SaveDtypeOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Convert a folder of .pt token files to another format (the same tensors, bit for bit, unless --save-dtype).

    Example: slowfast export tokens/ -o shards/ --format webdataset --shard-size 500
    """
    from ..formats.export import export_folder

    fmt = output_format(format_, shard_size, save_dtype)
    summary = export_folder(in_dir, output, fmt)
    for problem in summary["skipped"]:
        warn(f"skipped {problem}")
    if json_:
        print_json(summary)
    else:
        out.print(f"{shown(in_dir)} -> [bold]{shown(output)}[/]: {summary['written']} written ({fmt.name}), "
                  f"{summary['kept']} already there")  # fmt: skip
    if summary["skipped"]:
        raise SlowfastError(f"{in_dir}: {len(summary['skipped'])} file(s) could not be exported (listed above)")
    if not summary["written"] and not summary["kept"]:  # nothing to convert is never a quiet success
        raise SlowfastError(
            f"{in_dir}: no .pt token files found (export converts the .pt files `encode`/`batch` write)"
        )


@handles_errors
def show(
    path: Annotated[Path, typer.Argument(help="A token file (.pt, .safetensors), or a folder of them or of shards.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="PNG to write (a folder for a folder).", parser=path_named)
    ],
) -> None:
    """Draw what a token file saw: sampled frames and times, slow frames, the crop, the token layout.

    Example: slowfast show clip.pt -o clip.png
    """
    from ..show import show_file, show_folder

    if not path.exists():
        raise SlowfastError(f"{path}: does not exist")
    if path.is_dir() or path.name.endswith(".tar"):
        written, problems = show_folder(path, output)
        for p in problems:
            warn(f"skipped {p}")
        out.print(f"{len(written)} sheet(s) in [bold]{shown(output)}[/] (index.html)")
        if problems:
            raise SlowfastError(f"{path}: {len(problems)} sheet(s) could not be drawn (listed above)")
        return
    show_file(path, output)
    out.print(f"{shown(path)} -> [bold]{shown(output)}[/]")
