"""What makes psi's steps count? Train psi on a training cache under several settings and score
each on the evaluation split only (never a test split): capture of a held-out val kernel against
exact spectral clustering of it, and val mIoU / accuracy (majority voting), with the time per step.

    python -m studies.psi_tuning --dataset camvid --backbone dinov2_s14 \
        --set lr=1e-3 --set lr=3e-3 --set lr=3e-3,batch_size=4 --out docs/data/psi_tuning.csv

Each `--set` is one setting: comma-separated train keys over the config's `train:` (values parsed
as YAML). Rows are appended to `--out` (one per setting, method and seed) and printed. Runs are
the workflow's own (same specs, `fit_run`), under `{results}/tuning/{backbone}-{setting}/`.
`--methods nes nes_star kmeans` adds Ours* and the K-means baseline on the same caches and seeds
(like with like); `--device cuda` trains psi on a GPU (scoring stays on the CPU); `--extract` extracts the
two caches where missing (for a machine without Snakemake). The paper's schedule on a GPU:

    python -m studies.psi_tuning --device cuda --threads 16 --extract --methods nes nes_star kmeans \
        --set epochs=40 --seeds 0 1 2 --out docs/data/long_schedule.csv

Another training cache (e.g. 4 augmented views per image) is tried with a config override and a tag:

    snakemake --cores 2 results/views4/camvid/features/dinov2_s14/train/train.json --configfile views4.yaml
    python -m studies.psi_tuning --configfile views4.yaml --tag views=4 --set epochs=1

where views4.yaml holds `results: results/views4` and `datasets: {camvid: {extract: {views: 4}}}`
(the evaluation cache is read from that results folder too: extract it there or link it).
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from pipeline.cache import MARKER, FeatureCache
from pipeline.datasets import load_dataset
from pipeline.evaluate import cached_predictions, evaluate
from pipeline.fit import fit_run
from pipeline.plan import TRAIN_VIEW, check_files, default_train, extraction_spec, features_path, make_spec, source_spec
from pipeline.runtime import resolve_device
from pipeline.views import View

FIELDS = [
    "backbone",
    "setting",
    "method",
    "seed",
    "device",
    "steps",
    "s_per_step",
    "fit_s",
    "heldout_psi",
    "heldout_spectral",
    "capture_ratio",
    "batch_psi_last",
    "same_image",
    "usage",
    "acc",
    "miou",
    "miou_hungarian",
]
METHODS = ("nes", "nes_star", "kmeans")


def parse_setting(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def extract_missing(config: dict, dataset: str, backbone: str, caches: list[tuple[str, str]], threads: int) -> None:
    """What the workflow's extract + gather rules do, for a machine without Snakemake: each cache
    whose manifest is missing is extracted as one shard through the same `nes` commands."""
    for view, split in caches:
        manifest = Path(features_path(config, dataset, backbone, view, split))
        if manifest.exists():
            continue
        zarr = manifest.with_suffix(".zarr")
        spec = extraction_spec(config, dataset, backbone, view, split)
        nes = [sys.executable, "-m", "pipeline", "--threads", str(threads)]
        subprocess.run(
            [*nes, "extract", "--spec", spec.to_json(), "--cache", str(zarr), "--shard", "0", "1", "--overwrite"],
            check=True,
        )
        subprocess.run([*nes, "gather", "--out", str(manifest), str(zarr / "shard-0-of-1" / MARKER)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configfile", nargs="*", default=[], help="overrides merged over config/config.yaml, as for snakemake"
    )
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--backbone", default="dinov2_s14")
    parser.add_argument("--protocol", default=None, help="cached evaluation protocol (default: the dataset's first)")
    parser.add_argument(
        "--set", action="append", default=[], dest="settings", help="train overrides, e.g. lr=3e-3,epochs=6"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["nes"],
        choices=METHODS,
        help="nes (psi), nes_star (K-means on psi's features), kmeans (the baseline, fitted once per seed and K)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto: where psi trains (scoring runs on the CPU)")
    parser.add_argument(
        "--extract", action="store_true", help="extract the training and evaluation caches first where missing"
    )
    parser.add_argument("--out", default="docs/data/psi_tuning.csv", help="CSV the rows are appended to")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tag",
        default="",
        help="what differs in the caches (e.g. views=4 with a config whose "
        "datasets.camvid.extract.views is 4): prefixed to each setting",
    )
    args = parser.parse_args()
    if "nes_star" in args.methods and "nes" not in args.methods:
        parser.error("--methods nes_star clusters psi's features: list nes too")
    methods = sorted(set(args.methods), key=METHODS.index)  # nes before nes_star
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = check_files(args.configfile)
    config["device"] = args.device
    device = resolve_device(args.device)
    ds = config["datasets"][args.dataset]
    protocol = args.protocol or next(iter(ds["protocols"]))
    if args.extract:
        extract_missing(
            config,
            args.dataset,
            args.backbone,
            [(TRAIN_VIEW, ds["train_split"]), (protocol, ds["eval_split"])],
            args.threads,
        )
    val_manifest = features_path(config, args.dataset, args.backbone, protocol, ds["eval_split"])
    val_cache = FeatureCache(Path(val_manifest).with_suffix(".zarr"))
    view = View.from_config(ds["protocols"][protocol])
    dataset = load_dataset(source_spec(config, args.dataset), ds["eval_split"], view.labels)
    stride = int(config["backbones"][args.backbone]["stride"])
    out = Path(args.out)
    if out.exists() and out.read_text().splitlines()[0].split(",") != FIELDS:
        sys.exit(f"{out}: its columns are not {','.join(FIELDS)}; write to a new --out")
    new_file = not out.exists()
    done_kmeans: set[tuple[int, int]] = set()
    with open(out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for given in args.settings or [""]:
            text = ",".join(filter(None, [args.tag, given]))
            folder = (
                Path(config["results"])
                / "tuning"
                / f"{args.backbone}-{text or 'default'}".replace("=", "").replace(",", "_")
            )
            for seed in args.seeds:
                train = {**default_train(config, args.dataset), **parse_setting(given)}
                train["monitor"] = train.get("monitor") or 4
                for method in methods:
                    if method == "kmeans" and (seed, train["K"]) in done_kmeans:
                        continue
                    spec = make_spec(config, args.dataset, args.backbone, method, train, seed)
                    run_dir = folder / spec.run
                    started = time.time()
                    model = fit_run(spec, run_dir).to(torch.device("cpu"))
                    seconds = time.time() - started
                    metrics = evaluate(
                        model,
                        dataset,
                        cached_predictions(model, val_cache, dataset, view, stride, 8, torch.device("cpu")),
                        view,
                        n_overlays=0,
                    )
                    row = {
                        "backbone": args.backbone,
                        "setting": text or "default",
                        "method": method,
                        "seed": seed,
                        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "fit_s": round(seconds, 1),
                        **{k: round(100 * metrics[k], 2) for k in ("acc", "miou", "miou_hungarian")},
                    }
                    if method == "nes":
                        row.update(training_summary(run_dir))
                    if method == "kmeans":
                        done_kmeans.add((seed, train["K"]))
                    writer.writerow(row)
                    fh.flush()
                    print(row, flush=True)


def training_summary(run_dir: Path) -> dict:
    """Steps, time per step, the last capture checkpoint (held-out val kernel, training batch), the
    mean same-image share of the batches' feature graphs and the clusters in use at the end."""
    log = list(csv.DictReader((run_dir / "train_log.csv").read_text().splitlines()))
    tail = log[-max(1, len(log) // 10) :]
    last = list(csv.DictReader((run_dir / "capture_log.csv").read_text().splitlines()))[-1]
    return {
        "steps": len(log),
        "s_per_step": round(float(log[-1]["seconds"]) / len(log), 3),
        "heldout_psi": round(float(last["heldout_psi"]), 4),
        "heldout_spectral": round(float(last["heldout_spectral"]), 4),
        "capture_ratio": round(float(last["heldout_psi"]) / float(last["heldout_spectral"]), 3),
        "batch_psi_last": round(float(last["batch_psi"]), 4),
        "same_image": round(sum(float(r["same_image"]) for r in log) / len(log), 3),
        "usage": round(sum(float(r["usage"]) for r in tail) / len(tail), 1),
    }


if __name__ == "__main__":
    main()
