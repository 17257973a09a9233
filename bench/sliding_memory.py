"""Memory of sliding-window inference on an extreme aspect ratio: one canvas vs bands.

A 10 x 200 image under protocol B (short side 512, windows 512 at stride 341) is averaged on a
512 x 10240 canvas; at K = 128 that is 671 M logits (2.7 GB). Both ways run in this process on a
small random ViT (the canvas, not the backbone, is what is measured): one canvas
(`NES_MAX_CANVAS_VALUES` above it) and the default bands (2^27 values), with their peak RSS
growth, time and the largest difference of their logits.

    python bench/sliding_memory.py [--width 200] [--clusters 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import measure
from fixtures import run_spec, tiny_vit_backbone, train_settings
from pipeline.models import RunModel, build_psi
from pipeline.predict import sliding_logits
from pipeline.views import View


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=200)
    p.add_argument("--clusters", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = tiny_vit_backbone(Path(tmp) / "vit.pth")
    train = train_settings(K=args.clusters, depth=1)
    model = RunModel(
        run_spec("nes", train=train), build_psi(backbone.input_dim, train).eval(), input_dim=backbone.input_dim
    )
    view = View.from_config({"mode": "sliding", "short_side": 512, "crop": 512, "stride": 341})
    image = np.random.default_rng(0).integers(0, 255, (10, args.width, 3), dtype=np.uint8)
    height, width = view.resized_shape(*image.shape[:2])
    cpu = torch.device("cpu")
    results: dict = {}
    outputs = {}
    for name, bound in (("one canvas", 2**40), ("bands (default bound)", None)):
        if bound is None:
            os.environ.pop("NES_MAX_CANVAS_VALUES", None)
        else:
            os.environ["NES_MAX_CANVAS_VALUES"] = str(bound)
        with measure(results, name):
            outputs[name] = sliding_logits(model, backbone, image, view, cpu)
    diff = (outputs["one canvas"] - outputs["bands (default bound)"]).abs().max().item()
    print(
        f"10 x {args.width} image, canvas {height} x {width} x K {args.clusters} "
        f"({args.clusters * height * width / 1e6:.0f} M logits), {args.threads} threads\n"
    )
    print("| | seconds | peak RSS growth (MB) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |")
    scale = outputs["one canvas"].abs().max().item()
    print(f"\nlargest difference of the logits: {diff:.2e} (largest logit {scale:.2e})")


if __name__ == "__main__":
    main()
