"""Is the per-batch kernel a good target? psi learns the eigenfunctions of each mini-batch's G
(studies/overfit_batch.py: it nearly reaches exact spectral clustering on a batch it trains on), so
what those eigenfunctions say about content decides what psi can reach. For batches of B images of
the evaluation split and kernel settings (k, alpha, B), exact spectral clustering of the batch's
G (K clusters) against K-means with K clusters on the same tokens' kernel features, both scored by
label purity of the tokens (val labels, diagnosis only), with the share of feature-graph weight
that stays inside single images. How much the feature graph's degrees vary decides how far
`train.normalised_cut` (volume instead of token counts) can move psi: `degree_cv` is their
coefficient of variation over the batch's tokens, `cluster_degree_min`/`_max` the lowest and
highest mean degree of the spectral clusters' tokens relative to the batch's mean (1 / 1: the two
associations agree).

    python -m studies.batch_kernel --features results/msrc/features/lite0/A/val.json \
        --set knn_k=256 --set knn_k=64 --set knn_k=16,batch_size=16 --out docs/data/batch_kernel.csv
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from pipeline.cache import FeatureCache
from pipeline.clustering import centre_logits, fit_kmeans
from pipeline.datasets import load_dataset
from pipeline.graph.batch import build_kernel
from pipeline.graph.spectral import spectral_embedding, top_eigenvectors
from pipeline.monitor import kernel_to_scipy
from pipeline.plan import check_files
from pipeline.views import View
from studies.cluster_spread import purity, token_labels
from studies.records import append_rows

FIELDS = [
    "dataset",
    "setting",
    "batch_size",
    "knn_k",
    "alpha",
    "K",
    "batches",
    "same_image",
    "purity_spectral",
    "purity_kmeans",
    "degree_cv",
    "cluster_degree_min",
    "cluster_degree_max",
]


def nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return centre_logits(torch.from_numpy(points), torch.from_numpy(centres)).argmax(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="an evaluation cache's manifest (plain views, with labels)")
    parser.add_argument("--dataset", default="msrc", help="its dataset in the config")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--set", action="append", default=[], dest="settings", help="train overrides, e.g. knn_k=64,batch_size=16"
    )
    parser.add_argument("--batches", type=int, default=4, help="batches per setting (disjoint, spread over the split)")
    parser.add_argument("--out", help="CSV the rows are appended to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = check_files([])
    cache = FeatureCache(Path(args.features).with_suffix(".zarr"))
    dataset = load_dataset({"name": args.dataset, **config["datasets"][args.dataset]}, args.split)
    labels = token_labels(dataset, View.from_config(cache.attrs["view_spec"]), cache.grid)
    items = cache.plain_items()
    rows = []
    for text in args.settings or [""]:
        cfg = {**config["train"], **(config["datasets"][args.dataset].get("train") or {})}
        for part in filter(None, text.split(",")):
            key, _, value = part.partition("=")
            cfg[key] = yaml.safe_load(value)
        b, k = int(cfg["batch_size"]), int(cfg["K"])
        rng = np.random.default_rng(0)
        order = rng.permutation(len(items))
        shares, spec_p, km_p, degree_cv, cluster_degree = [], [], [], [], []
        for n in range(min(args.batches, len(items) // b)):
            chosen = np.sort(items[order[n * b : (n + 1) * b]])
            data = {key: torch.from_numpy(v) for key, v in cache.read(chosen).items()}
            _, h, w, _ = data["high"].shape
            high = data["high"].reshape(b, h * w, -1)
            kernel = build_kernel(
                high,
                data["pixels"].reshape(b, h * w, 5),
                k=int(cfg["knn_k"]),
                alpha=float(cfg["alpha"]),
                pixel_knn=[tuple(p) for p in cfg["pixel_knn"]],
            )
            shares.append(kernel.same_image_share(h * w))
            tok = labels[cache.image_index[chosen]].reshape(-1)
            _, vectors = top_eigenvectors(kernel_to_scipy(kernel), k, 0)
            embedding = spectral_embedding(vectors)
            clusters = nearest(embedding, fit_kmeans(embedding, k, 0))
            spec_p.append(purity(clusters, tok, k, dataset.num_classes))
            assert kernel.feature_degree is not None
            degree = kernel.feature_degree.numpy() / kernel.feature_degree.mean().item()
            degree_cv.append(float(degree.std()))
            per_cluster = [degree[clusters == c].mean() for c in np.unique(clusters)]
            cluster_degree.append((min(per_cluster), max(per_cluster)))
            feats = F.normalize(high.reshape(b * h * w, -1).float(), dim=1).numpy()
            km_p.append(purity(nearest(feats, fit_kmeans(feats, k, 0)), tok, k, dataset.num_classes))
        rows.append(
            {
                "dataset": args.dataset,
                "setting": text or "default",
                "batch_size": b,
                "knn_k": cfg["knn_k"],
                "alpha": cfg["alpha"],
                "K": k,
                "batches": len(shares),
                "same_image": round(float(np.mean(shares)), 3),
                "purity_spectral": round(float(np.mean(spec_p)), 3),
                "purity_kmeans": round(float(np.mean(km_p)), 3),
                "degree_cv": round(float(np.mean(degree_cv)), 3),
                "cluster_degree_min": round(float(np.mean([lo for lo, _ in cluster_degree])), 3),
                "cluster_degree_max": round(float(np.mean([hi for _, hi in cluster_degree])), 3),
            }
        )
        print(rows[-1], flush=True)
    if args.out:
        append_rows(args.out, FIELDS, rows)


if __name__ == "__main__":
    main()
