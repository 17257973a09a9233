"""Colour maps, overlays and panels written as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOUR = (0, 0, 0)


def palette(n: int, seed: int = 3) -> np.ndarray:
    """n distinct-ish RGB colours (tab20 first, then seeded random)."""
    import matplotlib

    base = (np.array(matplotlib.colormaps["tab20"].colors) * 255).astype(np.uint8)
    if n <= len(base):
        return base[:n]
    extra = np.random.default_rng(seed).integers(0, 256, (n - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def colourise(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8; ids outside the palette (ignore, unmatched) are black."""
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(colours))
    out[valid] = colours[labels[valid]]
    return out


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    return (image.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).round().astype(np.uint8)


def save_panel(tiles: list[np.ndarray], titles: list[str], path: Path) -> None:
    """Tiles side by side with a title strip above each."""
    h = max(t.shape[0] for t in tiles)
    strip = 18
    canvas = Image.new("RGB", (sum(t.shape[1] for t in tiles), h + strip), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, title in zip(tiles, titles):
        canvas.paste(Image.fromarray(tile), (x, strip))
        draw.text((x + 4, 3), title, fill="black")
        x += tile.shape[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_labels(labels: np.ndarray, path: Path) -> None:
    """Label map as an 8-bit PNG (16-bit when ids exceed 255)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if labels.max(initial=0) < 256 and labels.min(initial=0) >= 0 else np.uint16
    Image.fromarray(labels.astype(dtype)).save(path)
