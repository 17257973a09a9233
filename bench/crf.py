"""Dense-CRF cost per image against the number of labels it runs over: all K clusters vs the
clusters active in the image (what evaluation does), on a trained run's real predictions.

    python bench/crf.py --run results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0 --images 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.crf import active_labels, dense_crf
from pipeline.datasets import load_dataset
from pipeline.models import RunModel
from pipeline.predict import backbone_for, image_logits
from pipeline.views import View


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = RunModel.load(Path(args.run))
    view = View.from_config(model.spec.train_view)
    ds = load_dataset({**model.spec.source, "max_images": args.images}, "val")
    backbone = backbone_for(model)
    rows = []
    for i in range(len(ds)):
        image = ds.load_image(i)
        probs = image_logits(model, backbone, [image], view, torch.device("cpu"))[0].softmax(0).numpy()
        active = active_labels(probs)
        t0 = time.perf_counter()
        full = dense_crf(probs, image, min_prob=0)
        t1 = time.perf_counter()
        pruned = dense_crf(probs, image)
        t2 = time.perf_counter()
        rows.append((len(active), t1 - t0, t2 - t1, float((full == pruned).mean())))
    k = model.num_clusters
    h, w = ds.load_image(0).shape[:2]
    print(f"{args.run}: K = {k}, {len(rows)} images of {w} x {h}, one process\n")
    print("| image | active clusters | CRF over all K s | CRF over active s | speed-up | pixels agreeing |")
    print("|---|---|---|---|---|---|")
    for i, (n, full_s, pruned_s, agree) in enumerate(rows):
        print(f"| {i} | {n} | {full_s:.2f} | {pruned_s:.2f} | {full_s / pruned_s:.1f}x | {100 * agree:.2f} % |")


if __name__ == "__main__":
    main()
