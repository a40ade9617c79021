"""`slowfast show`: a contact sheet of a real clip, read back as a PNG (size and a few pixels)."""

from pathlib import Path

import media
import pytest
from PIL import Image
from typer.testing import CliRunner

from slowfast_cli.cli.app import app
from slowfast_cli.sheet import CROP, FAST, SLOW, THUMB
from slowfast_cli.show import segments, show_file
from slowfast_cli.tokenfile import load_tokens

runner = CliRunner()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A 640x272 clip (wider than it is high: the centre crop cuts its sides) encoded with the tiny preset."""
    root = tmp_path_factory.mktemp("show")
    video = media.make_video(root / "wide.mp4", frames=20, size=(160, 68))
    out = root / "wide.pt"
    r = runner.invoke(app, ["encode", str(video), "--config", "tiny", "--frames", "6", "--slow-frames", "3", "-o",
                            str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def test_sheet_of_a_real_clip(encoded, tmp_path):
    meta = load_tokens(encoded)["meta"]
    png = tmp_path / "sheet.png"
    layout = show_file(encoded, png)
    image = Image.open(png).convert("RGB")
    assert image.size == layout.size and len(layout.cells) == 6
    x0, y0, x1, y1 = layout.cells[0]
    assert y1 - y0 + 1 == THUMB and x1 - x0 + 1 == round(160 * THUMB / 68)  # the frame's aspect kept
    slow = set(meta["slow_frame_indices"])
    assert len(slow) == 3
    for i, (x0, y0, _, _) in enumerate(layout.cells):  # slow frames outlined in orange, the others not
        assert (image.getpixel((x0 + 1, y0 + THUMB // 2)) == SLOW) == (i in slow)
    cx0, cy0, cx1, _ = layout.crops[1]  # the centre square the tower saw, outlined; outside it dimmed
    assert cx1 - cx0 + 1 == THUMB and image.getpixel((cx0, cy0 + THUMB // 2)) == CROP
    names = [(name, n) for name, n, _ in layout.segments]
    assert names == [(name, n) for name, n, _ in segments(meta)] == [("slow", meta["slow_tokens"]),
                                                                      ("fast", meta["fast_tokens"])]  # fmt: skip
    (_, _, slow_box), (_, _, fast_box) = layout.segments
    assert image.getpixel((slow_box[0] + 2, slow_box[1] + 2)) == SLOW
    assert image.getpixel((fast_box[2] - 2, fast_box[1] + 2)) == FAST


def test_a_folder_gives_a_sheet_per_file_and_an_index(encoded, tmp_path):
    folder = tmp_path / "tokens"
    folder.mkdir()
    (folder / "a.pt").write_bytes(Path(encoded).read_bytes())
    r = runner.invoke(app, ["show", str(folder), "-o", str(tmp_path / "sheets")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "sheets" / "a.png").size[1] > THUMB
    assert 'src="a.png"' in (tmp_path / "sheets" / "index.html").read_text()


def test_a_shard_gives_a_sheet_per_sample(encoded, tmp_path):
    folder = tmp_path / "tokens"
    (folder / "d").mkdir(parents=True)
    (folder / "d" / "a.pt").write_bytes(Path(encoded).read_bytes())
    assert runner.invoke(app, ["export", str(folder), "-o", str(tmp_path / "wds")]).exit_code == 0
    r = runner.invoke(app, ["show", str(tmp_path / "wds" / "shard-000000.tar"), "-o", str(tmp_path / "sheets")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sheets" / "d" / "a.png").is_file()


@pytest.mark.parametrize(
    "layout, newline, expected",
    [  # 8 frames of a 8x8 grid, 4 slow frames pooled 1d to 32 tokens, fast 4x4 (the tiny preset's shapes)
        ("slowfast", "no_token", [("slow", 128, 0), ("fast", 128, 0)]),
        ("slowfast", "grid", [("slow", 128 + 4 * 8, 32), ("fast", 128 + 8 * 4, 32)]),
        ("slowfast", "frame", [("slow", 132, 4), ("fast", 136, 8)]),
        ("slowfast", "one_token", [("slow", 128, 0), ("fast", 128, 0), ("newline", 1, 1)]),
        ("frames", "grid", [("frames", 8 * 64 + 8 * 8, 64)]),  # every frame, pool none: 8 x 64, a newline per row
    ],
)
def test_the_strip_knows_every_layout_and_newline_position(layout, newline, expected):
    """The groups and their newline tokens, from the counts budget.token_budget gives for the same settings."""
    from slowfast_cli.budget import token_budget

    pool = "none" if layout == "frames" else "1d_max"
    b = token_budget(8, (8, 8), 4, pool, (4, 4), layout=layout, newline=newline)
    meta = {**b.to_dict(), "config": {"aggregator": {"fast_size": [4, 4]}}}
    assert segments(meta) == expected and sum(n for _, n, _ in expected) == b.output_tokens
