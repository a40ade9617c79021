"""Token/feature files: weights_only loading, plain meta, atomic writes, clear errors."""

import json
import os
import signal
import stat
import time

import pytest
import torch
from faults import ctrl_c_inside_torch_save

from slowfast_cli.atomic import atomic_open, json_text, sigint_deferred, write_json
from slowfast_cli.errors import SlowfastError
from slowfast_cli.tokenfile import (
    features_object,
    load_features,
    load_tokens,
    save_all,
    save_features,
    save_tokens,
    token_object,
)


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


# --- faults while writing (issue 8 §4) -------------------------------------------------------------------------
def test_files_get_the_mode_the_umask_gives(tmp_path):
    """mkstemp creates 0600; a token file must be readable by a training job under another account (0644)."""
    old = os.umask(0o022)
    try:
        save_tokens(tmp_path / "a.pt", torch.zeros(1, 2, 3), {})
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        save_tokens(tmp_path / "b.pt", torch.zeros(1, 2, 3), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o600


def test_full_disk_is_named_and_leaves_nothing(small_disk):
    disk = small_disk("256k")
    with pytest.raises(SlowfastError, match="No space left on device") as info:
        save_tokens(disk / "big.pt", torch.zeros(1, 1000, 100), {})  # 400 kB
    assert str(disk / "big.pt") in str(info.value) and "unexpected pos" not in str(info.value)
    assert os.listdir(disk) == []


def test_several_files_appear_together_or_not_at_all(small_disk):
    """A token file that fits and a features file that does not: neither appears (encode --save-features)."""
    disk = small_disk("256k")
    tokens = token_object(torch.zeros(1, 10, 4), {})
    features = features_object(torch.zeros(100, 10, 100), {"grid": [2, 5]})  # 400 kB
    with pytest.raises(SlowfastError, match="No space left on device"):
        save_all([(disk / "t.pt", tokens), (disk / "f.pt", features)])
    assert os.listdir(disk) == []
    (disk / "t.pt").write_bytes(b"an older file")  # an existing target stays as it was
    with pytest.raises(SlowfastError):
        save_all([(disk / "t.pt", tokens), (disk / "f.pt", features)])
    assert os.listdir(disk) == ["t.pt"] and (disk / "t.pt").read_bytes() == b"an older file"


@pytest.fixture
def ctrl_c_while_saving(monkeypatch):
    """torch.save (torch's, not ours) writing through a file that receives Ctrl-C mid-write."""
    ctrl_c_inside_torch_save(monkeypatch)


def test_ctrl_c_inside_torch_save_is_an_interrupt_not_a_runtime_error(tmp_path, ctrl_c_while_saving):
    """torch's zip writer turns the KeyboardInterrupt of its write callback into "RuntimeError: unexpected pos"."""
    with pytest.raises(KeyboardInterrupt):
        save_tokens(tmp_path / "t.pt", torch.zeros(1, 100, 10), {})
    assert os.listdir(tmp_path) == []


def test_sigint_deferred_holds_ctrl_c_to_the_end_of_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        done.append("after the signal")
    assert done == ["after the signal"]
    with sigint_deferred(reraise=False) as held:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert held.pending
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_in_the_moment_the_hold_ends_is_not_lost(monkeypatch):
    """A SIGINT after the block left the stack of holds but before the usual handler is back (the first handler
    restored) still counts: it was lost there, and `batch` went on as if never interrupted (found by a CI run of
    test_batch's SIGINT test, whose signal comes right after a manifest line)."""
    import slowfast_cli.atomic as atomic

    real, calls = signal.signal, []

    def restore_with_a_signal_first(sig, handler):
        calls.append(sig)
        if len(calls) == len(atomic.HELD_SIGNALS) + 1:  # the first restore, after the installs
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return real(sig, handler)

    monkeypatch.setattr(atomic.signal, "signal", restore_with_a_signal_first)
    with pytest.raises(KeyboardInterrupt), sigint_deferred():
        pass
    monkeypatch.setattr(atomic.signal, "signal", real)
    calls.clear()
    monkeypatch.setattr(atomic.signal, "signal", restore_with_a_signal_first)
    with sigint_deferred(reraise=False) as held:
        pass
    monkeypatch.setattr(atomic.signal, "signal", real)
    assert held.pending and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_json_text_keeps_names_that_are_not_utf8():
    name = os.fsdecode(b"\xe9t\xe9 caf\xc3\xa9\n.mp4")
    text = json_text({"source": name})
    text.encode("utf-8")  # valid UTF-8, whatever the name
    assert "café" in text and "\\udce9" in text
    assert os.fsencode(json.loads(text)["source"]) == b"\xe9t\xe9 caf\xc3\xa9\n.mp4"


def test_ctrl_c_between_two_renames_waits_for_the_second(tmp_path, monkeypatch):
    """encode --save-features: a real SIGINT while the first file is being renamed into place still gives both."""
    import slowfast_cli.tokenfile as io_mod

    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    files = [(tmp_path / "t.pt", token_object(torch.zeros(1, 2, 3), {})),
             (tmp_path / "f.pt", features_object(torch.zeros(2, 4, 3), {"grid": [2, 2]}))]  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        save_all(files)
    assert sorted(os.listdir(tmp_path)) == ["f.pt", "t.pt"]
