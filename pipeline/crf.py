"""Dense-CRF post-processing (deeplab's pydensecrf defaults, method.md section 6).

Run on the softmax of the logits and the real RGB image as uint8 (the authors' protocol-A code
fed an almost black image; we do not).

Mean-field cost grows with the number of labels (36 s for K = 256 at 320 x 320 on one core), and
in any one image nearly all of psi's K clusters have negligible probability everywhere. The CRF
therefore runs over the clusters whose probability reaches `min_prob` somewhere in the image
(every argmax cluster among them); the others would keep near-zero marginals. `min_prob=0`
runs over all K.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def dense_crf(probs: np.ndarray, image: np.ndarray, iterations: int = 10, min_prob: float = 1e-3) -> np.ndarray:
    """probs (C, H, W) float, image (H, W, 3) uint8 -> (H, W) labels in 0..C-1."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise InputError(
            "evaluate.crf: the dense CRF needs the optional extra: pip install 'neural-eigenseg[crf]'"
        ) from None
    c, h, w = probs.shape
    if image.shape[:2] != (h, w) or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be uint8 {h}x{w}x3, got {image.dtype} {image.shape}")
    active = active_labels(probs, min_prob)
    if len(active) == 1:
        return np.full((h, w), active[0], dtype=np.int64)
    probs, c = probs[active], len(active)
    crf = dcrf.DenseCRF2D(w, h, c)  # width first
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    q = np.asarray(crf.inference(iterations)).reshape(c, h, w)
    return active[q.argmax(0)]


def active_labels(probs: np.ndarray, min_prob: float = 1e-3) -> np.ndarray:
    """Labels whose probability reaches `min_prob` somewhere, and every arg-max label."""
    c = probs.shape[0]
    active = np.flatnonzero(probs.reshape(c, -1).max(1) >= min_prob) if min_prob > 0 else np.arange(c)
    return np.union1d(active, np.unique(probs.argmax(0)))


class CRFPool:
    """Dense CRF over images in worker processes (the CRF is single-threaded C++): submit the
    pruned probabilities, collect (key, labels) in submission order with bounded memory."""

    def __init__(self, workers: int):
        from concurrent.futures import ProcessPoolExecutor

        self.workers = max(1, workers)
        self.pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        self.pending: list = []

    def submit(self, key, probs: np.ndarray, image: np.ndarray) -> list:
        """Queue one image; returns the results that are ready once the queue is full."""
        active = active_labels(probs)
        args = (np.ascontiguousarray(probs[active]), image)
        if self.pool is None:
            self.pending.append((key, active, _Done(dense_crf(*args, min_prob=0))))
        else:
            self.pending.append((key, active, self.pool.submit(dense_crf, *args, min_prob=0)))
        return self._drain(2 * self.workers)

    def finish(self) -> list:
        out = self._drain(0)
        if self.pool is not None:
            self.pool.shutdown()
        return out

    def _drain(self, keep: int) -> list:
        out = []
        while len(self.pending) > keep:
            key, active, future = self.pending.pop(0)
            out.append((key, active[future.result()]))
        return out


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value
