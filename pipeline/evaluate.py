"""A run + a split -> metrics (rule `evaluate`, `nes evaluate`).

Logits on the token grid are upsampled bilinearly to the padded input, cropped to the input,
resized to the label's size, and arg-maxed; a K x C confusion matrix accumulates in one pass.
Clusters are matched to classes once over the whole split, separately for CRF and non-CRF
predictions. Features come from the cache (workflow) or a live backbone (CLI on any images).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import metrics as M
from .backbones import Backbone, BackboneSpec
from .cache import FeatureCache
from .datasets import Dataset
from .features import encode_images
from .models import RunModel
from .visualise import blend, colourise, palette, save_panel

log = logging.getLogger(__name__)

Batch = tuple[list[int], torch.Tensor, torch.Tensor]  # image indices, high (B,h,w,C), input (B,h,w,C)


def cached_batches(cache: FeatureCache, dataset: Dataset, batch_size: int) -> Iterator[Batch]:
    """Plain (un-augmented) items of a cache, checked against the dataset's image ids."""
    items = cache.plain_items()
    ids = cache.ids
    if len(items) != len(dataset) or ids != [s.id for s in dataset.samples]:
        raise ValueError(f"{cache.path}: cached images do not match dataset {dataset.name}/{dataset.split}; re-extract")
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        data = cache.read(chunk, ("high", "input"))
        yield list(cache.image_index[chunk]), torch.from_numpy(data["high"]), torch.from_numpy(data["input"])


def live_batches(backbone: Backbone, dataset: Dataset, input_size: tuple[int, int], batch_size: int,
                 device: torch.device) -> Iterator[Batch]:
    """Features computed on the fly: evaluation or segmentation without a cache."""
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        out = encode_images(backbone, [dataset.load_image(i) for i in idx], input_size, device)
        yield idx, out["high"].cpu(), out["input"].cpu()


def logits_to_image(logits: torch.Tensor, stride: int, input_size: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    """(K, h, w) token logits -> (K, H, W) at the original image size."""
    k, h, w = logits.shape
    # a genuinely channels-last (1, K, h, w) tensor takes torch's vectorised CPU path and makes
    # the argmax over K contiguous: about 6x faster than a view of a permuted batch (whose odd
    # batch stride falls back to a slow generic kernel)
    x = logits.permute(1, 2, 0).contiguous()[None].permute(0, 3, 1, 2)
    up = F.interpolate(x, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(out_size):
        up = F.interpolate(up, size=tuple(out_size), mode="bilinear", align_corners=False)
    return up[0]


def evaluate(model: RunModel, dataset: Dataset, batches: Iterator[Batch], stride: int, input_size: tuple[int, int],
             crf: bool = False, overlay_dir: Path | None = None, n_overlays: int = 4,
             device: torch.device | None = None) -> dict[str, Any]:
    device = device or torch.device("cpu")
    model = model.to(device)
    k, c = model.num_clusters, dataset.num_classes
    conf = np.zeros((k, c), dtype=np.int64)
    conf_crf = np.zeros((k, c), dtype=np.int64) if crf else None
    kept: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    started = time.time()
    bar = tqdm(total=len(dataset), desc=f"evaluate {model.method}", unit="img")
    for idx, high, inp in batches:
        logits = model.token_logits(high.to(device), inp.to(device)).float()
        for j, image_idx in enumerate(idx):
            image = dataset.load_image(image_idx)
            label = dataset.load_label(image_idx, expected_hw=image.shape[:2])
            full = logits_to_image(logits[j], stride, input_size, image.shape[:2])
            clusters = full.argmax(0).cpu().numpy()
            conf += M.confusion_matrix(clusters, label, k, c, dataset.ignore_index)
            if crf:
                from .crf import dense_crf

                refined = dense_crf(full.softmax(0).cpu().numpy(), image)
                conf_crf += M.confusion_matrix(refined, label, k, c, dataset.ignore_index)
            if len(kept) < n_overlays:
                kept.append((image_idx, image, label, clusters))
        bar.update(len(idx))
    bar.close()
    result = summarise(conf, dataset.class_names)
    result.update(num_images=len(dataset), seconds=round(time.time() - started, 2))
    if conf_crf is not None:
        result["crf"] = summarise(conf_crf, dataset.class_names)
    if overlay_dir is not None and kept:
        write_overlays(kept, np.array(result["mapping"]), dataset, overlay_dir)
    return result


def summarise(conf: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    majority, hung = M.majority_vote(conf), M.hungarian(conf)
    s_major, s_hung = M.scores(conf, majority), M.scores(conf, hung)
    return {
        "acc": s_major["acc"], "miou": s_major["miou"],
        "acc_hungarian": s_hung["acc"], "miou_hungarian": s_hung["miou"],
        "per_class_iou": dict(zip(class_names, _nan_to_none(s_major["iou"]))),
        "per_class_iou_hungarian": dict(zip(class_names, _nan_to_none(s_hung["iou"]))),
        "mapping": majority.tolist(), "mapping_hungarian": hung.tolist(),
    }


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def write_overlays(kept, mapping: np.ndarray, dataset: Dataset, out_dir: Path) -> None:
    colours = palette(max(dataset.num_classes, 1))
    for image_idx, image, label, clusters in kept:
        pred = colourise(M.remap(clusters, mapping), colours)
        gt = colourise(np.where(label == dataset.ignore_index, -1, label), colours)
        save_panel([image, gt, pred, blend(image, pred)], ["image", "ground truth", "prediction (majority vote)", "overlay"],
                   out_dir / f"{dataset.samples[image_idx].id}.png")


def backbone_for(model: RunModel) -> Backbone:
    return Backbone(BackboneSpec.from_config(model.config["backbone_spec"]))
