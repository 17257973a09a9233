"""Dataset-wide k-NN graph building against the number of tokens: FAISS exact, IVF and HNSW, with
chunked torch matmul + topk as the reference, plus exact eigsh time; a log-log plot as PNG.

    python bench/graph_scaling.py --sizes 10000 30000 100000 300000 1000000 --out docs/data/graph_scaling.png
    python bench/graph_scaling.py --sizes 1000000 --methods hnsw --append   # add points to the table

Measurements go to a CSV beside the PNG (docs/data/graph_scaling.csv); with --append, new points
replace those of the same size and method and the plot shows them all.

Synthetic clustered features of ViT-S's dimension (384) stand in above CamVid's size. Recall@k of
the approximate indexes is measured against exact search on 500 query tokens at every size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import measure
from pipeline.graph.dataset import (
    build_index,
    dataset_knn,
    degree_normalise,
    feature_adjacency,
    normalised_rows,
    recall_at_k,
    search_rows,
)
from pipeline.graph.spectral import top_eigenvectors


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(10, n // 1000), d)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)


def torch_knn(x: np.ndarray, k: int, block: int = 4096) -> np.ndarray:
    t = torch.from_numpy(normalised_rows(x))
    out = []
    for start in range(0, len(t), block):
        s = t[start : start + block] @ t.T
        s[torch.arange(len(s)), torch.arange(start, start + len(s))] = -2
        out.append(s.topk(k, dim=1).indices.numpy())
    return np.concatenate(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--exact-max", type=int, default=100_000, help="largest N for exact FAISS")
    p.add_argument("--torch-max", type=int, default=30_000, help="largest N for the torch reference")
    p.add_argument("--hnsw-max", type=int, default=300_000)
    p.add_argument("--eigsh-max", type=int, default=100_000)
    p.add_argument("--eigsh-k", type=int, default=64)
    p.add_argument(
        "--methods", nargs="+", default=["torch", "exact", "ivf", "hnsw"], help="which of torch exact ivf hnsw"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/data/graph_scaling.png")
    p.add_argument("--append", action="store_true", help="merge with the CSV beside --out instead of replacing it")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        x = clustered(n, args.dim)
        xn = normalised_rows(x)
        queries = np.random.default_rng(1).choice(n, min(n, 500), replace=False)
        flat = build_index(xn, "exact", args.k)
        truth = search_rows(flat, xn, queries, args.k)[1]
        del flat
        plans = [
            ("torch matmul+topk", args.torch_max, None),
            ("faiss exact", args.exact_max, "exact"),
            ("faiss ivf", None, "ivf"),
            ("faiss hnsw", args.hnsw_max, "hnsw"),
        ]
        for name, limit, kind in plans:
            if (limit is not None and n > limit) or (kind or "torch") not in args.methods:
                continue
            res: dict = {}
            with measure(res, name):
                idx = torch_knn(x, args.k) if kind is None else dataset_knn(x, args.k, kind)[1]
            recall = recall_at_k(idx[queries], truth)
            rows.append(
                {
                    "n": n,
                    "method": name,
                    "seconds": res[name]["seconds"],
                    "peak_mb": res[name]["peak_mb"],
                    "recall": recall,
                }
            )
            print(
                f"N={n:>8} {name:<18} {res[name]['seconds']:8.2f} s {res[name]['peak_mb']:7.0f} MB "
                f"recall@{args.k}={recall:.3f}",
                flush=True,
            )
            if kind == "exact" and n <= args.eigsh_max:
                sims, knn = dataset_knn(x, 16)  # a sparser graph for the eigensolver
                g = degree_normalise(feature_adjacency(sims, knn))
                started = time.perf_counter()
                top_eigenvectors(g, args.eigsh_k)
                rows.append(
                    {
                        "n": n,
                        "method": f"eigsh top-{args.eigsh_k}",
                        "seconds": time.perf_counter() - started,
                        "peak_mb": float("nan"),
                        "recall": float("nan"),
                    }
                )
                print(f"N={n:>8} eigsh top-{args.eigsh_k:<8} {rows[-1]['seconds']:8.2f} s", flush=True)
    table = Path(args.out).with_suffix(".csv")
    table.parent.mkdir(parents=True, exist_ok=True)
    if args.append and table.is_file():
        new = {(r["n"], r["method"]) for r in rows}
        old = pd.read_csv(table).to_dict("records")
        rows = sorted([r for r in old if (r["n"], r["method"]) not in new] + rows, key=lambda r: r["n"])
    pd.DataFrame(rows, columns=["n", "method", "seconds", "peak_mb", "recall"]).to_csv(table, index=False)
    print("\n| tokens | method | seconds | peak MB | recall@k |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['method']} | {r['seconds']:.2f} | {_num(r['peak_mb'], 0)} | {_num(r['recall'], 3)} |")
    plot(rows, Path(args.out), args.k)


def _num(value: float, digits: int) -> str:
    return "–" if value != value else f"{value:.{digits}f}"  # NaN -> dash


def plot(rows: list[dict], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["n"], r["seconds"]) for r in rows if r["method"] == method]
        ax.loglog(*zip(*pts), marker="o", label=method)
    ns = np.array(sorted({r["n"] for r in rows}), dtype=float)
    ax.loglog(ns, ns / ns[0] * min(r["seconds"] for r in rows if r["n"] == ns[0]), "k:", lw=0.8, label="linear")
    ax.set_xlabel("tokens N")
    ax.set_ylabel("seconds")
    ax.set_title(f"dataset-wide {k}-NN graph, 2 CPU threads")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
