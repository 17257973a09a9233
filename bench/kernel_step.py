"""One kernel + loss step: this implementation vs the authors' dense formulation.

Same inputs, same process: 16 images x 30 x 30 tokens (N = 14,400, Pascal Context at batch 16),
K = 256, psi input 1152 dims (ViT-S), high-level features 384 dims. The dense reference builds
the N x N similarity, a dense top-k mask, a `block_diag` pixel graph and dense products, as the
authors' code does. Prints a Markdown table of time and peak memory with ratios.

    python bench/kernel_step.py [--images 16] [--grid 30] [--K 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure
from pipeline.eigenfunctions import Psi, neuralef_objective, training_output
from pipeline.graph.batch import build_kernel


def dense_kernel(high: torch.Tensor, pixels: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """The authors' formulation: everything N x N and dense."""
    b, hw, c = high.shape
    f = torch.nn.functional.normalize(high.reshape(b * hw, c), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(float("-inf"))
    top = sim.topk(k, dim=1)
    a = torch.zeros_like(sim).scatter_(1, top.indices, top.values.clamp_min(0))
    del sim
    a = (a + a.T) / 2
    d = a.sum(1).clamp_min(1e-12).rsqrt()
    g = a * d[:, None] * d[None, :]
    del a
    blocks = []
    for img in range(b):
        adj = torch.zeros(hw, hw, dtype=torch.bool)
        for kk, w in ((10, 2.0), (5, 0.1)):
            v = torch.cat([pixels[img, :, :3], w * pixels[img, :, 3:]], 1)
            dist = torch.cdist(v, v)
            dist.fill_diagonal_(float("inf"))
            one = torch.zeros(hw, hw, dtype=torch.bool).scatter_(1, dist.topk(kk, largest=False).indices, True)
            adj |= one | one.T
        a_p = adj.float()
        dp = a_p.sum(1).rsqrt()
        blocks.append(a_p * dp[:, None] * dp[None, :])
    return g + alpha * torch.block_diag(*blocks)


def step(psi, opt, x, kernel_fn):
    kernel = kernel_fn()
    logits = psi(x).reshape(-1, psi.head.out_features)
    obj = neuralef_objective(training_output(logits, 1.0), kernel, 20.48 / logits.shape[1])
    opt.zero_grad()
    obj.loss.backward()
    opt.step()
    return obj.loss.item()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--grid", type=int, default=30)
    p.add_argument("--K", type=int, default=256)
    p.add_argument("--knn", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    b, hw = args.images, args.grid * args.grid
    high = torch.randn(b, hw, 384, generator=gen)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, args.grid), torch.linspace(0, 1, args.grid), indexing="ij")
    pixels = torch.cat(
        [torch.rand(b, hw, 3, generator=gen), torch.stack([xs, ys], -1).reshape(1, hw, 2).expand(b, -1, -1)], -1
    )
    x = torch.randn(b, hw, 1152, generator=gen)
    psi = Psi(1152, args.K)
    opt = torch.optim.Adam(psi.parameters(), 1e-3)

    variants = {
        "this (sparse CSR feature + block-sparse pixel graph)": lambda: build_kernel(
            high, pixels, k=args.knn, alpha=0.3
        ),
        "authors' dense N x N": lambda: dense_kernel(high, pixels, k=args.knn, alpha=0.3),
    }
    results: dict[str, dict] = {}
    psi_out = torch.softmax(torch.randn(b * hw, args.K, generator=gen), dim=1)
    psi_out = psi_out / psi_out.norm(dim=0, keepdim=True).clamp_min(1)

    def loss_only(kernel):
        y = psi_out.clone().requires_grad_(True)
        neuralef_objective(y, kernel, 20.48 / args.K).loss.backward()

    for name, fn in variants.items():
        loss_only(fn())  # warm-up
        r: dict = {}
        with measure(r, "kernel"):
            kernel = fn()
        with measure(r, "loss"):
            loss_only(kernel)
        del kernel
        with measure(r, "step"):
            step(psi, opt, x, fn)
        results[name] = r

    ours, ref = results[next(iter(variants))], results[list(variants)[1]]
    n = b * hw
    print(
        f"N = {b} x {hw} = {n} tokens, K = {args.K}, k = {args.knn}, psi input 1152, "
        f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}\n"
    )
    parts = ("kernel", "loss", "step")
    print("| variant | " + " | ".join(f"{p} s | {p} peak MB" for p in parts) + " |")
    print("|---|" + "---|---|" * len(parts))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[p]['seconds']:.2f} | {r[p]['peak_mb']:.0f}" for p in parts) + " |")
    print(
        "| ratio dense / this | "
        + " | ".join(
            f"{ref[p]['seconds'] / ours[p]['seconds']:.1f}x | {ref[p]['peak_mb'] / max(ours[p]['peak_mb'], 1):.1f}x"
            for p in parts
        )
        + " |"
    )
    print(
        "\nkernel: building G; loss: NeuralEF objective forward + backward on fixed psi outputs (the kernel "
        "products); step: kernel + psi forward/backward + Adam (psi is the same in both)."
    )


if __name__ == "__main__":
    main()
