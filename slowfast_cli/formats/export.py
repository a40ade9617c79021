"""``slowfast export``: a folder of ``.pt`` token files written again in another format, through the same writer
``batch`` uses. ``a/b.pt`` becomes ``a/b.safetensors``, or the webdataset sample ``a/b`` (dots in the name become
``_``). The tensors are the same, bit for bit (``--save-dtype`` casts them, and is recorded in meta); meta is
carried whole. Resumable: the output folder is locked as ``batch`` locks it, and a sample already there (and
intact) is kept; an interrupted export leaves only complete files and shards.
"""

from __future__ import annotations

from pathlib import Path

from ..batch.plan import OutputLock, clean_stale_temp_files, other_format, prepare_output_dir
from ..errors import ConfigError, SlowfastError
from ..report import find_token_files
from . import OutputFormat, make_writer


def export_folder(in_dir: str | Path, out_dir: str | Path, fmt: OutputFormat) -> dict:
    """Write every ``.pt`` token file under ``in_dir`` into ``out_dir`` in format ``fmt``.

    A folder that holds another format's outputs for these files, or samples stored under another ``--save-dtype``,
    is refused as ``batch`` refuses it: one folder holds one format and one stored dtype, so that nothing already
    there is kept in place of what was asked for.

    Returns:
        ``{"written", "kept", "skipped"}``: counts of samples written and kept, and one line per ``.pt`` that
        could not be read (damaged, not a token file), which is left out.

    Raises:
        ConfigError: another format's outputs, or another stored dtype, in ``out_dir``.
    """
    from ..tokenfile import load_tokens

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise SlowfastError(f"{in_dir}: not a folder")
    prepare_output_dir(in_dir, out_dir)
    out_abs = out_dir.resolve()
    written, kept, skipped = 0, 0, []
    with OutputLock(out_dir):
        clean_stale_temp_files(out_dir)
        writer = make_writer(fmt, out_dir)
        writer.load()
        paths = [p for p in find_token_files(in_dir) if p.suffix == ".pt" and not p.resolve().is_relative_to(out_abs)]
        mixed = other_format(writer, out_dir, [p.relative_to(in_dir) for p in paths], {})
        if mixed is not None:
            raise ConfigError(
                f"{out_dir}: holds {mixed} from an export or run in another format; --format {fmt.name} would mix "
                "formats in one folder: use that --format, or a new output folder"
            )
        for path in paths:
            rel = path.relative_to(in_dir)
            out_rel = writer.output(rel)
            try:
                there = writer.read_existing(out_rel, verify=True)
            except SlowfastError:
                there = None  # a damaged copy: written again
            if there is not None:
                stored = there.meta.get("save_dtype")
                if stored != fmt.save_dtype:
                    was, now = stored or "the computed dtype", fmt.save_dtype or "the computed dtype"
                    raise ConfigError(
                        f"{out_dir / out_rel}: stored as {was}, but --save-dtype asks for {now}; one folder holds "
                        "one stored dtype: export into a new folder, or pass the same --save-dtype"
                    )
                kept += 1
                continue
            try:
                obj = load_tokens(path)
            except SlowfastError as exc:
                skipped.append(str(exc))
                continue
            meta = obj["meta"]
            columns = meta.get("columns") if isinstance(meta.get("columns"), dict) else None
            writer.write(obj["tokens"], writer.sample_meta(meta, out_rel, columns), out_rel)
            written += 1
        writer.finish()
    return {"written": written, "kept": kept, "skipped": skipped, "format": fmt.to_dict()}
