"""How sure a score or a margin is: per-image statistics and a paired bootstrap over images.

A run's mIoU is a ratio of sums over the evaluated images (per class: true positives over the
union of ground truth and prediction), so it does not average over images. `ImageCounts` keeps,
for every image, the counts those sums are made of under the cluster -> class mapping the run
was evaluated with (fixed as evaluated: the bootstrap measures which images were drawn, not how
the mapping would change). Resampling images with replacement, the same draw for every run of a
comparison (paired), and each side's seeds with replacement (independently for two methods, the
same draw where a run is compared with itself, e.g. with and without the CRF), gives the
distribution of a margin between two methods, each averaged over its seeds; the 95 % percentile
interval is reported, and a margin is a win or a loss only when its interval excludes 0.

Both sources count: images resampled alone give intervals far narrower than the seed spread
where the evaluated images are frames of one video (CamVid val: 101 frames of one drive), and
seeds resampled alone ignore which images were drawn. With 3 seeds the seed part is rough (the
bootstrap of a mean of n draws shrinks its spread by sqrt((n - 1) / n)); more seeds sharpen it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CRF_SUFFIX = "_crf"  # the same protocols scored after the dense CRF: "majority_crf", "hungarian_crf"
# the two protocols, majority voting and Hungarian matching, without and with the CRF
MAPPINGS = ("majority", "hungarian", f"majority{CRF_SUFFIX}", f"hungarian{CRF_SUFFIX}")


@dataclass(frozen=True)
class ImageCounts:
    """Per image (rows, in split order) and class: ground-truth pixels, and per mapping the
    pixels predicted as the class and the true positives among them."""

    ids: np.ndarray  # (N,) sample ids
    gt: np.ndarray  # (N, C)
    predicted: dict[str, np.ndarray]  # mapping -> (N, C)
    tp: dict[str, np.ndarray]  # mapping -> (N, C)

    @classmethod
    def from_confusions(
        cls,
        ids: list[str],
        confusions: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        mappings: dict[str, np.ndarray],
        num_classes: int,
    ) -> ImageCounts:
        """From each image's sparse K x C confusion (cluster, class, count) and the split's mappings."""
        n = len(confusions)
        gt = np.zeros((n, num_classes), np.int64)
        predicted = {name: np.zeros((n, num_classes), np.int64) for name in mappings}
        tp = {name: np.zeros((n, num_classes), np.int64) for name in mappings}
        for i, (clusters, classes, counts) in enumerate(confusions):
            np.add.at(gt[i], classes, counts)
            for name, mapping in mappings.items():
                mapped = mapping[clusters]
                matched = mapped >= 0
                np.add.at(predicted[name][i], mapped[matched], counts[matched])
                hit = matched & (mapped == classes)
                np.add.at(tp[name][i], classes[hit], counts[hit])
        return cls(np.asarray(ids), gt, predicted, tp)

    def joined(self, other: ImageCounts) -> ImageCounts:
        """These counts and `other`'s mappings (the same images and ground truth, e.g. after the CRF)."""
        if not (np.array_equal(self.ids, other.ids) and np.array_equal(self.gt, other.gt)):
            raise ValueError("per-image counts of different images or ground truth cannot be joined")
        return ImageCounts(self.ids, self.gt, {**self.predicted, **other.predicted}, {**self.tp, **other.tp})

    def scores(self, mapping: str, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(acc, mIoU) for each row of `weights` (B, N): how often each image is drawn; None: the
        split as evaluated (B = 1). mIoU averages the classes present in ground truth or
        prediction, as metrics.scores does."""
        w = np.ones((1, len(self.ids))) if weights is None else np.atleast_2d(weights).astype(np.float64)
        tp, predicted, gt = w @ self.tp[mapping], w @ self.predicted[mapping], w @ self.gt
        union = gt + predicted - tp
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        present = np.isfinite(iou).any(1)
        miou = np.full(len(w), np.nan)
        miou[present] = np.nanmean(iou[present], axis=1)
        acc = tp.sum(1) / np.maximum(gt.sum(1), 1)
        return acc, miou


def save_counts(path: Path, counts: ImageCounts) -> None:
    from .formats import atomic_path

    arrays: dict[str, Any] = {"ids": counts.ids.astype(str), "gt": counts.gt}
    for name in counts.tp:
        arrays[f"tp_{name}"], arrays[f"predicted_{name}"] = counts.tp[name], counts.predicted[name]
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_counts(path: Path) -> ImageCounts:
    from .errors import InputError

    try:
        with np.load(path) as f:
            names = [n for n in MAPPINGS if f"tp_{n}" in f]
            return ImageCounts(
                f["ids"], f["gt"], {n: f[f"predicted_{n}"] for n in names}, {n: f[f"tp_{n}"] for n in names}
            )
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            f"{path}: not the per-image counts of an evaluation ({exc.__class__.__name__}: {exc})"
        ) from None


@dataclass(frozen=True)
class Margin:
    margin: float  # mean over A's runs minus mean over B's runs, on the split as evaluated (points)
    ci_low: float
    ci_high: float

    @property
    def verdict(self) -> str:
        """win / loss when the 95 % interval excludes 0, tie otherwise."""
        return "win" if self.ci_low > 0 else "loss" if self.ci_high < 0 else "tie"


def paired_margin(
    a: list[ImageCounts],
    b: list[ImageCounts],
    mapping: str,
    resamples: int = 1000,
    seed: int = 0,
    score: int = 1,
    mapping_b: str | None = None,
) -> Margin:
    """mIoU (score 1; acc: 0) of method A's runs minus method B's, each averaged over its runs,
    in points, with the 95 % percentile interval of a bootstrap over images and seeds: one draw
    of images per resample, shared by every run (all runs must score the same images in one
    order), and a draw of each side's runs (the same draw when both sides are the same runs).
    B's runs are scored under `mapping_b` where given (e.g. the same runs without the CRF)."""
    ids = a[0].ids
    for counts in [*a, *b]:
        if len(counts.ids) != len(ids) or not (counts.ids == ids).all():
            raise ValueError("paired bootstrap: the runs did not score the same images in the same order")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
    weights = np.stack([np.bincount(row, minlength=len(ids)) for row in draws])
    how_b = mapping_b or mapping

    def run_scores(group: list[ImageCounts], how: str, w: np.ndarray | None) -> np.ndarray:
        """(runs, resamples) scores in points."""
        return 100 * np.stack([c.scores(how, w)[score] for c in group])

    observed = float(run_scores(a, mapping, None).mean() - run_scores(b, how_b, None).mean())
    runs_a = rng.integers(0, len(a), size=(resamples, len(a)))
    same_runs = len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
    runs_b = runs_a if same_runs else rng.integers(0, len(b), size=(resamples, len(b)))
    column = np.arange(resamples)[:, None]
    spread = run_scores(a, mapping, weights)[runs_a, column].mean(1) - run_scores(b, how_b, weights)[
        runs_b, column
    ].mean(1)
    low, high = np.percentile(spread, [2.5, 97.5])
    return Margin(round(observed, 2), round(float(low), 2), round(float(high), 2))
