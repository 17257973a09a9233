"""Does psi learn the kernel's eigenfunctions, and do they carry over to new images as well as the
exact ones do? For nes runs (best: `train.output: eigenfunctions`, whose outputs are meant to be
eigenfunctions), against the exact top-K eigenvectors (rule `eigenvectors`), val only:

- on the training split: psi's outputs on every training token against the exact eigenvectors of
  the training split's dataset-wide G (what psi was asked to fit, when it trained on batches of
  that graph; `graph: dataset`);
- on the evaluation split: psi's outputs against the exact eigenvectors of the evaluated split's
  own G, next to the training split's exact eigenvectors extended to it by the Nystrom formula
  (what `spectral_inductive` clusters) and K random linear functions of psi's input (the floor).

Each row: mean principal-angle cosine between the two spans (1 = the same subspace), matched mean
|cos| (one-to-one, Hungarian) and the Ky Fan capture tr(Q^T G Q) / (sum of G's top-K eigenvalues)
of the span (1 only for the top-K eigenspace).

    python -m studies.eigen_generalisation --dataset camvid --backbone lite0 --K 11 \\
        results/camvid/runs/nes-lite0-K11-a0.3-b1-outputeigenfunctions-*
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.formats import read_eigen_reference, read_nystrom
from pipeline.graph.dataset import split_graph
from pipeline.graph.spectral import eigen_alignment, eigenvalue_capture
from pipeline.models import RunModel
from pipeline.plan import check_files, default_train, eigen_spec, nystrom_spec
from pipeline.reference import psi_outputs, split_pixels
from studies.layer_probe import split_caches
from studies.records import append_rows

FIELDS = ["backbone", "run", "split", "functions", "K", "principal_cos", "matched_abs_cos", "kyfan_capture"]


def reference(spec, cache):
    """(G, top values, top vectors) of a split from its exact eigen reference."""
    values, vectors, attrs = read_eigen_reference(spec.path)
    pixels = split_pixels(cache) if spec.alpha else None
    g = split_graph(Path(spec.graph).with_suffix(".zarr"), pixels, spec.alpha, [tuple(p) for p in attrs["pixel_knn"]])
    return g, values, vectors


def measures(backbone: str, run: str, split: str, name: str, functions: np.ndarray, g, values, vectors) -> dict:
    return {
        "backbone": backbone,
        "run": run,
        "split": split,
        "functions": name,
        "K": vectors.shape[1],
        **{k: round(v, 4) for k, v in eigen_alignment(functions, vectors).items()},
        "kyfan_capture": round(eigenvalue_capture(functions, g, values), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="nes run directories")
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--K", type=int, required=True, help="eigenvectors compared (the runs' K)")
    ap.add_argument("--protocol", help="cached evaluation protocol (default: the dataset's first)")
    ap.add_argument("--out", help="CSV the rows are appended to")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = check_files([])
    ds, train_cache, val_cache = split_caches(args.dataset, args.backbone, args.protocol)
    protocol = args.protocol or next(iter(ds["protocols"]))
    train = {**default_train(config, args.dataset), "K": args.K}
    nystrom = nystrom_spec(config, args.dataset, args.backbone, (args.dataset, protocol), train)
    val_ref = reference(eigen_spec(config, args.dataset, args.backbone, protocol, train), val_cache)
    train_ref = reference(nystrom.eigen, train_cache)
    b = args.backbone
    rows = [measures(b, "exact", "val", "nystrom", read_nystrom(nystrom.path)[0][:, : args.K], *val_ref)]
    for run_dir in args.runs:
        model = RunModel.load(run_dir)
        if model.spec.K != args.K:
            raise SystemExit(f"{run_dir}: K={model.spec.K}, not --K {args.K}")
        with torch.no_grad():
            val_out, random = psi_outputs(model, val_cache)
            train_out, _ = psi_outputs(model, train_cache)
        rows.append(measures(b, run_dir.name, "val", "psi", val_out, *val_ref))
        rows.append(measures(b, run_dir.name, "val", "random_input", random, *val_ref))
        rows.append(measures(b, run_dir.name, "train", "psi", train_out, *train_ref))
    for row in rows:
        print(row, flush=True)
    if args.out:
        append_rows(args.out, FIELDS, rows)


if __name__ == "__main__":
    main()
