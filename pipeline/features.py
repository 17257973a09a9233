"""Feature extraction: images -> backbone -> feature cache (rule `extract_features`).

Departure from the paper, on purpose: training-time augmentation (random rescale, crop, flip) is
applied once at extraction and `views` augmented views per image are cached, instead of fresh
augmentation every epoch; the backbone is frozen, so this trades augmentation diversity for not
running the backbone in the training loop. `views: 1` caches the plain view only. Photometric
distortion is not applied, and crops are drawn without looking at labels (the authors re-draw
crops where one class covers > 75%, which peeks at labels).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Backbone, pad_to_multiple
from .cache import CacheLayout, CacheWriter, remove_stale_shards, shard_lock, shard_path
from .datasets import Dataset
from .errors import InputError
from .runtime import progress
from .spec import ExtractSpec
from .views import View

log = logging.getLogger(__name__)


def augmented_view(
    image: np.ndarray, view: View, rng: np.random.Generator, scale: tuple[float, float], flip: bool
) -> torch.Tensor:
    """The view's geometry rescaled by a random factor in `scale`, a random crop of the view's
    input size (smaller where the rescaled image is smaller; padding comes after normalisation,
    so it is zero in the backbone's input space), and a random horizontal flip."""
    factor = rng.uniform(*scale)
    base = view.resized_shape(*image.shape[:2])
    t = view.resize(image, (max(1, round(base[0] * factor)), max(1, round(base[1] * factor))))
    size = view.input_size
    top = rng.integers(0, max(t.shape[1] - size[0], 0) + 1)
    left = rng.integers(0, max(t.shape[2] - size[1], 0) + 1)
    t = t[:, top : top + size[0], left : left + size[1]]
    if flip and rng.random() < 0.5:
        t = t.flip(-1)
    return t


def pixel_vectors(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[r, g, b, x, y] per token: the normalised input bilinearly down-sampled to the grid, the
    backbone's normalisation undone (colours in [0, 1] for any mean/std), x, y = linspace(0, 1)."""
    colours = F.interpolate(x, size=grid, mode="bilinear", align_corners=False) * std + mean
    colours = colours.clamp(0, 1)
    b = x.shape[0]
    ys = torch.linspace(0, 1, grid[0], device=x.device).view(1, 1, -1, 1).expand(b, 1, *grid)
    xs = torch.linspace(0, 1, grid[1], device=x.device).view(1, 1, 1, -1).expand(b, 1, *grid)
    return torch.cat([colours, xs, ys], dim=1)


def normalise_batch(backbone: Backbone, crops: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Normalise (3, h, w) uint8 crops, zero-pad each to `size` (default: the largest crop), then
    to the backbone's multiple."""
    size = size or (max(c.shape[1] for c in crops), max(c.shape[2] for c in crops))
    out = []
    for crop in crops:
        x = (crop.float() / 255.0 - backbone.mean[0].cpu()) / backbone.std[0].cpu()
        out.append(F.pad(x, (0, size[1] - x.shape[-1], 0, size[0] - x.shape[-2])))
    return pad_to_multiple(torch.stack(out), backbone.pad_multiple)


@torch.no_grad()
def encode(
    backbone: Backbone, x: torch.Tensor, device: torch.device, grid: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Normalised padded images -> channels-last high, input and pixel arrays on the grid.
    `grid`: the tokens to keep (those holding real pixels; default all). On a GPU the backbone
    runs under bf16 autocast."""
    x = x.to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    with autocast:
        high, inp = backbone(x)
    gh, gw = grid or tuple(high.shape[-2:])
    high, inp = high[..., :gh, :gw], inp[..., :gh, :gw]
    stride = backbone.spec.stride
    pix = pixel_vectors(x[..., : gh * stride, : gw * stride], backbone.mean, backbone.std, (gh, gw))
    return {name: t.float().permute(0, 2, 3, 1) for name, t in (("high", high), ("input", inp), ("pixels", pix))}


def encode_crops(
    backbone: Backbone, crops: list[torch.Tensor], device: torch.device, size: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """(3, h, w) uint8 crops -> features on the grid of `size` (default: the largest crop), without
    a cache (evaluation, segmentation). Tokens of padding alone are dropped."""
    size = size or (max(c.shape[1] for c in crops), max(c.shape[2] for c in crops))
    return encode(backbone, normalise_batch(backbone, crops, size), device, backbone.grid_for(*size))


def check_finite(arrays: dict[str, np.ndarray], sources: list) -> None:
    """Refuse NaN/Inf features (also float16 overflow, what the cache stores), naming the image."""
    for name, values in arrays.items():
        bad = ~np.isfinite(values.astype(np.float16)).reshape(len(values), -1).all(1)
        if bad.any():
            raise InputError(
                f"{sources[int(np.flatnonzero(bad)[0])]}: the backbone gave non-finite {name} features "
                "(NaN, Inf or beyond float16's range); check the image and the weights"
            )


def shard_range(n_images: int, index: int, count: int) -> tuple[int, int]:
    """Images [lo, hi) of shard `index` of `count`: contiguous, sizes differing by at most one."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    return index * n_images // count, (index + 1) * n_images // count


def extract_split(
    dataset: Dataset,
    backbone: Backbone,
    out: Path,
    view: View,
    views: int = 1,
    scale: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | None = None,
    extra_attrs: dict[str, Any] | None = None,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write (or resume) shard `shard = (index, count)` of the cache at `out`; returns its manifest.

    Items are numbered image * views + view over the whole split and augmentations are seeded by
    (seed, image, view), so any shard count gives the same cache. The shard is locked while it is
    written (a second writer is refused, not interleaved); a cache of other settings is refused
    unless `overwrite`. `data` ({part: digest} of the split's data index, see `dataindex`) is
    recorded in the cache and the manifest: which files the cache was made from."""
    if view.mode == "sliding":
        raise ValueError("sliding-window views are evaluated live, not cached")
    device = device or torch.device("cpu")
    backbone = backbone.to(device)
    input_size = view.input_size
    grid = backbone.grid_for(*input_size)
    lo, hi = shard_range(len(dataset), *shard)
    items = [(i, v) for i in range(lo, hi) for v in range(views)]
    attrs = {
        "dataset": dataset.name,
        "split": dataset.split,
        "ids": [s.id for s in dataset.samples],
        "view_spec": view.__dict__,
        "input_size": list(input_size),
        "grid": list(grid),
        "stride": backbone.spec.stride,
        "mean": backbone.mean.flatten().tolist(),
        "std": backbone.std.flatten().tolist(),
        "views": views,
        "scale": list(scale),
        "flip": flip,
        "seed": seed,
        "images": [lo, hi],
        "threads": torch.get_num_threads(),
        "device": device.type,
        "orientation": "exif",  # images read as displayed (datasets.read_rgb); older caches read them as stored
        **(extra_attrs or {}),
        **({"data": data} if data is not None else {}),
    }
    path = shard_path(out, *shard)
    with shard_lock(path):
        remove_stale_shards(out, shard[1], overwrite)
        writer = CacheWriter(
            path, CacheLayout(len(items), grid, backbone.high_dim, backbone.input_dim), attrs, overwrite
        )
        _fill(
            writer,
            dataset,
            backbone,
            view,
            items,
            scale,
            flip,
            batch_size,
            seed,
            device,
            f"extract {dataset.name}/{dataset.split}" + (f" shard {shard[0] + 1}/{shard[1]}" if shard[1] > 1 else ""),
        )
        manifest = {
            "path": str(out),
            "shard": list(shard),
            "items": len(items),
            "images": [lo, hi],
            "grid": list(grid),
            "high_dim": backbone.high_dim,
            "input_dim": backbone.input_dim,
            "views": views,
            **({"data": data} if data is not None else {}),
        }
        writer.mark(manifest)
    return manifest


def _fill(
    writer: CacheWriter,
    dataset: Dataset,
    backbone: Backbone,
    view: View,
    items: list[tuple[int, int]],
    scale: tuple[float, float],
    flip: bool,
    batch_size: int,
    seed: int,
    device: torch.device,
    desc: str,
) -> None:
    """Encode the items the writer does not hold yet, batch by batch, then finish the shard."""
    if writer.complete:
        return
    if writer.n_done:
        log.info("%s: resuming after %d of %d items", writer.path, writer.n_done, len(items))
    bar = progress(total=len(items), initial=writer.n_done, desc=desc, unit="img")
    for start in range(writer.n_done, len(items), batch_size):
        crops, sizes = [], []
        for image_idx, v in items[start : start + batch_size]:
            image = dataset.load_image(image_idx)
            sizes.append(image.shape[:2])
            if v == 0:
                crops.append(view.prepare(image))
            else:
                crops.append(augmented_view(image, view, np.random.default_rng([seed, image_idx, v]), scale, flip))
        arrays = {k: t.cpu().numpy() for k, t in encode_crops(backbone, crops, device, view.input_size).items()}
        check_finite(arrays, [dataset.samples[i].image_path for i, _ in items[start : start + batch_size]])
        writer.write(start, arrays, np.array(sizes))
        bar.update(len(crops))
    bar.close()
    writer.finish(np.array([i for i, _ in items]), np.array([v for _, v in items]))


def extract_shard(
    spec: ExtractSpec,
    cache: Path,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    data: list[str] | None = None,
) -> dict[str, Any]:
    """`nes extract`: one shard of the cache `spec` describes (rule `extract_features`); `data`
    names the split's data index files whose digests the cache records."""
    from .backbones import BackboneSpec
    from .dataindex import digests
    from .datasets import load_dataset
    from .runtime import resolve_device

    manifest = extract_split(
        load_dataset(spec.source, spec.split),
        Backbone(BackboneSpec.from_config(spec.backbone_spec)),
        cache,
        View.from_config(spec.view, "view"),
        views=spec.views,
        scale=spec.scale,
        flip=spec.flip,
        batch_size=spec.batch_size,
        seed=spec.seed,
        device=resolve_device(spec.device),
        extra_attrs={"backbone": spec.backbone_spec},
        shard=shard,
        overwrite=overwrite,
        data=digests(data) if data else None,
    )
    index, count = manifest["shard"]
    log.info("%s: shard %d of %d complete (%d items)", cache, index + 1, count, manifest["items"])
    return manifest
