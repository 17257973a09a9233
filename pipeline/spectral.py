"""Exact spectral clustering over a whole split, as a reference for the neural eigenfunctions.

The paper confines the feature k-NN graph to each mini-batch and calls exact spectral
clustering over a dataset infeasible. Here the graph spans every token of a split:
- `dataset_knn`: every token's k nearest tokens by cosine similarity through FAISS, exact
  (`IndexFlatIP` on normalised vectors, queried in blocks, on the GPU with faiss-gpu) or
  approximate (IVF or HNSW, on the CPU), with `recall_at_k` to measure the approximation against
  exact search;
- `normalised_graph`: the same kernel as per batch (method.md section 2), over all tokens:
  A = (A + A^T) / 2 of the clamped top-k cosines, plus alpha times the per-image pixel graph,
  each degree-normalised separately, as one scipy sparse matrix;
- `top_eigenvectors`: its top-K eigenvectors by `scipy.sparse.linalg.eigsh`;
- `eigen_alignment`: how close a set of learned functions comes to them (mean |cos| after
  optimal one-to-one matching, and the cosines of the principal angles between the subspaces);
- `write_eigen_reference` / `read_eigen_reference`: the top-K eigenpairs of a cached split's
  graph (rule `eigenvectors`), shared by the `spectral` runs of every seed and the alignment of
  psi (rule `align`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from .errors import InputError
from .graph import DEFAULT_PIXEL_KNN, pixel_graph

log = logging.getLogger(__name__)


def _normalised_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dataset_knn(feats: np.ndarray, k: int, index: str = "exact", block: int = 16384, **knn_args) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) features -> (similarities, indices), each (N, k): cosine top-k among the other
    tokens, best first (self excluded), in memory. `index`: exact | ivf | hnsw (`knn_args`:
    nlist, nprobe, hnsw_m, ef_search)."""
    x = _normalised_rows(feats)
    k = min(k, len(x) - 1)
    search = _build_index(x, index, k, **knn_args)
    parts = [_search_block(search, x, start, min(start + block, len(x)), k) for start in range(0, len(x), block)]
    return np.concatenate([p[0] for p in parts]).astype(np.float32), np.concatenate([p[1] for p in parts])


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


def symmetric_degrees(sims: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Row sums of `feature_adjacency(sims, idx)` without building it: the degree of i in
    (A + A^T) / 2 is half its own clamped similarities plus half those pointing at it (O(N k)
    memory instead of several sparse copies of the graph)."""
    keep = (idx >= 0) & (idx != np.arange(len(idx))[:, None])
    w = np.where(keep, np.clip(sims, 0, None), 0).astype(np.float64)
    incoming = np.bincount(idx[keep].astype(np.int64), weights=w[keep], minlength=len(idx))
    return ((w.sum(1) + incoming) / 2).astype(np.float32)


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
    return combined_graph(*dataset_knn(high.reshape(b * hw, c), k, index, **knn_args), pixels, alpha)


def combined_graph(sims: np.ndarray, idx: np.ndarray, pixels: np.ndarray | None, alpha: float,
                   pixel_knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN) -> sp.csr_matrix:
    """The kernel of method.md section 2 from neighbour lists: the degree-normalised symmetrised
    feature graph + alpha * the per-image pixel graph (pixels: (B, hw, 5), token id = item * hw +
    position)."""
    g = degree_normalise(feature_adjacency(sims, idx))
    if pixels is not None and alpha:
        if pixels.shape[0] * pixels.shape[1] != g.shape[0]:
            raise InputError(f"the graph has {g.shape[0]} tokens, the pixel vectors {pixels.shape[0] * pixels.shape[1]}")
        g = (g + alpha * pixel_adjacency(pixels, pixel_knn)).tocsr()
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


def eigenvalue_capture(functions: np.ndarray, g: sp.spmatrix, top_values: np.ndarray) -> float:
    """tr(Q^T G Q) / (sum of the top-K eigenvalues), Q an orthonormal basis of the functions' span:
    the share of the top-K spectrum the span reaches (1 exactly for the top-K eigenspace, by Ky
    Fan's maximum principle never more)."""
    q, _ = np.linalg.qr(np.asarray(functions, dtype=np.float64))
    return float(np.sum(q * (g @ q)) / np.sum(top_values))


def partition_measures(labels: np.ndarray, g: sp.spmatrix, top_values: np.ndarray,
                       eigenvectors: np.ndarray | None = None) -> dict[str, float]:
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
    y = sp.csr_matrix((1.0 / np.sqrt(counts[inverse]), (np.arange(len(labels)), inverse)), shape=(len(labels), len(used)))
    association = float((y.multiply(g @ y)).sum())
    p = counts / counts.sum()
    out = {"capture": association / float(np.sum(top_values)), "perplexity": float(np.exp(-(p * np.log(p)).sum())),
           "clusters": int(len(used))}
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


def nystrom_extension(rows: sp.spmatrix, vectors: np.ndarray, values: np.ndarray, pixel_blocks: np.ndarray | None = None,
                      alpha: float = 0.0) -> np.ndarray:
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


def spectral_embedding(vectors: np.ndarray) -> np.ndarray:
    """Rows of the eigenvector matrix, L2-normalised (Ng, Jordan and Weiss), ready for K-means."""
    return _normalised_rows(vectors)


def build_dataset_graph(high: np.ndarray, out: Path, k: int = 256, exact_max_tokens: int = 200_000,
                        approximate: str = "ivf", block: int = 16384, recall_sample: int = 1000,
                        target_recall: float | None = 0.95, attrs: dict | None = None, **knn_args) -> dict:
    """Every token's k nearest tokens over the whole split, written to a Zarr group `out` block by
    block (resumable: a rerun with the same inputs continues after the last complete block):
    `indices` (N, k) int32, `similarities` (N, k) float16, `degrees` (N,) float32 of the
    symmetrised graph. Exact search up to `exact_max_tokens` tokens, `approximate` (ivf | hnsw)
    above: its search breadth (nprobe, ef_search) is doubled from the configured value until
    recall@k against exact search reaches `target_recall` on `recall_sample` tokens, and the
    recall of the finished graph is measured on as many other tokens (in the metadata).
    high: (N, C) features of all tokens. Returns the group's attributes."""
    import zarr

    out = Path(out)
    x = _normalised_rows(high)
    n, d = x.shape
    k = min(k, n - 1)
    index_kind = "exact" if n <= exact_max_tokens else approximate
    meta = {"tokens": n, "dim": d, "k": k, "index": index_kind, "knn_args": knn_args, "target_recall": target_recall,
            **(attrs or {})}
    fingerprint = json.dumps(meta, sort_keys=True, default=str)
    group = None
    if (out / "zarr.json").exists():
        group = zarr.open_group(str(out), mode="r+")
        if group.attrs.get("fingerprint") != fingerprint:
            group = None
    if group is None:
        shutil.rmtree(out, ignore_errors=True)
        group = zarr.open_group(str(out), mode="w", zarr_format=3)
        group.create_array("indices", shape=(n, k), chunks=(block, k), dtype="int32")
        group.create_array("similarities", shape=(n, k), chunks=(block, k), dtype="float16")
        group.attrs.update({**meta, "fingerprint": fingerprint, "n_done": 0, "complete": False})
    if group.attrs.get("complete"):
        return dict(group.attrs)
    search = _build_index(x, index_kind, k, **knn_args)
    if index_kind != "exact":
        rng = np.random.default_rng(0)
        tune_rows, check_rows = np.split(rng.choice(n, min(n, 2 * recall_sample), replace=False), 2)
        flat = _build_index(x, "exact", k)
        exact = {name: _search_rows(flat, x, rows, k)[1] for name, rows in (("tune", tune_rows), ("check", check_rows))}
        if target_recall:
            group.attrs["search_breadth"] = _reach_recall(search, x, tune_rows, exact["tune"], k, target_recall)
    done = int(group.attrs["n_done"])
    for start in tqdm(range(done, n, block), desc=f"graph ({index_kind})", unit="block", initial=done // block,
                      total=-(-n // block)):
        sims, idx = _search_block(search, x, start, min(start + block, n), k)
        group["indices"][start:start + len(idx)] = idx.astype(np.int32)
        group["similarities"][start:start + len(idx)] = sims.astype(np.float16)
        group.attrs["n_done"] = start + len(idx)
    if index_kind != "exact":
        found = group["indices"].get_orthogonal_selection((np.sort(check_rows),))
        group.attrs["recall_at_k"] = recall_at_k(found, exact["check"][np.argsort(check_rows)])
        log.info("%s index: recall@%d = %.3f on %d held-out tokens", index_kind, k, group.attrs["recall_at_k"], len(check_rows))
    degrees = symmetric_degrees(group["similarities"][:].astype(np.float32), group["indices"][:])
    group.create_array("degrees", data=degrees, overwrite=True)
    group.attrs["complete"] = True
    return dict(group.attrs)


def _reach_recall(index, x: np.ndarray, rows: np.ndarray, exact: np.ndarray, k: int, target: float) -> dict:
    """Double the index's search breadth (IVF nprobe, HNSW efSearch) until recall@k on `rows`
    reaches `target` or the breadth is exhausted; the index keeps the breadth found."""
    import faiss

    ivf = isinstance(index, faiss.IndexIVF)
    name, limit = ("nprobe", index.nlist) if ivf else ("ef_search", 1 << 14)
    while True:
        breadth = index.nprobe if ivf else index.hnsw.efSearch
        recall = recall_at_k(_search_rows(index, x, rows, k)[1], exact)
        log.info("%s = %d: recall@%d = %.3f on %d tokens (target %.2f)", name, breadth, k, recall, len(rows), target)
        if recall >= target or breadth >= limit:
            if recall < target:
                log.warning("recall@%d %.3f stays below %.2f at the largest %s; consider exact search", k, recall, target, name)
            return {name: int(breadth), "tuning_recall": recall}
        if ivf:
            index.nprobe = min(2 * breadth, limit)
        else:
            index.hnsw.efSearch = min(2 * breadth, limit)


def split_graph(graph_zarr: Path, pixels: np.ndarray | None, alpha: float,
                pixel_knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN) -> sp.csr_matrix:
    """G of a cached split from its dataset-wide graph (rule `build_graph`), as `combined_graph`."""
    import zarr

    group = zarr.open_group(str(graph_zarr), mode="r")
    if not group.attrs.get("complete"):
        raise InputError(f"{graph_zarr}: the dataset graph is incomplete; rerun build_graph to resume it")
    try:
        return combined_graph(group["similarities"][:].astype(np.float32), group["indices"][:].astype(np.int64), pixels,
                              alpha, pixel_knn)
    except InputError as exc:
        raise InputError(f"{graph_zarr}: {exc}; rebuild the graph from the current cache") from None


def write_eigen_reference(out: Path, values: np.ndarray, vectors: np.ndarray, attrs: dict) -> None:
    """values (K,), vectors (N, K) float32 and JSON attributes in one .npz, written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, values=values, vectors=vectors.astype(np.float32), attrs=np.array(json.dumps(attrs, default=str)))
    tmp.replace(out)


def read_eigen_reference(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    if not Path(path).is_file():
        raise InputError(f"{path}: no eigenvector reference; run the eigenvectors rule first")
    with np.load(path) as f:
        return f["values"], f["vectors"], json.loads(str(f["attrs"]))


def _build_index(x: np.ndarray, kind: str, k: int, nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
                 ef_search: int = 128):
    import faiss

    n, d = x.shape
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
        if gpu_search():  # brute force is what GPUs do best; the approximate indexes stay on the CPU
            from .graph import _gpu_resources

            index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    elif kind == "ivf":
        nlist = nlist or max(1, int(4 * np.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(ef_search, k + 1)
    else:
        raise ValueError(f"graph index: expected exact, ivf or hnsw, got {kind!r}")
    index.add(x)
    return index


def gpu_search() -> bool:
    """Exact dataset-wide search runs on the GPU when faiss-gpu sees one."""
    from .graph import faiss_gpus

    return faiss_gpus() > 0


def _search_block(index, x: np.ndarray, start: int, end: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of rows start..end among the other rows, self removed, best first."""
    return _search_rows(index, x, np.arange(start, end), k)


def _search_rows(index, x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s, i = index.search(x[rows], k + 1)
    s = np.where(i == np.asarray(rows)[:, None], -np.inf, s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return np.where(i < 0, 0, s), i  # an approximate search may find fewer than k: index -1, no weight
