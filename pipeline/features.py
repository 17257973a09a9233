"""Feature extraction: images -> backbone -> feature cache (rule `extract_features`).

Departure from the paper, on purpose: training-time augmentation (random rescale, crop, flip) is
applied once at extraction and `views` augmented views per image are cached, instead of fresh
augmentation every epoch; the backbone is frozen, so this trades augmentation diversity for not
running the backbone in the training loop. `views: 1` caches the plain image only. Photometric
distortion is not applied.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .backbones import Backbone, pad_to_multiple
from .cache import CacheLayout, CacheWriter
from .datasets import Dataset

log = logging.getLogger(__name__)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """HxWx3 uint8 -> (3, H', W') uint8 tensor, bilinear (antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    out = F.interpolate(t[None].float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def augmented_view(image: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                   scale: tuple[float, float], flip: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """Random rescale of the input size by a factor in `scale`, random crop (or pad) to it, flip.

    Returns the (3, h, w) uint8 crop (h, w <= size) and its size; padding happens after
    normalisation so it is zero in the backbone's input space, as for the plain images.
    """
    factor = rng.uniform(*scale)
    scaled = (max(1, round(size[0] * factor)), max(1, round(size[1] * factor)))
    t = resize_image(image, scaled)
    top = rng.integers(0, max(scaled[0] - size[0], 0) + 1)
    left = rng.integers(0, max(scaled[1] - size[1], 0) + 1)
    t = t[:, top:top + size[0], left:left + size[1]]
    if flip and rng.random() < 0.5:
        t = t.flip(-1)
    return t, tuple(t.shape[-2:])


def pixel_vectors(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[r, g, b, x, y] per token: the normalised input bilinearly down-sampled to the grid, the
    backbone's normalisation undone (colours in [0, 1] for any mean/std), x, y = linspace(0, 1)."""
    colours = F.interpolate(x, size=grid, mode="bilinear", align_corners=False) * std + mean
    colours = colours.clamp(0, 1)
    b = x.shape[0]
    ys = torch.linspace(0, 1, grid[0], device=x.device).view(1, 1, -1, 1).expand(b, 1, *grid)
    xs = torch.linspace(0, 1, grid[1], device=x.device).view(1, 1, 1, -1).expand(b, 1, *grid)
    return torch.cat([colours, xs, ys], dim=1)


def normalise_batch(backbone: Backbone, crops: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Normalise uint8 crops, zero-pad each to `size`, then to the backbone's multiple."""
    out = []
    for crop in crops:
        x = (crop.float() / 255.0 - backbone.mean[0].cpu()) / backbone.std[0].cpu()
        out.append(F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2])))
    return pad_to_multiple(torch.stack(out), backbone.pad_multiple)


@torch.no_grad()
def encode(backbone: Backbone, x: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """Normalised padded images -> channels-last high, input and pixel arrays on the grid."""
    x = x.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with autocast:
        high, inp = backbone(x)
    pix = pixel_vectors(x, backbone.mean, backbone.std, tuple(high.shape[-2:]))
    return {name: t.float().permute(0, 2, 3, 1) for name, t in (("high", high), ("input", inp), ("pixels", pix))}


def encode_images(backbone: Backbone, images: list[np.ndarray], size: tuple[int, int],
                  device: torch.device) -> dict[str, torch.Tensor]:
    """HxWx3 uint8 images -> features at the input size, without a cache (evaluation, segmentation)."""
    return encode(backbone, normalise_batch(backbone, [resize_image(im, size) for im in images], size), device)


def extract_split(dataset: Dataset, backbone: Backbone, out: Path, input_size: tuple[int, int],
                  views: int = 1, scale: tuple[float, float] = (0.5, 2.0), flip: bool = True,
                  batch_size: int = 8, seed: int = 0, device: torch.device | None = None,
                  extra_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write (or resume) the cache of one split; returns its manifest."""
    device = device or torch.device("cpu")
    backbone = backbone.to(device)
    input_size = (int(input_size[0]), int(input_size[1]))
    grid = backbone.grid_for(*input_size)
    n_images = len(dataset)
    items = [(i, v) for i in range(n_images) for v in range(views)]
    attrs = {
        "dataset": dataset.name, "split": dataset.split, "ids": [s.id for s in dataset.samples],
        "input_size": list(input_size), "grid": list(grid), "stride": backbone.spec.stride,
        "mean": backbone.mean.flatten().tolist(), "std": backbone.std.flatten().tolist(),
        "views": views, "scale": list(scale), "flip": flip, "seed": seed, **(extra_attrs or {}),
    }
    writer = CacheWriter(out, CacheLayout(len(items), grid, backbone.high_dim, backbone.input_dim), attrs)
    if not writer.complete:
        if writer.n_done:
            log.info("%s: resuming after %d of %d items", out, writer.n_done, len(items))
        bar = tqdm(total=len(items), initial=writer.n_done, desc=f"extract {dataset.name}/{dataset.split}", unit="img")
        for start in range(writer.n_done, len(items), batch_size):
            crops, sizes = [], []
            for image_idx, view in items[start:start + batch_size]:
                image = dataset.load_image(image_idx)
                sizes.append(image.shape[:2])
                if view == 0:
                    crops.append(resize_image(image, input_size))
                else:
                    rng = np.random.default_rng([seed, image_idx, view])
                    crops.append(augmented_view(image, input_size, rng, scale, flip)[0])
            arrays = encode(backbone, normalise_batch(backbone, crops, input_size), device)
            writer.write(start, {k: v.cpu().numpy() for k, v in arrays.items()}, np.array(sizes))
            bar.update(len(crops))
        bar.close()
        writer.finish(np.array([i for i, _ in items]), np.array([v for _, v in items]))
    return {"path": str(out), "items": len(items), "images": n_images, "grid": list(grid),
            "high_dim": backbone.high_dim, "input_dim": backbone.input_dim, "views": views}
