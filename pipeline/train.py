"""The training loop (rule `train`): batches of B cached items -> kernel -> psi -> NeuralEF loss.

Adam with a cosine learning-rate decay and a cosine Gumbel temperature, both per step
(method.md section 5). Nothing supervised touches psi.

Interrupted training resumes: at the end of every epoch and at least every
`CHECKPOINT_SECONDS`, psi, the optimiser, the RNG state, the step and the log so far go to
`checkpoint.pt` in the run directory (atomically), and `train_log.csv` is rewritten. A rerun with
the same run spec continues after the last checkpoint and ends with the weights an uninterrupted
run has (same batches, same Gumbel draws); a checkpoint of other settings is ignored and
replaced. The caller removes the checkpoint once model.pt is saved.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .batches import batches
from .cache import FeatureCache, cache_for
from .eigenfunctions import (
    Objective,
    centre_per_image,
    eigenfunction_output,
    neuralef_objective,
    training_output,
    volume_weights,
)
from .errors import InputError
from .formats import save_figure, save_torch, write_csv
from .graph.batch import BatchKernel, build_kernel, pixel_kernel
from .graph.spectral import perplexity
from .models import RunModel, build_psi, forward_precision
from .monitor import CaptureMonitor
from .runtime import progress, seed_everything
from .spec import RunSpec, TrainSettings

log = logging.getLogger(__name__)
# same_image: share of the batch's feature-graph weight inside single images (dataset-wide graph
# batches: nan); usage: clusters in effective use by psi's argmax on the batch (perplexity; nan
# for plain eigenfunctions, `train.output: eigenfunctions`, whose argmax is not their clustering)
LOG_FIELDS = ("step", "epoch", "loss", "trace", "penalty", "tau", "lr", "same_image", "usage", "seconds")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_SECONDS = 300


def cosine(step: int, total: int, start: float, end: float) -> float:
    """start at step 0, end at the last step."""
    return end + (start - end) * (1 + math.cos(math.pi * step / max(total, 1))) / 2


def epoch_schedule(
    image_index: np.ndarray, batch: int, epochs: int, generator: torch.Generator
) -> list[tuple[int, np.ndarray]]:
    """(epoch, items) per step. An epoch visits every image once, in a seeded random order and in
    one of its cached views drawn at random: the paper's fresh augmentation per epoch, from the
    views cached at extraction. Full batches only (the kernel wants B images)."""
    order = np.argsort(image_index, kind="stable")
    images, starts, counts = np.unique(image_index[order], return_index=True, return_counts=True)
    steps_per_epoch = max(1, len(images) // batch)
    schedule = []
    for epoch in range(epochs):
        perm = torch.randperm(len(images), generator=generator).numpy()
        pick = (torch.rand(len(images), generator=generator).numpy() * counts).astype(np.int64)
        items = order[starts + pick][perm]
        schedule += [(epoch, items[b * batch : (b + 1) * batch]) for b in range(steps_per_epoch)]
    return schedule


OutputsOf = Callable[[torch.Tensor, float, BatchKernel], torch.Tensor]


class KernelSource(NamedTuple):
    schedule: list[tuple[int, np.ndarray]]  # (epoch, items) per step
    kernel_of: Callable[[np.ndarray, dict[str, torch.Tensor]], BatchKernel]  # a batch's items and arrays -> G
    same_image: Callable[[BatchKernel], float]  # the log's same_image column


def train_psi(
    cache: FeatureCache, spec: RunSpec, out_dir: Path, device: torch.device, resident: str = "auto"
) -> RunModel:
    """Train psi; writes the log and curves to `out_dir` (the caller saves the model).
    `resident`: where batches come from (batches.py; never changes a result). The variants a
    config chooses are resolved before the loop: the kernel's source and the step schedule
    (`kernel_source`), what the objective sees of psi's logits (`output_function`) and the
    forward's precision (`forward_precision`)."""
    cfg = spec.psi
    generator = seed_everything(spec.seed)
    psi = build_psi(cache.dim("input"), cfg).to(device)
    optimiser = torch.optim.Adam(psi.parameters(), lr=cfg.lr)
    schedule, kernel_of, same_image = kernel_source(cache, spec, device, generator)
    outputs_of, precision, total = output_function(cfg, cache), forward_precision(cfg, device), len(schedule)
    describe(cache, cfg, total, psi)
    out_dir.mkdir(parents=True, exist_ok=True)
    heldout = heldout_kernel(spec, device) if cfg.monitor else None
    monitor = CaptureMonitor(total, cfg.monitor, cfg.K, heldout, spec.seed, cfg.plain_eigenfunctions)
    fingerprint = json.dumps(
        {"spec": spec.to_dict(), "input_dim": cache.dim("input"), "items": len(cache)}, sort_keys=True, default=str
    )
    rows: list[dict] = []
    first = resume(out_dir / CHECKPOINT, fingerprint, psi, optimiser, rows, monitor, device)
    started, saved_at = time.time() - (rows[-1]["seconds"] if rows else 0.0), time.time()
    bar = progress(total=total, initial=first, desc=f"train {spec.run}", unit="step")
    # streamed from the cache one batch ahead, or gathered from the cache held in memory
    source = batches(cache, [items for _, items in schedule[first:]], device, resident)
    for step, (epoch, items), data in zip(range(first, total), schedule[first:], source):
        kernel = kernel_of(items, data)
        tau, lr = cosine(step, total, cfg.tau_max, cfg.tau_min), cosine(step, total, cfg.lr, cfg.lr_min)
        for group in optimiser.param_groups:
            group["lr"] = lr
        with precision:
            logits = psi(data["input"].flatten(1, 2)).flatten(0, 1)
        logits = logits.float()  # the Gumbel-softmax, R and R^ in float32
        objective = neuralef_objective(
            outputs_of(logits, tau, kernel), kernel, cfg.beta, cfg.t, cfg.plain_eigenfunctions
        )
        optimiser.zero_grad(set_to_none=True)
        objective.loss.backward()
        optimiser.step()
        monitor(step, psi, logits, kernel)
        rows.append(log_row(step, epoch, objective, tau, lr, same_image(kernel), logits, cfg, time.time() - started))
        if not math.isfinite(rows[-1]["loss"]):
            diverged(out_dir, spec, step, rows[-1]["loss"])
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", tau=f"{tau:.2f}")
        bar.update()
        epoch_ends = step + 1 == total or schedule[step + 1][0] != epoch
        if epoch_ends or time.time() - saved_at > CHECKPOINT_SECONDS:
            save_checkpoint(out_dir / CHECKPOINT, fingerprint, step, psi, optimiser, rows, monitor)
            write_log(rows, out_dir / "train_log.csv")
            saved_at = time.time()
    bar.close()
    write_log(rows, out_dir / "train_log.csv")
    plot_curves(rows, out_dir / "loss.png")
    monitor.write(out_dir)
    log.info("trained in %.1f s", time.time() - started)
    return RunModel(spec, psi.eval().cpu(), input_dim=cache.dim("input"))


def kernel_source(cache: FeatureCache, spec: RunSpec, device: torch.device, generator: torch.Generator) -> KernelSource:
    """The step schedule and each batch's kernel: built from the batch itself (method.md section
    2; epochs of random batches), or read from the dataset-wide graph (`train.graph: dataset`;
    batches assembled around anchors so that they hold their tokens' neighbours)."""
    cfg = spec.psi
    h, w = cache.grid
    if cfg.graph != "dataset":
        return KernelSource(
            epoch_schedule(cache.image_index, cfg.batch_size, cfg.epochs, generator),
            lambda _, data: batch_kernel(data, cfg),
            lambda kernel: kernel.same_image_share(h * w),
        )
    from .graph.dataset import DatasetGraph, neighbour_schedule

    if spec.graph is None:
        raise InputError(f"{spec.run}: train.graph is dataset but the spec names no dataset-wide graph")
    graph = DatasetGraph(Path(spec.graph).with_suffix(".zarr"), h * w)
    if graph.n_items != len(cache):
        raise InputError(f"{spec.graph}: the graph covers {graph.n_items} items, the cache {len(cache)}; rebuild it")

    def kernel_of(items: np.ndarray, data: dict[str, torch.Tensor]) -> BatchKernel:
        pixels = data["pixels"].reshape(len(items), h * w, 5)
        pixel = pixel_kernel(pixels, cfg.pixel_knn) if cfg.alpha else None
        degree = torch.from_numpy(graph.degrees[graph.item_tokens(items)]).to(device) if cfg.normalised_cut else None
        return BatchKernel(graph.feature_kernel(items).to(device), pixel, cfg.alpha, degree)

    schedule = neighbour_schedule(graph, cfg.batch_size, cfg.epochs, generator)
    return KernelSource(schedule, kernel_of, lambda _: float("nan"))


def output_function(cfg: TrainSettings, cache: FeatureCache) -> OutputsOf:
    """What the objective sees of psi's logits: the Gumbel-softmax at temperature tau (weighted by
    the kernel's degrees for the normalised cut), or plain eigenfunctions; centred per image
    when `train.image_centred`."""

    def outputs_of(logits: torch.Tensor, tau: float, kernel: BatchKernel) -> torch.Tensor:
        if cfg.plain_eigenfunctions:
            outputs = eigenfunction_output(logits)
        else:
            outputs = training_output(
                logits, tau, volume_weights(kernel.feature_degree) if cfg.normalised_cut else None
            )
        return centre_per_image(outputs, tokens_per_image) if cfg.image_centred else outputs

    tokens_per_image = cache.grid[0] * cache.grid[1]

    return outputs_of


def describe(cache: FeatureCache, cfg: TrainSettings, total: int, psi: torch.nn.Module) -> None:
    log.info(
        "training psi: %d items of %d images, %d steps, K=%d, beta=%.4g, alpha=%s, k=%s, %d parameters",
        len(cache),
        len(np.unique(cache.image_index)),
        total,
        cfg.K,
        cfg.beta,
        cfg.alpha,
        cfg.knn_k,
        sum(p.numel() for p in psi.parameters()),
    )


def log_row(
    step: int,
    epoch: int,
    objective: Objective,
    tau: float,
    lr: float,
    same_image: float,
    logits: torch.Tensor,
    cfg: TrainSettings,
    seconds: float,
) -> dict:
    """One line of train_log.csv (LOG_FIELDS)."""
    return {
        "step": step,
        "epoch": epoch,
        "loss": objective.loss.item(),
        "trace": objective.trace.item(),
        "penalty": objective.penalty.item(),
        "tau": tau,
        "lr": lr,
        "same_image": same_image,
        "usage": float("nan") if cfg.plain_eigenfunctions else cluster_usage(logits.detach()),
        "seconds": seconds,
    }


def diverged(out_dir: Path, spec: RunSpec, step: int, loss: float) -> None:
    """Stop at the first non-finite loss: the steps after it and its checkpoint hold nothing worth
    resuming, so the checkpoint goes too."""
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    raise InputError(
        f"{spec.run}: training diverged at step {step} (loss {loss}); no checkpoint kept. "
        "Settings that can cause it: train.lr, beta, t, tau_min"
    )


def cluster_usage(logits: torch.Tensor) -> float:
    """Perplexity of the argmax clusters: how many of the K outputs are in effective use."""
    return perplexity(torch.bincount(logits.argmax(dim=1).cpu()).numpy())


def save_checkpoint(
    path: Path,
    fingerprint: str,
    step: int,
    psi: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    rows: list[dict],
    monitor: CaptureMonitor,
) -> None:
    save_torch(
        {
            "fingerprint": fingerprint,
            "step": step,
            "psi": psi.state_dict(),
            "optimiser": optimiser.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rows": rows,
            "monitor": monitor.rows,
        },
        path,
    )


def resume(
    path: Path,
    fingerprint: str,
    psi: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    rows: list[dict],
    monitor: CaptureMonitor,
    device: torch.device,
) -> int:
    """Load a checkpoint of the same run into psi, the optimiser, the RNG, `rows` and the monitor;
    returns the first step still to train (0 without a usable checkpoint)."""
    if not path.is_file():
        return 0
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated file from a kill during the very first save: start over
        log.warning("%s: unreadable checkpoint (%s); training from step 0", path, exc)
        return 0
    if ckpt.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoint of other settings; training from step 0", path)
        return 0
    psi.load_state_dict(ckpt["psi"])
    optimiser.load_state_dict(ckpt["optimiser"])
    torch.set_rng_state(ckpt["rng"].cpu())
    if ckpt["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
    rows.extend(ckpt["rows"])
    monitor.rows = list(ckpt["monitor"])
    log.info("%s: resuming after step %d", path, ckpt["step"])
    return int(ckpt["step"]) + 1


def heldout_kernel(spec: RunSpec, device: torch.device) -> tuple[torch.Tensor, BatchKernel] | None:
    """psi's input and the kernel of B images spread over the evaluation split (`spec.heldout`,
    a plain cache), for the capture monitor; None without such a cache."""
    if not spec.heldout:
        return None
    cfg = spec.psi
    cache = cache_for(spec.heldout)
    items = np.unique(np.linspace(0, len(cache) - 1, min(cfg.batch_size, len(cache))).round().astype(int))
    data = {k: torch.from_numpy(v).to(device) for k, v in cache.read(items).items()}
    b, h, w, _ = data["high"].shape
    return data["input"].reshape(b, h * w, -1), batch_kernel(data, cfg)


def batch_kernel(data: dict[str, torch.Tensor], cfg: TrainSettings) -> BatchKernel:
    """G of one batch of (B, h, w, C) cache arrays (method.md section 2): the cosine k-NN graph of
    its kernel features plus alpha times each image's pixel graph."""
    b, h, w, _ = data["high"].shape
    high, pixels = data["high"].reshape(b, h * w, -1), data["pixels"].reshape(b, h * w, 5)
    return build_kernel(
        high, pixels, k=cfg.knn_k, alpha=cfg.alpha, pixel_knn=cfg.pixel_knn, search_precision=cfg.search_precision
    )


def write_log(rows: list[dict], path: Path) -> None:
    write_csv(path, LOG_FIELDS, rows)


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    keys = ("loss", "trace", "penalty", "tau", "usage", "same_image")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for ax, key in zip(axes, keys):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows])
        ax.set_title(
            {
                "trace": "trace(R) / K",
                "penalty": "sum_{i<j} R^_ij^2 / K",
                "usage": "clusters in use (perplexity)",
                "same_image": "feature-graph weight in one image",
            }.get(key, key)
        )
        ax.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
