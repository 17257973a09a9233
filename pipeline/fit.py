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
import yaml
from filelock import FileLock, Timeout

from .cache import FeatureCache, cache_for
from .clustering import fit_kmeans
from .errors import InputError
from .formats import read_eigen_reference, read_nystrom, save_torch, write_text
from .models import RunModel
from .runtime import measured, resolve_device
from .spec import Embedding, ReadOut, RunSpec
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


def fitted_centres(cache: FeatureCache, model: RunModel) -> RunModel:
    """`model` with K-means centres fitted on its own embedding of training tokens (the one its
    read-out sees at inference, `RunModel.clustered_points`): the backbone's features, psi's
    hidden features (nes_star) or psi's plain eigenfunctions (`train.output: eigenfunctions`)."""
    spec = model.spec
    if spec.kmeans is None:
        raise InputError(f"{spec.run}: a {spec.method} run needs kmeans settings")
    arrays = (spec.embedding.cache_array,)
    points = sample_tokens(cache, model.clustered_points, arrays, spec.kmeans.max_points, spec.seed)
    centres = torch.from_numpy(fit_kmeans(points, spec.K, spec.seed, spec.kmeans.niter))
    return RunModel(spec, model.psi, centres, input_dim=model.input_dim, final_dim=model.final_dim)


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
                f"{config}: belongs to {found!r}, not run {spec.run}; not overwriting it (choose another --run)"
            )
    elif run_dir.is_dir() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise InputError(
            f"{run_dir}: holds files but no config.yaml of a run; this project did not make it, so nothing in it "
            "is replaced (choose another --run)"
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
    """The run's embedding first (psi trained or borrowed; none for the backbone's, stored
    eigenvectors for the spectral methods), then its read-out (K-means centres where it has them)."""
    if spec.method.traits.eigen:
        from .reference import fit_spectral

        return fit_spectral(spec)
    cache = cache_for(spec.features)
    if spec.method.traits.learns_psi:
        model = train_psi(cache, spec, run_dir, resolve_device(spec.device), resident)
    elif spec.nes_run is not None:  # psi borrowed from the run it builds on
        nes = RunModel.load(run_dir.parent / spec.nes_run)
        if nes.psi is None:
            raise InputError(f"{run_dir.parent / spec.nes_run}: not a nes run (no psi) for {spec.run} to cluster")
        model = RunModel(spec, psi=nes.psi, input_dim=nes.input_dim)
    elif spec.embedding is Embedding.FINAL_TOKENS:
        from .backbones import BackboneSpec, final_layer_dim

        final = final_layer_dim(BackboneSpec.from_config(spec.backbone_spec), cache.dim("input"))
        model = RunModel(spec, final_dim=final)
    else:
        model = RunModel(spec)
    return fitted_centres(cache, model) if spec.read_out is ReadOut.CENTRES else model
