"""Dense CRF: cleans noisy predictions along the real image's edges; refuses a non-uint8 image."""

import numpy as np
import pytest

from pipeline.crf import dense_crf


def two_region_case(seed=0):
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    truth = np.zeros((h, w), dtype=np.int64)
    truth[:, w // 2 :] = 1
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
    _truth, image, probs = two_region_case()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(probs, image.astype(np.float32) / 255)


def test_running_over_active_clusters_only_gives_the_full_result():
    """Many clusters of negligible probability: the pruned CRF returns what the full one does,
    with labels in the original numbering."""
    truth, image, probs = two_region_case(seed=1)
    k = 40
    full = np.full((k, *truth.shape), 1e-6, dtype=np.float32)
    full[[7, 31]] = probs  # the two real clusters sit among 38 idle ones
    full /= full.sum(0, keepdims=True)
    pruned, everything = dense_crf(full, image), dense_crf(full, image, min_prob=0)
    assert set(np.unique(pruned)) <= {7, 31}
    np.testing.assert_array_equal(pruned, everything)
    assert (pruned == np.where(truth == 1, 31, 7)).mean() > 0.97


def test_crf_pool_in_worker_processes_matches_serial():
    from pipeline.crf import CRFPool

    cases = [two_region_case(seed) for seed in range(5)]
    serial = [dense_crf(probs, image) for _, image, probs in cases]
    pool = CRFPool(workers=2)
    got = []
    for i, (_, image, probs) in enumerate(cases):
        got += pool.submit(i, probs, image)
    got += pool.finish()
    assert [key for key, _ in got] == list(range(5))
    for (_, labels), expected in zip(got, serial):
        np.testing.assert_array_equal(labels, expected)
