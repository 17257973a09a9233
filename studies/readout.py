"""Does another read-out of psi's outputs give a better partition than their argmax? For trained
nes runs, on the evaluation split's cache (val only), token level (each token labelled with the
majority class of its pixels): psi's argmax against K-means (K clusters, fitted on the training
cache's tokens, assigned to val by nearest centre) on psi's row-normalised logits, the read-out
spectral clustering uses on eigenvectors (Ng-Jordan-Weiss), and on its row-normalised softmax at
the inference temperature. Hungarian and majority-voting mIoU, and the clusters' size perplexity.
With --clusters C the K-means read-outs make C clusters instead of psi's K: a psi trained with K
128 read out as C = 11 clusters for the K = C protocol (overclustering, then merging).

    python -m studies.readout --dataset camvid --backbone lite0 results/camvid/runs/nes-lite0-K11-*
    python -m studies.readout --clusters 11 results/camvid/runs/nes-lite0-K128-*
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import metrics as M
from pipeline.clustering import fit_kmeans
from pipeline.datasets import load_dataset
from pipeline.models import RunModel
from pipeline.reference import psi_outputs
from pipeline.views import View
from studies.cluster_spread import token_labels
from studies.layer_probe import nearest_centre, split_caches
from studies.records import append_rows

FIELDS = ["run", "readout", "clusters", "miou_hungarian", "miou", "cluster_perplexity"]


def row_normalised(logits: np.ndarray) -> np.ndarray:
    return F.normalize(torch.from_numpy(logits), dim=1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="nes run directories")
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--protocol", help="cached evaluation protocol (default: the dataset's first)")
    ap.add_argument("--clusters", type=int, help="clusters the K-means read-outs make (default: the run's K)")
    ap.add_argument("--max-points", type=int, default=150000, help="training tokens sampled for K-means")
    ap.add_argument("--out", help="CSV the rows are appended to")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds, train, val = split_caches(args.dataset, args.backbone, args.protocol)
    val_set = load_dataset(ds, ds["eval_split"])
    labels = token_labels(val_set, View.from_config(val.attrs["view_spec"]), val.grid).reshape(-1)
    keep = labels >= 0

    def row(run: str, readout: str, clusters: np.ndarray, k: int) -> dict:
        conf = M.confusion_matrix(clusters[keep], labels[keep], k, val_set.num_classes, 255)
        return {
            "run": run,
            "readout": readout,
            "clusters": k,
            "miou_hungarian": round(100 * M.scores(conf, M.hungarian(conf))["miou"], 2),
            "miou": round(100 * M.scores(conf, M.majority_vote(conf))["miou"], 2),
            "cluster_perplexity": round(M.partition_anatomy(conf)["cluster_perplexity"], 2),
        }

    rows = []
    for run_dir in args.runs:
        model = RunModel.load(run_dir)
        if model.spec.train is None:
            raise SystemExit(f"{run_dir}: not a nes run (no train settings)")
        k, seed, tau = model.spec.K, model.spec.seed, model.spec.train.tau_min
        clusters = args.clusters or k
        with torch.no_grad():
            train_logits, _ = psi_outputs(model, train)
            val_logits, _ = psi_outputs(model, val)
        sample = np.random.default_rng(seed).choice(
            len(train_logits), min(args.max_points, len(train_logits)), replace=False
        )
        rows.append(row(run_dir.name, "argmax", val_logits.argmax(1), k))
        for name, temperature in (("kmeans on row-normalised logits", None), ("kmeans on row-normalised softmax", tau)):
            fitted, assigned = (
                row_normalised(x if temperature is None else torch.from_numpy(x / temperature).softmax(1).numpy())
                for x in (train_logits, val_logits)
            )
            centres = fit_kmeans(np.ascontiguousarray(fitted[sample]), clusters, seed)
            rows.append(row(run_dir.name, name, nearest_centre(centres, assigned), clusters))
        for r in rows[-3:]:
            print(r, flush=True)
    if args.out:
        append_rows(args.out, FIELDS, rows)


if __name__ == "__main__":
    main()
