"""Reading a token file's shape and meta without torch.load: same answers, and damage is caught."""

import zipfile

import pytest
import torch

from slowfast_cli.errors import SlowfastError
from slowfast_cli.header import read_header, read_token_header
from slowfast_cli.tokenfile import load_tokens, save_features, save_tokens

META = {"input_tokens": 100, "grid": [2, 3], "nested": {"a": [1, 2.5, "x", None, True]}, "ratio": 0.25}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_same_shape_and_meta_as_torch_load(tmp_path, dtype):
    p = tmp_path / "t.pt"
    save_tokens(p, torch.randn(1, 25, 7).to(dtype), META)
    h, full = read_token_header(p), load_tokens(p)
    assert h["tokens"].shape == tuple(full["tokens"].shape) == (1, 25, 7)
    assert h["meta"] == full["meta"] == {**META, "grid": [2, 3]}


def test_features_file(tmp_path):
    p = tmp_path / "f.pt"
    save_features(p, torch.zeros(4, 6, 3), {"grid": [2, 3]})
    assert read_header(p, "features", "features file")["features"].shape == (4, 6, 3)
    with pytest.raises(SlowfastError, match="expected a dict with 'tokens'"):
        read_token_header(p)


def test_cut_file_is_caught(tmp_path):
    p = tmp_path / "t.pt"
    save_tokens(p, torch.randn(1, 50, 8), META)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(SlowfastError, match="t.pt: not a token file"):
        read_token_header(p)


def test_tensor_data_of_the_wrong_size_is_caught(tmp_path):
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    save_tokens(good, torch.randn(1, 50, 8), META)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-16] if info.filename.endswith("data/0") else data)
    with pytest.raises(SlowfastError, match="damaged token file"):
        read_token_header(bad)


class Evil:
    """A class outside what a token file may hold."""


def test_other_objects_are_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"tokens": torch.zeros(1, 1, 1), "meta": {"x": Evil()}}, p)
    with pytest.raises(SlowfastError, match="not allowed in a token file"):
        read_token_header(p)


@pytest.mark.parametrize("content", [b"", b"plain text", b"PK\x03\x04 not really a zip"])
def test_garbage(tmp_path, content):
    p = tmp_path / "g.pt"
    p.write_bytes(content)
    with pytest.raises(SlowfastError, match="g.pt: not a token file"):
        read_token_header(p)


def test_wrong_rank(tmp_path):
    p = tmp_path / "r.pt"
    torch.save({"tokens": torch.zeros(3, 4), "meta": {}}, p)
    with pytest.raises(SlowfastError, match=r"\(1, L, D\)"):
        read_token_header(p)
