"""Where a training step's time goes on this machine, from a real feature cache: reading the
batch, the kernel (k-NN search, graph, pixel graph), psi's forward, the backward, the optimiser;
and what the bf16 switches save (`train.precision`: autocast for psi; `train.search_precision`:
bf16 products for the k-NN search), measured in the same process against the float32 step.
Timing only: nothing is trained to the end.

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
from pipeline.graph.batch import knn_cosine, pixel_graph, pixel_kernel
from pipeline.models import build_psi
from pipeline.plan import check_files
from pipeline.spec import TrainSettings
from pipeline.train import batch_kernel

PHASES = ("read", "kernel", "knn search", "psi forward", "backward", "optimiser")


# (train keys over the config's, whether psi's head is torch's own orthogonal parametrisation):
# the first column is the step as it was before the WY head, the reference of every ratio
SETTINGS = {
    "float32, torch's head": ({"precision": "float32"}, True),
    "float32": ({"precision": "float32"}, False),
    "bf16 psi + search": ({"precision": "bfloat16", "search_precision": "bfloat16"}, False),
}


def with_torch_head(psi: torch.nn.Module) -> torch.nn.Module:
    """psi with torch.nn.utils.parametrizations.orthogonal's head (the reflector-by-reflector
    Householder product) instead of pipeline.orthogonal's WY form: the same initial weights."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import orthogonal

    weight = psi.head.weight.detach().clone()
    bias = psi.head.bias.detach().clone()
    parametrize.remove_parametrizations(psi.head, "weight")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    psi.head = orthogonal(head)
    return psi


def run(cache, cfg: TrainSettings, steps: int, torch_head: bool, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    psi = build_psi(cache.dim("input"), cfg)
    if torch_head:
        psi = with_torch_head(psi)
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
        knn_cosine(high.reshape(b * h * w, -1).float(), cfg.knn_k, cfg.search_precision)
        times["knn search"] = time.perf_counter() - started
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
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
    base = {**config["train"], **(config["datasets"][args.dataset].get("train") or {})}
    cache = cache_for(args.features)
    cfg = TrainSettings.from_dict(base)
    results = {
        name: run(cache, TrainSettings.from_dict({**base, **extra}), args.steps, torch_head)
        for name, (extra, torch_head) in SETTINGS.items()
    }
    h, w = cache.grid
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} threads; batch {cfg.batch_size} x {h * w} "
        f"tokens, K {cfg.K}, k {cfg.knn_k}, psi input {cache.dim('input')}, {args.steps} steps\n"
    )
    names = list(SETTINGS)
    print(
        "| phase | "
        + " | ".join(f"{n} (s)" for n in names)
        + " | "
        + " | ".join(f"{names[0]} / {n}" for n in names[1:])
        + " |"
    )
    print("|---" * (2 * len(names)) + "|")
    step = ("kernel", "psi forward", "backward", "optimiser")
    rows = {phase: {n: results[n][phase] for n in names} for phase in PHASES}
    rows["step (kernel + psi + optimiser)"] = {n: sum(results[n][p] for p in step) for n in names}
    for phase, row in rows.items():
        ratios = [f"{row[names[0]] / max(row[n], 1e-9):.2f}x" for n in names[1:]]
        print(f"| {phase} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " | " + " | ".join(ratios) + " |")
    print("\n(`knn search` times the k-NN search alone (knn_cosine), part of the kernel row.)")
    pixel_graph_costs(cache, cfg, args.steps)


def dense_blocks_to_csr(pixels: torch.Tensor, knn) -> torch.Tensor:
    """The pixel graph as it was built before its edge list: dense (B, hw, hw) blocks, then CSR."""
    blocks = pixel_graph(pixels, knn)
    b, hw, _ = blocks.shape
    img, i, j = blocks.nonzero(as_tuple=True)
    crow = torch.zeros(b * hw + 1, dtype=torch.long)
    crow[1:] = torch.bincount(img * hw + i, minlength=b * hw).cumsum(0)
    return torch.sparse_csr_tensor(crow, img * hw + j, blocks[img, i, j], (b * hw, b * hw), check_invariants=False)


def pixel_graph_costs(cache, cfg: TrainSettings, steps: int) -> None:
    """The batch's pixel graph from dense blocks (before) and from its edge list (now), same batches."""
    h, w = cache.grid
    totals = {"dense blocks": 0.0, "edge list": 0.0}
    for step in range(steps + 1):
        items = np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % len(cache)
        pixels = torch.from_numpy(cache.read(items, ("pixels",))["pixels"]).reshape(len(items), h * w, 5)
        for name, build in (("dense blocks", dense_blocks_to_csr), ("edge list", pixel_kernel)):
            started = time.perf_counter()
            build(pixels, cfg.pixel_knn)
            totals[name] += (time.perf_counter() - started) / steps if step else 0.0
    before, now = totals["dense blocks"], totals["edge list"]
    print(f"pixel graph per batch: dense blocks {before:.4f} s, edge list {now:.4f} s ({before / now:.2f}x)")


if __name__ == "__main__":
    main()
