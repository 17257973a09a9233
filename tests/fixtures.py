"""Small datasets written in each benchmark's real on-disk layout, and a tiny random-weight ViT
saved to a local file: what the benchmark machinery is tested on where nothing can be downloaded.

Every image plants a few rectangles whose colour says their class, on a background whose colour
varies, so clusters are learnable and labels are known.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image

from pipeline.backbones import Backbone, BackboneSpec
from pipeline.spec import Method, RunSpec, TrainSettings

TINY_TRAIN = {
    "K": 6,
    "epochs": 2,
    "batch_size": 3,
    "lr": 1e-3,
    "lr_min": 1e-5,
    "tau_max": 1.0,
    "tau_min": 0.3,
    "beta": None,
    "t": 0.01,
    "alpha": 0.3,
    "knn_k": 16,
    "pixel_knn": [[10, 2.0], [5, 0.1]],
    "depth": 2,
    "heads": 2,
    "dim_head": 8,
    "mlp_ratio": 0.5,
}


def train_settings(**overrides: Any) -> TrainSettings:
    """psi's settings for tests: a tiny psi, two short epochs."""
    return TrainSettings.from_dict({**TINY_TRAIN, **overrides})


def run_spec(method: str = "nes", **fields: Any) -> RunSpec:
    """A complete run spec for tests; `fields` replace any of its attributes (`train` may be a
    dict of overrides of TINY_TRAIN)."""
    method = Method(method)
    train = fields.pop("train", {})
    settings = (
        (train if isinstance(train, TrainSettings) else train_settings(**train)) if method.traits.uses_psi else None
    )
    K = fields.pop("K", settings.K if settings else 6)
    spec = RunSpec(
        run=f"{method}-test-K{K}-s0",
        method=method,
        seed=0,
        dataset="test",
        backbone="test",
        source={"name": "test"},
        train_split="train",
        train_view={"mode": "resize", "size": [64, 64]},
        backbone_spec={},
        features="features.json",
        device="cpu",
        K=K,
        train=settings,
        alpha=settings.alpha if settings else None,
    )
    return dataclasses.replace(spec, **fields)


# (class id in the dataset's raw label PNG, RGB colour)
PASCAL_CLASSES = [(0, (120, 120, 120)), (15, (200, 40, 40)), (37, (40, 200, 40)), (48, (40, 40, 200))]
CITYSCAPES_CLASSES = [(6, (90, 90, 90)), (7, (128, 64, 128)), (24, (220, 20, 60)), (26, (0, 0, 142))]
ADE_CLASSES = [(0, (100, 100, 100)), (1, (180, 120, 120)), (3, (80, 50, 50)), (150, (6, 230, 230))]


def planted_image(rng: np.random.Generator, height: int, width: int, classes) -> tuple[np.ndarray, np.ndarray]:
    background, *objects = classes
    label = np.full((height, width), background[0], np.uint8)
    image = np.empty((height, width, 3), np.float32)
    image[:] = background[1]
    for raw, colour in objects:
        h, w = rng.integers(height // 4, height // 2), rng.integers(width // 4, width // 2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        label[top : top + h, left : left + w] = raw
        image[top : top + h, left : left + w] = colour
    image += rng.normal(0, 8, image.shape)
    return image.clip(0, 255).astype(np.uint8), label


def write_pascal(root: Path, n_train: int = 4, n_val: int = 3, seed: int = 0) -> Path:
    base = root / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        ids = [f"2008_{split}{i:03d}" for i in range(n)]
        for i, image_id in enumerate(ids):
            image, label = planted_image(rng, 75 + 8 * i, 100, PASCAL_CLASSES)
            Image.fromarray(image).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
            Image.fromarray(label).save(base / "SegmentationClassContext" / f"{image_id}.png")
        (base / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_cityscapes(root: Path, n_train: int = 4, n_val: int = 3, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            city = "aachen" if i % 2 == 0 else "bochum"
            stem = f"{city}_{i:06d}_000019"
            image, label = planted_image(rng, 64, 128, CITYSCAPES_CLASSES)
            for folder, suffix, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", label)):
                path = root / folder / split / city / f"{stem}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return root


def write_ade20k(root: Path, n_train: int = 4, n_val: int = 3, seed: int = 2) -> Path:
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    for split, n in (("training", n_train), ("validation", n_val)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"ADE_{split[:5]}_{i:08d}"
            image, label = planted_image(rng, 80, 96 + 8 * i, ADE_CLASSES)
            Image.fromarray(image).save(base / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(base / "annotations" / split / f"{stem}.png")
    return root


def write_image_folder(root: Path, n: int = 4, seed: int = 3) -> Path:
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, _ = planted_image(rng, 72, 96, PASCAL_CLASSES)
        Image.fromarray(image).save(root / "train" / f"n0144{i:04d}.JPEG", quality=95)
    return root


TINY_VIT_ARGS = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def write_tiny_vit(path: Path, model: str = "vit_small_patch16_384", seed: int = 0, **extra) -> Path:
    """A 2-block, 48-dim ViT of the given timm architecture with random weights, as a local file."""
    torch.manual_seed(seed)
    net = timm.create_model(model, pretrained=False, num_classes=0, **TINY_VIT_ARGS, **extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def tiny_vit_backbone(path: Path) -> Backbone:
    """The pipeline's Backbone over a tiny random ViT-S/16 layout, written to `path` if missing."""
    weights = path if Path(path).is_file() else write_tiny_vit(path)
    spec = BackboneSpec(model="vit_small_patch16_384", kind="vit", stride=16, model_args=TINY_VIT_ARGS)
    return Backbone(dataclasses.replace(spec, weights=str(weights)))
