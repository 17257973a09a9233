"""Dense-CRF post-processing (deeplab's pydensecrf defaults, method.md section 6).

Run on the softmax of the logits and the real RGB image as uint8 (the authors' protocol-A code
fed an almost black image; we do not).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def dense_crf(probs: np.ndarray, image: np.ndarray, iterations: int = 10) -> np.ndarray:
    """probs (C, H, W) float, image (H, W, 3) uint8 -> (H, W) labels."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise InputError("evaluate.crf: the dense CRF needs the optional extra: pip install 'neural-eigenseg[crf]'") from None
    c, h, w = probs.shape
    if image.shape[:2] != (h, w) or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be uint8 {h}x{w}x3, got {image.dtype} {image.shape}")
    crf = dcrf.DenseCRF2D(w, h, c)  # width first
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    q = np.asarray(crf.inference(iterations)).reshape(c, h, w)
    return q.argmax(0)
