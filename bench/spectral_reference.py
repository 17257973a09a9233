"""Exact spectral reference on real caches: time and memory of building G (dataset-wide feature graph
+ alpha x pixel graph) and of eigsh for its top-K eigenvectors, per split and K, to find where
exact spectral clustering stops being feasible on this machine.

    snakemake --cores 2 results/camvid/graphs/lite0/train/train.json results/camvid/graphs/lite0/native/val.json
    python bench/spectral_reference.py --splits results/camvid/graphs/lite0/native/val.json \\
        results/camvid/graphs/lite0/train/train.json --K 32 128

Each split is given by its graph manifest (rule build_graph); the cache is the one named in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import measure
from pipeline.cache import cache_for
from pipeline.graph.dataset import split_graph
from pipeline.graph.spectral import top_eigenvectors
from pipeline.reference import split_pixels


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--splits", nargs="+", required=True, help="graph manifests {split}.json from rule build_graph")
    p.add_argument("--K", type=int, nargs="+", default=[128])
    p.add_argument("--alpha", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for manifest in args.splits:
        meta = json.loads(Path(manifest).read_text())
        cache = cache_for(meta["features"])
        results: dict = {}
        with measure(results, "G"):
            g = split_graph(Path(manifest).with_suffix(".zarr"), split_pixels(cache), args.alpha, [(10, 2.0), (5, 0.1)])
        rows.append((manifest, g.shape[0], g.nnz, "build G", results["G"]))
        for k in args.K:
            with measure(results, f"eigsh{k}"):
                top_eigenvectors(g, k)
            rows.append((manifest, g.shape[0], g.nnz, f"eigsh top-{k}", results[f"eigsh{k}"]))
            print(rows[-1], flush=True)
    print("\n| split | tokens | non-zeros of G | step | seconds | peak MB above start |\n|---|---|---|---|---|---|")
    for manifest, n, nnz, step, r in rows:
        print(f"| {manifest} | {n:,} | {nnz:,} | {step} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
