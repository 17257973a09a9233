"""Kernels beyond the paper's family, judged on the exact method (no training) against K-means on
the same features. Each variant changes the feature graph's features or edge weights; alpha = 0
(the pixel graph only lowered mIoU on MSRC, docs/results.md), k nearest neighbours by cosine.

Variants (a feature transform fitted on the graph's own tokens, then an edge rule):
- `plain`: the paper's feature graph (clamped top-k cosines);
- `centred`: cosines of features minus their mean (removes the component every token shares);
- `whiten=R`: centred, projected on the top R principal axes and scaled to unit variance;
- `image_centred`: each token minus its image's mean token;
- `context=L`: each token concatenated with L x its image's mean token (scene context);
- `binary`: the paper's neighbours with weight 1;
- `snn`: each edge weighted by the share of the two tokens' k neighbours they have in common;
- `restrict=M`: neighbours only in the token's own image and its M nearest images (by mean token).

Modes: `transductive` builds the graph over the evaluation split and clusters its tokens (rule
`spectral`'s setting); `inductive` builds it over the training split, extends the eigenvectors to
the evaluation split by Nystrom and clusters with centres fitted on train (`spectral_inductive`).
The control in each row is K-means with the same transform and the same fitting split. Token
level, majority voting, val only (labels for scoring).

    python -m studies.kernel_variants --dataset msrc --backbone lite0 --mode transductive \\
        --variants plain centred whiten=64 image_centred context=0.5 binary snn restrict=10
    python -m studies.kernel_variants --dataset msrc --mode inductive --variants plain centred --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from pipeline.cache import FeatureCache
from pipeline.clustering import fit_kmeans
from pipeline.datasets import load_dataset
from pipeline.graph.dataset import (
    build_index,
    dataset_knn,
    degree_normalise,
    feature_adjacency,
    normalised_rows,
    search_block,
)
from pipeline.graph.spectral import nystrom_extension, query_rows, spectral_embedding, top_eigenvectors
from pipeline.plan import TRAIN_VIEW, check_files, features_path
from pipeline.views import View
from studies.cluster_spread import token_labels
from studies.layer_probe import nearest_centre, scores, tokens
from studies.records import append_rows

FIELDS = [
    "dataset",
    "backbone",
    "mode",
    "variant",
    "seed",
    "K",
    "k",
    "kmeans_acc",
    "kmeans_miou",
    "spectral_acc",
    "spectral_miou",
    "same_image_share",
    "seconds",
]


@dataclass
class Tokens:
    """L2-normalised kernel features of a split's plain items and the image of each token."""

    x: np.ndarray
    image: np.ndarray
    hw: int

    def image_means(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, self.hw, x.shape[1]).mean(1)


@dataclass
class Neighbours:
    """Each query token's k graph tokens (best first) and the weight of each edge."""

    weights: np.ndarray
    idx: np.ndarray


def transform(name: str, base: Tokens, query: Tokens) -> tuple[np.ndarray, np.ndarray]:
    """The variant's features of the graph's tokens and of the query tokens, fitted on the graph's."""
    kind, _, arg = name.partition("=")
    if kind in ("plain", "binary", "snn", "restrict"):
        return base.x, query.x
    if kind == "centred":
        mu = base.x.mean(0)
        return base.x - mu, query.x - mu
    if kind == "whiten":
        mu = base.x.mean(0)
        _, sv, vt = np.linalg.svd(base.x[:: max(1, len(base.x) // 20000)] - mu, full_matrices=False)
        r = int(arg)
        return ((base.x - mu) @ vt[:r].T) / sv[:r], ((query.x - mu) @ vt[:r].T) / sv[:r]
    if kind == "image_centred":
        return base.x - base.image_means(base.x)[base.image], query.x - query.image_means(query.x)[query.image]
    if kind == "context":
        lam = float(arg)
        base_x, query_x = (
            np.concatenate([t.x, lam * normalised_rows(t.image_means(t.x))[t.image]], 1) for t in (base, query)
        )
        return base_x, query_x
    raise SystemExit(f"unknown variant {name!r}")


def search(base: np.ndarray, query: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of the graph's own tokens (query None: self excluded) or of query tokens."""
    if query is None:
        return dataset_knn(base, k)
    index = build_index(normalised_rows(base), "exact", k)
    return search_block(index, normalised_rows(query), 0, len(query), k)


def shared_neighbours(query_idx: np.ndarray, base_idx: np.ndarray, n: int, block: int = 2048) -> np.ndarray:
    """For each edge (q, j): |N(q) & N(j)| / k, from the two neighbour lists."""
    k = base_idx.shape[1]

    def binary(idx: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(
            (np.ones(idx.size, np.float32), (np.repeat(np.arange(len(idx)), k), idx.ravel())), shape=(len(idx), n)
        )

    b_t = binary(base_idx).T.tocsc()
    out = np.empty(query_idx.shape, np.float32)
    for s in range(0, len(query_idx), block):
        counts = (binary(query_idx[s : s + block]) @ b_t).toarray()
        out[s : s + block] = np.take_along_axis(counts, query_idx[s : s + block], 1) / k
    return out


def neighbours(
    name: str, fb: np.ndarray, fq: np.ndarray | None, base: Tokens, query: Tokens, k: int, base_idx: np.ndarray | None
) -> Neighbours:
    """The variant's edges of query tokens (None: the graph's own) into the graph's tokens."""
    kind, _, arg = name.partition("=")
    if kind == "restrict":
        m = int(arg)
        sims, idx = search(fb, fq, 4 * k)
        qi = query.image if fq is not None else base.image
        qd = normalised_rows((query if fq is not None else base).image_means(fb if fq is None else fq))
        bd = normalised_rows(base.image_means(fb))
        s = qd @ bd.T
        if fq is None:
            np.fill_diagonal(s, np.inf)  # a graph token's own image is always allowed
        near = np.argsort(-s, 1)[:, : m + (1 if fq is None else 0)]
        allowed = np.zeros(s.shape, bool)
        allowed[np.arange(len(s))[:, None], near] = True
        sims = np.where(allowed[qi[:, None], base.image[idx]], sims, -1.0)
        order = np.argsort(-sims, 1, kind="stable")[:, :k]
        sims, idx = np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)
        return Neighbours(np.maximum(sims, 0), np.where(sims > -1, idx, -1))
    sims, idx = search(fb, fq, k)
    if kind == "binary":
        return Neighbours(np.ones_like(sims), idx)
    if kind == "snn":
        return Neighbours(shared_neighbours(idx, idx if base_idx is None else base_idx, len(fb)), idx)
    return Neighbours(sims, idx)


def same_image_share(a: sp.spmatrix, image: np.ndarray) -> float:
    coo = a.tocoo()
    return float(coo.data[image[coo.row] == image[coo.col]].sum() / coo.data.sum())


def run_variant(
    name: str, mode: str, train: Tokens, val: Tokens, k: int, big_k: int, seeds: list[int], score: Callable
) -> list[dict]:
    started = time.time()
    base = val if mode == "transductive" else train
    fb, fq = transform(name, base, val)
    graph = neighbours(name, fb, None, base, base, k, None)
    adj = feature_adjacency(graph.weights, graph.idx)
    values, vectors = top_eigenvectors(degree_normalise(adj), big_k, 0)
    embedding = spectral_embedding(vectors)
    if mode == "inductive":
        edges = neighbours(name, fb, fq, base, val, k, graph.idx)
        degrees = np.asarray(adj.sum(1)).ravel()
        rows_q = query_rows(edges.weights, edges.idx, degrees)
        evaluated = spectral_embedding(nystrom_extension(rows_q, vectors, values))
    else:
        evaluated = embedding
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        sample = fb if len(fb) <= 150_000 else fb[rng.choice(len(fb), 150_000, replace=False)]
        km = nearest_centre(fit_kmeans(normalised_rows(sample), big_k, seed), normalised_rows(fq))
        sc = nearest_centre(fit_kmeans(embedding, big_k, seed), evaluated)
        (km_acc, km_miou), (sc_acc, sc_miou) = score(km), score(sc)
        rows.append(
            {
                "mode": mode,
                "variant": name,
                "seed": seed,
                "K": big_k,
                "k": k,
                "kmeans_acc": km_acc,
                "kmeans_miou": km_miou,
                "spectral_acc": sc_acc,
                "spectral_miou": sc_miou,
                "same_image_share": round(same_image_share(adj, base.image), 3),
                "seconds": round(time.time() - started),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="msrc")
    parser.add_argument("--backbone", default="lite0")
    parser.add_argument("--mode", choices=["transductive", "inductive"], default="transductive")
    parser.add_argument("--variants", nargs="+", default=["plain", "centred"])
    parser.add_argument("--K", type=int, default=128)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="CSV the rows are appended to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    config = check_files([])
    ds = {"name": args.dataset, **config["datasets"][args.dataset]}
    protocol = next(iter(ds["protocols"]))

    def cache(view: str, split: str) -> FeatureCache:
        return FeatureCache(Path(features_path(config, args.dataset, args.backbone, view, split)).with_suffix(".zarr"))

    val_cache = cache(protocol, ds["eval_split"])
    val_set = load_dataset(ds, ds["eval_split"])
    labels = token_labels(val_set, View.from_config(val_cache.attrs["view_spec"]), val_cache.grid).reshape(-1)

    def split_tokens(c: FeatureCache) -> Tokens:
        hw = c.grid[0] * c.grid[1]
        x = tokens(c, "high", None, None)
        return Tokens(x, np.repeat(np.arange(len(x) // hw), hw), hw)

    val = split_tokens(val_cache)
    train = split_tokens(cache(TRAIN_VIEW, ds["train_split"])) if args.mode == "inductive" else val

    def score(clusters: np.ndarray) -> tuple[float, float]:
        return scores(clusters, labels, args.K, val_set.class_names)

    for name in args.variants:
        rows = run_variant(name, args.mode, train, val, args.k, args.K, args.seeds, score)
        if args.out:
            append_rows(args.out, FIELDS, [{"dataset": args.dataset, "backbone": args.backbone, **r} for r in rows])


if __name__ == "__main__":
    main()
