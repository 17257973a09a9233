"""GPU timings for the README's table of GPU hours: one training step at the paper's Pascal
Context setting (16 images x 30 x 30 tokens, K = 256, ViT-S input of 1152 dims, psi with 18
heads x 64, the batch kernel with k = 256 built in the step, as in training), phase by phase
(batch gather from device memory, kernel, psi forward with the objective, backward, optimiser),
under float32 and under the bf16 switches (`train.precision` and `train.search_precision`), with
psi's achieved TFLOP/s against the device's dense bf16 peak; optionally the step under
torch.compile; and extraction throughput of a ViT-S/16 at the 480 x 480 training crop under bf16
autocast. Random weights and data: timing only. Prints one JSON line with the device's name
(`make gpu-check`). `--device cpu` with a small `--grid` checks the script itself anywhere.

    python bench/gpu_step.py [--steps 20] [--batch 16] [--grid 30] [--K 256] [--heads 18] [--compile]
    python bench/gpu_step.py --batch 8 --grid 29 --K 128 --heads 4 --no-extraction   # CamVid DINOv2's step
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.eigenfunctions import Psi, neuralef_objective, training_output
from pipeline.graph.batch import build_kernel

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "RTX 3090": 71.0,
    "L40S": 362.0,
}
PHASES = ("data", "kernel", "psi forward", "backward", "optimiser")


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phase_times(step: Callable[[dict[str, float]], None], steps: int, device: torch.device) -> dict[str, float]:
    """Mean seconds per phase over `steps` steps after 3 warm-up steps."""
    for _ in range(3):
        step({})
    totals = dict.fromkeys(PHASES, 0.0)
    for _ in range(steps):
        times: dict[str, float] = {}
        step(times)
        for phase in PHASES:
            totals[phase] += times[phase] / steps
    totals["step"] = sum(totals[p] for p in PHASES)
    return {k: round(v, 5) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", type=int, default=30)
    parser.add_argument("--K", type=int, default=256)
    parser.add_argument("--heads", type=int, default=18, help="psi's attention heads (the CamVid demo's: 4)")
    parser.add_argument("--items", type=int, default=256, help="synthetic training items held in device memory")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true", help="also time the step with psi under torch.compile")
    parser.add_argument("--no-extraction", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU"}))
        return
    torch.manual_seed(0)
    b, hw = args.batch, args.grid * args.grid
    # the training cache held in device memory as float16 (pipeline.batches' resident mode)
    held = {
        "high": torch.randn(args.items, hw, 384, device=device).half(),
        "input": torch.randn(args.items, hw, 1152, device=device).half(),
        "pixels": torch.rand(args.items, hw, 5, device=device).half(),
    }
    generator = torch.Generator(device="cpu").manual_seed(0)

    def measure(precision: str, search_precision: str, compiled: bool) -> dict[str, float]:
        torch.manual_seed(0)
        psi = Psi(1152, args.K, depth=2, heads=args.heads, dim_head=64).to(device)
        optimiser = torch.optim.Adam(psi.parameters(), lr=1e-3)
        forward = torch.compile(psi) if compiled else psi
        bf16 = precision == "bfloat16"

        def step(times: dict[str, float]) -> None:
            def tick(phase: str, started: float) -> float:
                synchronise(device)
                now = time.perf_counter()
                times[phase] = now - started
                return now

            started = time.perf_counter()
            index = torch.randperm(args.items, generator=generator)[:b].to(device)
            data = {name: values.index_select(0, index).float() for name, values in held.items()}
            started = tick("data", started)
            g = build_kernel(data["high"], data["pixels"], k=256, alpha=0.3, search_precision=search_precision)
            started = tick("kernel", started)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = forward(data["input"]).reshape(b * hw, -1)
            loss = neuralef_objective(training_output(logits.float(), tau=0.5), g, beta=20.48 / args.K).loss
            started = tick("psi forward", started)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            started = tick("backward", started)
            optimiser.step()
            tick("optimiser", started)

        result = phase_times(step, args.steps, device)
        # psi's arithmetic (forward + backward, the objective's sparse products left out)
        x = held["input"][:b].float()
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = psi(x)
            out.float().sum().backward()
        psi_seconds = result["psi forward"] + result["backward"]
        result["psi_tflop_per_step"] = round(counter.get_total_flops() / 1e12, 3)
        result["psi_tflops"] = round(counter.get_total_flops() / 1e12 / psi_seconds, 2)
        return result

    settings = {
        "float32": ("float32", "float32", False),
        "bf16 psi + search": ("bfloat16", "bfloat16", False),
    }
    if args.compile:
        settings["bf16 psi + search, compiled"] = ("bfloat16", "bfloat16", True)
    steps = {name: measure(*setting) for name, setting in settings.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name)
    for result in steps.values():
        result["psi_share_of_bf16_peak"] = round(result["psi_tflops"] / peak, 3) if peak else None
    record = {
        "device": name,
        "torch": torch.__version__,
        "tokens_per_step": b * hw,
        "K": args.K,
        "heads": args.heads,
        "peak_bf16_tflops": peak,
        "steps": steps,
        "speedup_bf16": round(steps["float32"]["step"] / steps["bf16 psi + search"]["step"], 2),
    }
    if not args.no_extraction:
        vit = (
            timm.create_model("vit_small_patch16_384", pretrained=False, num_classes=0, dynamic_img_size=True)
            .to(device)
            .eval()
        )
        images = torch.randn(16, 3, 480, 480, device=device)

        @torch.no_grad()
        def extract(times: dict[str, float]) -> None:
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                vit.forward_intermediates(images, indices=[0, 6, 11], intermediates_only=True)
            synchronise(device)
            times.update(dict.fromkeys(PHASES, 0.0), data=time.perf_counter() - started)

        forward_s = phase_times(extract, max(3, args.steps // 4), device)["step"]
        record["extraction_images_per_s"] = round(16 / forward_s, 1)
    if device.type == "cuda":
        record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
