"""GPU timings for the README's table of GPU hours: one training step at the paper's Pascal
Context setting (16 images x 30 x 30 tokens, K = 256, ViT-S input of 1152 dims, psi with 18
heads x 64, the batch kernel with k = 256 built in the step, as in training) and extraction
throughput of a ViT-S/16 at the 480 x 480 training crop under bf16 autocast. Random weights:
timing only. Prints one JSON line with the GPU's name (`make gpu-check`).

    python bench/gpu_step.py [--steps 20] [--batch 16] [--grid 30] [--K 256]
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch

from pipeline.eigenfunctions import Psi, neuralef_objective, training_output
from pipeline.graph.batch import build_kernel


def timed(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", type=int, default=30)
    parser.add_argument("--K", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU"}))
        return
    device = torch.device("cuda")
    torch.manual_seed(0)
    b, hw = args.batch, args.grid * args.grid
    high = torch.randn(b, hw, 384, device=device)
    inp = torch.randn(b, hw, 1152, device=device)
    pixels = torch.rand(b, hw, 5, device=device)
    psi = Psi(1152, args.K, depth=2, heads=18, dim_head=64).to(device)
    optimiser = torch.optim.Adam(psi.parameters(), lr=1e-3)

    def kernel():
        return build_kernel(high, pixels, k=256, alpha=0.3)

    def step():
        g = kernel()
        out = training_output(psi(inp).reshape(b * hw, -1), tau=0.5)
        loss = neuralef_objective(out, g, beta=20.48 / args.K).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    kernel_s = timed(kernel, args.steps)
    step_s = timed(step, args.steps)
    vit = (
        timm.create_model("vit_small_patch16_384", pretrained=False, num_classes=0, dynamic_img_size=True)
        .to(device)
        .eval()
    )
    images = torch.randn(16, 3, 480, 480, device=device)

    @torch.no_grad()
    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            vit.forward_intermediates(images, indices=[0, 6, 11], intermediates_only=True)

    forward_s = timed(forward, max(3, args.steps // 4))
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "tokens_per_step": b * hw,
                "K": args.K,
                "kernel_s": round(kernel_s, 4),
                "train_step_s": round(step_s, 4),
                "psi_parameters": sum(p.numel() for p in psi.parameters()),
                "extraction_images_per_s": round(16 / forward_s, 1),
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
