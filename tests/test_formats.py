"""Output formats: pt, safetensors and webdataset shards give the same tensors; resume, index, columns, report
without torch, export, and the Dataset/collate over every format."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import media
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from typer.testing import CliRunner

from slowfast_cli.batch.records import read_manifest
from slowfast_cli.cli.app import app
from slowfast_cli.dataset import TokenDataset, collate
from slowfast_cli.errors import SlowfastError
from slowfast_cli.formats import OutputFormat, make_writer, shards
from slowfast_cli.header import TMP_PREFIX
from slowfast_cli.tokenfile import load_tokens

runner = CliRunner()
TINY = ["--config", "tiny", "--workers", "1", "--frames", "8"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def pt_tokens(folder: Path) -> dict[str, torch.Tensor]:
    return {str(p.relative_to(folder).with_suffix("")): load_tokens(p)["tokens"] for p in folder.rglob("*.pt")}


def shard_tokens(folder: Path) -> dict[str, torch.Tensor]:
    """key -> tokens of every sample in the finished shards, read with tarfile and the safetensors library."""
    found = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".safetensors"):
                    found[m.name.removesuffix(".safetensors")] = st_load(tar.extractfile(m).read())["tokens"]
    return found


@pytest.fixture(scope="module")
def twenty(tmp_path_factory):
    """20 short videos and their uninterrupted `pt` batch (the reference), made once for the module."""
    root = tmp_path_factory.mktemp("twenty")
    src = root / "in"
    src.mkdir()
    for i in range(20):
        media.make_video(src / f"v{i:02d}.mp4", frames=4 + i % 8, size=(64, 48))
    ref = root / "pt"
    r = run("batch", src, "-o", ref, *TINY)
    assert r.exit_code == 0, r.output
    return src, ref


@pytest.mark.slow
def test_webdataset_interrupted_and_resumed_equals_pt(twenty, tmp_path):
    """Done-when: a 20-video webdataset batch, Ctrl-C'd (a real SIGINT) and resumed, gives shards whose samples equal
    the pt format's tensors bit for bit; report and the Dataset read them."""
    src, ref = twenty
    out = tmp_path / "wds"
    cmd = [sys.executable, "-m", "slowfast_cli", "batch", str(src), "-o", str(out), *TINY, "--format", "webdataset",
           "--shard-size", "3"]  # fmt: skip
    env = {**os.environ, "SLOWFAST_TEST_FAULTS": "decode-hang:v19.mp4"}  # still running when the signal comes
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_manifest(out / "manifest.jsonl")) < 7 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    done = len(read_manifest(out / "manifest.jsonl"))
    assert 7 <= done < 20
    finished = shard_tokens(out)  # only whole shards of 3 under final names; the rest waits in the hidden open one
    assert len(finished) == 3 * (done // 3) and (out / shards.OPEN).exists() == bool(done % 3)
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    statuses = [r["status"] for r in read_manifest(out / "manifest.jsonl")]
    assert statuses.count("ok") == 20 and statuses.count("skipped") == done  # each video encoded once
    samples, expected = shard_tokens(out), pt_tokens(ref)
    assert sorted(samples) == sorted(expected) == [f"v{i:02d}" for i in range(20)]
    for key, tokens in expected.items():
        assert samples[key].dtype == tokens.dtype and torch.equal(samples[key], tokens), key
    assert not (out / shards.OPEN).exists() and len(list(out.glob("shard-*.tar"))) == 7
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in index) == sorted(expected)

    r = run("report", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["files"] == 20
    ds = TokenDataset(out)
    assert len(ds) == 20
    assert all(torch.equal(ds[i]["tokens"], expected[ds[i]["key"]][0]) for i in range(len(ds)))


class TestSameTensorsEveryFormat:
    def test_export_and_batch_give_the_pt_tensors_bit_for_bit(self, twenty, tmp_path):
        src, ref = twenty
        expected = pt_tokens(ref)
        r = run("export", ref, "-o", tmp_path / "wds", "--format", "webdataset", "--shard-size", "8")
        assert r.exit_code == 0, r.output
        names = sorted(p.name for p in (tmp_path / "wds").glob("shard-*.tar"))
        assert names == [f"shard-00000{i}.tar" for i in range(3)]
        got = shard_tokens(tmp_path / "wds")
        assert sorted(got) == sorted(expected) and all(torch.equal(v, expected[k]) for k, v in got.items())
        again = run("export", ref, "-o", tmp_path / "wds", "--format", "webdataset", "--shard-size", "8", "--json")
        assert json.loads(again.stdout)["kept"] == 20  # resumable: nothing written twice

        r = run("batch", src, "-o", tmp_path / "st", *TINY, "--format", "safetensors", "--pattern", "v0[0-3].mp4")
        assert r.exit_code == 0, r.output
        for i in range(4):
            got = load_file(tmp_path / "st" / f"v0{i}.safetensors")["tokens"]  # the safetensors library reads ours
            assert torch.equal(got, expected[f"v0{i}"])
        ours = load_tokens(tmp_path / "st" / "v00.safetensors")  # torch.load would drop the header's meta
        assert torch.equal(ours["tokens"], expected["v00"]) and ours["meta"]["source"].endswith("v00.mp4")
        r = run("batch", src, "-o", tmp_path / "st", *TINY, "--format", "safetensors", "--pattern", "v0[0-3].mp4",
                "--json")  # fmt: skip
        assert r.exit_code == 0 and json.loads(r.stdout)["run"]["skipped"] == 4  # resume works for the format

    def test_dataset_and_collate_over_pt_and_safetensors(self, twenty, tmp_path):
        _, ref = twenty
        ds = TokenDataset(ref)
        assert len(ds) == 20 and ds[0]["tokens"].ndim == 2 and ds[0]["columns"] == {}
        batch = collate([ds[0], ds[4]])  # 4 and 8 frames: different lengths
        n0, n4 = ds[0]["tokens"].shape[0], ds[4]["tokens"].shape[0]
        assert n0 < n4 and batch["tokens"].shape == (2, n4, ds[0]["tokens"].shape[1])
        assert batch["attention_mask"].sum(1).tolist() == [n0, n4] and batch["lengths"].tolist() == [n0, n4]
        assert torch.equal(batch["tokens"][0, :n0], ds[0]["tokens"]) and not batch["tokens"][0, n0:].any()
        left = collate([ds[0], ds[4]], padding_side="left")
        assert torch.equal(left["tokens"][0, n4 - n0 :], ds[0]["tokens"]) and left["attention_mask"][0, 0] == 0
        with pytest.raises(ValueError, match="padding_side"):
            collate([ds[0]], padding_side="middle")
        wide = dict(ds[4], key="wide", tokens=torch.cat([ds[4]["tokens"]] * 2, dim=1))
        half = dict(ds[4], key="half", tokens=ds[4]["tokens"].half())
        for other, what in ((wide, "128 wide"), (half, "torch.float16")):  # never a bare RuntimeError or a quiet cast
            with pytest.raises(ValueError, match=f"sample 'f?{other['key']}' has tokens .*{what}"):
                collate([ds[0], other])


def test_csv_keys_and_columns_reach_the_json_the_index_and_the_dataset(twenty, tmp_path):
    src, ref = twenty
    table = tmp_path / "list.csv"
    table.write_text('path,key,caption,id\nv01.mp4,clip/one,"a caption, with a comma",7\nv02.mp4,,two,8\n')
    out = tmp_path / "wds"
    r = run("batch", src, "-o", out, *TINY, "--format", "webdataset", "--files-from", table)
    assert r.exit_code == 0, r.output
    index = {r["key"]: r for r in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    assert sorted(index) == ["clip/one", "v02"]
    assert index["clip/one"]["columns"] == {"caption": "a caption, with a comma", "id": "7"}
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert json.load(tar.extractfile("clip/one.json"))["columns"]["caption"] == "a caption, with a comma"
    ds = TokenDataset(out)
    got = {ds[i]["key"]: ds[i] for i in range(len(ds))}
    assert got["v02"]["columns"] == {"caption": "two", "id": "8"}
    assert torch.equal(got["clip/one"]["tokens"], pt_tokens(ref)["v01"][0])
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"path": "v03.mp4", "key": "k.3"}) + "\n")
    r = run("batch", src, "-o", tmp_path / "bad", *TINY, "--format", "webdataset", "--files-from", jsonl)
    assert r.exit_code == 2 and "has a dot" in r.output


def test_save_dtype_is_stored_recorded_and_part_of_resume(twenty, tmp_path):
    src, ref = twenty
    out = tmp_path / "st"
    args = ["batch", src, "-o", out, *TINY, "--format", "safetensors", "--pattern", "v00.mp4"]
    assert run(*args, "--save-dtype", "fp16").exit_code == 0
    got = load_file(out / "v00.safetensors")["tokens"]
    assert got.dtype == torch.float16 and torch.equal(got, pt_tokens(ref)["v00"].half())
    meta = TokenDataset(out)[0]["meta"]
    computed = load_tokens(ref / "v00.pt")["meta"]["dtype"]  # --dtype auto: fp32 or bf16, by the CPU
    assert meta["save_dtype"] == "fp16" and meta["dtype"] == computed
    r = run(*args)  # the same settings but another stored dtype: not silently kept
    assert r.exit_code == 2 and f"stored dtype: fp16 -> {computed}" in r.output


def test_report_reads_every_format_without_torch(twenty, tmp_path):
    _, ref = twenty
    assert run("export", ref, "-o", tmp_path / "wds", "--format", "webdataset").exit_code == 0
    assert run("export", ref, "-o", tmp_path / "st", "--format", "safetensors").exit_code == 0
    code = ("import sys, json; from slowfast_cli.report import build_report; "
            "print(json.dumps([build_report(p).files for p in sys.argv[1:]])); "
            "assert 'torch' not in sys.modules")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "wds"), str(tmp_path / "st")], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [20, 20]


def test_a_torn_open_shard_is_cut_back_and_a_damaged_sample_is_reported(tmp_path):
    fmt = OutputFormat("webdataset", shard_size=10)
    w = make_writer(fmt, tmp_path)
    w.load()
    for i in range(3):
        key = Path(f"k{i}")
        w.write(torch.full((1, 2 + i, 4), float(i)), w.sample_meta({"source": f"{i}.mp4"}, key), key)
    whole = (tmp_path / shards.OPEN).stat().st_size
    with open(tmp_path / shards.OPEN, "ab") as f:  # a kill -9 in the middle of the next sample
        f.write(b"".join(shards.sample_bytes("k3", [b"x" * 100], {})[0])[:700])
    again = make_writer(fmt, tmp_path)
    again.load()
    assert sorted(again.open) == ["k0", "k1", "k2"] and (tmp_path / shards.OPEN).stat().st_size == whole
    again.finish()
    shard = tmp_path / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    row = json.loads((tmp_path / "index.jsonl").read_text().splitlines()[1])
    data[row["offset"] + row["size"] - 1] ^= 0xFF  # one flipped bit in k1's tensor bytes
    shard.write_bytes(bytes(data))
    ds = TokenDataset(tmp_path, verify=True)
    assert [key for key, *_ in ds.items] == ["k0", "k1", "k2"]
    with pytest.raises(SlowfastError, match="CRC-32"):
        ds[1]
    assert TokenDataset(tmp_path)[1]["key"] == "k1"  # unverified (the default), it reads
    r = run("report", tmp_path, "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["files"] == 2
    assert "k1" in json.loads(r.stdout)["skipped"][0]["error"] and "CRC-32" in r.output


def test_the_readme_dataset_example_runs(twenty, tmp_path, monkeypatch, capsys):
    _, ref = twenty
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Output formats") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n", section.index("```python"))]
    monkeypatch.chdir(tmp_path)
    assert run("export", ref, "-o", "shards", "--format", "webdataset").exit_code == 0
    exec(compile(code, "README.md", "exec"), {})
    assert "torch.Size([4," in capsys.readouterr().out


class TestTables:
    """CSV/JSONL --files-from: what is refused, each with one line naming the file and line."""

    @pytest.mark.parametrize(
        "name, text, message",
        [
            ("l.csv", "file,caption\nv00.mp4,x\n", "needs a header row with a 'path' column (found file, caption)"),
            ("l.csv", "path,caption\nv00.mp4,x\nv00.mp4,y\n", "l.csv:3: 'v00.mp4' is listed again (first on line 2)"),
            ("l.csv", "path\n../x.mp4\n", "l.csv:2: '../x.mp4' is not a file inside"),
            ("l.jsonl", '["v00.mp4"]\n', "l.jsonl:1: not a JSON object (found a list)"),
            ("l.jsonl", '{"caption": "x"}\n', "l.jsonl:1: no 'path'"),
            ("l.jsonl", '{"path": "v00.mp4", "key": "../up"}\n', "key '../up' must be a relative name"),
        ],
    )
    def test_bad_tables_are_usage_errors(self, twenty, tmp_path, name, text, message):
        src, _ = twenty
        (tmp_path / name).write_text(text)
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / name)
        assert r.exit_code == 2 and message in r.output, r.output

    def test_a_key_names_a_pt_file_and_columns_go_into_its_meta(self, twenty, tmp_path):
        src, ref = twenty
        (tmp_path / "l.jsonl").write_text(json.dumps({"path": "v05.mp4", "key": "sub/five", "tags": [1, 2]}) + "\n")
        r = run("batch", src, "-o", tmp_path / "out", *TINY, "--files-from", tmp_path / "l.jsonl")
        assert r.exit_code == 0, r.output
        got = load_tokens(tmp_path / "out" / "sub" / "five.pt")
        assert got["meta"]["key"] == "sub/five" and got["meta"]["columns"] == {"tags": [1, 2]}
        assert torch.equal(got["tokens"], pt_tokens(ref)["v05"])


def test_encode_writes_safetensors_with_its_features_and_refuses_webdataset(twenty, tmp_path):
    src, ref = twenty
    out, feats = tmp_path / "v06.safetensors", tmp_path / "v06.features.pt"
    r = run("encode", src / "v06.mp4", "--config", "tiny", "--frames", 8, "--format", "safetensors", "-o", out,
            "--save-features", feats)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert torch.equal(load_file(out)["tokens"], pt_tokens(ref)["v06"])
    assert torch.load(feats, weights_only=True)["features"].shape[0] == 8
    r = run("encode", src / "v06.mp4", "--config", "tiny", "--format", "webdataset", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "use `slowfast batch`" in r.output


def test_the_index_is_rebuilt_from_the_shards_and_a_redone_sample_replaces_its_open_copy(tmp_path):
    fmt = OutputFormat("webdataset", shard_size=3)
    w = make_writer(fmt, tmp_path)
    w.load()
    for i, key in enumerate(["a", "b", "a", "c", "d"]):  # "a" redone while its shard is still open
        w.write(torch.full((1, 2, 4), float(i)), w.sample_meta({"source": f"{key}.mp4"}, Path(key)), Path(key))
    w.finish()
    first = shard_tokens(tmp_path)
    assert sorted(first) == ["a", "b", "c", "d"] and first["a"][0, 0, 0] == 2  # the newest copy, once
    lines = (tmp_path / "index.jsonl").read_text()
    (tmp_path / "index.jsonl").unlink()
    assert len(TokenDataset(tmp_path)) == 4  # no index: the tar headers say where the samples are
    again = make_writer(fmt, tmp_path)
    again.load()  # rebuilt, the same lines
    assert (tmp_path / "index.jsonl").read_text() == lines
    r = run("report", tmp_path / "shard-000001.tar", "--json")  # one shard
    assert r.exit_code == 0 and json.loads(r.stdout)["files"] == 1


def test_export_into_a_folder_inside_its_input_reads_only_the_pt_files(twenty, tmp_path):
    _, ref = twenty
    src = tmp_path / "tokens"
    src.mkdir()
    for name in ("v00.pt", "v01.pt"):
        (src / name).write_bytes((ref / name).read_bytes())
    for _ in range(2):  # the second run finds the first's .safetensors files under IN_DIR and leaves them alone
        r = run("export", src, "-o", src / "st", "--format", "safetensors", "--json")
        assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["kept"] == 2 and sorted(p.name for p in (src / "st").iterdir()) == [
        ".slowfast.lock", "v00.safetensors", "v01.safetensors"]  # fmt: skip
    assert len(TokenDataset(src)) == 4  # a folder of .pt and .safetensors files: every one a sample
