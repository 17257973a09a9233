"""Per-image counts and the paired bootstrap over images, against the scores of the whole split
(metrics.scores on the summed confusion) and against cases whose answer is known."""

import numpy as np
import pytest

from pipeline import metrics as M
from pipeline.intervals import ImageCounts, load_counts, paired_margin, save_counts


def _split(seed, n=12, k=6, c=4, noise=0.3):
    """Per-image K x C confusions of a partition that follows the classes up to `noise`."""
    rng = np.random.default_rng(seed)
    confusions = []
    for _ in range(n):
        conf = np.zeros((k, c), np.int64)
        for cls in rng.choice(c, size=2, replace=False):
            pixels = rng.integers(50, 200)
            right = int(pixels * (1 - noise * rng.random()))
            conf[cls % k, cls] += right  # cluster `cls` mostly holds class `cls`
            conf[rng.integers(0, k), cls] += pixels - right
        confusions.append(conf)
    return confusions


def _counts(confusions):
    total = sum(confusions)
    mappings = {"majority": M.majority_vote(total), "hungarian": M.hungarian(total)}
    sparse = [(r, c, conf[r, c]) for conf in confusions for r, c in [np.nonzero(conf)]]
    counts = ImageCounts.from_confusions([f"im{i}" for i in range(len(confusions))], sparse, mappings, total.shape[1])
    return counts, total, mappings


def test_counts_reproduce_the_scores_of_the_whole_split(tmp_path):
    counts, total, mappings = _counts(_split(0))
    for name, mapping in mappings.items():
        expected = M.scores(total, mapping)
        acc, miou = counts.scores(name)
        assert acc[0] == pytest.approx(expected["acc"]) and miou[0] == pytest.approx(expected["miou"])
        # weights that draw every image once are the split itself
        assert counts.scores(name, np.ones((3, len(counts.ids))))[1] == pytest.approx([expected["miou"]] * 3)
    save_counts(tmp_path / "per_image.npz", counts)
    again = load_counts(tmp_path / "per_image.npz")
    assert (again.ids == counts.ids).all() and again.scores("hungarian")[1] == pytest.approx(
        counts.scores("hungarian")[1]
    )


def test_a_run_against_itself_ties_and_a_better_run_wins():
    counts, _, _ = _counts(_split(1))
    same = paired_margin([counts], [counts], "majority", resamples=200)
    assert (same.margin, same.ci_low, same.ci_high, same.verdict) == (0.0, 0.0, 0.0, "tie")
    better, _, _ = _counts(_split(1, noise=0.0))  # the same images, every pixel of a class in its cluster
    worse, _, _ = _counts(_split(1, noise=0.9))
    result = paired_margin([better], [worse], "majority", resamples=500)
    assert result.margin > 0 and result.ci_low > 0 and result.verdict == "win"
    assert paired_margin([worse], [better], "majority", resamples=500).verdict == "loss"
    # seeds are averaged on each side; the interval covers the observed margin
    two = paired_margin([better, worse], [worse], "majority", resamples=500)
    assert two.margin == pytest.approx(result.margin / 2, abs=0.01) and two.ci_low <= two.margin <= two.ci_high


def test_runs_of_other_images_are_not_paired():
    a, _, _ = _counts(_split(2, n=12))
    b, _, _ = _counts(_split(2, n=11))
    with pytest.raises(ValueError, match="did not score the same images"):
        paired_margin([a], [b], "majority")


def test_the_interval_holds_the_spread_of_seeds_as_well_as_of_images():
    """Two seeds far apart against a third: the seeds' draw alone moves the margin between 0 and
    the full gap, so the interval spans most of it (images alone would give a narrow one)."""
    better, _, _ = _counts(_split(3, noise=0.0))
    worse, _, _ = _counts(_split(3, noise=0.9))
    full = paired_margin([better], [worse], "majority", resamples=500).margin
    mixed = paired_margin([better, worse], [worse], "majority", resamples=500)
    assert mixed.margin == pytest.approx(full / 2, abs=0.01)
    assert mixed.ci_low < 0.25 * full and mixed.ci_high > 0.75 * full and mixed.verdict == "tie"
