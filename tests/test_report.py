"""Statistics over token files."""

import pytest
import torch

from slowfast_cli.errors import SlowfastError
from slowfast_cli.report import build_report
from slowfast_cli.tokenfile import save_tokens


def write(path, length, input_tokens, dim=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"input_tokens": input_tokens, "frames": 1, "tokens_per_frame": input_tokens, "output_tokens": length}
    save_tokens(path, torch.zeros(1, length, dim), meta)


def test_folder_statistics(tmp_path):
    write(tmp_path / "a.pt", 10, 100)
    write(tmp_path / "sub" / "b.pt", 30, 100)
    write(tmp_path / "sub" / "deeper" / "c.pt", 50, 100)
    (tmp_path / "notes.pt").write_text("not a token file")
    (tmp_path / ".slowfast-tmp-abc.pt").write_bytes(b"partial")  # an interrupted write: ignored
    r = build_report(tmp_path)
    assert r.files == 3
    assert (r.input_tokens, r.output_tokens) == (300, 90)
    assert r.ratio == pytest.approx(0.3)
    assert (r.ratio_min, r.ratio_median, r.ratio_max) == pytest.approx((0.1, 0.3, 0.5))
    assert (r.tokens_per_file_min, r.tokens_per_file_median, r.tokens_per_file_max) == (10, 30, 50)
    assert r.dims == [4]
    assert [s["path"] for s in r.skipped] == [str(tmp_path / "notes.pt")]


def test_single_file(tmp_path):
    write(tmp_path / "a.pt", 7, 70)
    r = build_report(tmp_path / "a.pt")
    assert r.files == 1 and r.ratio == pytest.approx(0.1)


def test_single_bad_file_is_an_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x00\x01")
    with pytest.raises(SlowfastError, match="x.pt: not a token file"):
        build_report(tmp_path / "x.pt")


def test_missing_path(tmp_path):
    with pytest.raises(SlowfastError, match="does not exist"):
        build_report(tmp_path / "none")
