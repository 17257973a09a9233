"""Fitting a run of any method (rules `train` and `fit_kmeans`): psi from the training cache,
K-means centres on backbone or psi features, or K-means on the exact spectral embedding. Every
model.pt records the wall time and peak memory of its fitting and of the graph it used."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from filelock import FileLock, Timeout

from .cache import FeatureCache, cache_for
from .clustering import fit_kmeans
from .errors import InputError
from .formats import read_eigen_reference, read_nystrom, save_torch, write_text
from .models import RunModel
from .runtime import measured, resolve_device
from .spec import Method, RunSpec
from .train import CHECKPOINT, train_psi

log = logging.getLogger(__name__)


def sample_tokens(
    cache: FeatureCache,
    embed: Callable[[dict[str, np.ndarray]], np.ndarray],
    names: tuple[str, ...],
    max_points: int,
    seed: int,
    batch_items: int = 16,
) -> np.ndarray:
    """Up to `max_points` tokens drawn uniformly from random items of the cache, embedded by `embed`."""
    rng = np.random.default_rng(seed)
    h, w = cache.grid
    order = rng.permutation(len(cache))
    n_items = min(len(cache), max(1, -(-max_points // (h * w)) * 2))  # twice what is needed, then subsample
    chunks = []
    for start in range(0, n_items, batch_items):
        items = np.sort(order[start : start + batch_items])
        chunks.append(embed(cache.read(items, names)))
    points = np.concatenate(chunks)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    return points


def eigenfunction_centres(cache: FeatureCache, spec: RunSpec, model: RunModel) -> torch.Tensor:
    """The exact spectral methods' read-out applied to psi's plain eigenfunctions (`train.output:
    eigenfunctions`): K-means into K clusters on the row-normalised outputs of training tokens."""
    if spec.kmeans is None or model.psi is None:
        raise InputError(f"{spec.run}: reading out eigenfunctions needs psi and kmeans settings")
    psi = model.psi

    @torch.no_grad()
    def embed(d):
        outputs = psi(torch.from_numpy(d["input"]).flatten(1, 2))
        return F.normalize(outputs.flatten(0, 1), dim=1).numpy()

    points = sample_tokens(cache, embed, ("input",), spec.kmeans.max_points, spec.seed)
    return torch.from_numpy(fit_kmeans(points, spec.K, spec.seed, spec.kmeans.niter))


def fit_run(spec: RunSpec, run_dir: Path, resident: str = "auto") -> RunModel:
    """Fit a run into `run_dir`, holding its lock: a second fit of the same folder is refused
    at once, and so is a folder this project did not make (or one of another run)."""
    run_dir = Path(run_dir)
    claim_run_dir(run_dir, spec)
    lock = FileLock(run_dir / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(
            f"{run_dir}: another fit is writing this run folder (lock {lock.lock_file}); wait for it or stop it"
        ) from None
    try:
        return _fit_locked(spec, run_dir, resident)
    finally:
        lock.release()


LOCK = ".fit.lock"


def claim_run_dir(run_dir: Path, spec: RunSpec) -> None:
    """A run folder is ours when it is new, empty, or holds the config.yaml of this run id."""
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            other = yaml.safe_load(config.read_text())
        except yaml.YAMLError:
            other = None
        if not isinstance(other, dict) or other.get("run") != spec.run:
            found = (other.get("run") if isinstance(other, dict) else None) or "not a run config"
            raise InputError(
                f"{config}: belongs to {found!r}, not run {spec.run}; not overwriting it (choose another --run-dir)"
            )
    elif run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise InputError(
            f"{run_dir}: holds files but no config.yaml of a run; this project did not make it, so nothing in it "
            "is replaced (choose another --run-dir)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def _fit_locked(spec: RunSpec, run_dir: Path, resident: str) -> RunModel:
    write_text(run_dir / "config.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    with measured() as stats:
        model = _fit(spec, run_dir, resident)
    model.fit = {"train": stats, **upstream_costs(spec)}
    if "eigsh" in model.fit:  # a spectral run's training: eigendecomposition (+ Nystrom extension), then K-means
        eig = model.fit.pop("eigsh")
        ext = model.fit.pop("nystrom", {"wall_s": 0.0, "peak_rss_mb": 0.0})
        model.fit["train"] = {
            "wall_s": round(eig["wall_s"] + ext["wall_s"] + stats["wall_s"], 2),
            "peak_rss_mb": max(eig["peak_rss_mb"], ext["peak_rss_mb"], stats["peak_rss_mb"]),
            "eigsh_s": eig["wall_s"],
            "nystrom_s": ext["wall_s"],
        }
    save_torch(model.checkpoint(), run_dir / "model.pt")
    (run_dir / CHECKPOINT).unlink(missing_ok=True)  # training's resume point, obsolete now
    log.info("fitted %s in %.1f s (peak memory %.0f MB)", spec.run, stats["wall_s"], stats["peak_rss_mb"])
    return model


def upstream_costs(spec: RunSpec) -> dict[str, Any]:
    """Cost of the dataset-wide graph the run used (from its manifest) and, for spectral runs, of
    the eigendecomposition (from the eigenvector reference)."""
    out: dict[str, Any] = {}
    graph = spec.eigen.graph if spec.eigen is not None else spec.graph
    if graph:
        manifest = json.loads(Path(graph).read_text())
        out["graph"] = manifest.get("cost", {})
    if spec.eigen is not None:
        out["eigsh"] = read_eigen_reference(Path(spec.eigen.path))[2]["eigsh"]
    if spec.nystrom is not None:
        out["nystrom"] = read_nystrom(Path(spec.nystrom.path))[1]["cost"]
    return out


def _fit(spec: RunSpec, run_dir: Path, resident: str = "auto") -> RunModel:
    method = spec.method
    if method.traits.eigen:
        from .reference import fit_spectral

        return fit_spectral(spec)
    cache = cache_for(spec.features)
    if method.traits.learns_psi:
        model = train_psi(cache, spec, run_dir, resolve_device(spec.device), resident)
        if spec.psi.plain_eigenfunctions:
            return RunModel(spec, model.psi, eigenfunction_centres(cache, spec, model), input_dim=model.input_dim)
        return model
    if spec.kmeans is None:
        raise InputError(f"{spec.run}: a {method} run needs kmeans settings")
    km, k = spec.kmeans, spec.K
    if method in (Method.KMEANS, Method.KMEANS_TRANSDUCTIVE):  # on the training split / the evaluated split

        def embed(d):
            return F.normalize(torch.from_numpy(d["high"]).flatten(0, 2), dim=1).numpy()

        points = sample_tokens(cache, embed, ("high",), km.max_points, spec.seed)
        return RunModel(spec, centres=torch.from_numpy(fit_kmeans(points, k, spec.seed, km.niter)))
    if method is Method.NES_STAR and spec.nes_run is not None:
        nes = RunModel.load(run_dir.parent / spec.nes_run)
        if nes.psi is None:
            raise InputError(f"{run_dir.parent / spec.nes_run}: not a nes run (no psi) for {spec.run} to cluster")
        psi = nes.psi

        @torch.no_grad()
        def embed(d):
            x = torch.from_numpy(d["input"])
            hidden = psi.hidden(x.flatten(1, 2))
            return F.normalize(hidden.flatten(0, 1), dim=1).numpy()

        points = sample_tokens(cache, embed, ("input",), km.max_points, spec.seed)
        centres = torch.from_numpy(fit_kmeans(points, k, spec.seed, km.niter))
        return RunModel(spec, psi=psi, centres=centres, input_dim=nes.input_dim)
    raise InputError(f"{spec.run}: cannot fit a {method} run from this spec")
