"""The whole pipeline at Pascal Context's size, each stage timed: what the README's GPU hours
come from.

Synthetic data of Pascal Context's shape (4,998 training and 5,105 validation images of
500 x 375 with 59-class label maps; piecewise-constant scenes, so the graphs have structure) is
written once under `--workdir`, then the real workflow runs on it through Snakemake with the
`pascal` entry's settings (4 cached views per training image at the 480 crop, K 256, 40 epochs of
batch 16, psi with 18 heads, protocol A at 320 with the dense CRF) and a ViT-S/16 of random
weights (timing only: the scores mean nothing). Stage times are the rules' own benchmark files.

    python bench/pascal_size.py --cores 16                      # the full size, on a GPU machine
    python bench/pascal_size.py --scale 0.004 --epochs 1 --set heads=2 --no-crf --cores 2   # a smoke run

Prints a Markdown table and writes `{workdir}/pascal_size.json` (device, settings, seconds per
stage, total wall time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, VAL_IMAGES, CLASSES = 4998, 5105, 59
SIZE = (375, 500)  # height, width: Pascal VOC's typical image
STAGES = ("extract", "gather", "fit", "evaluate")


def synthetic_pair(args: tuple[Path, Path, str, int]) -> None:
    """One image and its label: a coarse random layout of a few classes, nearest-upsampled, each
    class its own colour with texture noise."""
    image_dir, label_dir, stem, seed = args
    rng = np.random.default_rng(seed)
    classes = rng.choice(CLASSES, size=rng.integers(2, 6), replace=False)
    layout = rng.choice(classes, size=(6, 8))
    label = np.kron(layout, np.ones((SIZE[0] // 6 + 1, SIZE[1] // 8 + 1), dtype=layout.dtype))[: SIZE[0], : SIZE[1]]
    palette = np.random.default_rng(CLASSES).integers(0, 255, (CLASSES, 3))
    image = palette[label] + rng.normal(0, 18, (*SIZE, 3))
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(image_dir / f"{stem}.jpg", quality=90)
    Image.fromarray(label.astype(np.uint8)).save(label_dir / f"{stem}.png")


def synthesise(root: Path, counts: dict[str, int], workers: int) -> float:
    """Write the dataset once (kept for later runs of the same size); returns the seconds spent."""
    started = time.perf_counter()
    labels = root / "labels"
    jobs = []
    for split, n in counts.items():
        images = root / "images" / split
        if images.is_dir() and len(list(images.glob("*.jpg"))) == n:
            continue
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        offset = 0 if split == "train" else 10**6
        jobs += [(images, labels, f"{split}_{i:05d}", offset + i) for i in range(n)]
    if jobs:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(synthetic_pair, jobs, chunksize=64))
    return time.perf_counter() - started


def workflow_config(args: argparse.Namespace, root: Path) -> dict:
    """The `pascal` entry's settings on the synthetic folder, one table of one nes run."""
    pascal = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["pascal"]
    protocol = {k: v for k, v in pascal["protocols"]["A"].items() if k != "labels"}
    if args.no_crf:
        protocol["crf"] = False
    train = {**pascal["train"], "epochs": args.epochs}
    for item in args.set:
        key, _, value = item.partition("=")
        train[key] = yaml.safe_load(value)
    return {
        "results": str(root / "results"),
        "datasets": {
            "pascal_size": {
                "adapter": "folder",
                "data_root": str(root / "images"),
                "label_dir": str(root / "labels"),
                "class_names": [f"class {i}" for i in range(CLASSES)],
                "train_split": "train",
                "eval_split": "val",
                "train_view": pascal["train_view"],
                "protocols": {"A": protocol},
                "extract": pascal["extract"],
                "train": train,
            }
        },
        "backbones": {
            "vit_s16_random": {"model": "vit_small_patch16_384", "kind": "vit", "weights": "random", "stride": 16}
        },
        "tables": {"pascal_size": {"timing": {"backbones": ["vit_s16_random"], "methods": ["nes"], "seeds": [0]}}},
    }


def stage_seconds(benchmarks: Path) -> dict[str, float]:
    """Seconds per stage, summed over the jobs of each rule (Snakemake's benchmark files)."""
    import pandas as pd

    totals = dict.fromkeys(STAGES, 0.0)
    for path in sorted(benchmarks.glob("*.tsv")):
        stage = path.stem.split("_")[0]
        if stage in totals:
            totals[stage] += float(pd.read_csv(path, sep="\t")["s"].sum())
    return totals


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of Pascal Context's image counts")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--set", action="append", default=[], help="a train key=value over the pascal entry's (repeatable)")
    p.add_argument("--no-crf", action="store_true", help="protocol A without the dense CRF")
    p.add_argument("--cores", type=int, default=16)
    p.add_argument("--workdir", default="results/pascal_size")
    args = p.parse_args()
    root = Path(args.workdir).resolve()
    counts = {"train": max(2, round(TRAIN_IMAGES * args.scale)), "val": max(2, round(VAL_IMAGES * args.scale))}
    synthesise_s = synthesise(root, counts, args.cores)
    config = workflow_config(args, root)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    results = root / "results" / "pascal_size"
    target = results / "timing.csv"
    command = [
        sys.executable, "-m", "snakemake", str(target), "--cores", str(args.cores),
        "--resources", "gpu=1", "--configfile", str(config_path), "--forceall",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - started
    stages = stage_seconds(results / "benchmarks")
    record = {
        "device": device_name(),
        "images": counts,
        "views": config["datasets"]["pascal_size"]["extract"]["views"],
        "train": config["datasets"]["pascal_size"]["train"],
        "crf": config["datasets"]["pascal_size"]["protocols"]["A"].get("crf", False),
        "synthesise_s": round(synthesise_s, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "workflow_wall_s": round(wall, 1),
    }
    (root / "pascal_size.json").write_text(json.dumps(record, indent=2))
    print(f"\n{record['device']}: {counts['train']} x {record['views']} training views, {counts['val']} val images\n")
    print("| stage | seconds |\n|---|---|")
    for stage, seconds in stages.items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| whole workflow (wall) | {wall:.1f} |")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
