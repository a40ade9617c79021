"""Statistics over token files: counts, token totals, the distribution of compression ratios.

Files are read with ``header.read_token_header``: shapes and ``meta`` only, no torch, no tensor data. Only token
files (``{"tokens", "meta"}``) are counted; anything else under a folder is listed as skipped with
the reason, so a report never silently hides a broken file.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SlowfastError
from .header import is_temp_file, read_token_header


@dataclass
class FileStats:
    path: str
    input_tokens: int | None  # T * N from meta (None when meta lacks it)
    output_tokens: int  # L, from the tensor itself
    ratio: float | None
    dim: int


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
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"} for files that are not token files

    def to_dict(self) -> dict:
        return asdict(self)


def file_stats(path: Path) -> FileStats:
    """Counts of one token file, read from its header (the tensor data is not loaded; see ``header``)."""
    obj = read_token_header(path)
    shape, meta = obj["tokens"].shape, obj["meta"]
    out = int(shape[1])
    inp = meta.get("input_tokens")
    inp = int(inp) if isinstance(inp, int) and inp > 0 else None
    return FileStats(str(path), inp, out, out / inp if inp else None, int(shape[2]))


def find_token_files(root: Path) -> list[Path]:
    """Every ``.pt`` file under ``root`` (recursive, sorted), temporary files of interrupted writes excluded."""
    return sorted(p for p in root.rglob("*.pt") if p.is_file() and not is_temp_file(p))


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
    return r


def build_report(path: str | Path) -> Report:
    """Report over one token file (errors if it is not one) or every token file under a folder."""
    path = Path(path)
    if not path.exists():
        raise SlowfastError(f"{path}: does not exist")
    if path.is_file():
        return summarize([file_stats(path)])
    stats, skipped = [], []
    for p in find_token_files(path):
        try:
            stats.append(file_stats(p))
        except SlowfastError as exc:
            skipped.append({"path": str(p), "error": str(exc)})
    return summarize(stats, skipped)
