"""Training on the dataset-wide graph (`train.graph: dataset`).

The kernel entries between the tokens of a batch come from the global graph (built by rule
`build_graph` over every token of the training cache, token id = item * h * w + position):
A_ij = (s_ij + s_ji) / 2 of the clamped top-k cosines, normalised with the *global* degrees,
G_ij = A_ij / sqrt(d_i d_j). The pixel graph stays per image.

A random batch of a large dataset holds few of its tokens' global neighbours, so its kernel would
be nearly empty. Batches are therefore assembled around anchors: half the batch are anchor images
(a seeded permutation per epoch), the other half the images holding most of the anchors' tokens'
neighbours (`neighbour_schedule`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import zarr

from .errors import InputError
from .spectral import feature_adjacency


class DatasetGraph:
    def __init__(self, path: Path, tokens_per_item: int):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise InputError(f"{self.path}: no dataset graph here; run the build_graph rule first")
        group = zarr.open_group(str(self.path), mode="r")
        if not group.attrs.get("complete"):
            raise InputError(f"{self.path}: the dataset graph is incomplete; rerun build_graph to resume it")
        self.indices = group["indices"][:].astype(np.int64)
        self.similarities = np.clip(group["similarities"][:].astype(np.float32), 0, None)
        self.degrees = group["degrees"][:].astype(np.float32)
        self.hw = tokens_per_item
        if len(self.indices) % tokens_per_item:
            raise InputError(f"{self.path}: {len(self.indices)} tokens are not a whole number of {tokens_per_item}-token items")
        self.n_items = len(self.indices) // tokens_per_item

    def neighbour_items(self, item: int, top: int) -> np.ndarray:
        """The items (other than `item`) holding most of its tokens' neighbours, most first."""
        nbr = self.indices[item * self.hw:(item + 1) * self.hw].ravel()
        nbr = nbr[nbr >= 0] // self.hw  # -1: fewer than k found by an approximate search
        nbr = nbr[nbr != item]
        values, counts = np.unique(nbr, return_counts=True)
        return values[np.argsort(-counts, kind="stable")[:top]]

    def feature_kernel(self, items: np.ndarray) -> torch.Tensor:
        """The degree-normalised feature graph restricted to the tokens of `items`, as CSR."""
        tokens = (np.asarray(items)[:, None] * self.hw + np.arange(self.hw)).ravel()
        local = np.full(len(self.indices), -1, dtype=np.int64)
        local[tokens] = np.arange(len(tokens))
        # neighbours outside the batch (or missing: -1) become -1: the same symmetrisation as the global graph
        neighbours = self.indices[tokens]
        a = feature_adjacency(self.similarities[tokens], np.where(neighbours >= 0, local[neighbours], -1))
        inv = 1.0 / np.sqrt(np.maximum(self.degrees[tokens], 1e-12))
        a = sp.diags(inv) @ a @ sp.diags(inv)
        a = a.tocsr()
        a.sort_indices()
        return torch.sparse_csr_tensor(torch.from_numpy(a.indptr.astype(np.int64)), torch.from_numpy(a.indices.astype(np.int64)),
                                       torch.from_numpy(a.data.astype(np.float32)), a.shape, check_invariants=False)


def neighbour_schedule(graph: DatasetGraph, batch: int, epochs: int, generator: torch.Generator) -> list[tuple[int, np.ndarray]]:
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
            chosen = list(perm[step * anchors_per_step:][:anchors_per_step])
            for rank in range(batch):
                for anchor in list(chosen[:anchors_per_step]):
                    if len(chosen) < batch and rank < len(neighbours[anchor]) and neighbours[anchor][rank] not in chosen:
                        chosen.append(int(neighbours[anchor][rank]))
            for extra in torch.randperm(n, generator=generator).numpy():
                if len(chosen) >= batch:
                    break
                if extra not in chosen:
                    chosen.append(int(extra))
            schedule.append((epoch, np.array(chosen[:batch], dtype=np.int64)))
    return schedule
