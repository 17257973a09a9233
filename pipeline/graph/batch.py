"""The kernel over a mini-batch's tokens (method.md section 2).

G = D_f^-1/2 A_f D_f^-1/2 + alpha * D_p^-1/2 A_p D_p^-1/2, where
- A_f: cosine top-k graph over all N tokens of the batch (links images), self-loops removed,
  negatives clamped to 0, the cosine values kept, symmetrised (A + A^T) / 2;
- A_p: per image, two binary k-NN graphs on [r, g, b, w*x, w*y] (k=10 at w=2, k=5 at w=0.1),
  each OR-symmetrised, OR-ed together, no self-loops; edges only inside an image.

G is never materialised densely: the feature part is a sparse CSR matrix with about 2Nk entries
and the pixel part a block-diagonal sparse CSR matrix with about 30 entries per row, built from
its edge list (never as (B, hw, hw) blocks or a dense N x N `block_diag`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..runtime import faiss_gpu_resources, faiss_gpus

# CSR matmul is all we use of it, and it is tested against a dense reference
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

DEFAULT_PIXEL_KNN: tuple[tuple[int, float], ...] = ((10, 2.0), (5, 0.1))


@dataclass
class BatchKernel:
    """G for one batch in factored form; `kernel @ X` is all the objective needs."""

    feature: torch.Tensor  # sparse CSR (N, N), degree-normalised
    pixel: torch.Tensor | None  # sparse CSR (N, N), only in-image entries, degree-normalised per image
    alpha: float
    feature_degree: torch.Tensor | None = None  # (N,) degrees of A_f before normalisation (`train.normalised_cut`)

    @property
    def shape(self) -> tuple[int, int]:
        n, m = self.feature.shape
        return int(n), int(m)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        out = _SymmetricMatmul.apply(self.feature, x)
        if self.pixel is not None and self.alpha:
            out = out + self.alpha * _SymmetricMatmul.apply(self.pixel, x)
        return out

    @torch.no_grad()
    def same_image_share(self, tokens_per_image: int) -> float:
        """Share of the feature graph's weight on edges inside one image (tokens are laid out image
        by image): 1/B would be chance; near 1 the batch's kernel barely links images."""
        # the entries of one image's rows are one contiguous range of the CSR arrays
        bounds = self.feature.crow_indices()[::tokens_per_image].tolist()
        cols, values = self.feature.col_indices(), self.feature.values()
        inside = values.new_zeros(())
        for image, (start, end) in enumerate(itertools.pairwise(bounds)):
            first = image * tokens_per_image
            mask = (cols[start:end] >= first) & (cols[start:end] < first + tokens_per_image)
            inside += values[start:end][mask].sum()
        return float(inside / values.sum().clamp_min(1e-12))

    def to_dense(self) -> torch.Tensor:
        """For tests and small references only."""
        dense = self.feature.to_dense()
        if self.pixel is not None and self.alpha:
            dense = dense + self.alpha * self.pixel.to_dense()
        return dense


@torch.no_grad()
def build_kernel(
    high: torch.Tensor,
    pixels: torch.Tensor,
    k: int = 256,
    alpha: float = 0.3,
    pixel_knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN,
    search_precision: str = "float32",
) -> BatchKernel:
    """high: (B, hw, C) kernel features; pixels: (B, hw, 5) [r, g, b, x, y] with everything in [0, 1]."""
    b, hw, c = high.shape
    feature, degree = normalised_feature_graph(high.reshape(b * hw, c).float(), k, search_precision)
    pixel = pixel_kernel(pixels.float(), pixel_knn) if alpha else None
    return BatchKernel(feature, pixel, float(alpha), degree)


def knn_cosine(feats: torch.Tensor, k: int, precision: str = "float32") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine neighbours of every row among the other rows: (values, indices), each (N, k).

    float32: FAISS exact inner-product search (on the GPU with faiss-gpu for a GPU tensor);
    chunked matmul + topk for a GPU tensor without faiss-gpu. bfloat16 (`train.search_precision`):
    the similarities are bf16 products accumulated in float32 (2-4x faster products on CPUs with
    AMX-BF16 and on GPUs), then the same top-k; near-ties at the k-th neighbour may swap.
    """
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"search precision: expected float32 or bfloat16, got {precision!r}")
    n = feats.shape[0]
    k = min(k, n - 1)
    x = torch.nn.functional.normalize(feats.float(), dim=1)
    if precision == "bfloat16":
        vals, idx = _knn_torch(x.bfloat16(), k + 1)
    elif x.is_cuda and not faiss_gpus():
        vals, idx = _knn_torch(x, k + 1)
    else:
        import faiss

        index: Any = faiss.IndexFlatIP(x.shape[1])
        if x.is_cuda:
            index = faiss.index_cpu_to_gpu(faiss_gpu_resources(), x.device.index or 0, index)
        xn = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
        index.add(xn)
        v, i = index.search(xn, k + 1)
        vals, idx = torch.from_numpy(v).to(x.device), torch.from_numpy(i).long().to(x.device)
    # drop self: it is normally the first hit, but duplicates may displace it
    rows = torch.arange(n, device=idx.device).unsqueeze(1)
    vals = vals.masked_fill(idx == rows, float("-inf"))
    vals, order = vals.topk(k, dim=1)
    return vals, idx.gather(1, order)


def _knn_torch(x: torch.Tensor, k: int, block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities of row blocks in x's dtype (accumulated in float32), compared in float32."""
    vals, idx = [], []
    for start in range(0, x.shape[0], block):
        v, i = (x[start : start + block] @ x.T).float().topk(k, dim=1, sorted=False)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def feature_graph(feats: torch.Tensor, k: int, search_precision: str = "float32") -> torch.Tensor:
    """Degree-normalised symmetric cosine k-NN graph as a sparse CSR (N, N) tensor."""
    return normalised_feature_graph(feats, k, search_precision)[0]


def normalised_feature_graph(
    feats: torch.Tensor, k: int, search_precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """`feature_graph` and the degrees it was normalised with, (N,): D_f of method.md section 2."""
    n = feats.shape[0]
    vals, idx = knn_cosine(feats, k, search_precision)
    crow, col, val = _symmetrise(idx, vals.clamp_min(0), n)
    row_of = torch.arange(n, device=val.device).repeat_interleave(crow.diff())
    degree = torch.zeros(n, dtype=val.dtype, device=val.device).index_add_(0, row_of, val)
    inv_sqrt_deg = degree.clamp_min(1e-12).rsqrt()
    val = val * inv_sqrt_deg[row_of] * inv_sqrt_deg[col]
    return torch.sparse_csr_tensor(crow, col, val, (n, n), check_invariants=False), degree


def _symmetrise(idx: torch.Tensor, vals: torch.Tensor, n: int):
    """(A + A^T) / 2 in CSR parts (crow, col, val) for A given as k neighbours per row (`idx`,
    `vals`: (N, k)), mutual neighbours summed, zeros dropped.

    On the CPU scipy does this from A's CSR form (k entries per row, no sort of all entries):
    about 6x faster than torch's CPU coalesce; on a GPU torch's is fast.
    """
    k = idx.shape[1]
    if vals.is_cuda:
        rows = torch.arange(n, device=idx.device).repeat_interleave(k)
        cols, flat = idx.reshape(-1), vals.reshape(-1)
        sym = torch.sparse_coo_tensor(
            torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
            torch.cat([flat, flat]) * 0.5,
            (n, n),
            check_invariants=False,
        ).coalesce()
        r, c = sym.indices()
        crow = torch.zeros(n + 1, dtype=torch.long, device=vals.device)
        crow[1:] = torch.bincount(r, minlength=n).cumsum(0)
        return crow, c, sym.values()
    import scipy.sparse as sp

    a = sp.csr_matrix(
        (
            vals.numpy().astype(np.float32, copy=True).ravel(),  # a copy: sort_indices permutes it in place
            idx.numpy().astype(np.int32).ravel(),
            np.arange(0, n * k + 1, k, dtype=np.int32),
        ),
        shape=(n, n),
    )
    a.sort_indices()
    sym = ((a + a.T.tocsr()) * 0.5).tocsr()
    sym.eliminate_zeros()
    sym.sort_indices()
    return (
        torch.from_numpy(sym.indptr.astype(np.int64)),
        torch.from_numpy(sym.indices.astype(np.int64)),
        torch.from_numpy(sym.data.astype(np.float32)),
    )


class _SymmetricMatmul(torch.autograd.Function):
    """G @ X for a symmetric sparse G: the backward is G @ grad, no transpose needed."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.g = g
        return g @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.g @ grad


def pixel_edges(pixels: torch.Tensor, knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN) -> tuple[torch.Tensor, ...]:
    """Per image binary k-NN graphs on colour + weighted position, each OR-symmetrised and OR-ed
    together, no self-loops: the edges (image, i, j), sorted and unique, with their normalised
    weights D^-1/2 A D^-1/2, from pixels (B, hw, 5)."""
    b, hw, _ = pixels.shape
    ends = []
    for k, weight in knn:
        k = min(k, hw - 1)
        vec = torch.cat([pixels[..., :3], weight * pixels[..., 3:5]], dim=-1)
        dist = torch.cdist(vec, vec)
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
        nearest = dist.topk(k, dim=-1, largest=False).indices  # (B, hw, k) within each image
        token = (torch.arange(b, device=pixels.device)[:, None, None] * hw + nearest).reshape(-1)
        row = (torch.arange(b * hw, device=pixels.device)[:, None]).expand(b * hw, k).reshape(-1)
        ends += [(row, token), (token, row)]
    n = b * hw
    key = torch.unique(torch.cat([r * n + c for r, c in ends]))  # sorted row-major, each edge once
    rows, cols = key // n, key % n
    inv_sqrt_deg = torch.bincount(rows, minlength=n).float().clamp_min(1e-12).rsqrt()
    return rows // hw, rows % hw, cols % hw, inv_sqrt_deg[rows] * inv_sqrt_deg[cols]


def pixel_graph(pixels: torch.Tensor, knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN) -> torch.Tensor:
    """The per-image pixel graphs as dense blocks (B, hw, hw) (references and small graphs)."""
    b, hw, _ = pixels.shape
    image, i, j, values = pixel_edges(pixels, knn)
    blocks = torch.zeros(b, hw, hw, dtype=values.dtype, device=pixels.device)
    blocks[image, i, j] = values
    return blocks


def pixel_kernel(pixels: torch.Tensor, knn: Sequence[tuple[int, float]] = DEFAULT_PIXEL_KNN) -> torch.Tensor:
    """The batch's pixel graph as a block-diagonal sparse CSR (N, N), built from its edges without
    dense (B, hw, hw) blocks (1.2x faster at B = 8, hw = 690: bench/step_breakdown.py)."""
    b, hw, _ = pixels.shape
    image, i, j, values = pixel_edges(pixels, knn)
    n = b * hw
    rows = image * hw + i
    crow = torch.zeros(n + 1, dtype=torch.long, device=pixels.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return torch.sparse_csr_tensor(crow, image * hw + j, values, (n, n), check_invariants=False)
