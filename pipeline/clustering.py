"""K-means with FAISS: the baselines' centres, fitted on training tokens."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .runtime import faiss_gpus

log = logging.getLogger(__name__)


def fit_kmeans(points: np.ndarray, k: int, seed: int = 0, niter: int = 20) -> np.ndarray:
    """(M, D) float -> (K, D) float32 centres (FAISS Lloyd iterations, k-means++-free random init)."""
    import faiss

    points = np.ascontiguousarray(points, dtype=np.float32)
    if len(points) < k:
        raise ValueError(f"k-means needs at least K={k} points, got {len(points)}")
    started = time.time()
    log.info("k-means: K=%d on %d points of dim %d, %d iterations ...", k, len(points), points.shape[1], niter)
    km = faiss.Kmeans(
        points.shape[1],
        k,
        niter=niter,
        seed=seed,
        verbose=False,
        gpu=faiss_gpus() > 0,
        max_points_per_centroid=max(256, -(-len(points) // k)),
    )
    km.train(points)
    centres, objective = km.centroids, km.obj
    if centres is None or objective is None:
        raise RuntimeError(f"FAISS k-means returned no centres (K={k}, {len(points)} points)")
    log.info("k-means: done in %.1f s, final objective %.4g", time.time() - started, objective[-1])
    return np.array(centres)


def centre_logits(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Scores whose argmax is the nearest centre in L2: 2 x.c - |c|^2 (smooth enough to upsample)."""
    return 2 * x @ centres.T - centres.pow(2).sum(1)
