"""Fitting a run of any method (rules `train` and `fit_kmeans`): psi from the training cache,
K-means centres on backbone or psi features, or K-means on the exact spectral embedding. Every
model.pt records the wall time and peak memory of its fitting and of the graph it used."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .cache import FeatureCache, cache_for
from .clustering import fit_kmeans
from .models import RunModel
from .runtime import measured, resolve_device, save_torch_atomic
from .train import CHECKPOINT, train_psi

log = logging.getLogger(__name__)


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
    with measured() as stats:
        model = _fit(spec, run_dir)
    model.fit = {"train": stats, **upstream_costs(spec)}
    if "eigsh" in model.fit:  # a spectral run's training: eigendecomposition (+ Nystrom extension), then K-means
        eig = model.fit.pop("eigsh")
        ext = model.fit.pop("nystrom", {"wall_s": 0.0, "peak_rss_mb": 0.0})
        model.fit["train"] = {"wall_s": round(eig["wall_s"] + ext["wall_s"] + stats["wall_s"], 2),
                              "peak_rss_mb": max(eig["peak_rss_mb"], ext["peak_rss_mb"], stats["peak_rss_mb"]),
                              "eigsh_s": eig["wall_s"], "nystrom_s": ext["wall_s"]}
    save_torch_atomic(model.checkpoint(), run_dir / "model.pt")
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # training's resume point, obsolete now
    log.info("fitted %s in %.1f s (peak memory %.0f MB)", spec["run"], stats["wall_s"], stats["peak_rss_mb"])
    return model


def upstream_costs(spec: dict[str, Any]) -> dict[str, Any]:
    """Cost of the dataset-wide graph the run used (from its manifest) and, for spectral runs, of
    the eigendecomposition (from the eigenvector reference)."""
    out: dict[str, Any] = {}
    spectral = spec["method"] in ("spectral", "spectral_inductive")
    graph = spec["eigen"]["graph"] if spectral else spec.get("graph")
    if graph:
        manifest = json.loads(Path(graph).read_text())
        out["graph"] = manifest.get("cost", {})
    if spectral:
        from .graph.spectral import read_eigen_reference

        out["eigsh"] = read_eigen_reference(Path(spec["eigen"]["path"]))[2]["eigsh"]
    if spec["method"] == "spectral_inductive":
        out["nystrom"] = json.loads(str(np.load(spec["nystrom"]["path"])["attrs"]))["cost"]
    return out


def _fit(spec: dict[str, Any], run_dir: Path) -> RunModel:
    method = spec["method"]
    if method in ("spectral", "spectral_inductive"):
        from .graph.reference import fit_spectral

        return fit_spectral(spec)
    cache = cache_for(spec["features"])
    if method == "nes":
        return train_psi(cache, spec, run_dir, resolve_device(spec.get("device", "auto")))
    km = spec["kmeans"]
    k = int(spec["train"]["K"])
    if method in ("kmeans", "kmeans_transductive"):  # on the training split / the evaluated split
        def embed(d):
            return F.normalize(torch.from_numpy(d["high"]).flatten(0, 2), dim=1).numpy()

        points = sample_tokens(cache, embed, ("high",), int(km["max_points"]), int(spec["seed"]))
        return RunModel(method, spec, centres=torch.from_numpy(fit_kmeans(points, k, int(spec["seed"]), int(km["niter"]))))
    if method == "nes_star":
        nes = RunModel.load(run_dir.parent / spec["nes_run"])

        @torch.no_grad()
        def embed(d):
            x = torch.from_numpy(d["input"])
            hidden = nes.psi.hidden(x.flatten(1, 2))
            return F.normalize(hidden.flatten(0, 1), dim=1).numpy()

        points = sample_tokens(cache, embed, ("input",), int(km["max_points"]), int(spec["seed"]))
        centres = torch.from_numpy(fit_kmeans(points, k, int(spec["seed"]), int(km["niter"])))
        return RunModel("nes_star", spec, psi=nes.psi, centres=centres, input_dim=nes.input_dim)
    raise ValueError(f"unknown method {method!r}")
