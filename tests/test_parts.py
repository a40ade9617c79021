"""The Ray engine's per-block parts without a cluster (``batch.parts``, ``engines.ray_block``): what an actor records,
what a rerun of its block reads back, and what the driver's merges and a later run's recovery make of them, after
kills at every step. The same code runs inside the actors in ``test_ray.py``."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import pytest
import torch

from slowfast_cli.batch.engines.ray_block import BlockOutput
from slowfast_cli.batch.parts import (
    PARTS,
    STATE,
    BlockLog,
    Merger,
    Part,
    PartError,
    open_shard,
    part_path,
    read_lines,
    recover,
)
from slowfast_cli.batch.records import Record, read_manifest
from slowfast_cli.dataset import TokenDataset
from slowfast_cli.errors import SlowfastError
from slowfast_cli.formats import index


def ok(name: str, out: str) -> Record:
    return Record(name, out, "ok", frames=4, input_tokens=8, output_tokens=2)


def tokens(i: int) -> torch.Tensor:
    return torch.full((1, 2, 4), float(i))


def wds_job(out: Path, shard_size: int = 2) -> dict:
    fmt = {"name": "webdataset", "shard_size": shard_size, "save_dtype": None}
    return {"out_dir": str(out), "format": fmt, "first_shard": 3, "shards_per_block": 2}


def test_a_rerun_counts_a_death_for_each_video_in_hand_and_skips_what_was_recorded(tmp_path):
    """Deaths come from the part's own log: the videos held when an attempt ended without finishing."""
    first = Part(tmp_path, 7)
    first.hold(["a.mp4", "b.mp4"])
    first.add(ok("a.mp4", "a.pt"))
    first.flush()  # a recorded, then the process dies with b in hand
    second = Part(tmp_path, 7)
    assert second.log.attempts == 1 and set(second.log.records) == {"a.mp4"}
    assert dict(second.log.deaths) == {"b.mp4": 1}  # a was recorded: no death counts for it
    second.hold(["b.mp4"])  # alone now; it dies again
    third = Part(tmp_path, 7)
    assert third.log.deaths["b.mp4"] == 2 and third.log.attempts == 2
    third.hold([])  # the block ends cleanly: nothing in hand
    assert Part(tmp_path, 7).log.deaths["b.mp4"] == 2


def test_a_file_becomes_visible_only_once_its_record_is_durable(tmp_path):
    """pt: the temporary file is renamed after the flush; a kill before it leaves the file hidden, and recovery (with
    the record durable) puts it in place: every visible output is recorded, every recorded one ends up visible."""
    out = BlockOutput({"out_dir": str(tmp_path), "format": None}, 0)
    rec = out.write(tokens(1), {"frames": 4}, Path("a.pt"), ok("a.mp4", "a.pt"))
    assert rec.status == "ok" and not (tmp_path / "a.pt").exists()  # buffered: not visible
    out.flush()
    assert (tmp_path / "a.pt").exists()
    out.write(tokens(2), {"frames": 4}, Path("b.pt"), ok("b.mp4", "b.pt"))
    out.part.close()  # killed before the flush: b is neither recorded nor visible
    assert not (tmp_path / "b.pt").exists()
    recover(tmp_path)
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["a.mp4"]
    assert not (tmp_path / PARTS).exists()


def test_a_recorded_file_not_yet_renamed_is_put_in_place_by_recovery(tmp_path):
    part = Part(tmp_path, 0)
    tmp = tmp_path / ".slowfast-tmp-x.pt"
    tmp.write_bytes(b"whole")
    part.add(ok("a.mp4", "a.pt"), tmp=str(tmp))
    part._write([e for e in part.buffer])  # durable, then killed before the rename
    recover(tmp_path)
    assert (tmp_path / "a.pt").read_bytes() == b"whole" and not tmp.exists()
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 1


def test_merges_are_exact_across_a_driver_killed_mid_merge(tmp_path):
    """The driver merges as rows arrive; a merge cut short after the manifest append (no state written) is cut off
    by recovery and done again: no line twice, none lost."""
    merger = Merger(tmp_path)
    merger.write([Record("skip.mp4", "skip.pt", "skipped")])
    part = Part(tmp_path, 0)
    part.add(ok("a.mp4", "a.pt"))
    part.flush()
    assert [r["source"] for r in merger.merge()] == ["a.mp4"]
    assert merger.merge() == []  # nothing new
    part.add(ok("b.mp4", "b.pt"))
    part.flush()
    state = (tmp_path / PARTS / STATE).read_bytes()
    merger.merge()  # then the driver is killed before its state is written:
    (tmp_path / PARTS / STATE).write_bytes(state)
    merger.manifest.close()
    recover(tmp_path)
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["skip.mp4", "a.mp4", "b.mp4"]


def write_sample(block: BlockOutput, i: int, key: str) -> None:
    meta = block.writer.sample_meta({"source": f"{key}.mp4"}, Path(key))
    block.write(tokens(i), meta, Path(key), ok(key, key))


def test_webdataset_block_shards_are_finished_after_their_samples_are_recorded(tmp_path):
    """A block's shards get the block's numbers; a sample appended but not recorded when the actor dies is cut
    off; the rerun goes on appending to the open shard (its recorded samples kept) under the same number, so a
    block's deaths never push its shards into the next block's numbers (found by hparts: the rerun used to finish
    the cut-back shard and go on with the next number, and the next block's first shard replaced it)."""
    job = wds_job(tmp_path, shard_size=3)  # 2 numbers a block: blocks of up to 6 rows
    out = BlockOutput(job, 1)  # numbers from 5 on (3 + 1 * 2)
    for i, key in enumerate("abcd"):
        write_sample(out, i, key)
    out.flush()  # a, b, c in shard 5 (finished once full, after their records); d recorded in the open shard
    write_sample(out, 9, "e")
    out.part.close()  # killed: e appended, never recorded
    assert (tmp_path / "shard-000005.tar").exists() and open_shard(tmp_path, 1).exists()
    again = BlockOutput(job, 1)
    assert set(again.recorded) == set("abcd") and not (tmp_path / "shard-000006.tar").exists()
    write_sample(again, 4, "e")
    again.flush()
    again.part.close()  # killed again, with d and e recorded in the open shard
    third = BlockOutput(job, 1)
    write_sample(third, 5, "f")
    third.close()
    assert not open_shard(tmp_path, 1).exists() and not (tmp_path / "shard-000007.tar").exists()
    after = BlockOutput(job, 2)  # the next block: its first number is 7
    write_sample(after, 6, "g")
    after.close()
    recover(tmp_path)
    rows = index.read_index(tmp_path / index.INDEX)
    numbers = {**dict.fromkeys("abc", "000005"), **dict.fromkeys("def", "000006"), "g": "000007"}
    assert [(r["key"], r["shard"][6:12]) for r in rows] == list(numbers.items())
    ds = TokenDataset(tmp_path)
    got = {ds[i]["key"]: ds[i]["tokens"][0, 0].item() for i in range(len(ds))}
    assert got == {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "e": 4.0, "f": 5.0, "g": 6.0}  # the unrecorded e gone
    assert sorted(r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")) == list("abcdefg")


def test_recovery_finishes_an_open_shard_a_killed_driver_left(tmp_path):
    out = BlockOutput(wds_job(tmp_path, shard_size=10), 0)
    out.write(tokens(1), out.writer.sample_meta({"source": "a.mp4"}, Path("a")), Path("a"), ok("a", "a"))
    out.flush()
    out.write(tokens(2), out.writer.sample_meta({"source": "b.mp4"}, Path("b")), Path("b"), ok("b", "b"))
    out.part.close()  # every process killed: a recorded in the open shard, b not
    entries, _ = read_lines(part_path(tmp_path, 0))
    assert BlockLog.of(entries).shard == "shard-000003.tar"
    recover(tmp_path)
    assert [r["key"] for r in index.read_index(tmp_path / index.INDEX)] == ["a"]
    assert len(TokenDataset(tmp_path)) == 1 and not (tmp_path / PARTS).exists()
    assert json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])["source"] == "a"


def test_a_full_disk_takes_back_what_it_could_not_record(tmp_path):
    """A part that cannot grow (a file size limit: the disk's refusal, EFBIG) is cut back to its last whole line, the
    file of the record it could not write is removed, and the error names the part: nothing visible unrecorded."""
    out = BlockOutput({"out_dir": str(tmp_path), "format": None}, 0)
    out.write(tokens(1), {"frames": 4}, Path("a.pt"), ok("a.mp4", "a.pt"))
    out.flush()
    size = part_path(tmp_path, 0).stat().st_size
    out.write(tokens(2), {"frames": 4}, Path("b.pt"), ok("b.mp4", "b.pt"))  # its temporary file is written
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(PartError, match="block-000000.jsonl: cannot write"):
            out.flush()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert part_path(tmp_path, 0).stat().st_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == [PARTS, "a.pt"]  # b neither in place nor left behind
    out.part.close()
    recover(tmp_path)
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["a.mp4"]


def test_a_removal_of_the_merged_parts_cut_short_never_merges_them_twice(tmp_path, monkeypatch):
    """Recovery renames the merged folder away at once before removing it: a kill in the middle of the removal
    (here: merged.json gone first, then the kill) used to leave parts without their state, merged again in full
    by the next run (every line twice)."""
    part = Part(tmp_path, 0)
    part.add(ok("a.mp4", "a.pt"))
    part.flush()
    part.close()
    real = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        if Path(path).is_dir():
            (Path(path) / STATE).unlink(missing_ok=True)
            raise KeyboardInterrupt  # the kill

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        recover(tmp_path)
    monkeypatch.setattr(shutil, "rmtree", real)
    recover(tmp_path)  # the next run
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["a.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]


@pytest.mark.parametrize("state", ["missing", "damaged"])
def test_a_lost_merge_state_adds_no_line_twice(tmp_path, state):
    """Without a readable merged.json (removed or edited by hand) recovery cannot know how far the parts were
    merged: it adds only the lines the manifest and the index do not hold yet (they used to be merged again)."""
    merger = Merger(tmp_path)
    out = BlockOutput(wds_job(tmp_path, shard_size=1), 0)
    write_sample(out, 1, "a")
    out.flush()
    merger.merge()
    merger.manifest.close()
    if state == "missing":
        (tmp_path / PARTS / STATE).unlink()
    else:
        (tmp_path / PARTS / STATE).write_text('{"manifest": "x", "index": 0, "parts": {}}')
    write_sample(out, 2, "b")
    out.close()
    recover(tmp_path)
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["a", "b"]
    assert [r["key"] for r in index.read_index(tmp_path / index.INDEX)] == ["a", "b"]


def test_hand_edited_part_lines_are_skipped_and_never_rename_outside_out_dir(tmp_path):
    """Lines slowfast does not write (not an object, a record without a source, paths leading out of OUT_DIR, a
    shard name that is not one) are skipped like a torn line: no traceback, nothing moved outside OUT_DIR."""
    out_dir, victim = tmp_path / "out", tmp_path / "victim.txt"
    out_dir.mkdir()
    victim.write_text("mine")
    part = Part(out_dir, 0)
    part.add(ok("a.mp4", "a.pt"))
    part.flush()
    part.close()
    bad = [5, [], "x", {"record": {"nope": 1}}, {"record": ok("b.mp4", "../../moved").__dict__, "tmp": "../victim.txt"},
           {"shard": "../../x.tar", "rows": []}, {"attempt": "two"}, {"hold": "a.mp4"}]  # fmt: skip
    with open(part_path(out_dir, 0), "a") as f:
        f.write("".join(json.dumps(b) + "\n" for b in bad))
    recover(out_dir)
    assert [r["source"] for r in read_manifest(out_dir / "manifest.jsonl")] == ["a.mp4"]
    assert victim.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim.txt"]


def test_recovery_never_cuts_a_manifest_through_a_symlink(tmp_path):
    """manifest.jsonl a symlink (slowfast never writes through one): recovery's cut used to follow it and truncate
    the file it points to; now the file is left whole and the run stops with the manifest's own error."""
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text('{"keep": 1}\n')
    out_dir = tmp_path / "out"
    Merger(out_dir).manifest.close()  # merged.json says: the manifest is empty
    (out_dir / "manifest.jsonl").unlink()
    (out_dir / "manifest.jsonl").symlink_to(elsewhere)
    with pytest.raises(SlowfastError, match="symlink"):
        recover(out_dir)
    assert elsewhere.read_text() == '{"keep": 1}\n'


def test_a_part_cut_shorter_than_merged_still_gets_its_new_lines_merged(tmp_path):
    """A part cut by hand below what merged.json says was merged: its lines are read again from its start, each
    added only where it is not the latest line of its video already (the new ones used to be skipped for good)."""
    merger = Merger(tmp_path)
    part = Part(tmp_path, 0)
    for name in ("a.mp4", "b.mp4"):
        part.add(ok(name, name[0] + ".pt"))
    part.flush()
    part.close()
    merger.merge()
    merger.manifest.close()
    lines = part_path(tmp_path, 0).read_bytes().splitlines(keepends=True)
    part_path(tmp_path, 0).write_bytes(lines[0])  # only the attempt line left
    again = Part(tmp_path, 0)
    again.add(ok("c.mp4", "c.pt"))
    again.flush()
    again.close()
    recover(tmp_path)
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["a.mp4", "b.mp4", "c.mp4"]


def test_a_video_failed_again_after_an_ok_is_not_taken_for_a_merged_line(tmp_path):
    """The line-by-line merge (no merge state) leaves out a record only where it is the video's *latest* line: a
    failure identical to an older one, recorded after an ok, is still added."""
    failed = Record.failed(Path("a.mp4"), Path("a.pt"), "a.mp4: cannot be decoded", "decode")
    (tmp_path / "manifest.jsonl").write_text(failed.to_json() + "\n" + ok("a.mp4", "a.pt").to_json() + "\n")
    part = Part(tmp_path, 0)
    part.add(failed)
    part.flush()
    part.close()
    recover(tmp_path)  # no merged.json
    assert [r["status"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["failed", "ok", "failed"]


def test_a_file_or_symlink_where_recovery_puts_the_merged_folder_is_no_obstacle(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    out_dir = tmp_path / "out"
    Part(out_dir, 0).close()
    (out_dir / ".slowfast-parts.done").symlink_to(outside)
    assert recover(out_dir) and not (out_dir / PARTS).exists() and (outside / "keep").exists()


def test_a_rerun_finishes_a_full_open_shard_before_adding_to_it(tmp_path, monkeypatch):
    """Killed after a full shard's samples were recorded and before it got its name: the rerun finishes it first
    (it used to take one more sample, a shard over --shard-size)."""
    from slowfast_cli.formats.block_shards import BlockShardWriter

    job = wds_job(tmp_path, shard_size=2)
    out = BlockOutput(job, 0)
    write_sample(out, 0, "a")
    real = BlockShardWriter.finish_shard

    def killed(self):
        raise KeyboardInterrupt  # the kill, after the flush of a and b

    monkeypatch.setattr(BlockShardWriter, "finish_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        write_sample(out, 1, "b")
    out.part.close()
    monkeypatch.setattr(BlockShardWriter, "finish_shard", real)
    again = BlockOutput(job, 0)
    write_sample(again, 2, "c")
    again.close()
    recover(tmp_path)
    rows = index.read_index(tmp_path / index.INDEX)
    assert [(r["key"], r["shard"]) for r in rows] == [("a", "shard-000003.tar"), ("b", "shard-000003.tar"),
                                                      ("c", "shard-000004.tar")]  # fmt: skip


def test_a_merge_that_fails_halfway_is_taken_back_and_done_once_later(tmp_path):
    """The manifest appended and then the index refused (a full disk; here a folder in its place): both are cut
    back, so the next merge adds the lines once (the manifest used to keep the first copy and get a second)."""
    merger = Merger(tmp_path)
    out = BlockOutput(wds_job(tmp_path, shard_size=1), 0)
    write_sample(out, 1, "a")
    out.flush()
    (tmp_path / index.INDEX).mkdir()
    with pytest.raises(SlowfastError, match="index.jsonl: cannot write"):
        merger.merge()
    (tmp_path / index.INDEX).rmdir()
    merger.merge()
    out.close()
    merger.close(complete=True)
    assert [r["source"] for r in read_manifest(tmp_path / "manifest.jsonl")] == ["a"]
    assert [r["key"] for r in index.read_index(tmp_path / index.INDEX)] == ["a"]


def test_a_part_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    """A file where the parts folder goes (or a full disk) at the start of a block: PartError, which the actor turns
    into the row that stops the run with this line (not a task failure that costs the block's videos)."""
    (tmp_path / ".slowfast-parts").write_text("not a folder")
    with pytest.raises(PartError, match=r"block-000003\.jsonl: cannot write \(File exists\); the batch stopped here"):
        BlockOutput({"out_dir": str(tmp_path), "format": None}, 3)
