"""Image helpers: tensors <-> uint8 arrays, and labelled grids saved as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images_B3HW: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1], (B, 3, H, W) -> uint8 (B, H, W, 3)."""
    return (images_B3HW.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def to_tensor(images_BHWC: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_BHWC)).permute(0, 3, 1, 2).float() / 255.0


def make_grid(
    images_BHWC: np.ndarray, columns: int, scale: int = 2, labels: Sequence[str] | None = None, pad: int = 2
) -> Image.Image:
    """Tile images into a grid (upscaled by `scale`, nearest); one label line above each row if given."""
    count, height, width, _ = images_BHWC.shape
    rows = (count + columns - 1) // columns
    cell_h, cell_w = height * scale, width * scale
    label_h = 12 if labels else 0
    canvas = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + pad + label_h) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for index in range(count):
        row, col = divmod(index, columns)
        x = pad + col * (cell_w + pad)
        y = pad + row * (cell_h + pad + label_h)
        if labels and col == 0:
            draw.text((pad, y), labels[row][:120], fill="black")
        tile = Image.fromarray(images_BHWC[index]).resize((cell_w, cell_h), Image.NEAREST)
        canvas.paste(tile, (x, y + label_h))
    return canvas


def save_grid(path: str | Path, images_BHWC: np.ndarray, columns: int, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images_BHWC, columns, **kwargs).save(path)
    return path
