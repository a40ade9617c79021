"""``slowfast show``: what a token file was made from, as a picture (a contact sheet, drawn by ``sheet.py``).

The frames are decoded again from ``meta["source"]`` with the recorded video settings (``meta["config"]``), at full
size, and must come back at the recorded ``frame_indices`` (else the video changed since: an error says so). The
slow frames are ``meta["slow_frame_indices"]`` (positions among the sampled frames); what the tower saw follows the
recorded resize (``shortest``: the centre square of the shorter side; ``squash``, also a model whose own
preprocessing squashes, e.g. SigLIP: the whole frame); the strip shows the sequence's groups (:func:`segments`:
slow and fast frames, or the ``frames`` layout's one group) with their newline tokens. A folder (or shards) gives
one sheet per video, mirroring the relative paths (a shard's sample: its key), and ``index.html`` listing them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .atomic import atomic_open
from .config import config_from_dict
from .errors import SlowfastError
from .formats import read_output_header, shard_headers
from .formats.shards import shard_number
from .models import model_config_path
from .report import find_token_files


def resize_mode(config) -> str:
    """``squash`` or ``shortest``: what the tower's preprocessing did (``shortest`` defers to the model's own)."""
    if config.encoder.resize == "squash" or config.encoder.model.startswith("hf:"):  # hf: the whole frame, resized
        return "squash"
    path = model_config_path(config.encoder.model)
    try:
        own = json.loads(path.read_text()).get("preprocess_cfg", {}).get("resize_mode") if path else None
    except (OSError, ValueError):
        own = None
    return "squash" if own == "squash" else "shortest"


def _count(meta: dict, key: str) -> int:
    v = meta.get(key, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def segments(meta: dict) -> list[tuple[str, int, int]]:
    """``(name, tokens, of them newline tokens)`` of the sequence's groups, in order (``layout.add_newlines``): the
    ``slowfast`` layout's slow then fast frames, or the ``frames`` layout's one group, each with the newline tokens
    placed inside it (``grid``: after every row, ``frame``: after every frame), then ``one_token``'s single newline
    token, then any tokens the meta does not account for (``other``)."""
    lines, newline = _count(meta, "newline_tokens"), meta.get("newline", "no_token")
    tail = min(lines, 1) if newline == "one_token" else 0
    if meta.get("layout", "slowfast") == "frames":
        groups = [("frames", _count(meta, "slow_tokens"), lines - tail)]
    else:
        fast = meta.get("config", {}).get("aggregator", {}).get("fast_size", [0])
        rows = fast[0] if isinstance(fast, list) and fast and isinstance(fast[0], int) else 0
        fast_lines = min(lines - tail, {"grid": _count(meta, "frames") * rows, "frame": _count(meta, "frames")}.get(
            newline, 0))  # fmt: skip
        groups = [("slow", _count(meta, "slow_tokens"), lines - tail - fast_lines),
                  ("fast", _count(meta, "fast_tokens"), fast_lines)]  # fmt: skip
    parts = [(name, n + nl, nl) for name, n, nl in groups if n + nl > 0] + ([("newline", tail, tail)] if tail else [])
    rest = _count(meta, "output_tokens") - sum(n for _, n, _ in parts)
    return parts + ([("other", rest, 0)] if rest > 0 else [])


def draw(meta: dict, name: str):
    """The sheet (PIL image) and its layout for a token file's ``meta`` (``name`` says which file, in errors)."""
    from .sheet import contact_sheet
    from .video.decode import load_clip

    source, indices = meta.get("source"), meta.get("frame_indices")
    if not isinstance(source, str) or not isinstance(indices, list) or "config" not in meta:
        raise SlowfastError(f"{name}: its meta does not say which video and frames it was made from")
    try:
        config = config_from_dict(meta["config"])
    except SlowfastError as exc:
        raise SlowfastError(f"{name}: meta['config'] is not a slowfast config ({exc})") from None
    config.video.decode_resize = False  # full-size frames: the sheet shows what the crop cut away
    clip = load_clip(source, config.video)
    if [int(i) for i in clip.indices] != indices:
        raise SlowfastError(f"{name}: {source} no longer gives the recorded frames (the video changed since)")
    slow = {int(i) for i in meta.get("slow_frame_indices", []) if isinstance(i, int)}
    per = meta["positions"].get("temporal_patch", 1) if isinstance(meta.get("positions"), dict) else 1
    if isinstance(per, int) and per > 1:  # a hf: tower's slow indices count temporal patches of ``per`` frames
        slow = {p * per + k for p in slow for k in range(per)}
    labels = [f"#{k} f{i} {t:.2f}s" for k, (i, t) in enumerate(zip(clip.indices, clip.timestamps))]
    mode = resize_mode(config)
    title = (f"{Path(source).name}: {len(indices)} frames, {len(slow)} slow, {meta.get('model', '?')} "
             f"({mode}), {meta.get('output_tokens', '?')} tokens")  # fmt: skip
    return contact_sheet(clip.frames, labels, slow, mode, segments(meta), title)


def show_file(path: str | Path, out: str | Path):
    """Write the sheet of one ``.pt`` or ``.safetensors`` token file to ``out`` (PNG); returns its layout."""
    from .sheet import save_png

    meta = read_output_header(path).meta
    image, layout = draw(meta, str(path))
    _write_png(image, Path(out), save_png)
    return layout


def _write_png(image, out: Path, save_png) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(out) as f:
            save_png(image, f)
    except OSError as exc:
        raise SlowfastError(f"{out}: cannot write ({exc.strerror or exc})") from None


def show_folder(folder: str | Path, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """One sheet per token file or shard sample under ``folder``, in ``out_dir`` with ``index.html``; returns the
    sheets written and one line per file that could not be shown (its video gone, a damaged file)."""
    from .sheet import save_png

    folder, out_dir = Path(folder), Path(out_dir)
    written, problems, entries = [], [], []
    for path in [folder] if folder.is_file() else find_token_files(folder):
        found = shard_headers(path) if shard_number(path.name) is not None else [(str(path), None)]
        for name, header in found:
            rel = Path(name.rpartition(":")[2]) if header is not None else path.relative_to(folder).with_suffix("")
            if header is not None and folder.is_dir() and path.parent != folder:  # a shard in a subfolder
                rel = path.parent.relative_to(folder) / rel
            try:
                if isinstance(header, SlowfastError):
                    raise header
                meta = header.meta if header is not None else read_output_header(path).meta
                image, _ = draw(meta, name)
                target = out_dir / rel.with_name(rel.name + ".png")
                _write_png(image, target, save_png)
            except SlowfastError as exc:
                problems.append(str(exc))
                continue
            written.append(target)
            entries.append((str(target.relative_to(out_dir)), str(meta.get("source")), name))
    rows = "\n".join(f'<h3>{html.escape(src)}</h3><p>{html.escape(name)}</p><img src="{html.escape(png)}">'
                     for png, src, name in entries)  # fmt: skip
    page = f"<!doctype html>\n<meta charset='utf-8'><title>slowfast show</title>\n{rows}\n"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(out_dir / "index.html", "w") as f:
            f.write(page)
    except OSError as exc:
        raise SlowfastError(f"{out_dir / 'index.html'}: cannot write ({exc.strerror or exc})") from None
    return written, problems
