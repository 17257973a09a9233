"""Fitting a run of any method from the training cache (rules `train` and `fit_kmeans`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .cache import FeatureCache
from .clustering import fit_kmeans
from .models import RunModel
from .runtime import resolve_device, save_torch_atomic
from .train import train_psi

log = logging.getLogger(__name__)


def cache_for(manifest: str | Path) -> FeatureCache:
    """The Zarr cache that sits beside a features manifest (`{split}.json` -> `{split}.zarr`)."""
    return FeatureCache(Path(manifest).with_suffix(".zarr"))


def sample_tokens(cache: FeatureCache, embed: Callable[[dict[str, np.ndarray]], np.ndarray], names: tuple[str, ...],
                  max_points: int, seed: int, batch_items: int = 16) -> np.ndarray:
    """Up to `max_points` tokens drawn uniformly from random items of the cache, embedded by `embed`."""
    rng = np.random.default_rng(seed)
    h, w = cache.grid
    order = rng.permutation(len(cache))
    n_items = min(len(cache), max(1, -(-max_points // (h * w)) * 2))  # twice what is needed, then subsample
    chunks = []
    for start in range(0, n_items, batch_items):
        items = np.sort(order[start:start + batch_items])
        chunks.append(embed(cache.read(items, names)))
    points = np.concatenate(chunks)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    return points


def fit_run(spec: dict[str, Any], run_dir: Path) -> RunModel:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cache = cache_for(spec["features"])
    device = resolve_device(spec.get("device", "auto"))
    method = spec["method"]
    if method == "nes":
        return train_psi(cache, spec, run_dir, device)
    km = spec["kmeans"]
    k = int(spec["train"]["K"])
    if method == "kmeans":
        def embed(d):
            return F.normalize(torch.from_numpy(d["high"]).flatten(0, 2), dim=1).numpy()

        points = sample_tokens(cache, embed, ("high",), int(km["max_points"]), int(spec["seed"]))
        model = RunModel("kmeans", spec, centres=torch.from_numpy(fit_kmeans(points, k, int(spec["seed"]), int(km["niter"]))))
    elif method == "nes_star":
        nes = RunModel.load(run_dir.parent / spec["nes_run"])

        @torch.no_grad()
        def embed(d):
            x = torch.from_numpy(d["input"])
            hidden = nes.psi.hidden(x.flatten(1, 2))
            return F.normalize(hidden.flatten(0, 1), dim=1).numpy()

        points = sample_tokens(cache, embed, ("input",), int(km["max_points"]), int(spec["seed"]))
        centres = torch.from_numpy(fit_kmeans(points, k, int(spec["seed"]), int(km["niter"])))
        model = RunModel("nes_star", spec, psi=nes.psi, centres=centres, input_dim=nes.input_dim)
    else:
        raise ValueError(f"unknown method {method!r}")
    save_torch_atomic(model.checkpoint(), run_dir / "model.pt")
    return model
