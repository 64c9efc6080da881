"""Image helpers: tensors <-> uint8 arrays, and labelled grids saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

LABEL_POINTS = 12
"""Size of a grid's row labels (PIL's own scalable font; its bitmap fallback ran letters together)."""

VERDICT_COLOURS = {True: (40, 160, 60), False: (210, 40, 40)}
"""Frame of a judged image in a grid: passed (green), failed (red); an unjudged image has none."""


def to_uint8(images_B3HW: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1], (B, 3, H, W) -> uint8 (B, H, W, 3)."""
    return (images_B3HW.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def to_tensor(images_BHWC: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_BHWC)).permute(0, 3, 1, 2).float() / 255.0


def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=LABEL_POINTS)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType: the bitmap font
        return ImageFont.load_default()


def make_grid(
    images_BHWC: np.ndarray,
    columns: int,
    scale: int = 2,
    labels: Sequence[str] | None = None,
    pad: int = 2,
    verdicts: Sequence[bool | None] | None = None,
) -> Image.Image:
    """Tile images into a grid (upscaled by `scale`, nearest); one label line above each row if given; with
    `verdicts` (one per image) a frame around each judged image, green if it passed, red if not."""
    count, height, width, _ = images_BHWC.shape
    rows = (count + columns - 1) // columns
    cell_h, cell_w = height * scale, width * scale
    font = label_font()
    label_h = LABEL_POINTS + 4 if labels else 0
    pad = max(pad, 4) if verdicts is not None else pad  # room for 2-px frames that do not touch
    canvas = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + pad + label_h) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for index in range(count):
        row, col = divmod(index, columns)
        x = pad + col * (cell_w + pad)
        y = pad + row * (cell_h + pad + label_h)
        if labels and col == 0:
            draw.text((pad, y), labels[row][:120], fill="black", font=font)
        tile = Image.fromarray(images_BHWC[index]).resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(tile, (x, y + label_h))
        if verdicts is not None and verdicts[index] is not None:
            frame = (x - 2, y + label_h - 2, x + cell_w + 1, y + label_h + cell_h + 1)
            draw.rectangle(frame, outline=VERDICT_COLOURS[bool(verdicts[index])], width=2)
    return canvas


def save_grid(path: str | Path, images_BHWC: np.ndarray, columns: int, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images_BHWC, columns, **kwargs).save(path)
    return path
