"""Exact spectral clustering over a whole split, as a reference for the neural eigenfunctions.

The paper confines the feature k-NN graph to each mini-batch and calls exact spectral
clustering over a dataset infeasible. Here the graph spans every token of a split:
- `dataset_knn`: every token's k nearest tokens by cosine similarity through FAISS, exact
  (`IndexFlatIP` on normalised vectors, queried in blocks) or approximate (IVF or HNSW), with
  `recall_at_k` to measure the approximation against exact search;
- `normalised_graph`: the same kernel as per batch (method.md section 2), over all tokens:
  A = (A + A^T) / 2 of the clamped top-k cosines, plus alpha times the per-image pixel graph,
  each degree-normalised separately, as one scipy sparse matrix;
- `top_eigenvectors`: its top-K eigenvectors by `scipy.sparse.linalg.eigsh`;
- `eigen_alignment`: how close a set of learned functions comes to them (mean |cos| after
  optimal one-to-one matching, and the cosines of the principal angles between the subspaces).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from .graph import DEFAULT_PIXEL_KNN, pixel_graph

log = logging.getLogger(__name__)


def _normalised_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dataset_knn(feats: np.ndarray, k: int, index: str = "exact", block: int = 16384, nlist: int | None = None,
                nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) features -> (similarities, indices), each (N, k): cosine top-k among the other
    tokens, best first (self excluded). `index`: exact | ivf | hnsw."""
    import faiss

    x = _normalised_rows(feats)
    n, d = x.shape
    k = min(k, n - 1)
    if index == "exact":
        search = faiss.IndexFlatIP(d)
    elif index == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        search = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = x[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)]
        search.train(sample)
        search.nprobe = min(nprobe, nlist)
    elif index == "hnsw":
        search = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        search.hnsw.efSearch = max(ef_search, k + 1)
    else:
        raise ValueError(f"graph index: expected exact, ivf or hnsw, got {index!r}")
    search.add(x)
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for start in tqdm(range(0, n, block), desc=f"k-NN ({index})", unit="block", disable=n <= block):
        s, i = search.search(x[start:start + block], k + 1)
        rows = np.arange(start, start + len(s))[:, None]
        s = np.where(i == rows, -np.inf, s)  # drop self wherever it was found
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        sims[start:start + len(s)] = np.take_along_axis(s, order, 1)
        idx[start:start + len(s)] = np.take_along_axis(i, order, 1)
    return sims, idx


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact neighbours that the approximate search found."""
    hits = [len(np.intersect1d(a, e)) / len(e) for a, e in zip(approx, exact)]
    return float(np.mean(hits))


def feature_adjacency(sims: np.ndarray, idx: np.ndarray) -> sp.csr_matrix:
    """(A + A^T) / 2 of the clamped top-k cosines, no self-loops (padding index -1 skipped)."""
    n, k = idx.shape
    keep = idx >= 0
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    a = sp.csr_matrix((np.clip(sims[keep], 0, None), (rows, idx[keep])), shape=(n, n))
    a = ((a + a.T) * 0.5).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    return a


def degree_normalise(a: sp.spmatrix) -> sp.csr_matrix:
    inv_sqrt = 1.0 / np.sqrt(np.maximum(np.asarray(a.sum(1)).ravel(), 1e-12))
    d = sp.diags(inv_sqrt)
    return (d @ a @ d).tocsr()


def pixel_adjacency(pixels: np.ndarray, knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN) -> sp.csr_matrix:
    """(B, hw, 5) pixel vectors -> the block-diagonal per-image pixel graph, each block
    degree-normalised as in the per-batch kernel (one image at a time, bounded memory)."""
    b, hw, _ = pixels.shape
    blocks = [sp.csr_matrix(pixel_graph(torch.from_numpy(pixels[i:i + 1]).float(), knn)[0].numpy()) for i in range(b)]
    return sp.block_diag(blocks, format="csr")


def normalised_graph(high: np.ndarray, pixels: np.ndarray | None, k: int = 256, alpha: float = 0.3,
                     index: str = "exact", **knn_args) -> sp.csr_matrix:
    """G = D^-1/2 A D^-1/2 (feature graph over all tokens) + alpha * the per-image pixel graph.
    high: (B, hw, C), pixels: (B, hw, 5)."""
    b, hw, c = high.shape
    sims, idx = dataset_knn(high.reshape(b * hw, c), k, index, **knn_args)
    g = degree_normalise(feature_adjacency(sims, idx))
    if pixels is not None and alpha:
        g = (g + alpha * pixel_adjacency(pixels)).tocsr()
    return g


def top_eigenvectors(g: sp.spmatrix, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs of a symmetric sparse G: (values descending, (N, k) vectors)."""
    from scipy.sparse.linalg import eigsh

    v0 = np.random.default_rng(seed).standard_normal(g.shape[0])
    values, vectors = eigsh(g.astype(np.float64), k=k, which="LA", v0=v0)
    order = np.argsort(-values)
    return values[order], vectors[:, order]


def eigen_alignment(functions: np.ndarray, eigenvectors: np.ndarray) -> dict[str, float]:
    """functions, eigenvectors: (N, K) over the same tokens. Mean |cos| between matched columns
    (one-to-one, Hungarian on |cos|) and the mean cosine of the principal angles between the
    two column spaces (1 = the same subspace)."""
    fn = functions / np.maximum(np.linalg.norm(functions, axis=0, keepdims=True), 1e-12)
    en = eigenvectors / np.maximum(np.linalg.norm(eigenvectors, axis=0, keepdims=True), 1e-12)
    cos = np.abs(fn.T @ en)
    rows, cols = linear_sum_assignment(-cos)
    qf, _ = np.linalg.qr(fn)
    qe, _ = np.linalg.qr(en)
    principal = np.clip(np.linalg.svd(qf.T @ qe, compute_uv=False), 0, 1)
    return {"matched_abs_cos": float(cos[rows, cols].mean()), "principal_cos": float(principal.mean())}


def spectral_embedding(vectors: np.ndarray) -> np.ndarray:
    """Rows of the eigenvector matrix, L2-normalised (Ng, Jordan and Weiss), ready for K-means."""
    return _normalised_rows(vectors)
