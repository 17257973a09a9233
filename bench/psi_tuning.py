"""What makes psi's steps count? Train psi on a training cache under several settings and score
each on the evaluation split only (never a test split): capture of a held-out val kernel against
exact spectral clustering of it, and val mIoU / accuracy (majority voting), with the time per step.

    python bench/psi_tuning.py --dataset camvid --backbone dinov2_s14 \
        --set lr=1e-3 --set lr=3e-3 --set lr=3e-3,batch_size=4 --out docs/psi_tuning.csv

Each `--set` is one setting: comma-separated train keys over the config's `train:` (values parsed
as YAML). Rows are appended to `--out` (one per setting and seed) and printed. Another training
cache (e.g. 4 augmented views per image) is tried with a config override and a tag:

    snakemake --cores 2 results/views4/camvid/features/dinov2_s14/train/train.json --configfile views4.yaml
    python bench/psi_tuning.py --configfile views4.yaml --tag views=4 --set epochs=1

where views4.yaml holds `results: results/views4` and `datasets: {camvid: {extract: {views: 4}}}`
(the evaluation cache is read from that results folder too: extract it there or link it).
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import torch
import yaml

from pipeline.cache import FeatureCache
from pipeline.configcheck import check_files
from pipeline.datasets import load_dataset
from pipeline.evaluate import cached_predictions, evaluate
from pipeline.plan import TRAIN_VIEW, default_train, features_path, graph_path, source_spec
from pipeline.train import train_psi
from pipeline.views import View

FIELDS = ["backbone", "setting", "seed", "steps", "s_per_step", "heldout_psi", "heldout_spectral", "capture_ratio",
          "batch_psi_last", "acc", "miou", "miou_hungarian"]


def parse_setting(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", nargs="*", default=[], help="overrides merged over config/config.yaml, as for snakemake")
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--backbone", default="dinov2_s14")
    parser.add_argument("--protocol", default=None, help="cached evaluation protocol (default: the dataset's first)")
    parser.add_argument("--set", action="append", default=[], dest="settings", help="train overrides, e.g. lr=3e-3,epochs=6")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="docs/psi_tuning.csv", help="CSV the rows are appended to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="", help="what differs in the caches (e.g. views=4 with a config whose "
                                                  "datasets.camvid.extract.views is 4): prefixed to each setting")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = check_files(args.configfile)
    ds = config["datasets"][args.dataset]
    protocol = args.protocol or next(iter(ds["protocols"]))
    train_cache = FeatureCache(Path(features_path(config, args.dataset, args.backbone, TRAIN_VIEW, ds["train_split"])).with_suffix(".zarr"))
    val_manifest = features_path(config, args.dataset, args.backbone, protocol, ds["eval_split"])
    val_cache = FeatureCache(Path(val_manifest).with_suffix(".zarr"))
    view = View.from_config(ds["protocols"][protocol])
    dataset = load_dataset(source_spec(config, args.dataset), ds["eval_split"], view.labels)
    out = Path(args.out)
    new_file = not out.exists()
    with open(out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for given in args.settings or [""]:
            text = ",".join(filter(None, [args.tag, given]))
            for seed in args.seeds:
                train = {**default_train(config, args.dataset), **parse_setting(given)}
                train["monitor"] = train.get("monitor") or 4
                spec = {"run": f"tune-{text or 'default'}-s{seed}", "seed": seed, "train": train, "heldout": val_manifest}
                if train.get("graph") == "dataset":  # the train split's k-NN graph (rule build_graph)
                    spec["graph"] = graph_path(config, args.dataset, args.backbone, TRAIN_VIEW, ds["train_split"])
                run_dir = Path("results") / "tuning" / f"{args.backbone}-{text or 'default'}-s{seed}".replace("=", "").replace(",", "_")
                started = time.time()
                model = train_psi(train_cache, spec, run_dir, torch.device("cpu"))
                seconds = time.time() - started
                log = list(csv.DictReader(open(run_dir / "train_log.csv")))
                capture = list(csv.DictReader(open(run_dir / "capture_log.csv")))
                stride = int(config["backbones"][args.backbone]["stride"])
                metrics = evaluate(model, dataset, cached_predictions(model, val_cache, dataset, view, stride, 8, torch.device("cpu")),
                                   view, n_overlays=0)
                last = capture[-1]
                row = {"backbone": args.backbone, "setting": text or "default", "seed": seed, "steps": len(log),
                       "s_per_step": round(float(log[-1]["seconds"]) / len(log), 3),
                       "heldout_psi": round(float(last["heldout_psi"]), 4), "heldout_spectral": round(float(last["heldout_spectral"]), 4),
                       "capture_ratio": round(float(last["heldout_psi"]) / float(last["heldout_spectral"]), 3),
                       "batch_psi_last": round(float(last["batch_psi"]), 4),
                       **{k: round(100 * metrics[k], 2) for k in ("acc", "miou", "miou_hungarian")}}
                writer.writerow(row)
                fh.flush()
                print(row, f"({seconds:.0f} s with monitoring)", flush=True)


if __name__ == "__main__":
    main()
