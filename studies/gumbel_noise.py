"""How loud is the Gumbel noise next to what psi has learned? On every token of a cached split:
the gap between psi's top two logits (head(hidden), before the temperature) against the Gumbel
noise (standard deviation pi / sqrt(6) = 1.28, whatever the temperature), and how often the
noisy argmax the training objective sees agrees with the clean one the evaluation uses.

    python -m studies.gumbel_noise --run results/camvid/runs/nes-dinov2_s14-K128-a0.3-b0.16-s0 \
        --features results/camvid/features/dinov2_s14/native/val.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import FeatureCache
from pipeline.models import RunModel


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a nes run directory")
    parser.add_argument("--features", required=True, help="features manifest of a plain cache (e.g. val)")
    parser.add_argument("--draws", type=int, default=5, help="Gumbel draws per token")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = RunModel.load(Path(args.run))
    cache = FeatureCache(Path(args.features).with_suffix(".zarr"))
    if model.psi is None:
        raise SystemExit(f"{args.run}: a {model.method} run has no psi")
    gap_parts, agree = [], []
    for start in range(0, len(cache), 16):
        inp = torch.from_numpy(cache.read(np.arange(start, min(start + 16, len(cache))), ("input",))["input"])
        logits = model.psi(inp.flatten(1, 2)).flatten(0, 1)
        top2 = logits.topk(2, dim=1).values
        gap_parts.append((top2[:, 0] - top2[:, 1]).numpy())
        clean = logits.argmax(1)
        for _ in range(args.draws):
            noise = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-20)))
            agree.append((logits + noise).argmax(1).eq(clean).float().numpy())
    gaps = np.concatenate(gap_parts)
    out = {
        "run": model.spec.run,
        "tokens": len(gaps),
        "gumbel_sd": round(math.pi / math.sqrt(6), 3),
        "gap_median": round(float(np.median(gaps)), 3),
        "gap_p90": round(float(np.quantile(gaps, 0.9)), 3),
        "noisy_argmax_agrees": round(float(np.concatenate(agree).mean()), 3),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
