"""A torch ``Dataset`` over slowfast outputs, and a collate that pads a batch to its longest sequence.

``TokenDataset(path)`` reads any output format: a folder of ``.pt`` and/or ``.safetensors`` token files (one
sample per file, keyed by its path without the extension), or webdataset shards (a folder holding
``shard-NNNNNN.tar`` files, or one shard), located through ``index.jsonl`` when there is one (each sample read with
one seek), else by reading the shards' tar headers. A sample is::

    {"key": str, "tokens": Tensor (L, D), "meta": dict, "columns": dict}

The tensor bytes of a ``.safetensors`` file or sample are checked against their CRC-32 only with ``verify=True``
(``slowfast report`` checks a whole folder at once). ``columns`` holds the extra columns of a CSV/JSONL
``--files-from`` row (``{}`` without one).

``collate`` stacks a list of samples into ``tokens`` (B, L_max, D), ``attention_mask`` (B, L_max) (1 = a real
token, 0 = padding), ``lengths`` (B,), and the lists ``keys``, ``meta``, ``columns``. Padding goes on the right by
default (the convention for training); ``padding_side="left"`` puts it first, as batched ``generate`` wants.

Example:
    >>> ds = TokenDataset("tokens/")  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import SlowfastError
from .formats import index, shards
from .formats.safetensors_file import load as load_safetensors
from .formats.safetensors_file import parse_header, read_tokens
from .report import find_token_files
from .tokenfile import load_tokens


class TokenDataset(torch.utils.data.Dataset):
    """Samples of a token folder or of webdataset shards (see the module docstring)."""

    def __init__(self, path: str | Path, verify: bool = False):
        path, self.verify = Path(path), verify
        self.items: list[tuple[str, Path, int | None, int | None]] = []  # (key, file, offset, size)
        if not path.exists():
            raise SlowfastError(f"{path}: does not exist")
        if path.is_file() and shards.shard_number(path.name) is None:
            self.items.append((path.stem, path, None, None))
            return
        tars = [path] if path.is_file() else shards.shards_in(path)
        if tars:
            self._shard_items(path, tars)
            return
        for p in find_token_files(path):
            if p.is_file() and p.suffix in (".pt", ".safetensors"):
                self.items.append((str(p.relative_to(path).with_suffix("")), p, None, None))
        if not self.items:
            raise SlowfastError(f"{path}: no token files or shards found")

    def _shard_items(self, path: Path, tars: list[Path]) -> None:
        rows = index.latest(index.read_index(path / index.INDEX)) if path.is_dir() else {}
        if rows and {r["shard"] for r in rows.values()} == {p.name for p in tars}:
            for r in rows.values():
                self.items.append((r["key"], path / r["shard"], r["offset"], r["size"]))
            return
        found: dict[str, tuple[str, Path, int, int]] = {}
        for tar in tars:  # no index (or one that disagrees with the shards): the tar headers say where samples are
            samples, _, _ = shards.scan(tar)
            for s in samples:
                if "safetensors" in s.members:
                    m = s.members["safetensors"]
                    found[s.key] = (s.key, tar, m.data, m.size)
        self.items = list(found.values())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        key, path, offset, size = self.items[i]
        if offset is not None:
            with open(path, "rb") as f:
                f.seek(offset)
                header = parse_header(f, size, f"{path}:{key}")
                tokens, meta = read_tokens(f, header, f"{path}:{key}", self.verify), header.meta
        elif path.suffix == ".safetensors":
            obj = load_safetensors(path, self.verify)
            tokens, meta = obj["tokens"], obj["meta"]
        else:
            obj = load_tokens(path)
            tokens, meta = obj["tokens"], obj["meta"]
        columns = meta.get("columns") if isinstance(meta.get("columns"), dict) else {}
        return {"key": key, "tokens": tokens[0], "meta": meta, "columns": columns}  # tokens: (L, D)


def collate(samples: list[dict], padding_side: str = "right", pad_value: float = 0.0) -> dict[str, Any]:
    """Pad a list of samples to the longest; see the module docstring for what comes back.

    Args:
        samples: items of :class:`TokenDataset` (``tokens`` (L_i, D), one D and dtype for all).
        padding_side: ``right`` (padding after the tokens) or ``left`` (before them).
        pad_value: the value of padded positions in ``tokens``.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not samples:
        raise ValueError("collate needs at least one sample")
    first = samples[0]["tokens"]
    for s in samples[1:]:  # one batch tensor: a second width or dtype would fail bare, or be cast without a word
        t = s["tokens"]
        if t.shape[-1] != first.shape[-1] or t.dtype != first.dtype:
            raise ValueError(
                f"collate: sample {s.get('key')!r} has tokens {t.shape[-1]} wide in {t.dtype}, but "
                f"{samples[0].get('key')!r} has {first.shape[-1]} in {first.dtype}; token files from different "
                "models or --save-dtype settings cannot share a batch"
            )
    lengths = torch.tensor([s["tokens"].shape[0] for s in samples])  # (B,)
    tokens = first.new_full((len(samples), int(lengths.max()), first.shape[-1]), pad_value)  # (B, L_max, D)
    mask = torch.zeros(tokens.shape[:2], dtype=torch.long)  # (B, L_max)
    for b, s in enumerate(samples):
        n = s["tokens"].shape[0]
        span = slice(0, n) if padding_side == "right" else slice(tokens.shape[1] - n, tokens.shape[1])
        tokens[b, span] = s["tokens"]
        mask[b, span] = 1
    return {
        "tokens": tokens,
        "attention_mask": mask,
        "lengths": lengths,
        "keys": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "columns": [s["columns"] for s in samples],
    }
