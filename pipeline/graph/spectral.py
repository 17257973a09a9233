"""Exact spectral clustering of a graph and the yardsticks psi is measured with.

- `top_eigenvectors`: the top-K eigenpairs of a symmetric sparse G by `scipy.sparse.linalg.eigsh`;
  `spectral_embedding`: their rows L2-normalised (Ng, Jordan and Weiss), ready for K-means
  (the eigenpairs of a split are stored by formats.write_eigen_reference, rule `eigenvectors`);
- `query_rows` / `nystrom_extension`: eigenvectors of a graph extended to new tokens (Nystrom),
  the exact counterpart of what psi learns (method `spectral_inductive`);
- `partition_measures`: how well a hard partition serves G (capture of the top-K spectrum,
  one-hot alignment, perplexity); `eigen_alignment` / `eigenvalue_capture`: how close a set of
  learned functions comes to the eigenvectors (matched |cos|, principal angles, Ky Fan capture).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from .dataset import normalised_rows

log = logging.getLogger(__name__)


def top_eigenvectors(g: sp.spmatrix, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs of a symmetric sparse G: (values descending, (N, k) vectors)."""
    from scipy.sparse.linalg import eigsh

    v0 = np.random.default_rng(seed).standard_normal(g.shape[0])
    started = time.time()
    log.info("eigsh: top %d eigenpairs of a %d x %d matrix with %d non-zeros ...", k, g.shape[0], g.shape[1], g.nnz)
    values, vectors = eigsh(g.astype(np.float64), k=k, which="LA", v0=v0)
    log.info("eigsh: done in %.1f s", time.time() - started)
    order = np.argsort(-values)
    return values[order], vectors[:, order]


def spectral_embedding(vectors: np.ndarray) -> np.ndarray:
    """Rows of the eigenvector matrix, L2-normalised (Ng, Jordan and Weiss), ready for K-means."""
    return normalised_rows(vectors)


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


def eigenvalue_capture(functions: np.ndarray, g: sp.spmatrix, top_values: np.ndarray) -> float:
    """tr(Q^T G Q) / (sum of the top-K eigenvalues), Q an orthonormal basis of the functions' span:
    the share of the top-K spectrum the span reaches (1 exactly for the top-K eigenspace, by Ky
    Fan's maximum principle never more)."""
    q, _ = np.linalg.qr(np.asarray(functions, dtype=np.float64))
    return float(np.sum(q * (g @ q)) / np.sum(top_values))


def perplexity(counts: np.ndarray) -> float:
    """exp(entropy) of cluster sizes: the number of equally used clusters with the same entropy."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def partition_measures(
    labels: np.ndarray, g: sp.spmatrix, top_values: np.ndarray, eigenvectors: np.ndarray | None = None
) -> dict[str, float]:
    """How well a hard partition of the tokens (one cluster id per token) serves G.

    - `capture`: the within-cluster association sum_c 1_c^T G 1_c / |c| (kernel k-means' ratio
      association, tr(Y^T G Y) for the size-normalised indicators Y) over the sum of G's top-K
      eigenvalues, K the number of eigenvalues given. By Ky Fan's principle it is at most 1, and
      it is what spectral clustering relaxes: the yardstick that sees a partition (a set of
      indicator functions) where alignment with the eigenvectors sees a subspace;
    - `onehot_cos`: mean principal-angle cosine between the indicators' span and the top-K
      eigenvectors (when given);
    - `perplexity`: exp(entropy) of the cluster sizes (the number of equally used clusters that
      would give the same entropy); `clusters`: clusters holding at least one token.
    """
    labels = np.asarray(labels).ravel()
    used, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    y = sp.csr_matrix(
        (1.0 / np.sqrt(counts[inverse]), (np.arange(len(labels)), inverse)), shape=(len(labels), len(used))
    )
    association = float((y.multiply(g @ y)).sum())
    out = {
        "capture": association / float(np.sum(top_values)),
        "perplexity": perplexity(counts),
        "clusters": len(used),
    }
    if eigenvectors is not None:
        out["onehot_cos"] = eigen_alignment(y.toarray(), eigenvectors)["principal_cos"]
    return out


def query_rows(sims: np.ndarray, idx: np.ndarray, degrees: np.ndarray) -> sp.csr_matrix:
    """Rows G_feat(x, X) of new tokens x against the graph's tokens X: their clamped top-k cosines
    (`sims`, `idx` from a search of X) normalised by sqrt(d_x d_j), with d_x the new token's own
    similarity sum and d_j the graph's degrees."""
    m, k = idx.shape
    keep = idx >= 0
    a = np.where(keep, np.clip(sims, 0, None), 0)
    d_x = np.maximum(a.sum(1), 1e-12)
    w = a / np.sqrt(d_x[:, None] * np.maximum(degrees[np.where(keep, idx, 0)], 1e-12))
    return sp.csr_matrix((w[keep], (np.repeat(np.arange(m), k)[keep.ravel()], idx[keep])), shape=(m, len(degrees)))


def nystrom_extension(
    rows: sp.spmatrix,
    vectors: np.ndarray,
    values: np.ndarray,
    pixel_blocks: np.ndarray | None = None,
    alpha: float = 0.0,
) -> np.ndarray:
    """Eigenvectors of G over the graph's tokens extended to new tokens (Nystrom):
    lambda f(x) = sum_j G_feat(x, x_j) u(x_j) + alpha sum_y G_pix(x, y) f(y), the pixel part over
    the new token's own image (its pixel graph links no graph token). Per image and eigenpair that
    is the linear system (I - alpha/lambda G_pix) f = G_feat(x, X) u / lambda, solved for every
    eigenpair at once through the eigendecomposition of the image's pixel graph. `rows`: (M, N)
    from `query_rows`; `pixel_blocks`: (B, hw, hw) normalised pixel graphs of the M = B * hw new
    tokens. For a token of the graph itself, with its own rows, f = u exactly."""
    base = np.asarray(rows @ vectors) / values[None, :]
    if pixel_blocks is None or not alpha:
        return base.astype(np.float32)
    b, hw, _ = pixel_blocks.shape
    mu, q = np.linalg.eigh(pixel_blocks.astype(np.float64))  # (B, hw), (B, hw, hw)
    gain = 1.0 - alpha * mu[:, :, None] / values[None, None, :]  # (B, hw, K)
    gain = np.where(np.abs(gain) < 1e-8, 1e-8, gain)
    coeff = np.matmul(q.transpose(0, 2, 1), base.reshape(b, hw, -1)) / gain
    return np.matmul(q, coeff).reshape(b * hw, -1).astype(np.float32)
