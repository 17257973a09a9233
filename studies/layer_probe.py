"""Which layers carry the classes? For slices of a backbone's cached features (psi's input is the
concatenation of several stages or blocks; the kernel features are the `high` array), on an
evaluation split (val only, labels for diagnosis):

- `kmeans_miou`: K-means with K centres fitted on training tokens, val tokens assigned to the
  nearest centre, clusters matched to classes by majority voting (the paper's baseline, per layer);
- `nn_miou`: a nearest-neighbour probe, each val token labelled with the class of its nearest
  training token (cosine), how separable the classes are in that layer at all.

Token level: each token's label is the majority class of the pixels it covers.

    python -m studies.layer_probe --dataset msrc --backbone lite0 \
        --slice stage2=input:0:40 --slice stage3=input:40:152 --slice stage4=input:152:472 --slice kernel=high
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from pipeline import metrics as M
from pipeline.cache import FeatureCache
from pipeline.clustering import fit_kmeans
from pipeline.datasets import load_dataset
from pipeline.evaluate import summarise
from pipeline.plan import TRAIN_VIEW, check_files, features_path
from pipeline.views import View
from studies.cluster_spread import token_labels
from studies.records import append_rows

FIELDS = ["dataset", "backbone", "layer", "dims", "K", "kmeans_acc", "kmeans_miou", "nn_acc", "nn_miou"]


def split_caches(dataset: str, backbone: str, protocol: str | None) -> tuple[dict, FeatureCache, FeatureCache]:
    """The dataset's config entry, its training cache and its evaluation cache under `protocol`
    (default: the dataset's first), as the workflow lays them out."""
    config = check_files([])
    ds = {"name": dataset, **config["datasets"][dataset]}
    protocol = protocol or next(iter(ds["protocols"]))
    train = FeatureCache(
        Path(features_path(config, dataset, backbone, TRAIN_VIEW, ds["train_split"])).with_suffix(".zarr")
    )
    val = FeatureCache(Path(features_path(config, dataset, backbone, protocol, ds["eval_split"])).with_suffix(".zarr"))
    return ds, train, val


def tokens(cache: FeatureCache, array: str, start: int | None, end: int | None) -> np.ndarray:
    """(N, D) L2-normalised tokens of the cache's plain items, image by image."""
    out = []
    items = cache.plain_items()
    for s in range(0, len(items), 32):
        x = torch.from_numpy(cache.read(items[s : s + 32], (array,))[array]).float()
        x = x.reshape(-1, x.shape[-1])[:, start:end]
        out.append(F.normalize(x, dim=1).numpy())
    return np.ascontiguousarray(np.concatenate(out))


def nearest_centre(centres: np.ndarray, x: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatIP(centres.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    return index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


def scores(
    predicted: np.ndarray, labels: np.ndarray, k: int, class_names: list[str], mapping: np.ndarray | None = None
) -> tuple[float, float]:
    """Acc and mIoU with majority voting (clusters), or with `mapping` (a probe's classes: identity)."""
    keep = labels >= 0
    conf = M.confusion_matrix(predicted[keep], labels[keep], k, len(class_names), 255)
    result = M.scores(conf, mapping) if mapping is not None else summarise(conf, class_names)
    return round(100 * float(result["acc"]), 2), round(100 * float(result["miou"]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="msrc")
    parser.add_argument("--backbone", default="lite0")
    parser.add_argument("--protocol", help="cached evaluation protocol (default: the dataset's first)")
    parser.add_argument(
        "--slice",
        action="append",
        default=[],
        dest="slices",
        help="NAME=ARRAY[:START:END], e.g. stage3=input:40:152 or kernel=high",
    )
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--max-points", type=int, default=150000, help="training tokens sampled for K-means")
    parser.add_argument("--out", help="CSV the rows are appended to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds, train, val = split_caches(args.dataset, args.backbone, args.protocol)
    train_set, val_set = load_dataset(ds, ds["train_split"]), load_dataset(ds, ds["eval_split"])
    train_labels = token_labels(train_set, View.from_config(train.attrs["view_spec"]), train.grid).reshape(-1)
    val_labels = token_labels(val_set, View.from_config(val.attrs["view_spec"]), val.grid).reshape(-1)
    rng = np.random.default_rng(0)
    rows = []
    for text in args.slices or ["kernel=high"]:
        name, _, where = text.partition("=")
        array, *bounds = where.split(":")
        start, end = (int(bounds[0]), int(bounds[1])) if bounds else (None, None)
        xt, xv = tokens(train, array, start, end), tokens(val, array, start, end)
        sample = rng.choice(len(xt), min(args.max_points, len(xt)), replace=False)
        centres = fit_kmeans(xt[sample], args.K, 0)
        km = nearest_centre(centres, xv)
        labelled = np.flatnonzero(train_labels >= 0)
        nn = train_labels[labelled][nearest_centre(xt[labelled], xv)]
        km_acc, km_miou = scores(km, val_labels, args.K, val_set.class_names)
        nn_acc, nn_miou = scores(
            nn, val_labels, val_set.num_classes, val_set.class_names, np.arange(val_set.num_classes)
        )
        rows.append(
            {
                "dataset": args.dataset,
                "backbone": args.backbone,
                "layer": name,
                "dims": xt.shape[1],
                "K": args.K,
                "kmeans_acc": km_acc,
                "kmeans_miou": km_miou,
                "nn_acc": nn_acc,
                "nn_miou": nn_miou,
            }
        )
        print(rows[-1], flush=True)
    if args.out:
        append_rows(args.out, FIELDS, rows)


if __name__ == "__main__":
    main()
