"""What the Ray engine runs on the nodes: the probe and the encoder actor, and the typed row it sends back to the
driver (``RayRow``; the rows an actor finished since its last answer travel pickled together in one ``items`` value).

The encoder actor reads its block of the plan (``ray_plan``), decodes with a ``DecodePool`` of its own, on its own
node (decoded frames never cross nodes or enter the object store), packs the frames into forward passes, puts each
output in place and records it in the block's part (``ray_block``, ``batch.parts``), and answers with the rows once
they are recorded. Every exception is caught per video and becomes that video's failure row. Ray restarts a dead
actor and runs its block again (its own ``max_restarts``/``max_task_retries``); the part says what is done already
and which videos were in hand at each death, and a video given up after ``MAX_ATTEMPTS`` deaths is a ``crash``.
Imported by the driver (``ray.py``) and, through cloudpickle, on the nodes; the package must be installed there.
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from ...config import config_from_dict
from ...errors import SlowfastError, first_line
from ...remote import place
from ..faults import test_fault
from ..parts import PartError
from ..plan import existing_output
from ..records import Record
from ..run import encode_one
from .ray_plan import Planned, planned

MAX_ATTEMPTS = 3  # a video whose actor died this many times while it was in hand is given up (a ``crash`` record)
ANSWER_S = 0.5  # an actor sends its finished rows at least this often while it works through a block
SHARED = "IN_DIR and OUT_DIR must be on a file system that every node sees at the same path"
STATUSES = ("skipped", "failed", "written", "stop")  # RayRow.status


@dataclass
class RayRow:
    """What an encoder actor says of one video, once its record is durable in the block's part."""

    source: bytes  # path relative to IN_DIR, as the file system's bytes (any name survives)
    output: bytes  # path relative to OUT_DIR
    status: str  # one of STATUSES ("stop": the part could not be written, ``problem`` says why; the batch stops)
    record: Record | None = None  # the video's record
    decoded: str | None = None  # the node that decoded it (node_name)
    encoded: str | None = None  # the node that encoded it (the same node: frames stay where they were decoded)
    problem: str | None = None  # a damaged output found on the node, redone: a warning for the driver

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


def _visible(root: Path | object) -> bool:
    """Whether IN_DIR is a folder here: checked for every video where it is local (a mount can go away, and a stat
    costs nothing); a URL's once per process (each check is a request to the store, and a listing the driver made
    shows it existed; a video gone since is that video's ``missing`` record)."""
    return root.is_dir() if isinstance(root, Path) else _remote_visible(str(root))


@functools.lru_cache(maxsize=4)
def _remote_visible(url: str) -> bool:
    return place(url).is_dir()


def check_video(video: Planned, job: dict, where: str) -> tuple[RayRow | None, str | None]:
    """Before decoding, on the node: (the video's final row, None) when it is not to be decoded here (IN_DIR not
    visible, another file than the driver saw, an output found done by its CRC check), else (None, a warning for
    an existing output that is redone, or None)."""
    root, out_dir = place(job["root"]), Path(job["out_dir"])  # IN_DIR may be a URL
    rel, out_rel = video.source, video.output
    src = root / os.fsdecode(rel)
    if not _visible(root):
        return _failed(rel, out_rel, f"{root}: not visible on Ray node {where}; {SHARED}", "missing"), None
    other = other_file(src, video.expect, where)
    if other is not None:
        return _failed(rel, out_rel, other, "mismatch", decoded=where), None
    if video.unverified:
        state, why = existing_output(out_dir / os.fsdecode(out_rel), None, src)
        if state == "done":
            return RayRow(rel, out_rel, "skipped", decoded=where), None
        return None, f"{why}; it is redone"
    return None, None


def encoder_class(job: dict) -> type:
    """The encoder actor class, with the job in the class itself: no constructor arguments in the object store.

    ``job``: the resolved config, root, out_dir, timeout, image_size (the probe's decode-time size), format (the
    output format's settings), decoders (decoding processes per actor), and for webdataset first_shard and
    shards_per_block (the shard numbers of block ``b`` start at ``first_shard + b * shards_per_block``)."""

    class SlowfastEncoder:
        def __init__(self) -> None:
            from ...pipeline import Pipeline
            from ..workers import DecodePool

            self.pipe = Pipeline(config_from_dict(job["config"]))
            self.where = node_name()
            self.root = place(job["root"])
            video = config_from_dict(job["config"]).video
            self.pool = DecodePool(video, job["image_size"], workers=job["decoders"], timeout=job["timeout"], threads=1)

        def __call__(self, batch: dict):
            """The batch's blocks through decode, encode and write; yields ``{"items": [pickled list of RayRows]}``
            every ``ANSWER_S`` seconds or so and at the end of each block, each time once the rows are recorded."""
            from .ray_block import BlockOutput

            videos = list(planned(batch))
            for block in dict.fromkeys(v.block for v in videos):  # a batch is one block (ray_plan): in order
                out = None
                try:
                    out = BlockOutput(job, block)  # a part that cannot be made stops the run, as one cut short does
                    done = out.recorded  # an earlier attempt's: sent again (the driver keeps the first copy)
                    rows = [self._again(v, done[s]) for v in videos if v.block == block and (s := _source(v)) in done]
                    todo = [v for v in videos if v.block == block and _source(v) not in done]
                    sent = time.monotonic()
                    for row in self._rows(todo, out):
                        rows.append(row)
                        if time.monotonic() - sent >= ANSWER_S:
                            out.flush()
                            yield {"items": [pickle.dumps(rows)]}
                            rows, sent = [], time.monotonic()
                    out.close()
                except PartError as exc:  # the part cannot be written (a full disk): the run stops there
                    rows = [RayRow(b"", b"", "stop", problem=str(exc))]
                    if out is not None:
                        out.part.close()
                if rows:
                    yield {"items": [pickle.dumps(rows)]}
                if rows and rows[-1].status == "stop":
                    return

        def _again(self, video: Planned, record: dict) -> RayRow:
            record = Record(**record)
            return RayRow(video.source, video.output, "written" if record.status == "ok" else record.status, record)

        def _rows(self, videos, out):
            """As the local engine's loop: at most 2 videos a decoder in flight, frames packed into passes."""
            from ...encoder.packing import Packer

            pool, ready = self.pool, []
            todo = iter(videos)
            packer = Packer(self.pipe.encoder, self.pipe.batch_frames)  # frames of several videos per forward pass
            decoded: dict[int, tuple] = {}  # job id -> (video, Done, warning), while its frames wait in the packer

            def feed() -> None:  # submit the next video to decode; the final rows of the others are ready at once
                for video in todo:
                    row, problem = self._check(video, out)
                    if row is not None:
                        row.record = row.record or Record.skipped(*_paths(video))
                        out.record(row.record)
                        ready.append(row)
                        continue
                    pool.submit((video, problem), str(self.root / os.fsdecode(video.source)))
                    return

            for _ in range(2 * max(1, pool.workers)):
                feed()
            while ready or pool.busy or decoded:
                yield from ready
                ready.clear()
                packed = []
                for done in pool.get() if pool.busy else []:
                    feed()
                    video, problem = done.payload
                    if not done.ok:
                        record = Record.decode_failed(done, *_paths(video))
                        out.record(record)
                        ready.append(self._row(video, problem, record))
                    elif out.deaths(_source(video)):  # in hand at an actor's death: alone, so only it can die
                        out.hold([_source(video)])
                        test_fault("encode", os.fsdecode(video.source))
                        ready.append(self._encode(video, problem, done, None, out))
                    else:
                        decoded[done.job_id] = (video, done, problem)
                        out.hold(_source(v) for v, _, _ in decoded.values())
                        test_fault("encode", os.fsdecode(video.source))
                        packed += packer.add(done.job_id, done.clip.frames)
                if not pool.busy:  # nothing more is coming in this block: the last pass, padded
                    packed += packer.flush()
                for p in packed:
                    video, done, problem = decoded.pop(p.key)
                    ready.append(self._encode(video, problem, done, p, out))

        def _check(self, video: Planned, out) -> tuple[RayRow | None, str | None]:
            try:
                if out.deaths(_source(video)) >= MAX_ATTEMPTS:
                    msg = (f"{os.fsdecode(video.source)}: its Ray encode worker died {MAX_ATTEMPTS} times while on it "
                           "(a crash, an out-of-memory kill or a lost node); not retried again")  # fmt: skip
                    return _failed(video.source, video.output, msg, "crash", encoded=self.where), None
                return check_video(video, job, self.where)
            except Exception as exc:  # a bug here must cost one video, never the block
                return self._row(video, None, _bug(video, "decoding", self.where, exc)), None

        def _row(self, video: Planned, problem: str | None, record: Record) -> RayRow:
            where = self.where
            return RayRow(video.source, video.output, "failed", record, where, where, problem)

        def _encode(self, video: Planned, problem: str | None, done, packed, out) -> RayRow:
            """Finish one decoded video (its packed pass's tokens, or alone when ``packed`` is None) and write it."""
            rel, out_rel = _paths(video)
            try:
                t0 = time.perf_counter()
                encoded = encode_one(done, rel, out_rel, self.root, self.pipe, packed)
                if isinstance(encoded, Record):
                    encoded.seconds = done.seconds
                    out.record(encoded)
                    return self._row(video, problem, encoded)
                meta = out.writer.sample_meta(encoded.meta, out_rel, video.columns)
                spent = (packed.seconds if packed is not None else 0.0) + time.perf_counter() - t0
                record = Record.ok(encoded.meta, rel, out_rel, seconds=done.seconds + spent)
                record = out.write(encoded.tokens, meta, out_rel, record)
                status = "written" if record.status == "ok" else "failed"
                return RayRow(video.source, video.output, status, record, self.where, self.where, problem)
            except PartError:
                raise
            except Exception as exc:  # any bug: this video fails, the block goes on
                msg = f"{rel}: encoding failed ({type(exc).__name__}: {first_line(exc, 200)})"
                record = Record.failed(rel, out_rel, msg, "encode")
                out.record(record)
                return self._row(video, problem, record)

    return SlowfastEncoder


def _source(video: Planned) -> str:
    """The video's ``Record.source``: how the part names it."""
    return str(Path(os.fsdecode(video.source)))


def _paths(video: Planned) -> tuple[Path, Path]:
    return Path(os.fsdecode(video.source)), Path(os.fsdecode(video.output))


def _bug(video: Planned, stage: str, where: str, exc: Exception) -> Record:
    rel, out_rel = _paths(video)
    msg = f"{rel}: {stage} failed on Ray node {where} ({type(exc).__name__}: {first_line(exc, 200)})"
    return Record.failed(rel, out_rel, msg)
