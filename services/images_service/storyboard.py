"""Storyboards: one shot per beat, then a contact sheet of them all.

Every shot is the request with its beat put before the prompt (`"{beat}, {prompt}"`, then through
the preset's template as any prompt) and the same seed, model, size and settings: the prompt the
shots share holds the scene and the style, and one seed keeps the sketches alike, so only what
the beat says changes from shot to shot. Each shot runs the pipeline's steps of its own (a
`cinematic` storyboard is tone-mapped shot by shot); the contact sheet waits for every shot's last
step and lays their images out in a grid, each under its number and beat.

The sheet is no larger than a shot on either side, so it fits whatever the shots fit (the caller's
tier and the deployment's ceiling); it is drawn with Pillow alone, the same from the same shots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from services.contracts.schema import SIDE_MULTIPLE

PAPER = (255, 255, 255)
INK = (34, 34, 34)
FRAME = (200, 200, 200)


def shot_prompt(beat: str, prompt: str) -> str:
    """A shot's prompt: its beat, then what every shot shares."""
    return f"{beat.strip()}, {prompt.strip()}"


@dataclass(frozen=True)
class SheetLayout:
    columns: int
    rows: int
    cell: tuple[int, int]
    """Each shot's size on the sheet."""
    margin: int
    caption: int
    """The height of the band under each shot that holds its beat."""
    size: tuple[int, int]
    """The sheet's width and height: multiples of 8, neither beyond the shot's larger side."""


def sheet_layout(shots: int, shot_size: tuple[int, int], columns: int | None = None) -> SheetLayout:
    """A grid of `shots` cells (as square as it gets: 4 shots are 2×2, 10 are 4×3) that fits within
    the larger side of `shot_size` both ways, each cell the shot's shape with a caption band."""
    if shots < 1:
        raise ValueError("a contact sheet needs at least one shot")
    width, height = shot_size
    bound = max(width, height)
    columns = columns or math.ceil(math.sqrt(shots))
    rows = math.ceil(shots / columns)
    margin, caption = max(2, bound // 64), max(8, bound // 36)
    cell_w = (bound - margin * (columns + 1)) // columns
    cell_h = cell_w * height // width
    if rows * (cell_h + caption) + margin * (rows + 1) > bound:  # tall shots: height decides
        cell_h = (bound - margin * (rows + 1)) // rows - caption
        cell_w = cell_h * width // height
    cell_w, cell_h = max(1, cell_w), max(1, cell_h)
    sheet_w = _up(columns * cell_w + margin * (columns + 1))
    sheet_h = _up(rows * (cell_h + caption) + margin * (rows + 1))
    return SheetLayout(columns, rows, (cell_w, cell_h), margin, caption, (sheet_w, sheet_h))


def _up(side: int) -> int:
    return -(-side // SIDE_MULTIPLE) * SIDE_MULTIPLE


def compose_sheet(images: Sequence[Image.Image], captions: Sequence[str], layout: SheetLayout) -> Image.Image:
    """The contact sheet: each image scaled into its cell, in reading order, its number and caption
    under it (cut to the cell's width with an ellipsis)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} shots but {len(captions)} captions")
    sheet = Image.new("RGB", layout.size, PAPER)
    draw = ImageDraw.Draw(sheet)
    cell_w, cell_h = layout.cell
    font = ImageFont.load_default(size=max(6, layout.caption * 3 // 5))
    for number, (image, caption) in enumerate(zip(images, captions, strict=True), start=1):
        row, column = divmod(number - 1, layout.columns)
        x = layout.margin + column * (cell_w + layout.margin)
        y = layout.margin + row * (cell_h + layout.caption + layout.margin)
        sheet.paste(image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.LANCZOS), (x, y))
        draw.rectangle((x - 1, y - 1, x + cell_w, y + cell_h), outline=FRAME)
        text = _fitted(f"{number}. {caption.strip()}", font, cell_w)
        draw.text((x, y + cell_h + layout.caption // 5), text, fill=INK, font=font)
    return sheet


def _fitted(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…" if text else ""
