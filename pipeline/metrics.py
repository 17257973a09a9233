"""Clusters -> classes, and the scores (method.md section 6).

Everything works from one K x C confusion matrix of counts, built in one pass with bincount, so
memory is O(K x C) whatever the split size.
- Majority voting (as published): each cluster goes to the class of highest IoU; several
  clusters may share a class.
- Hungarian: one-to-one assignment maximising the summed IoU (scipy linear_sum_assignment);
  unmatched clusters map to -1 and their pixels count as wrong, never as class 0.
- Pixel accuracy over valid pixels; mIoU over classes present in ground truth or prediction.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .graph.spectral import perplexity

UNMATCHED = -1


def confusion_matrix(
    clusters: np.ndarray, labels: np.ndarray, num_clusters: int, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """(K, C) int64 counts[k, c] = pixels of cluster k with label c; ignore pixels dropped."""
    clusters = np.asarray(clusters).ravel()
    labels = np.asarray(labels).ravel()
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    flat = clusters[valid].astype(np.int64) * num_classes + labels[valid].astype(np.int64)
    return np.bincount(flat, minlength=num_clusters * num_classes).reshape(num_clusters, num_classes)


def cluster_class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU of every (cluster, class) pair: counts / (|cluster| + |class| - counts)."""
    conf = conf.astype(np.float64)
    union = conf.sum(1, keepdims=True) + conf.sum(0, keepdims=True) - conf
    return np.divide(conf, union, out=np.zeros_like(conf), where=union > 0)


def majority_vote(conf: np.ndarray) -> np.ndarray:
    """Cluster -> class of highest IoU; empty clusters stay unmatched."""
    mapping = cluster_class_iou(conf).argmax(1)
    mapping[conf.sum(1) == 0] = UNMATCHED
    return mapping


def hungarian(conf: np.ndarray) -> np.ndarray:
    """One-to-one cluster -> class maximising summed IoU; the rest -> UNMATCHED."""
    rows, cols = linear_sum_assignment(cluster_class_iou(conf), maximize=True)
    mapping = np.full(conf.shape[0], UNMATCHED, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def scores(conf: np.ndarray, mapping: np.ndarray) -> dict:
    """Pixel accuracy, per-class IoU (NaN where the class is absent from GT and prediction), mIoU."""
    num_classes = conf.shape[1]
    matched = mapping >= 0
    tp = np.zeros(num_classes)
    predicted = np.zeros(num_classes)
    np.add.at(tp, mapping[matched], conf[matched, mapping[matched]])
    np.add.at(predicted, mapping[matched], conf[matched].sum(1))
    gt = conf.sum(0).astype(np.float64)
    union = gt + predicted - tp
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    total = conf.sum()
    return {
        "acc": float(tp.sum() / total) if total else float("nan"),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "iou": iou.tolist(),
    }


def partition_anatomy(conf: np.ndarray) -> dict:
    """Where a partition's score goes, from its confusion matrix alone: per class, how many
    clusters it is the majority of (a class split over several clusters keeps only one under
    Hungarian matching) and the best IoU any single cluster reaches (matching without the
    one-to-one constraint); the cluster sizes' perplexity against the classes' (a balanced
    partition of imbalanced classes must split the large ones)."""
    iou = cluster_class_iou(conf)
    used = conf.sum(1) > 0
    majority = iou.argmax(1)[used]
    return {
        "clusters_per_class": np.bincount(majority, minlength=conf.shape[1]).tolist(),
        "best_cluster_iou": iou.max(0).tolist(),
        "cluster_perplexity": perplexity(conf.sum(1)),
        "class_perplexity": perplexity(conf.sum(0)),
    }


def remap(clusters: np.ndarray, mapping: np.ndarray, fill: int = 255) -> np.ndarray:
    """Cluster map -> class map (unmatched clusters -> `fill`)."""
    lut = np.where(mapping >= 0, mapping, fill)
    return lut[clusters]
