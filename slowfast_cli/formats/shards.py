"""webdataset shards: tar files of samples ``KEY.safetensors`` + ``KEY.json``, written by appending, read by seeking.

A sample's members are written one after the other (``KEY.safetensors`` first), each a tar header and its data
padded to 512 bytes (PAX headers where a name needs them; mtime 0 and no owner, so the same samples give the same
bytes). The shard being filled is a hidden file, ``OPEN``; it gets its final name ``shard-NNNNNN.tar`` (with the
end-of-archive blocks) only when it is complete. A sample is complete when both of its members are whole; a run
killed in the middle of one leaves a torn tail that :func:`recover` cuts off. A sample's key is what webdataset
takes it to be: the member's path up to the first dot of its file name. No torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import json_text
from ..header import TMP_PREFIX

OPEN = ".slowfast-open-shard.tar"  # the shard being filled (hidden: readers and globs never take it for a shard)
SHARD = re.compile(r"shard-(\d{6,})\.tar")
BLOCK = 512
ENCODING = {"format": tarfile.PAX_FORMAT, "encoding": "utf-8", "errors": "surrogateescape"}


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def shard_number(name: str) -> int | None:
    m = SHARD.fullmatch(name)
    return int(m[1]) if m else None


def shards_in(folder: Path) -> list[Path]:
    """The finished shards in ``folder`` (not the open one), by number."""
    found = [(shard_number(p.name), p) for p in folder.glob("shard-*.tar")]
    return [p for n, p in sorted((n, p) for n, p in found if n is not None) if p.is_file()]


def split_name(name: str) -> tuple[str, str]:
    """``("a/b", "safetensors")`` for ``a/b.safetensors``: webdataset's key and extension of a member."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


@dataclass(frozen=True)
class Member:
    name: str
    start: int  # where its tar header starts
    data: int  # where its data starts
    size: int  # bytes of data

    @property
    def end(self) -> int:
        """Where the next member's header starts."""
        return self.data + self.size + (-self.size % BLOCK)


@dataclass
class Sample:
    key: str
    members: dict[str, Member]  # extension -> member

    @property
    def start(self) -> int:
        return min(m.start for m in self.members.values())

    @property
    def end(self) -> int:
        return max(m.end for m in self.members.values())

    @property
    def complete(self) -> bool:
        return "safetensors" in self.members and "json" in self.members


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info.tobuf(**ENCODING)


def sample_bytes(key: str, tokens: list[bytes | memoryview], meta: dict) -> tuple[list[bytes | memoryview], Sample]:
    """A sample's two members, ``KEY.safetensors`` (the token file's bytes, in parts) and ``KEY.json`` (its
    ``meta``), as parts to write in order, and the sample's layout as if it started at offset 0 (see :func:`moved`)."""
    parts, members, pos = [], {}, 0
    for ext, data in (("safetensors", tokens), ("json", [json_text(meta).encode("utf-8")])):
        size = sum(len(d) for d in data)
        head = _header(f"{key}.{ext}", size)
        members[ext] = Member(f"{key}.{ext}", pos, pos + len(head), size)
        parts += [head, *data, b"\0" * (-size % BLOCK)]
        pos = members[ext].end
    return parts, Sample(key, members)


def moved(sample: Sample, shift: int) -> Sample:
    """``sample`` with every offset moved by ``shift`` bytes."""
    return Sample(sample.key, {e: _moved(m, shift) for e, m in sample.members.items()})


def scan(path: Path) -> tuple[list[Sample], int, str | None]:
    """The samples of a shard (finished or open) in order, the offset after the last member from which on nothing
    is incomplete (where a torn tail starts), and what stopped the scan early (None when the file read to its end).

    Members whose data runs past the end of the file, and a header cut short, end the scan there.
    """
    samples: dict[str, Sample] = {}
    good_end, problem = 0, None
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        try:
            with tarfile.open(fileobj=f, mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
                while True:
                    info = tar.next()
                    if info is None:
                        break
                    if not info.isfile():
                        continue
                    member = Member(info.name, info.offset, info.offset_data, info.size)
                    if member.data + member.size > size:
                        problem = f"{info.name} is cut short ({size - member.data:,} of {member.size:,} bytes)"
                        break
                    key, ext = split_name(info.name)
                    samples.setdefault(key, Sample(key, {})).members[ext] = member
                    if all(s.complete for s in samples.values()):
                        good_end = member.end
        except tarfile.TarError as exc:
            problem = f"a damaged tar header ({exc})"
    return list(samples.values()), good_end, problem


def recover(path: Path) -> list[Sample]:
    """The complete samples of the open shard at ``path``; a torn tail (a run killed mid-sample) is cut off."""
    samples, end, _ = scan(path)
    with open(path, "r+b") as f:
        if f.seek(0, 2) != end:
            f.truncate(end)
            os.fsync(f.fileno())
    return [s for s in samples if s.complete and s.end <= end]


def append(path: Path, parts: list[bytes | memoryview]) -> int:
    """Append ``parts`` to the open shard at ``path`` (created if need be), fsynced; returns where they start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        start = os.fstat(fd).st_size
        try:
            for part in parts:
                view = memoryview(part).cast("B")
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # never a torn member left behind by a full disk
            raise
    finally:
        os.close(fd)
    return start


def cut(path: Path, at: int) -> None:
    """Take the open shard back to ``at`` bytes (a sample that could not be recorded)."""
    with open(path, "r+b") as f:
        f.truncate(at)
        os.fsync(f.fileno())


def finish(path: Path, target: Path) -> None:
    """Close the open shard at ``path`` (the end-of-archive blocks) and give it its final name ``target``."""
    with open(path, "ab") as f:
        f.write(b"\0" * (2 * BLOCK))
        f.flush()
        os.fsync(f.fileno())
    os.replace(path, target)


def without(path: Path, samples: list[Sample], drop: str) -> list[Sample]:
    """Rewrite the open shard at ``path`` without sample ``drop`` (a redone sample); the remaining samples, moved."""
    kept, out = [s for s in samples if s.key != drop], []
    tmp = path.with_name(f"{TMP_PREFIX}open-shard.tar")  # removed by the next run if this one dies here
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for s in kept:
            src.seek(s.start)
            shift = dst.tell() - s.start
            dst.write(src.read(s.end - s.start))
            out.append(moved(s, shift))
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return out


def _moved(m: Member, shift: int) -> Member:
    return Member(m.name, m.start + shift, m.data + shift, m.size)
