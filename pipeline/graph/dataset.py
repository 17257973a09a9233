"""The dataset-wide graph: every token's k nearest tokens over a whole cached split, and what is
built from it.

- `dataset_knn` / `build_dataset_graph`: cosine top-k through FAISS, exact (`IndexFlatIP` on
  normalised vectors, queried in blocks, on the GPU with faiss-gpu) or approximate (IVF or HNSW on
  the CPU, its search breadth widened until recall@k reaches a target, `recall_at_k` measured on
  held-out tokens), stored in Zarr block by block (resumable) with the degrees of the symmetrised
  graph (rule `build_graph`);
- `split_graph` / `combined_graph` / `normalised_graph`: the same kernel as per batch
  (method.md section 2) over all tokens of a split: A = (A + A^T) / 2 of the clamped top-k
  cosines plus alpha times the per-image pixel graph, each degree-normalised separately, as one
  scipy sparse matrix (what the spectral reference decomposes);
- `DatasetGraph` / `neighbour_schedule`: training on the dataset-wide graph (`train.graph:
  dataset`). The kernel entries between the tokens of a batch come from the global graph (token
  id = item * h * w + position), A_ij = (s_ij + s_ji) / 2 normalised with the *global* degrees,
  G_ij = A_ij / sqrt(d_i d_j); the pixel graph stays per image. A random batch of a large
  dataset holds few of its tokens' global neighbours, so its kernel would be nearly empty:
  batches are assembled around anchors, half the batch anchor images, the other half the images
  holding most of the anchors' tokens' neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import zarr

from ..errors import InputError
from ..formats import ResumableStore, naming_resource_errors, read_array, zarr_array
from ..runtime import faiss_gpu_resources, faiss_gpus, progress
from .batch import DEFAULT_PIXEL_KNN, pixel_graph

log = logging.getLogger(__name__)
GRAPH_MARKER = "neural-eigenseg dataset graph"  # marks a Zarr group this module made (and may replace)


def normalised_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def dataset_knn(
    feats: np.ndarray, k: int, index: str = "exact", block: int = 16384, **knn_args
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) features -> (similarities, indices), each (N, k): cosine top-k among the other
    tokens, best first (self excluded), in memory. `index`: exact | ivf | hnsw (`knn_args`:
    nlist, nprobe, hnsw_m, ef_search)."""
    x = normalised_rows(feats)
    k = min(k, len(x) - 1)
    search = build_index(x, index, k, **knn_args)
    parts = [search_block(search, x, start, min(start + block, len(x)), k) for start in range(0, len(x), block)]
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
    b, _hw, _ = pixels.shape
    blocks = [sp.csr_matrix(pixel_graph(torch.from_numpy(pixels[i : i + 1]).float(), knn)[0].numpy()) for i in range(b)]
    return sp.block_diag(blocks, format="csr")


def normalised_graph(
    high: np.ndarray, pixels: np.ndarray | None, k: int = 256, alpha: float = 0.3, index: str = "exact", **knn_args
) -> sp.csr_matrix:
    """G = D^-1/2 A D^-1/2 (feature graph over all tokens) + alpha * the per-image pixel graph.
    high: (B, hw, C), pixels: (B, hw, 5)."""
    b, hw, c = high.shape
    return combined_graph(*dataset_knn(high.reshape(b * hw, c), k, index, **knn_args), pixels, alpha)


def combined_graph(
    sims: np.ndarray,
    idx: np.ndarray,
    pixels: np.ndarray | None,
    alpha: float,
    pixel_knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN,
) -> sp.csr_matrix:
    """The kernel of method.md section 2 from neighbour lists: the degree-normalised symmetrised
    feature graph + alpha * the per-image pixel graph (pixels: (B, hw, 5), token id = item * hw +
    position)."""
    g = degree_normalise(feature_adjacency(sims, idx))
    if pixels is not None and alpha:
        if pixels.shape[0] * pixels.shape[1] != g.shape[0]:
            raise InputError(
                f"the graph has {g.shape[0]} tokens, the pixel vectors {pixels.shape[0] * pixels.shape[1]}"
            )
        g = (g + alpha * pixel_adjacency(pixels, pixel_knn)).tocsr()
    return g


def split_graph(
    graph_zarr: Path,
    pixels: np.ndarray | None,
    alpha: float,
    pixel_knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN,
) -> sp.csr_matrix:
    """G of a cached split from its dataset-wide graph (rule `build_graph`), as `combined_graph`."""
    import zarr

    group = zarr.open_group(str(graph_zarr), mode="r")
    if not group.attrs.get("complete"):
        raise InputError(f"{graph_zarr}: the dataset graph is incomplete; rerun build_graph to resume it")
    try:
        return combined_graph(
            read_array(group, "similarities", np.float32),
            read_array(group, "indices", np.int64),
            pixels,
            alpha,
            pixel_knn,
        )
    except InputError as exc:
        raise InputError(f"{graph_zarr}: {exc}; rebuild the graph from the current cache") from None


def build_dataset_graph(
    high: np.ndarray,
    out: Path,
    k: int = 256,
    exact_max_tokens: int = 200_000,
    approximate: str = "ivf",
    block: int = 16384,
    recall_sample: int = 1000,
    target_recall: float | None = 0.95,
    attrs: dict | None = None,
    **knn_args,
) -> dict:
    """Every token's k nearest tokens over the whole split, written to a Zarr group `out` block by
    block (resumable: a rerun with the same inputs continues after the last complete block):
    `indices` (N, k) int32, `similarities` (N, k) float16, `degrees` (N,) float32 of the
    symmetrised graph. Exact search up to `exact_max_tokens` tokens, `approximate` (ivf | hnsw)
    above: its search breadth (nprobe, ef_search) is doubled from the configured value until
    recall@k against exact search reaches `target_recall` on `recall_sample` tokens, and the
    recall of the finished graph is measured on as many other tokens (in the metadata).
    high: (N, C) features of all tokens. Returns the group's attributes."""

    out = Path(out)
    x = normalised_rows(high)
    n, d = x.shape
    k = min(k, n - 1)
    index_kind = "exact" if n <= exact_max_tokens else approximate
    meta = {
        "tokens": n,
        "dim": d,
        "k": k,
        "index": index_kind,
        "knn_args": knn_args,
        "target_recall": target_recall,
        **(attrs or {}),
    }

    def create(group: Any) -> None:
        group.create_array("indices", shape=(n, k), chunks=(block, k), dtype="int32")
        group.create_array("similarities", shape=(n, k), chunks=(block, k), dtype="float16")

    store = ResumableStore(
        out, meta, create, what="dataset graph", kind=GRAPH_MARKER, replace=True, contents="a graph built"
    )
    group = store.group
    if store.complete:
        return dict(group.attrs)
    search = build_index(x, index_kind, k, **knn_args)
    if index_kind != "exact":
        rng = np.random.default_rng(0)
        tune_rows, check_rows = np.split(rng.choice(n, min(n, 2 * recall_sample), replace=False), 2)
        flat = build_index(x, "exact", k)
        exact = {name: search_rows(flat, x, rows, k)[1] for name, rows in (("tune", tune_rows), ("check", check_rows))}
        if target_recall:
            group.attrs["search_breadth"] = _reach_recall(search, x, tune_rows, exact["tune"], k, target_recall)
    done = store.n_done
    for start in progress(
        range(done, n, block), desc=f"graph ({index_kind})", unit="block", initial=done // block, total=-(-n // block)
    ):
        sims, idx = search_block(search, x, start, min(start + block, n), k)
        with naming_resource_errors(out):
            zarr_array(group, "indices")[start : start + len(idx)] = idx.astype(np.int32)
            zarr_array(group, "similarities")[start : start + len(idx)] = sims.astype(np.float16)
        store.advance(start + len(idx))
    if index_kind != "exact":
        found = zarr_array(group, "indices").get_orthogonal_selection((np.sort(check_rows),))
        group.attrs["recall_at_k"] = recall_at_k(found, exact["check"][np.argsort(check_rows)])
        log.info(
            "%s index: recall@%d = %.3f on %d held-out tokens",
            index_kind,
            k,
            group.attrs["recall_at_k"],
            len(check_rows),
        )
    degrees = symmetric_degrees(read_array(group, "similarities", np.float32), read_array(group, "indices"))
    group.create_array("degrees", data=degrees, overwrite=True)
    store.finish()
    return dict(group.attrs)


def _reach_recall(index, x: np.ndarray, rows: np.ndarray, exact: np.ndarray, k: int, target: float) -> dict:
    """Double the index's search breadth (IVF nprobe, HNSW efSearch) until recall@k on `rows`
    reaches `target` or the breadth is exhausted; the index keeps the breadth found."""
    import faiss

    ivf = isinstance(index, faiss.IndexIVF)
    name, limit = ("nprobe", index.nlist) if ivf else ("ef_search", 1 << 14)
    while True:
        breadth = index.nprobe if ivf else index.hnsw.efSearch
        recall = recall_at_k(search_rows(index, x, rows, k)[1], exact)
        log.info("%s = %d: recall@%d = %.3f on %d tokens (target %.2f)", name, breadth, k, recall, len(rows), target)
        if recall >= target or breadth >= limit:
            if recall < target:
                log.warning(
                    "recall@%d %.3f stays below %.2f at the largest %s; consider exact search", k, recall, target, name
                )
            return {name: int(breadth), "tuning_recall": recall}
        if ivf:
            index.nprobe = min(2 * breadth, limit)
        else:
            index.hnsw.efSearch = min(2 * breadth, limit)


def build_index(
    x: np.ndarray, kind: str, k: int, nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 128
):
    import faiss

    n, d = x.shape
    if kind == "exact":
        index: Any = faiss.IndexFlatIP(d)
        if gpu_search():  # brute force is what GPUs do best; the approximate indexes stay on the CPU
            index = faiss.index_cpu_to_gpu(faiss_gpu_resources(), 0, index)
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
    return faiss_gpus() > 0


def search_block(index, x: np.ndarray, start: int, end: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of rows start..end among the other rows, self removed, best first."""
    return search_rows(index, x, np.arange(start, end), k)


def search_rows(index, x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s, i = index.search(x[rows], k + 1)
    s = np.where(i == np.asarray(rows)[:, None], -np.inf, s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
    return np.where(i < 0, 0, s), i  # an approximate search may find fewer than k: index -1, no weight


class DatasetGraph:
    def __init__(self, path: Path, tokens_per_item: int):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise InputError(f"{self.path}: no dataset graph here; run the build_graph rule first")
        group = zarr.open_group(str(self.path), mode="r")
        if not group.attrs.get("complete"):
            raise InputError(f"{self.path}: the dataset graph is incomplete; rerun build_graph to resume it")
        self.indices = read_array(group, "indices", np.int64)
        self.similarities = np.clip(read_array(group, "similarities", np.float32), 0, None)
        self.degrees = read_array(group, "degrees", np.float32)
        self.hw = tokens_per_item
        if len(self.indices) % tokens_per_item:
            raise InputError(
                f"{self.path}: {len(self.indices)} tokens are not a whole number of {tokens_per_item}-token items"
            )
        self.n_items = len(self.indices) // tokens_per_item

    def neighbour_items(self, item: int, top: int) -> np.ndarray:
        """The items (other than `item`) holding most of its tokens' neighbours, most first."""
        nbr = self.indices[item * self.hw : (item + 1) * self.hw].ravel()
        nbr = nbr[nbr >= 0] // self.hw  # -1: fewer than k found by an approximate search
        nbr = nbr[nbr != item]
        values, counts = np.unique(nbr, return_counts=True)
        return values[np.argsort(-counts, kind="stable")[:top]]

    def item_tokens(self, items: np.ndarray) -> np.ndarray:
        """The global token ids of `items`, item by item."""
        return (np.asarray(items)[:, None] * self.hw + np.arange(self.hw)).ravel()

    def feature_kernel(self, items: np.ndarray) -> torch.Tensor:
        """The degree-normalised feature graph restricted to the tokens of `items`, as CSR."""
        tokens = self.item_tokens(items)
        local = np.full(len(self.indices), -1, dtype=np.int64)
        local[tokens] = np.arange(len(tokens))
        # neighbours outside the batch (or missing: -1) become -1: the same symmetrisation as the global graph
        neighbours = self.indices[tokens]
        a = feature_adjacency(self.similarities[tokens], np.where(neighbours >= 0, local[neighbours], -1))
        inv = 1.0 / np.sqrt(np.maximum(self.degrees[tokens], 1e-12))
        a = sp.diags(inv) @ a @ sp.diags(inv)
        a = a.tocsr()
        a.sort_indices()
        return torch.sparse_csr_tensor(
            torch.from_numpy(a.indptr.astype(np.int64)),
            torch.from_numpy(a.indices.astype(np.int64)),
            torch.from_numpy(a.data.astype(np.float32)),
            a.shape,
            check_invariants=False,
        )


def neighbour_schedule(
    graph: DatasetGraph, batch: int, epochs: int, generator: torch.Generator
) -> list[tuple[int, np.ndarray]]:
    """(epoch, items) per step: ceil(B/2) anchors from a seeded permutation, the rest filled with
    the items most linked to the anchors (random items where the anchors have too few). Every
    image is an anchor once per epoch, so an epoch has about 2n/B steps (twice a batch-graph
    epoch's: each image is also drawn in as a neighbour)."""
    n = graph.n_items
    anchors_per_step = -(-batch // 2)
    steps_per_epoch = -(-n // anchors_per_step)
    neighbours = [graph.neighbour_items(i, batch) for i in range(n)]
    schedule = []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator).numpy()
        for step in range(steps_per_epoch):
            chosen = list(perm[step * anchors_per_step :][:anchors_per_step])
            for rank in range(batch):
                for anchor in list(chosen[:anchors_per_step]):
                    if (
                        len(chosen) < batch
                        and rank < len(neighbours[anchor])
                        and neighbours[anchor][rank] not in chosen
                    ):
                        chosen.append(int(neighbours[anchor][rank]))
            for extra in torch.randperm(n, generator=generator).numpy():
                if len(chosen) >= batch:
                    break
                if extra not in chosen:
                    chosen.append(int(extra))
            schedule.append((epoch, np.array(chosen[:batch], dtype=np.int64)))
    return schedule


def graph_of_split(
    load_tokens: Callable[[], np.ndarray], features: str, out: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """`nes graph`: the dataset-wide graph over the (N, C) tokens `load_tokens` reads from the
    cache `features`, into the store beside the manifest `out`; then the manifest (the graph's
    attributes and the cost of reading and building, in `cost`)."""
    from ..formats import store_of, write_json
    from ..runtime import measured

    with measured() as cost:
        attrs = build_dataset_graph(load_tokens(), store_of(out), attrs={"features": features}, **options)
    log.info("graph of %d tokens in %.1f s, peak memory %.0f MB", attrs["tokens"], cost["wall_s"], cost["peak_rss_mb"])
    manifest = {**{k: v for k, v in attrs.items() if k != "fingerprint"}, "cost": cost}
    write_json(out, manifest)
    return manifest
