"""Where does a partition's score go? From the confusion matrices that evaluation already wrote
(`metrics.json`, no recomputation), per group of runs that differ only in their seed:

- Hungarian IoU per class (one cluster per class) and the mean best IoU any single cluster
  reaches (`best_cluster_miou`: matching without the one-to-one constraint);
- clusters per class: how many clusters have the class as their majority; a class split over
  several clusters keeps only one of them under Hungarian matching;
- the cluster sizes' perplexity against the classes': a balanced partition of imbalanced
  classes has to split the large ones.

    python -m studies.partition_anatomy results/camvid/runs/*-lite0-K11-* --out docs/data/camvid_k11_anatomy.csv
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline import metrics as M
from studies.records import append_rows


def run_group(run_dir: Path) -> str:
    """The run id without its seed: runs of one setting average together."""
    return re.sub(r"-s\d+$", "", run_dir.name)


def anatomy_rows(run_dirs: list[Path], split: str | None) -> list[dict]:
    groups: dict[str, list[tuple[dict, list[str]]]] = defaultdict(list)
    for run_dir in run_dirs:
        for path in sorted(run_dir.glob("*/metrics.json")):
            if split is not None and path.parent.name != split:
                continue
            metrics = json.loads(path.read_text())
            if "confusion" not in metrics:
                raise SystemExit(f"{path}: no 'confusion' (evaluated by an older version? rerun its evaluation)")
            conf = np.asarray(metrics["confusion"], dtype=np.int64)
            hung = M.scores(conf, M.hungarian(conf))
            row = {"acc_hungarian": hung["acc"], "iou_hungarian": hung["iou"]}
            row.update(M.partition_anatomy(conf))
            groups[f"{run_group(run_dir)}/{path.parent.name}"].append((row, list(metrics["per_class_iou"])))
    out = []
    for name, runs in groups.items():
        rows, names = [r for r, _ in runs], runs[0][1]
        iou = np.nanmean([r["iou_hungarian"] for r in rows], axis=0)
        per_class = np.mean([r["clusters_per_class"] for r in rows], axis=0)
        record = {
            "group": name,
            "seeds": len(rows),
            "acc_hungarian": round(100 * float(np.mean([r["acc_hungarian"] for r in rows])), 1),
            "miou_hungarian": round(100 * float(np.nanmean(iou)), 1),
            "best_cluster_miou": round(100 * float(np.mean([np.mean(r["best_cluster_iou"]) for r in rows])), 1),
            "cluster_perplexity": round(float(np.mean([r["cluster_perplexity"] for r in rows])), 2),
            "class_perplexity": round(rows[0]["class_perplexity"], 2),
        }
        record.update({f"iou_{n}": round(100 * float(v), 1) for n, v in zip(names, iou)})
        record.update({f"clusters_{n}": round(float(v), 2) for n, v in zip(names, per_class)})
        out.append(record)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (results/{dataset}/runs/{run})")
    ap.add_argument("--split", help="only this evaluation folder of each run (e.g. camvid-native)")
    ap.add_argument("--out", help="append the rows to this CSV")
    args = ap.parse_args()
    rows = anatomy_rows([p for p in args.runs if p.is_dir()], args.split)
    if not rows:
        raise SystemExit("no metrics.json under the given run directories")
    for row in rows:
        head = {k: row[k] for k in list(row)[:7]}
        print(", ".join(f"{k} {v}" for k, v in head.items()))
        print("   Hungarian IoU:", " ".join(f"{k[4:]} {v}" for k, v in row.items() if k.startswith("iou_")))
        print("   clusters:     ", " ".join(f"{k[9:]} {v}" for k, v in row.items() if k.startswith("clusters_")))
    if args.out:
        append_rows(args.out, list(rows[0]), rows)


if __name__ == "__main__":
    main()
