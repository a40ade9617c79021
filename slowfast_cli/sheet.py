"""Drawing a contact sheet of one token file with Pillow: the sampled frames with their timestamps, the slow frames
outlined, the part of each frame the tower saw, and a strip of the token layout. Pure drawing: frames and counts
in, a PIL image out (``show.py`` finds them). Pillow is imported here and in ``encoder/preprocess.py`` only.

Sheet layout, top to bottom: a title line; rows of at most ``COLUMNS`` cells, each a frame scaled to ``THUMB``
pixels high with its position, video frame number and time below it; the token strip (``STRIP`` pixels high), one
segment per part of the sequence in order (slow, fast, other such as newline tokens), its width proportional to
its token count, its count written on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

THUMB = 96  # pixels: the height of a frame's cell image
COLUMNS = 8
PAD = 8
TEXT = 14  # pixels of a text line
STRIP = 28
SLOW = (255, 140, 0)  # orange: slow frames' outline, the slow tokens' segment
FAST = (40, 110, 255)  # blue: the fast tokens' segment
OTHER = (150, 150, 150)  # grey: newline and other tokens, and the outline of frames that are only fast
CROP = (0, 220, 120)  # green: the part of the frame the tower saw (shortest side resize: the centre crop)
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@dataclass
class SheetLayout:
    """Where things are on the sheet (pixels), for whoever needs to find them again (the tests)."""

    size: tuple[int, int]
    cells: list[tuple[int, int, int, int]] = field(default_factory=list)  # per frame: its image's box (x0, y0, x1, y1)
    crops: list[tuple[int, int, int, int]] = field(default_factory=list)  # per frame: the box the tower saw
    segments: list[tuple[str, int, tuple[int, int, int, int]]] = field(default_factory=list)  # (name, tokens, box)


def seen_box(width: int, height: int, resize: str) -> tuple[int, int, int, int]:
    """The part of a ``width`` x ``height`` frame the tower sees: ``shortest`` resizes the shorter side to the model's
    size and crops the centre square (open_clip's offsets: ``round((n - side) / 2)``); ``squash`` sees it whole."""
    if resize != "shortest":
        return 0, 0, width, height
    side = min(width, height)
    x0, y0 = int(round((width - side) / 2)), int(round((height - side) / 2))
    return x0, y0, x0 + side, y0 + side


def contact_sheet(
    frames: np.ndarray,
    labels: list[str],
    slow: set[int],
    resize: str,
    segments: list[tuple[str, int, int]],
    title: str,
) -> tuple[Image.Image, SheetLayout]:
    """The sheet of ``frames`` uint8 (T, H, W, 3) with a label per frame; ``slow``: positions of the slow frames;
    ``resize``: the tower's resize mode (``shortest`` outlines the centre crop and dims the rest, ``squash`` sees
    the whole frame); ``segments``: ``(name, tokens, of them newline tokens)`` of the sequence's groups in order."""
    t, h, w, _ = frames.shape
    tw = max(1, round(w * THUMB / h))
    cols = min(COLUMNS, t)
    rows = -(-t // cols)
    cell_w, cell_h = tw + PAD, THUMB + TEXT + PAD
    width = max(PAD + cols * cell_w, 480)
    top = PAD + TEXT + PAD
    height = top + rows * cell_h + PAD + STRIP + TEXT + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), title, fill=INK)
    layout = SheetLayout((width, height))
    cx0, cy0, cx1, cy1 = seen_box(w, h, resize)
    for i in range(t):
        x, y = PAD + (i % cols) * cell_w, top + (i // cols) * cell_h
        thumb = Image.fromarray(frames[i]).resize((tw, THUMB), Image.Resampling.BILINEAR)
        sx, sy = tw / w, THUMB / h
        crop = (x + round(cx0 * sx), y + round(cy0 * sy), x + round(cx1 * sx) - 1, y + round(cy1 * sy) - 1)
        if (cx0, cy0, cx1, cy1) != (0, 0, w, h):  # what the crop cut away, dimmed
            dim = Image.new("RGB", thumb.size, (0, 0, 0))
            mask = Image.new("L", thumb.size, 140)
            ImageDraw.Draw(mask).rectangle([c - o for c, o in zip(crop, (x, y, x, y))], fill=0)
            thumb = Image.composite(dim, thumb, mask)
        sheet.paste(thumb, (x, y))
        box = (x, y, x + tw - 1, y + THUMB - 1)
        draw.rectangle(crop, outline=CROP, width=1)
        draw.rectangle(box, outline=SLOW if i in slow else OTHER, width=3 if i in slow else 1)
        draw.text((x, y + THUMB + 1), labels[i], fill=SLOW if i in slow else INK)
        layout.cells.append(box)
        layout.crops.append(crop)
    _strip(draw, layout, segments, PAD, height - PAD - TEXT - STRIP, width - 2 * PAD)
    return sheet, layout


def _strip(draw: ImageDraw.ImageDraw, layout: SheetLayout, segments: list[tuple[str, int, int]], x: int, y: int,
           width: int) -> None:  # fmt: skip
    """The token layout: one segment per group, proportional to its tokens, its newline tokens as a grey band along
    its bottom (their share of its width), the counts written below."""
    total = sum(n for _, n, _ in segments) or 1
    colors = {"slow": SLOW, "frames": SLOW, "fast": FAST}
    left, legend = x, []
    for k, (name, n, lines) in enumerate(segments):
        right = x + width if k == len(segments) - 1 else left + max(1, round(width * n / total))
        box = (left, y, right - 1, y + STRIP - 1)
        draw.rectangle(box, fill=colors.get(name, OTHER))
        if 0 < lines < n:
            draw.rectangle(
                (left, y + STRIP - 6, left + round((right - left) * lines / n) - 1, y + STRIP - 1), fill=OTHER
            )
        layout.segments.append((name, n, box))
        legend.append(f"{name} {n:,}" + (f" ({lines:,} newline)" if 0 < lines < n else ""))
        left = right
    draw.text((x, y + STRIP + 1), "tokens: " + " + ".join(legend) + f" = {total:,}", fill=INK)


def save_png(image: Image.Image, path) -> None:
    """Write ``image`` as PNG to ``path`` (an open binary file or a path)."""
    image.save(path, format="PNG")
