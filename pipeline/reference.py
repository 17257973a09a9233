"""The exact spectral reference of a cached split, as workflow stages (rules `eigenvectors`,
`nystrom`, `fit_kmeans` for the spectral methods, and `align`); the maths is in graph/.

- `eigen_reference`: G of the split (its dataset-wide feature graph + alpha * the per-image pixel
  graph, graph.dataset.split_graph) and its top-K eigenpairs by eigsh, with wall time and peak memory.
- `fit_spectral`: the Ng-Jordan-Weiss embedding (eigenvector rows, L2-normalised) clustered by
  K-means. Transductive: the run labels exactly the tokens of the split it was fit on, so it is
  scored on that split's cache and cannot segment new images.
- `nystrom_reference` / method `spectral_inductive`: the top-K eigenvectors of the *training*
  split's graph extended to the evaluated split's tokens by the Nystrom formula over their k
  nearest training tokens, clustered by K-means centres fitted on the training embedding: the
  exact, non-parametric counterpart of what psi learns (it keeps every training token and its
  eigenvectors at test time, where psi keeps only its weights).
- `run_alignment`: how well any run's hard partition of the evaluated split serves its G
  (capture, one-hot alignment, perplexity) and, for psi, how close its logits come to the exact
  eigenvectors (a diagnostic).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import FeatureCache, cache_for
from .clustering import fit_kmeans
from .errors import InputError
from .formats import read_eigen_reference, read_nystrom, store_of
from .graph.batch import pixel_graph
from .graph.dataset import (
    DatasetGraph,
    build_index,
    normalised_rows,
    search_block,
    split_graph,
)
from .graph.spectral import (
    eigen_alignment,
    eigenvalue_capture,
    nystrom_extension,
    partition_measures,
    query_rows,
    spectral_embedding,
    top_eigenvectors,
)
from .models import RunModel
from .runtime import measured, progress
from .spec import Embedding, NystromRef, RunSpec

log = logging.getLogger(__name__)


def split_pixels(cache: FeatureCache) -> np.ndarray:
    """(B, hw, 5) pixel vectors of every item of a plain (un-augmented) cache."""
    if len(cache.plain_items()) != len(cache):
        raise InputError(
            f"{cache.path}: holds augmented views; the spectral reference needs a split's plain view (an "
            "evaluation cache)"
        )
    return cache.read(np.arange(len(cache)), ("pixels",))["pixels"].reshape(len(cache), -1, 5)


def eigen_reference(
    cache: FeatureCache, graph_zarr: Path, k: int, alpha: float, pixel_knn: Sequence[tuple[int, float]], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Top-k eigenpairs of the split's G: (values, (N, k) vectors, attributes with the solver's
    wall time and peak memory)."""
    with measured() as stats:
        g = split_graph(graph_zarr, split_pixels(cache) if alpha else None, alpha, pixel_knn)
        log.info("G of %s: %d tokens, %d non-zeros; eigsh for the top %d eigenpairs", cache.path, g.shape[0], g.nnz, k)
        values, vectors = top_eigenvectors(g, k, seed)
    log.info(
        "eigsh: %.1f s, peak memory %.0f MB; eigenvalues %.4f .. %.4f",
        stats["wall_s"],
        stats["peak_rss_mb"],
        values[0],
        values[-1],
    )
    return (
        values,
        vectors,
        {
            "tokens": int(g.shape[0]),
            "nnz": int(g.nnz),
            "K": k,
            "alpha": alpha,
            "pixel_knn": [list(p) for p in pixel_knn],
            "eigsh": stats,
        },
    )


def fit_spectral(spec: RunSpec) -> RunModel:
    """K-means (seeded) on the row-normalised eigenvectors of a split's G. `spectral`: of the
    evaluated split itself; `spectral_inductive`: of the training split, the model then labels the
    evaluated split through its Nystrom extension (`spec.nystrom`). The model keeps the
    embedding of every evaluated token so that evaluation reads its clusters by item."""
    if spec.eigen is None or spec.kmeans is None:
        raise InputError(f"{spec.run}: a {spec.method} run needs its eigenvector reference and kmeans settings")
    _values, vectors, _attrs = read_eigen_reference(spec.eigen.path)
    k = spec.K
    if vectors.shape[1] < k:
        raise InputError(f"{spec.eigen.path}: {vectors.shape[1]} eigenvectors, the run needs K={k}")
    embedding = spectral_embedding(vectors[:, :k])
    km = spec.kmeans
    rng = np.random.default_rng(spec.seed)
    points = (
        embedding
        if len(embedding) <= km.max_points
        else embedding[rng.choice(len(embedding), km.max_points, replace=False)]
    )
    centres = fit_kmeans(points, k, spec.seed, km.niter)
    if spec.nystrom is not None:
        extended = read_nystrom(spec.nystrom.path)[0]
        if extended.shape[1] < k:
            raise InputError(f"{spec.nystrom.path}: {extended.shape[1]} extended eigenvectors, the run needs K={k}")
        embedding = spectral_embedding(extended[:, :k])
    return RunModel(spec, centres=torch.from_numpy(centres), embedding=torch.from_numpy(embedding).half())


def nystrom_reference(spec: NystromRef, block: int = 8192) -> tuple[np.ndarray, dict[str, Any]]:
    """The training split's top-K eigenvectors (`spec.eigen`) extended to every token of the
    evaluated split (`spec.features`): k nearest training tokens by cosine (FAISS, exact up to
    graph.exact_max_tokens), their degree-normalised weights, and the pixel graph of each
    evaluated image (rule `nystrom`). Returns the (M, K) extension and its cost."""

    values, vectors, attrs = read_eigen_reference(spec.eigen.path)
    train_cache, cache = cache_for(spec.eigen.features), cache_for(spec.features)
    if train_cache.dim("high") != cache.dim("high"):
        raise InputError(f"{spec.features}: features of another backbone than {spec.eigen.features}")
    with measured() as cost:
        h, w = train_cache.grid
        degrees = DatasetGraph(store_of(spec.eigen.graph), h * w).degrees
        train_high = train_cache.read(np.arange(len(train_cache)), ("high",))["high"]
        train_high = normalised_rows(train_high.reshape(-1, train_high.shape[-1]))
        if len(train_high) != len(vectors):
            raise InputError(
                f"{spec.eigen.path}: eigenvectors over {len(vectors)} tokens, {spec.eigen.features} has "
                f"{len(train_high)}"
            )
        graph_cfg = spec.graph
        kind = (
            "exact"
            if len(train_high) <= int(graph_cfg.get("exact_max_tokens", 200_000))
            else graph_cfg.get("approximate", "ivf")
        )
        knn_args = {a: graph_cfg[a] for a in ("nprobe", "hnsw_m", "ef_search") if a in graph_cfg and kind != "exact"}
        index = build_index(train_high, kind, spec.k, **knn_args)
        alpha, pixel_knn = float(attrs["alpha"]), [tuple(p) for p in attrs["pixel_knn"]]
        hw = cache.grid[0] * cache.grid[1]
        items_per_block = max(1, block // hw)
        parts = []
        log.info(
            "Nystrom extension of %d eigenvectors of %d training tokens to %d tokens (%s search, k=%d)",
            vectors.shape[1],
            len(vectors),
            len(cache) * hw,
            kind,
            spec.k,
        )
        for start in progress(range(0, len(cache), items_per_block), desc="nystrom", unit="block"):
            items = np.arange(start, min(start + items_per_block, len(cache)))
            data = cache.read(items, ("high", "pixels"))
            queries = normalised_rows(data["high"].reshape(-1, data["high"].shape[-1]))
            sims, idx = search_block(index, queries, 0, len(queries), spec.k)
            rows = query_rows(sims, idx, degrees)
            blocks = (
                pixel_graph(torch.from_numpy(data["pixels"].reshape(len(items), hw, 5)).float(), pixel_knn).numpy()
                if alpha
                else None
            )
            parts.append(nystrom_extension(rows, vectors, values, blocks, alpha))
    log.info("Nystrom extension: %.1f s, peak memory %.0f MB", cost["wall_s"], cost["peak_rss_mb"])
    return np.concatenate(parts), {
        "tokens": len(cache) * hw,
        "train_tokens": len(vectors),
        "search": kind,
        "cost": cost,
    }


@torch.no_grad()
def cache_clusters(model: RunModel, cache: FeatureCache, batch_items: int = 16) -> np.ndarray:
    """The cluster of every token of a plain cache, (N,) in token order (item * h * w + position)."""
    out = []
    for start in range(0, len(cache), batch_items):
        items = np.arange(start, min(start + batch_items, len(cache)))
        if model.item_lookup:
            logits = model.item_logits(torch.from_numpy(items), cache.grid)
        else:
            data = cache.read(items, ("high", "input"))
            logits = model.token_logits(torch.from_numpy(data["high"]), torch.from_numpy(data["input"]))
        out.append(logits.argmax(1).flatten().numpy())
    return np.concatenate(out)


@torch.no_grad()
def psi_outputs(
    model: RunModel, cache: FeatureCache, batch_items: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """psi's outputs before the Gumbel-softmax (its logits) on every token of a plain cache, (N, K),
    and, as the floor to compare them with, K seeded random linear functions of the same inputs."""
    if model.spec.embedding is not Embedding.PSI_OUTPUTS or model.psi is None:
        raise InputError(f"{model.spec.run}: alignment needs a nes run (psi), not {model.method}")
    k = model.spec.K
    projection = torch.randn(cache.dim("input"), k, generator=torch.Generator().manual_seed(seed))
    logits, random = [], []
    for start in range(0, len(cache), batch_items):
        inp = torch.from_numpy(cache.read(np.arange(start, min(start + batch_items, len(cache))), ("input",))["input"])
        logits.append(model.psi_forward(inp.flatten(1, 2)).flatten(0, 1).numpy())
        random.append((inp.flatten(0, 2) @ projection).numpy())
    return np.concatenate(logits), np.concatenate(random)


def run_alignment(model: RunModel, cache: FeatureCache, graph_zarr: Path, eigen_path: Path) -> dict[str, Any]:
    """Any run on the evaluated split's G (rule `align`): `partition` = capture, one-hot alignment
    and perplexity of its hard clusters (spectral.partition_measures). For psi also, as a
    diagnostic: matched mean |cos|, principal-angle cosines and Ky Fan capture of its logits'
    span against the exact eigenvectors, the same for softmax(logits / tau_min) and for K random
    linear functions of psi's input (`random_input`, the floor)."""
    values, vectors, attrs = read_eigen_reference(eigen_path)
    k = model.num_clusters
    if vectors.shape[1] < k:
        raise InputError(f"{eigen_path}: {vectors.shape[1]} eigenvectors, the run has K={k} clusters")
    values, vectors = values[:k], vectors[:, :k]
    labels = cache_clusters(model, cache)
    if len(labels) != len(vectors):
        raise InputError(
            f"{eigen_path}: eigenvectors over {len(vectors)} tokens, the cache {cache.path} has {len(labels)}"
        )
    alpha = float(attrs["alpha"])
    g = split_graph(graph_zarr, split_pixels(cache) if alpha else None, alpha, [tuple(p) for p in attrs["pixel_knn"]])
    result: dict[str, Any] = {
        "tokens": len(labels),
        "K": k,
        "eigen_reference": str(eigen_path),
        "partition": partition_measures(labels, g, values, vectors),
    }
    log.info(
        "partition of %s on G: capture %.3f, one-hot alignment %.3f, perplexity %.1f of %d clusters",
        model.spec.run,
        result["partition"]["capture"],
        result["partition"]["onehot_cos"],
        result["partition"]["perplexity"],
        k,
    )
    if model.spec.embedding is Embedding.PSI_OUTPUTS:
        logits, random = psi_outputs(model, cache)
        soft = torch.softmax(torch.from_numpy(logits) / model.spec.psi.tau_min, dim=1).numpy()
        for name, functions in (("logits", logits), ("softmax", soft), ("random_input", random)):
            result[name] = {
                **eigen_alignment(functions, vectors),
                "eigenvalue_capture": eigenvalue_capture(functions, g, values),
            }
        log.info(
            "psi's logits vs the top-%d eigenvectors (matched |cos|, principal cos, capture): %.3f %.3f %.3f; "
            "random functions of its input %.3f %.3f %.3f",
            k,
            *result["logits"].values(),
            *result["random_input"].values(),
        )
    return result
