"""Dense CRF: cleans noisy predictions along the real image's edges; refuses a non-uint8 image."""

import numpy as np
import pytest

from pipeline.crf import dense_crf


def two_region_case(seed=0):
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, w // 2:] = 1
    image = np.where(truth[..., None] == 1, [200, 40, 40], [30, 60, 200]).astype(np.uint8)
    probs = np.full((2, h, w), 0.35, dtype=np.float32)
    probs[truth, np.arange(h)[:, None], np.arange(w)] = 0.65
    flip = rng.random((h, w)) < 0.3  # 30 % of pixels lean the wrong way
    probs[:, flip] = probs[::-1, flip]
    return truth, image, probs


def test_crf_follows_the_image_and_removes_noise():
    truth, image, probs = two_region_case()
    noisy_acc = (probs.argmax(0) == truth).mean()
    refined = dense_crf(probs, image)
    assert refined.shape == truth.shape
    assert noisy_acc < 0.75 and (refined == truth).mean() > 0.97


def test_crf_refuses_a_float_image():
    truth, image, probs = two_region_case()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(probs, image.astype(np.float32) / 255)
