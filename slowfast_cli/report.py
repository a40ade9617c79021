"""Statistics over token files: counts, token totals, the distribution of compression ratios.

Files are read with ``formats.read_output_header`` (``.pt`` and ``.safetensors``) and ``formats.shard_headers``
(webdataset shards, one entry per sample): shapes and ``meta`` only, no torch, no tensor data. Only token
files (``{"tokens", "meta"}``) are counted; anything else under a folder is listed as skipped with
the reason, so a report never silently hides a broken file.
"""

from __future__ import annotations

import collections
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SlowfastError
from .formats import OutputHeader, is_output, read_output_header, shard_headers
from .formats.shards import shard_number
from .header import TMP_PREFIX


@dataclass
class FileStats:
    path: str
    input_tokens: int | None  # T * N from meta (None when meta lacks it)
    output_tokens: int  # L, from the tensor itself
    ratio: float | None
    dim: int
    layout: str = "slowfast"  # meta's layout and newline position ("frames/grid"); files before them: slowfast
    newline_tokens: int = 0


@dataclass
class Report:
    files: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    ratio: float | None = None  # overall: total output / total input
    ratio_min: float | None = None
    ratio_median: float | None = None
    ratio_max: float | None = None
    tokens_per_file_min: int | None = None
    tokens_per_file_median: float | None = None
    tokens_per_file_max: int | None = None
    tokens_per_file_mean: float | None = None
    dims: list[int] = field(default_factory=list)  # distinct token widths seen
    layouts: dict[str, int] = field(default_factory=dict)  # "layout/newline" -> files, e.g. {"frames/grid": 3}
    newline_tokens: int = 0  # of output_tokens, the newline tokens (the checkpoint's image_newline)
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"} for files that are not token files

    def to_dict(self) -> dict:
        return asdict(self)


def _count(meta: dict, key: str) -> int | None:
    """``meta[key]`` as a positive int, None when absent; anything else (a bool, a float, 0, a string) is an error."""
    if key not in meta:
        return None
    v = meta[key]
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise SlowfastError(f"meta[{key!r}] must be a positive integer, got {v!r}")
    return v


def check_counts(meta: dict, length: int) -> int | None:
    """The input token count of a token file whose tensor has ``length`` tokens, checked against its own meta.

    A file made by slowfast records ``frames``, ``tokens_per_frame``, ``input_tokens`` (their product) and
    ``output_tokens`` (the tensor's length); a report counts ``input_tokens`` only when they agree, so a file
    whose meta was edited or damaged (``input_tokens: true``, ``10**30``) cannot skew the totals.

    Returns:
        ``input_tokens``, or None when the meta has no counts at all (a token file from elsewhere).

    Raises:
        SlowfastError: the counts are not positive integers or do not agree (without the path: the caller adds it).
    """
    inp, out = _count(meta, "input_tokens"), _count(meta, "output_tokens")
    frames, per_frame = _count(meta, "frames"), _count(meta, "tokens_per_frame")
    if out is not None and out != length:
        raise SlowfastError(f"meta['output_tokens'] is {out} but the tensor holds {length} tokens")
    if inp is None:
        return None
    if frames is None or per_frame is None:
        raise SlowfastError("meta['input_tokens'] is given without 'frames' and 'tokens_per_frame' to check it")
    if inp != frames * per_frame:
        raise SlowfastError(f"meta['input_tokens'] is {inp} but frames x tokens_per_frame is {frames * per_frame}")
    return inp


def file_stats(path: Path, verify: bool = True, header: OutputHeader | None = None) -> FileStats:
    """Counts of one token file (or a shard's sample, whose ``header`` is given), read from its header (the tensor
    data is read only for ``verify``'s CRC check)."""
    header = header or read_output_header(path, verify=verify)
    shape, meta = header.shape, header.meta
    out = int(shape[1])
    try:
        inp = check_counts(meta, out)
    except SlowfastError as exc:
        raise SlowfastError(f"{path}: inconsistent token file ({exc})") from None
    layout = f"{meta.get('layout', 'slowfast')}/{meta.get('newline', 'no_token')}"
    lines = meta.get("newline_tokens", 0)
    lines = lines if isinstance(lines, int) and not isinstance(lines, bool) and 0 <= lines <= out else 0
    return FileStats(str(path), inp, out, out / inp if inp else None, int(shape[2]), layout, lines)


def find_token_files(root: Path, problems: list[dict] | None = None) -> list[Path]:
    """Every ``.pt``, ``.safetensors`` and ``shard-NNNNNN.tar`` entry under ``root`` (recursive, sorted), temporary
    files of interrupted writes excluded.

    Entries that are not regular files (a dangling symlink, a folder named ``x.pt``) are listed too, so that the
    report names them as skipped instead of leaving them out silently; so is every folder that cannot be listed
    (appended to ``problems`` as ``{"path", "error"}``).
    """
    found = []

    def onerror(exc: OSError) -> None:
        if problems is not None:
            problems.append({"path": str(exc.filename), "error": f"{exc.filename}: cannot be listed ({exc.strerror})"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        for name in [*filenames, *dirnames]:
            if is_output(name) and not name.startswith(TMP_PREFIX):
                found.append(Path(dirpath, name))
    return sorted(found)


def summarize(stats: list[FileStats], skipped: list[dict] | None = None) -> Report:
    r = Report(files=len(stats), skipped=list(skipped or []))
    if not stats:
        return r
    r.output_tokens = sum(s.output_tokens for s in stats)
    known = [s for s in stats if s.input_tokens]
    r.input_tokens = sum(s.input_tokens for s in known)
    if known:
        r.ratio = sum(s.output_tokens for s in known) / r.input_tokens
        ratios = [s.ratio for s in known]
        r.ratio_min, r.ratio_median, r.ratio_max = min(ratios), statistics.median(ratios), max(ratios)
    lengths = [s.output_tokens for s in stats]
    r.tokens_per_file_min, r.tokens_per_file_max = min(lengths), max(lengths)
    r.tokens_per_file_median = statistics.median(lengths)
    r.tokens_per_file_mean = statistics.fmean(lengths)
    r.dims = sorted({s.dim for s in stats})
    r.layouts = dict(sorted(collections.Counter(s.layout for s in stats).items()))
    r.newline_tokens = sum(s.newline_tokens for s in stats)
    return r


def build_report(path: str | Path, verify: bool = True) -> Report:
    """Report over one token file (errors if it is not one) or every token file under a folder.

    With ``verify`` (the default) each file's bytes are checked against the CRC-32s in its archive, so a damaged
    file is listed as skipped, never counted; without it only headers are read (``--no-verify``, for speed).
    """
    path = Path(path)
    if not path.exists():
        raise SlowfastError(f"{path}: does not exist")
    if not path.is_dir() and shard_number(path.name) is None:  # a file, or a FIFO, a device: file_stats says which
        return summarize([file_stats(path, verify)])
    stats, skipped, shards = [], [], {}
    for p in [path] if not path.is_dir() else find_token_files(path, skipped):
        if shard_number(p.name) is not None and p.is_file():  # samples; a key in a later shard supersedes it
            for name, header in shard_headers(p, verify):
                shards[(p.parent, name.rpartition(":")[2])] = (name, header)
            continue
        try:
            stats.append(file_stats(p, verify))
        except SlowfastError as exc:
            skipped.append({"path": str(p), "error": str(exc)})
    for name, header in shards.values():
        try:
            if isinstance(header, SlowfastError):
                raise header
            stats.append(file_stats(Path(name), verify, header))
        except SlowfastError as exc:
            skipped.append({"path": name, "error": str(exc)})
    return summarize(stats, skipped)
