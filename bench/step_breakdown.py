"""Where a training step's time goes on this machine, from a real feature cache: reading the
batch, the kernel (k-NN search, graph, pixel graph), psi's forward, the backward, the optimiser;
and what bf16 (autocast for psi, bf16 products for the similarity search) would save, measured in
the same process against the float32 step. Timing only: nothing is trained to the end.

    python bench/step_breakdown.py --features results/camvid/features/lite0/train/train.json \
        [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from pipeline.cache import cache_for
from pipeline.eigenfunctions import neuralef_objective, training_output
from pipeline.models import build_psi
from pipeline.plan import check_files
from pipeline.spec import TrainSettings
from pipeline.train import batch_kernel

PHASES = ("read", "kernel", "knn search", "psi forward", "backward", "optimiser")


def similarity_topk(x: torch.Tensor, k: int, bf16: bool) -> torch.Tensor:
    """The exact k-NN search's arithmetic: all cosine similarities, then the top k per row."""
    a = x.bfloat16() if bf16 else x
    return (a @ a.T).float().topk(k + 1, dim=1).indices


def run(cache, cfg: TrainSettings, steps: int, bf16: bool, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    psi = build_psi(cache.dim("input"), cfg)
    optimiser = torch.optim.Adam(psi.parameters(), lr=cfg.lr)
    order = np.random.default_rng(seed).permutation(len(cache))
    totals = dict.fromkeys(PHASES, 0.0)
    for step in range(steps + 1):  # the first step warms up and is not counted
        times = {}
        started = time.perf_counter()
        arrays = cache.read(np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size]))
        times["read"] = time.perf_counter() - started
        data = {k: torch.from_numpy(v) for k, v in arrays.items()}
        b, h, w, _ = data["high"].shape
        high = data["high"].reshape(b, h * w, -1)
        started = time.perf_counter()
        kernel = batch_kernel(data, cfg)
        times["kernel"] = time.perf_counter() - started
        started = time.perf_counter()
        similarity_topk(torch.nn.functional.normalize(high.reshape(b * h * w, -1), dim=1), cfg.knn_k, bf16)
        times["knn search"] = time.perf_counter() - started
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = psi(data["input"].reshape(b, h * w, -1)).reshape(b * h * w, -1)
        objective = neuralef_objective(training_output(logits.float(), cfg.tau_max), kernel, cfg.beta, cfg.t)
        times["psi forward"] = time.perf_counter() - started
        started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        objective.loss.backward()
        times["backward"] = time.perf_counter() - started
        started = time.perf_counter()
        optimiser.step()
        times["optimiser"] = time.perf_counter() - started
        if step:
            for phase, seconds in times.items():
                totals[phase] += seconds / steps
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True, help="a training cache's manifest (results/.../train/train.json)")
    p.add_argument("--dataset", default="camvid", help="whose training settings to use (config/config.yaml)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = check_files([])
    cfg = TrainSettings.from_dict({**config["train"], **(config["datasets"][args.dataset].get("train") or {})})
    cache = cache_for(args.features)
    fp32 = run(cache, cfg, args.steps, bf16=False)
    bf16 = run(cache, cfg, args.steps, bf16=True)
    h, w = cache.grid
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads; batch {cfg.batch_size} x {h * w} "
        f"tokens, K {cfg.K}, k {cfg.knn_k}, psi input {cache.dim('input')}, {args.steps} steps\n"
    )
    print("| phase | float32 (s) | bf16 (s) | float32 / bf16 |")
    print("|---|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {fp32[phase]:.3f} | {bf16[phase]:.3f} | {fp32[phase] / max(bf16[phase], 1e-9):.2f}x |")
    step = ("kernel", "psi forward", "backward", "optimiser")
    print(
        f"| step (kernel + psi + optimiser) | {sum(fp32[k] for k in step):.3f} | {sum(bf16[k] for k in step):.3f} | "
        f"{sum(fp32[k] for k in step) / sum(bf16[k] for k in step):.2f}x |"
    )
    print(
        "\n(`knn search` times the similarity products + top-k alone, float32 vs bf16 products; the kernel row "
        "is the current float32 kernel in both columns.)"
    )


if __name__ == "__main__":
    main()
