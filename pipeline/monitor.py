"""Is psi learning what the kernel says? Capture of its hard partition on G, next to what exact
spectral clustering of the same G captures (spectral.partition_measures), during training.

At a few checkpoints (`train.monitor`: how many over the run) the trainer measures, on the batch
it just trained on and on a fixed held-out kernel (B images spread over the evaluation split, when
its cache exists): tr(Y^T G Y) / (sum of G's top-K eigenvalues) for psi's argmax clusters, and the
same for the Ng-Jordan-Weiss clustering of G's exact top-K eigenvectors. A psi that has learned the
kernel captures about what spectral clustering does; the ratio psi / spectral is what the
tuning benchmarks (studies/psi_tuning.py) report as `capture_ratio`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .clustering import centre_logits, fit_kmeans
from .formats import save_figure, write_csv
from .graph.batch import BatchKernel
from .graph.spectral import partition_measures, spectral_embedding, top_eigenvectors

log = logging.getLogger(__name__)
FIELDS = ("step", "batch_psi", "batch_spectral", "heldout_psi", "heldout_spectral", "seconds")


def kernel_to_scipy(kernel: BatchKernel) -> sp.csr_matrix:
    def csr(t: torch.Tensor) -> sp.csr_matrix:
        t = t.cpu()
        return sp.csr_matrix(
            (t.values().numpy().astype(np.float64), t.col_indices().numpy(), t.crow_indices().numpy()),
            shape=tuple(t.shape),
        )

    g = csr(kernel.feature)
    if kernel.pixel is not None and kernel.alpha:
        g = g + kernel.alpha * csr(kernel.pixel)
    return g.tocsr()


def njw_clusters(functions: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spectral clustering's read-out (Ng, Jordan and Weiss): K-means on the row-normalised
    functions of the tokens, one cluster id per token."""
    embedding = spectral_embedding(functions)
    centres = fit_kmeans(embedding, k, seed)
    return centre_logits(torch.from_numpy(embedding), torch.from_numpy(centres)).argmax(1).numpy()


@dataclass
class KernelReference:
    """G of one batch as scipy, its top-K eigenvalues and the capture of spectral clustering."""

    g: sp.csr_matrix
    values: np.ndarray
    spectral_capture: float
    seed: int = 0

    @classmethod
    def of(cls, kernel: BatchKernel, k: int, seed: int = 0) -> KernelReference | None:
        """None for a kernel too small for K clusters (fewer than 2K tokens)."""
        g = kernel_to_scipy(kernel)
        if g.shape[0] < 2 * k:
            return None
        values, vectors = top_eigenvectors(g, min(k, g.shape[0] - 2), seed)
        return cls(g, values, partition_measures(njw_clusters(vectors, k, seed), g, values)["capture"], seed)

    def capture(self, logits: torch.Tensor, plain_eigenfunctions: bool = False) -> float:
        """Capture of psi's partition: the argmax of its one-hot outputs, or for plain
        eigenfunctions the exact method's read-out of them (K-means on the row-normalised outputs
        of these tokens), so psi's eigenfunctions and G's exact ones are compared alike."""
        if plain_eigenfunctions:
            labels = njw_clusters(logits.reshape(-1, logits.shape[-1]).cpu().numpy(), len(self.values), self.seed)
        else:
            labels = logits.argmax(-1).reshape(-1).cpu().numpy()
        return partition_measures(labels, self.g, self.values)["capture"]


class CaptureMonitor:
    """Checkpoints spread over training; rows go to `capture_log.csv`, the curve to `capture.png`."""

    def __init__(
        self,
        total_steps: int,
        checkpoints: int,
        k: int,
        heldout: tuple[torch.Tensor, BatchKernel] | None,
        seed: int,
        plain_eigenfunctions: bool = False,
    ):
        self.steps = (
            set(np.linspace(0, total_steps - 1, checkpoints).round().astype(int).tolist()) if checkpoints else set()
        )
        self.k, self.seed, self.plain = k, seed, plain_eigenfunctions
        self.rows: list[dict[str, Any]] = []
        self.heldout_input, self.heldout = None, None
        if heldout is not None and self.steps:
            self.heldout_input = heldout[0]
            self.heldout = KernelReference.of(heldout[1], k, seed)
        if self.heldout is not None:
            log.info(
                "held-out kernel: %d tokens, spectral clustering captures %.3f",
                self.heldout.g.shape[0],
                self.heldout.spectral_capture,
            )

    @torch.no_grad()
    def __call__(self, step: int, psi: torch.nn.Module, logits: torch.Tensor, kernel: BatchKernel) -> None:
        if step not in self.steps:
            return
        started = time.time()
        batch = KernelReference.of(kernel, self.k, self.seed)
        if batch is None:
            log.info("step %d: the batch kernel has fewer than 2K tokens; capture not measured", step)
            return
        row = {
            "step": step,
            "batch_psi": batch.capture(logits.detach(), self.plain),
            "batch_spectral": batch.spectral_capture,
            "heldout_psi": None,
            "heldout_spectral": None,
        }
        if self.heldout is not None:
            was_training = psi.training
            psi.eval()
            row["heldout_psi"] = self.heldout.capture(psi(self.heldout_input), self.plain)
            row["heldout_spectral"] = self.heldout.spectral_capture
            psi.train(was_training)
        row["seconds"] = round(time.time() - started, 2)
        self.rows.append(row)
        log.info(
            "step %d capture: batch psi %.3f / spectral %.3f%s",
            step,
            row["batch_psi"],
            row["batch_spectral"],
            f"; held-out psi {row['heldout_psi']:.3f} / spectral {row['heldout_spectral']:.3f}" if self.heldout else "",
        )

    def write(self, out_dir: Path) -> None:
        if not self.rows:
            return
        write_csv(out_dir / "capture_log.csv", FIELDS, self.rows)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        steps = [r["step"] for r in self.rows]
        for key, style, label in (
            ("batch_psi", "-o", "psi, training batch"),
            ("batch_spectral", "--", "spectral, training batch"),
            ("heldout_psi", "-s", "psi, held-out kernel"),
            ("heldout_spectral", ":", "spectral, held-out kernel"),
        ):
            values = [r[key] for r in self.rows]
            if values[0] is not None:
                ax.plot(steps, values, style, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("capture of the top-K spectrum")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
        ax.set_title("hard partition on G: psi vs exact spectral clustering")
        fig.tight_layout()
        save_figure(fig, out_dir / "capture.png")
        plt.close(fig)
