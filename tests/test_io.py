"""Token/feature files: weights_only loading, plain meta, atomic writes, clear errors."""

import pytest
import torch

from slowfast_cli.errors import SlowfastError
from slowfast_cli.io import atomic_open, load_features, load_tokens, save_features, save_tokens


def test_token_file_round_trip_weights_only(tmp_path):
    p = tmp_path / "a.pt"
    t = torch.randn(1, 10, 4)
    save_tokens(p, t, {"grid": (2, 2), "nested": {"x": [1, 2.5, "s", True, None]}})
    raw = torch.load(p, weights_only=True)
    assert torch.equal(raw["tokens"], t) and raw["meta"]["grid"] == [2, 2]
    assert torch.equal(load_tokens(p)["tokens"], t)


def test_meta_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match="meta.bad holds a Tensor"):
        save_tokens(tmp_path / "a.pt", torch.zeros(1, 1, 1), {"bad": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.pt"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_replaces(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with atomic_open(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "not a token file"),
        (b"hello, I am text", "not a token file"),
    ],
)
def test_load_garbage(tmp_path, content, match):
    p = tmp_path / "g.pt"
    p.write_bytes(content)
    with pytest.raises(SlowfastError, match=match) as e:
        load_tokens(p)
    assert "g.pt" in str(e.value)


def test_load_wrong_dict_and_rank(tmp_path):
    p = tmp_path / "w.pt"
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(SlowfastError, match="not a token file \\(found 'weights'; expected a dict with 'tokens'"):
        load_tokens(p)
    torch.save({"tokens": torch.zeros(3, 2)}, p)
    with pytest.raises(SlowfastError, match=r"shape \(1, L, D\)"):
        load_tokens(p)


class Evil:
    """Any class outside torch's weights_only allow-list."""


def test_load_refuses_pickled_objects(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"tokens": torch.zeros(1, 1, 1), "meta": {"x": Evil()}}, p)
    with pytest.raises(SlowfastError, match="not a plain tensor file") as info:
        load_tokens(p)
    message = str(info.value)
    assert message.startswith(str(p)) and "test_io.Evil" in message and "expected a dict with 'tokens'" in message
    assert "weights_only" not in message and "\n" not in message  # never advise loading it unsafely


def test_features_validation(tmp_path):
    p = tmp_path / "f.pt"
    save_features(p, torch.randn(3, 6, 2), {"grid": [2, 3]})
    assert load_features(p)["features"].shape == (3, 6, 2)
    torch.save({"features": torch.randn(3, 6, 2), "meta": {"grid": [2, 2]}}, p)
    with pytest.raises(SlowfastError, match="grid 2x2 has 4 tokens but the features have N=6"):
        load_features(p)
    torch.save({"features": torch.randn(6, 2), "meta": {"grid": [2, 3]}}, p)
    with pytest.raises(SlowfastError, match="rank 2"):
        load_features(p)
    torch.save({"features": torch.randn(3, 6, 2), "meta": {}}, p)
    with pytest.raises(SlowfastError, match=r"meta\['grid'\]"):
        load_features(p)


def test_missing_file(tmp_path):
    with pytest.raises(SlowfastError, match="does not exist"):
        load_tokens(tmp_path / "nope.pt")
