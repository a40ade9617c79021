"""What the Ray engine runs on the nodes: the probe, the decode task and the encoder actor, and the typed row that
travels between them and back to the driver (``RayRow``, pickled into Ray Data's ``item`` column).

Every exception is caught per video and becomes that video's failure row; deaths of a task or an actor are
counted per video in ``OUT_DIR/.slowfast-attempts`` and give up after ``MAX_ATTEMPTS``. Imported by the driver
(``ray.py``) and, through cloudpickle, on the nodes; the package must be installed there.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from ...config import config_from_dict
from ...errors import SlowfastError, first_line
from ...remote import place
from ..faults import test_fault
from ..plan import existing_output
from ..records import Record
from ..run import encode_one

ATTEMPTS = ".slowfast-attempts"  # per-video attempt counters of a running Ray batch, in OUT_DIR
MAX_ATTEMPTS = 3  # a video whose worker died this many times is given up (a ``crash`` record)
SHARED = "IN_DIR and OUT_DIR must be on a file system that every node sees at the same path"
STATUSES = ("skipped", "failed", "decoded", "written")  # RayRow.status: its outcome so far


@dataclass
class RayRow:
    """One video on its way through the Ray pipeline: what the decode task and the encoder actor say of it."""

    source: bytes  # path relative to IN_DIR, as the file system's bytes (any name survives)
    output: bytes  # path relative to OUT_DIR
    status: str  # one of STATUSES
    record: Record | None = None  # the video's record, for "failed" and "written"
    decoded: str | None = None  # the node that decoded it (node_name)
    encoded: str | None = None  # the node that encoded it
    problem: str | None = None  # a damaged output found on the node, redone: a warning for the driver
    seconds: float = 0.0  # decoding time
    clip: bytes | None = None  # the decoded video.info.Clip, pickled (protocol 5), for "decoded"
    tmp: str | None = None  # the token file written beside its target, for "written"

    @property
    def rel(self) -> Path:
        return Path(os.fsdecode(self.source))

    @property
    def out_rel(self) -> Path:
        return Path(os.fsdecode(self.output))


def node_name() -> str:
    """``host/node-id-prefix`` of the Ray node this runs on (two nodes on one host differ by their ids)."""
    try:
        node = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # outside a Ray worker
        node = "driver"
    return f"{socket.gethostname()}/{node}"


def _key(d: dict) -> str:
    return hashlib.sha256(repr(sorted(d.items())).encode()).hexdigest()


def probe_task(config_dict: dict, root: str, mark: str, token: str, model: bool = True) -> dict:
    """On a worker: check it sees IN_DIR and OUT_DIR (``mark`` holds ``token``), build the model as an actor will
    (``model``; a node that only decodes skips it), and say what it resolved (dtype, provenance, warnings,
    decode-time image size, and its node's name)."""
    from ...encoder.device import DTYPE_NAMES
    from ...pipeline import Pipeline

    where = node_name()
    if not place(root).is_dir():
        raise SlowfastError(f"{root}: not visible on Ray node {where}; {SHARED}")
    try:
        seen = Path(mark).read_text(encoding="ascii")
    except OSError:
        seen = None
    if seen != token:
        raise SlowfastError(f"{Path(mark).parent}: not the same folder on Ray node {where}; {SHARED}")
    if not model:
        return {"node": where, "provenance": None}
    pipe = Pipeline(config_from_dict(config_dict))
    return {
        "node": where,
        "dtype": DTYPE_NAMES[pipe.dtype],
        "provenance": pipe.provenance,
        "warnings": pipe.warnings,
        "image_size": pipe.image_size,
    }


def _attempt(out_dir: str, rel: bytes, stage: str) -> int:
    """Count one more attempt of ``stage`` on a video; returns the count (1 for the first)."""
    name = hashlib.sha1(rel).hexdigest() + "." + stage
    fd = os.open(os.path.join(out_dir, ATTEMPTS, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b".")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def other_file(src: Path, expect: tuple[int, int] | None, where: str) -> str | None:
    """Why the file this node sees at ``src`` is not the one the driver planned (another size or modification
    time, as a node with another copy of IN_DIR, or an empty mount point, has), or None when it is the same. A
    node that sees no file says so too: the driver saw one."""
    if expect is None:
        return None
    try:
        st = src.stat()
    except FileNotFoundError:
        return f"{src}: does not exist on Ray node {where}, but the driver sees it; {SHARED}"
    except OSError:
        return None  # unreadable: the decoder says why, in its own words
    if (st.st_size, st.st_mtime_ns) != tuple(expect):
        return (
            f"{src}: Ray node {where} sees another file than the driver ({st.st_size:,} bytes, modified "
            f"{st.st_mtime_ns} ns, where the driver sees {expect[0]:,} bytes, {expect[1]} ns); not encoded. {SHARED}"
        )
    return None


def _failed(rel: bytes, out_rel: bytes, msg: str, kind: str | None = None, seconds: float = 0.0, **more) -> RayRow:
    record = Record.failed(Path(os.fsdecode(rel)), Path(os.fsdecode(out_rel)), msg, kind, seconds)
    return RayRow(rel, out_rel, "failed", record, **more)


def _given_up(rel: bytes, out_rel: bytes, stage: str, **more) -> RayRow:
    msg = (
        f"{os.fsdecode(rel)}: its Ray {stage} worker died {MAX_ATTEMPTS} times while on it (a crash, an "
        "out-of-memory kill or a lost node); not retried again"
    )
    return _failed(rel, out_rel, msg, "crash", **more)


_pools: dict[tuple, Any] = {}  # one decoding child process per Ray task process, kept between tasks


def _decode_pool(job: dict):
    from ..workers import DecodePool

    key = (_key(job["config"]), job["image_size"], job["timeout"])
    if key not in _pools:
        for old in _pools.values():
            old.close()
        _pools.clear()
        video = config_from_dict(job["config"]).video
        _pools[key] = DecodePool(video, job["image_size"], workers=1, timeout=job["timeout"], threads=1)
    return _pools[key]


def decode_batch(batch: dict, job: dict) -> dict:
    """The decode stage: planned items (pickled ``(source, output, unverified, (size, mtime_ns) or None)``, the
    last as the driver saw the file) to pickled RayRows."""
    rows = []
    for item in batch["item"]:
        rel, out_rel, unverified, expect = pickle.loads(item)
        rows.append(pickle.dumps(_decode_row(rel, out_rel, unverified, job, expect)))
    return {"item": rows}


def _decode_row(
    rel: bytes, out_rel: bytes, unverified: bool, job: dict, expect: tuple[int, int] | None = None
) -> RayRow:
    root, out_dir = place(job["root"]), Path(job["out_dir"])  # IN_DIR may be a URL
    where = node_name()
    src = root / os.fsdecode(rel)
    try:
        if not root.is_dir():
            return _failed(rel, out_rel, f"{root}: not visible on Ray node {where}; {SHARED}", "missing")
        other = other_file(src, expect, where)
        if other is not None:
            return _failed(rel, out_rel, other, "mismatch", decoded=where)
        problem = None
        if unverified:
            state, why = existing_output(out_dir / os.fsdecode(out_rel), None, src)
            if state == "done":
                return RayRow(rel, out_rel, "skipped", decoded=where)
            problem = f"{why}; it is redone"
        if _attempt(str(out_dir), rel, "decode") > MAX_ATTEMPTS:
            return _given_up(rel, out_rel, "decode")
        test_fault("decode-task", str(src))
        pool = _decode_pool(job)
        pool.submit(None, str(src))
        done = []
        while pool.busy:
            done += pool.get()
        d = done[0]
        row = RayRow(rel, out_rel, "decoded", decoded=where, problem=problem, seconds=d.seconds)
        if not d.ok:
            row.status, row.record = "failed", Record.decode_failed(d, row.rel, row.out_rel)
            return row
        row.clip = pickle.dumps(d.clip, protocol=5)
        return row
    except Exception as exc:  # a bug here must cost one video, never the Dataset
        return _failed(rel, out_rel, f"{src}: decoding failed on Ray node {where} ({type(exc).__name__}: {exc})")


def videos_per_batch(config: dict) -> int:
    """Videos per Ray batch of the encode stage: as many as fill one forward pass (``encoder.batch_frames``) at the
    frames a video gives (``video.frames``), at least 1; the last pass of each Ray batch is padded."""
    from ...encoder.packing import pass_frames

    device = str(config["runtime"]["device"]).partition(":")[0]  # pinned for the cluster by the probe
    return max(1, pass_frames(config["encoder"]["batch_frames"], device) // max(1, config["video"]["frames"]))


def encoder_class(job: dict) -> type:
    """The encoder actor class, with the job in the class itself: no constructor arguments in the object store."""

    class SlowfastEncoder:
        def __init__(self) -> None:
            from ...pipeline import Pipeline

            self.pipe = Pipeline(config_from_dict(job["config"]))
            self.where = node_name()

        def __call__(self, batch: dict) -> dict:
            """Every decoded video of the Ray batch through the ViT together (``encoder.packing``: the frames of
            several videos per forward pass, the same bits as each alone), then one token file each."""
            from ...encoder.packing import Packer

            rows = [pickle.loads(item) for item in batch["item"]]
            out: dict[int, RayRow] = {}
            clips = {}
            for i, row in enumerate(rows):
                if row.status != "decoded":
                    out[i] = row
                    continue
                try:
                    if _attempt(job["out_dir"], row.source, "encode") > MAX_ATTEMPTS:
                        out[i] = _given_up(row.source, row.output, "encode", encoded=self.where)
                        continue
                    test_fault("encode", os.fsdecode(row.source))
                    clips[i] = pickle.loads(row.clip)
                except Exception as exc:  # any bug: this video fails, the batch goes on
                    out[i] = self._failed(row, exc)
            packer = Packer(self.pipe.encoder, self.pipe.batch_frames)
            packed = {}
            for i, clip in clips.items():
                packed.update((p.key, p) for p in packer.add(i, clip.frames))
            packed.update((p.key, p) for p in packer.flush())
            for i, clip in clips.items():
                try:
                    out[i] = self._encode(rows[i], clip, packed[i])
                except Exception as exc:  # any bug: this video fails, the batch goes on
                    out[i] = self._failed(rows[i], exc)
            for i, row in enumerate(rows):
                if row.status == "decoded":
                    out[i].decoded, out[i].problem = row.decoded, row.problem
            return {"item": [pickle.dumps(out[i]) for i in range(len(rows))]}

        def _failed(self, row: RayRow, exc: Exception) -> RayRow:
            msg = f"{row.rel}: encoding failed ({type(exc).__name__}: {first_line(exc, 200)})"
            return _failed(row.source, row.output, msg, "encode")

        def _encode(self, row: RayRow, clip, packed) -> RayRow:
            from ...formats import make_writer
            from ..workers import Done

            rel, out_rel = row.source, row.output
            done = Done(0, None, True, clip=clip, seconds=row.seconds)
            t0 = time.perf_counter()
            encoded = encode_one(done, row.rel, row.out_rel, place(job["root"]), self.pipe, packed)
            out = RayRow(rel, out_rel, "failed", encoded=self.where)
            if isinstance(encoded, Record):
                encoded.seconds = row.seconds
                out.record = encoded
                return out
            writer = make_writer(job.get("format"), job["out_dir"])  # the driver commits what it writes here
            try:
                meta = writer.sample_meta(encoded.meta, row.out_rel, job.get("columns", {}).get(rel))
                tmp = writer.pending(encoded.tokens, meta, row.out_rel)
            except (SlowfastError, OSError) as exc:
                out.record = Record.write_failed(exc, row.rel, row.out_rel)
                out.record.seconds = row.seconds
                return out
            seconds = row.seconds + packed.seconds + time.perf_counter() - t0
            out.record = Record.ok(encoded.meta, row.rel, row.out_rel, seconds=seconds)
            out.status, out.tmp = "written", tmp
            return out

    return SlowfastEncoder
