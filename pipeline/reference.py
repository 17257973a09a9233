"""The exact spectral reference of a cached split, as workflow stages (rules `eigenvectors`,
`fit_kmeans` for method `spectral`, and `align`).

- `eigen_reference`: G of the split (its dataset-wide feature graph + alpha * the per-image pixel
  graph, spectral.split_graph) and its top-K eigenpairs by eigsh, with wall time and peak memory.
- `fit_spectral`: the Ng-Jordan-Weiss embedding (eigenvector rows, L2-normalised) clustered by
  K-means. Transductive: the run labels exactly the tokens of the split it was fit on, so it is
  scored on that split's cache and cannot segment new images.
- `psi_alignment`: how close a trained psi comes to the exact eigenvectors on the same tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .cache import FeatureCache
from .clustering import fit_kmeans
from .errors import InputError
from .models import RunModel
from .runtime import measured
from .spectral import (eigen_alignment, eigenvalue_capture, read_eigen_reference, spectral_embedding, split_graph,
                       top_eigenvectors)

log = logging.getLogger(__name__)


def split_pixels(cache: FeatureCache) -> np.ndarray:
    """(B, hw, 5) pixel vectors of every item of a plain (un-augmented) cache."""
    if len(cache.plain_items()) != len(cache):
        raise InputError(f"{cache.path}: holds augmented views; the spectral reference needs a split's plain view (an evaluation cache)")
    return cache.read(np.arange(len(cache)), ("pixels",))["pixels"].reshape(len(cache), -1, 5)


def eigen_reference(cache: FeatureCache, graph_zarr: Path, k: int, alpha: float,
                    pixel_knn: Sequence[tuple[int, float]], seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Top-k eigenpairs of the split's G: (values, (N, k) vectors, attributes with the solver's
    wall time and peak memory)."""
    with measured() as stats:
        g = split_graph(graph_zarr, split_pixels(cache) if alpha else None, alpha, pixel_knn)
        log.info("G of %s: %d tokens, %d non-zeros; eigsh for the top %d eigenpairs", cache.path, g.shape[0], g.nnz, k)
        values, vectors = top_eigenvectors(g, k, seed)
    log.info("eigsh: %.1f s, peak memory %.0f MB; eigenvalues %.4f .. %.4f", stats["wall_s"], stats["peak_rss_mb"],
             values[0], values[-1])
    return values, vectors, {"tokens": int(g.shape[0]), "nnz": int(g.nnz), "K": k, "alpha": alpha,
                             "pixel_knn": [list(p) for p in pixel_knn], "eigsh": stats}


def fit_spectral(spec: dict[str, Any]) -> RunModel:
    """K-means (seeded) on the row-normalised eigenvectors of the split; the model keeps the
    embedding of every token so that evaluation reads its clusters by item."""
    values, vectors, attrs = read_eigen_reference(Path(spec["eigen"]["path"]))
    k = int(spec["train"]["K"])
    if vectors.shape[1] < k:
        raise InputError(f"{spec['eigen']['path']}: {vectors.shape[1]} eigenvectors, the run needs K={k}")
    embedding = spectral_embedding(vectors[:, :k])
    km = spec["kmeans"]
    rng = np.random.default_rng(int(spec["seed"]))
    points = embedding if len(embedding) <= int(km["max_points"]) else embedding[rng.choice(len(embedding), int(km["max_points"]), replace=False)]
    centres = fit_kmeans(points, k, int(spec["seed"]), int(km["niter"]))
    return RunModel("spectral", spec, centres=torch.from_numpy(centres), embedding=torch.from_numpy(embedding).half())


@torch.no_grad()
def psi_outputs(model: RunModel, cache: FeatureCache, batch_items: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """psi's outputs before the Gumbel-softmax (its logits) on every token of a plain cache, (N, K),
    and, as the floor to compare them with, K seeded random linear functions of the same inputs."""
    if model.method != "nes":
        raise InputError(f"{model.config.get('run')}: alignment needs a nes run (psi), not {model.method}")
    k = int(model.config["train"]["K"])
    projection = torch.randn(cache.dim("input"), k, generator=torch.Generator().manual_seed(seed))
    logits, random = [], []
    for start in range(0, len(cache), batch_items):
        inp = torch.from_numpy(cache.read(np.arange(start, min(start + batch_items, len(cache))), ("input",))["input"])
        logits.append(model.psi(inp.flatten(1, 2)).flatten(0, 1).float().numpy())
        random.append((inp.flatten(0, 2) @ projection).numpy())
    return np.concatenate(logits), np.concatenate(random)


def psi_alignment(model: RunModel, cache: FeatureCache, graph_zarr: Path, eigen_path: Path) -> dict[str, Any]:
    """Matched mean |cos| and principal-angle cosines between psi's K outputs and the exact top-K
    eigenvectors of the split's G, and the share of the top-K spectrum psi's span captures; the
    same for softmax(logits / tau_min), the deterministic counterpart of the trained output, and
    for K random linear functions of psi's input (`random_input`: what no training gives)."""
    values, vectors, attrs = read_eigen_reference(eigen_path)
    logits, random = psi_outputs(model, cache)
    if len(logits) != len(vectors):
        raise InputError(f"{eigen_path}: eigenvectors over {len(vectors)} tokens, the cache {cache.path} has {len(logits)}")
    k = logits.shape[1]
    if vectors.shape[1] < k:
        raise InputError(f"{eigen_path}: {vectors.shape[1]} eigenvectors, psi has K={k} outputs")
    values, vectors = values[:k], vectors[:, :k]
    alpha = float(attrs["alpha"])
    g = split_graph(graph_zarr, split_pixels(cache) if alpha else None, alpha, [tuple(p) for p in attrs["pixel_knn"]])
    soft = torch.softmax(torch.from_numpy(logits) / float(model.config["train"]["tau_min"]), dim=1).numpy()
    result: dict[str, Any] = {"tokens": len(logits), "K": k, "eigen_reference": str(eigen_path)}
    for name, functions in (("logits", logits), ("softmax", soft), ("random_input", random)):
        result[name] = {**eigen_alignment(functions, vectors), "eigenvalue_capture": eigenvalue_capture(functions, g, values)}
    log.info("alignment with the top-%d eigenvectors (matched |cos|, principal cos, capture): psi %.3f %.3f %.3f; "
             "random functions of its input %.3f %.3f %.3f", k, *result["logits"].values(), *result["random_input"].values())
    return result
