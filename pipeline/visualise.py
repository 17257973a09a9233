"""Colour maps, overlays and panels written as PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IGNORE_COLOUR = (0, 0, 0)


def palette(n: int, seed: int = 3) -> np.ndarray:
    """n distinct-ish RGB colours (tab20 first, then seeded random)."""
    import matplotlib

    base = (np.array(matplotlib.colormaps["tab20"](np.arange(20))[:, :3]) * 255).astype(np.uint8)
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


def with_legend(
    image: np.ndarray, ids: Sequence[int] | np.ndarray, names: list[str], colours: np.ndarray
) -> np.ndarray:
    """The image with a strip on its right listing the colour and name of each id in `ids`."""
    row = 16
    shown = [int(i) for i in ids if 0 <= i < len(colours)]
    width = 12 + 8 * max([len(names[i]) for i in shown] + [6])
    canvas = Image.new("RGB", (image.shape[1] + width, max(image.shape[0], row * len(shown) + 4)), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, i in enumerate(shown):
        x, y = image.shape[1] + 4, 2 + n * row
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(int(c) for c in colours[i]))
        draw.text((x + 14, y + 1), names[i], fill="black")
    return np.asarray(canvas)


def save_heatmaps(maps: np.ndarray, titles: list[str], path: Path, columns: int = 4, tile_width: int = 240) -> None:
    """(n, H, W) maps as a grid of viridis heat maps, each scaled to its own range."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    tiles = []
    for m in maps:
        lo, hi = float(m.min()), float(m.max())
        rgb = (cmap((m - lo) / (hi - lo + 1e-12))[..., :3] * 255).astype(np.uint8)
        scale = tile_width / rgb.shape[1]
        tiles.append(np.asarray(Image.fromarray(rgb).resize((tile_width, max(1, round(rgb.shape[0] * scale))))))
    h, w, strip = tiles[0].shape[0], tile_width, 18
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (min(columns, len(tiles)) * w, rows * (h + strip)), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (tile, title) in enumerate(zip(tiles, titles)):
        x, y = (n % columns) * w, (n // columns) * (h + strip)
        canvas.paste(Image.fromarray(tile), (x, y + strip))
        draw.text((x + 4, y + 3), title, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
