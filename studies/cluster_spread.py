"""Are a run's clusters about content or about images? For each trained run, on a cached
evaluation split (val only), from its token-level clusters:

- `purity`: share of labelled tokens whose cluster's majority class is theirs (the ceiling of
  majority voting at this K);
- `images_per_cluster`: effective number of images a cluster spans (perplexity of its image
  histogram, averaged over clusters weighted by size); a kernel that links mostly tokens of
  one image teaches clusters that stay inside images or scenes;
- `groups_per_cluster`: the same over scene groups, where image ids carry one (`G_N_s`: MSRC);
- `clusters_per_image`: effective number of clusters inside one image.

    python -m studies.cluster_spread --features results/msrc/features/lite0/A/val.json \
        results/tuning/lite0-default/*/ --out docs/data/cluster_spread.csv
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cache import FeatureCache
from pipeline.datasets import load_dataset
from pipeline.graph.spectral import perplexity
from pipeline.models import RunModel
from pipeline.views import View
from studies.records import append_rows

FIELDS = [
    "run",
    "method",
    "K",
    "clusters_used",
    "purity",
    "images_per_cluster",
    "groups_per_cluster",
    "clusters_per_image",
]


def token_clusters(model: RunModel, cache: FeatureCache, items: np.ndarray) -> np.ndarray:
    """(items, h, w) cluster ids on the cache's token grid."""
    out = []
    with torch.no_grad():
        for start in range(0, len(items), 16):
            data = cache.read(items[start : start + 16], ("high", "input"))
            logits = model.token_logits(torch.from_numpy(data["high"]), torch.from_numpy(data["input"]))
            out.append(logits.argmax(1).numpy())
    return np.concatenate(out)


def token_labels(dataset, view: View, grid: tuple[int, int]) -> np.ndarray:
    """Each token's label: the majority class of the pixels it covers (ignore where none)."""
    out = []
    c = dataset.num_classes
    for i in range(len(dataset)):
        image = dataset.load_image(i)
        _, scored = view.scored(image, dataset.load_label(i, expected_hw=image.shape[:2]))
        if scored is None:
            raise ValueError(f"{dataset.name}: image {i} has no label to score")
        label = scored
        onehot = np.zeros((c + 1, *label.shape), np.float32)
        valid = label != dataset.ignore_index
        onehot[np.where(valid, label, c), np.arange(label.shape[0])[:, None], np.arange(label.shape[1])] = 1
        pooled = F.adaptive_avg_pool2d(torch.from_numpy(onehot), grid).numpy()
        tok = pooled[:c].argmax(0)
        out.append(np.where(pooled[:c].sum(0) > 0.5, tok, -1))
    return np.stack(out)


def class_counts(clusters: np.ndarray, labels: np.ndarray, k: int, c: int) -> np.ndarray:
    """(K, C) token counts of each cluster and class; tokens labelled -1 (no class) left out."""
    keep = labels >= 0
    counts = np.zeros((k, c))
    np.add.at(counts, (clusters[keep], labels[keep]), 1)
    return counts


def purity(clusters: np.ndarray, labels: np.ndarray, k: int, c: int) -> float:
    """Share of labelled tokens whose cluster's majority class is theirs."""
    counts = class_counts(clusters, labels, k, c)
    return float(counts.max(1).sum() / counts.sum())


def spread(counts: np.ndarray) -> float:
    """Size-weighted mean over rows of each row's perplexity."""
    sizes = counts.sum(1)
    keep = sizes > 0
    return float(np.average([perplexity(row) for row in counts[keep]], weights=sizes[keep]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="the evaluation cache's manifest")
    parser.add_argument("--split", default="val", help="the split the cache holds (default val)")
    parser.add_argument("--out", help="CSV the rows are appended to")
    parser.add_argument("runs", nargs="+", help="run directories (holding model.pt)")
    args = parser.parse_args()
    cache = FeatureCache(Path(args.features).with_suffix(".zarr"))
    items = cache.plain_items()
    first = RunModel.load(Path(args.runs[0]))
    dataset = load_dataset(first.spec.source, args.split)
    view = View.from_config(cache.attrs["view_spec"])
    labels = token_labels(dataset, view, cache.grid).reshape(-1)
    images = np.repeat(cache.image_index[items], int(np.prod(cache.grid)))
    groups = np.array([int(m.group(1)) if (m := re.match(r"^(\d+)_", dataset.samples[i].id)) else 0 for i in images])
    rows = []
    for run in args.runs:
        model = RunModel.load(Path(run))
        clusters = token_clusters(model, cache, items).reshape(-1)
        k = model.num_clusters
        by_image = np.zeros((k, images.max() + 1))
        np.add.at(by_image, (clusters, images), 1)
        by_group = np.zeros((k, groups.max() + 1))
        np.add.at(by_group, (clusters, groups), 1)
        rows.append(
            {
                "run": model.spec.run,
                "method": model.method,
                "K": k,
                "clusters_used": int((by_image.sum(1) > 0).sum()),
                "purity": round(purity(clusters, labels, k, dataset.num_classes), 3),
                "images_per_cluster": round(spread(by_image), 1),
                "groups_per_cluster": round(spread(by_group), 2),
                "clusters_per_image": round(spread(by_image.T), 1),
            }
        )
        print(rows[-1], flush=True)
    if args.out:
        append_rows(args.out, FIELDS, rows)


if __name__ == "__main__":
    main()
