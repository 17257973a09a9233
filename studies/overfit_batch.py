"""Can psi fit one batch? Train psi on a single fixed batch of B training images (same objective,
Gumbel and schedules as training, `steps` of them) and measure, at checkpoints, the capture of
its argmax partition on that batch's G against exact spectral clustering of the same G. It tells
an objective or parametrisation that cannot express the eigenfunctions (capture stalls below
spectral's on the very batch it trains on) from a schedule too short or a function that does
not generalise (it reaches spectral's here but not on held-out batches).

    python -m studies.overfit_batch --features results/msrc/features/lite0/train/train.json \
        --steps 600 --set K=128 --set tau_min=0.3
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.cache import FeatureCache
from pipeline.eigenfunctions import neuralef_objective, training_output
from pipeline.models import build_psi
from pipeline.monitor import KernelReference
from pipeline.plan import check_files
from pipeline.runtime import seed_everything
from pipeline.spec import TrainSettings
from pipeline.train import batch_kernel, cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="a training cache's manifest")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--checkpoints", type=int, default=6)
    parser.add_argument(
        "--set", action="append", default=[], help="train overrides KEY=VALUE over config/config.yaml's train:"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    given = dict(check_files([])["train"])
    for item in args.set:
        key, _, value = item.partition("=")
        given[key] = yaml.safe_load(value)
    cfg = TrainSettings.from_dict(given, "--set")
    generator = seed_everything(args.seed)
    cache = FeatureCache(Path(args.features).with_suffix(".zarr"))
    b = cfg.batch_size
    items = np.sort(torch.randperm(len(cache), generator=generator)[:b].numpy())
    data = {k: torch.from_numpy(v) for k, v in cache.read(items).items()}
    _, h, w, _ = data["high"].shape
    kernel = batch_kernel(data, cfg)
    k = cfg.K
    reference = KernelReference.of(kernel, k, args.seed)
    if reference is None:
        raise SystemExit("the batch's kernel has no spectral reference to compare psi with")
    print(
        f"batch of {b} images, {b * h * w} tokens; same-image share {kernel.same_image_share(h * w):.3f}; "
        f"spectral clustering captures {reference.spectral_capture:.3f}; "
        f"trace optimum (top-K eigenvalues) {reference.values.sum() * cfg.t / k:.4f}"
    )
    x = data["input"].reshape(b, h * w, -1)
    psi = build_psi(x.shape[-1], cfg)
    optimiser = torch.optim.Adam(psi.parameters(), lr=cfg.lr)
    checkpoints = set(np.linspace(0, args.steps - 1, args.checkpoints).round().astype(int).tolist())
    started = time.time()
    for step in range(args.steps):
        tau = cosine(step, args.steps, cfg.tau_max, cfg.tau_min)
        for group in optimiser.param_groups:
            group["lr"] = cosine(step, args.steps, cfg.lr, cfg.lr_min)
        logits = psi(x).reshape(b * h * w, -1)
        objective = neuralef_objective(training_output(logits, tau), kernel, cfg.beta, cfg.t)
        optimiser.zero_grad(set_to_none=True)
        objective.loss.backward()
        optimiser.step()
        if step in checkpoints:
            counts = np.bincount(logits.argmax(1).numpy(), minlength=k)
            used = counts[counts > 0] / counts.sum()
            print(
                f"step {step:5d}  tau {tau:.2f}  trace {objective.trace.item():.4f}  "
                f"penalty {objective.penalty.item():.3g}  "
                f"capture {reference.capture(logits.detach()):.3f} (spectral {reference.spectral_capture:.3f})  "
                f"clusters in use {math.exp(-(used * np.log(used)).sum()):.1f}  {time.time() - started:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
