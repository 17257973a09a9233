"""The verdict's margins on runs whose per-image counts are known: each family of comparison
(best K-means, CRF gain, majority against Hungarian, steps along a sweep) gives back the
difference of the scores it compares, on the right runs."""

import numpy as np
import pandas as pd
import pytest

from pipeline import metrics as M
from pipeline.intervals import CRF_SUFFIX, ImageCounts, save_counts
from pipeline.verdicts import margins

CLASSES = 4


def _counts(seed: int, noise: float, k: int = CLASSES, with_crf: float | None = None) -> ImageCounts:
    """Per-image counts of 16 images whose clusters follow the classes up to `noise`; the same
    images and ground truth for every seed; `with_crf`: also the noise after a CRF."""

    def confusions(level: float) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(16):
            conf = np.zeros((k, CLASSES), np.int64)
            for cls in range(CLASSES):
                pixels = 100 + 10 * cls
                right = int(pixels * (1 - level))
                conf[cls % k, cls] += right
                conf[(cls + 1 + rng.integers(0, k - 1)) % k, cls] += pixels - right
            out.append(conf)
        return out

    def counts(level: float, suffix: str = "") -> ImageCounts:
        confs = confusions(level)
        total = sum(confs)
        mappings = {f"majority{suffix}": M.majority_vote(total), f"hungarian{suffix}": M.hungarian(total)}
        sparse = [(r, c, conf[r, c]) for conf in confs for r, c in [np.nonzero(conf)]]
        return ImageCounts.from_confusions([f"im{i}" for i in range(16)], sparse, mappings, CLASSES)

    plain = counts(noise)
    return plain if with_crf is None else plain.joined(counts(with_crf, CRF_SUFFIX))


def _table(tmp_path, runs: list[dict]) -> pd.DataFrame:
    """The runs table and its counts map; each run's counts saved under tmp_path."""
    rows, files = [], {}
    for given in runs:
        spec = dict(given)
        counts = spec.pop("counts")
        row = {
            "dataset": "d",
            "protocol": "p",
            "backbone": "lite0",
            "K": CLASSES,
            "alpha": np.nan,
            "beta": np.nan,
            "graph": np.nan,
            "settings": np.nan,
            "crf": False,
            **spec,
        }
        row["miou"] = 100 * counts.scores("majority")[1][0]
        row["miou_hungarian"] = 100 * counts.scores("hungarian")[1][0]
        path = tmp_path / f"{row['run']}.npz"
        save_counts(path, counts)
        files[("d", "p", row["run"])] = path
        rows.append(row)
        if f"majority{CRF_SUFFIX}" in counts.tp:
            rows.append({**row, "crf": True})
    return margins(pd.DataFrame(rows), files, resamples=200)


def _row(table: pd.DataFrame, comparison: str, **where) -> pd.Series:
    hit = table[table["comparison"] == comparison]
    for key, value in where.items():
        hit = hit[hit[key] == value]
    assert len(hit) == 1, table
    return hit.iloc[0]


def test_steps_follow_the_sweep_in_table_order_and_k_keeps_beta_free(tmp_path):
    runs = []
    for K, noise in ((8, 0.4), (16, 0.1), (32, 0.5)):  # beta follows K, as the default does
        for seed in (0, 1):
            counts = _counts(seed, noise, k=K)
            runs.append(
                {"run": f"nes-K{K}-s{seed}", "method": "nes", "K": K, "alpha": 0.3, "beta": 20.48 / K, "counts": counts}
            )
    table = _table(tmp_path, runs)
    up, down = _row(table, "K 16 - K 8"), _row(table, "K 32 - K 16")
    assert up["verdict"] == "win" and down["verdict"] == "loss" and up["K"] == 16
    by_k = {K: np.mean([r["counts"].scores("majority")[1][0] for r in runs if r["K"] == K]) for K in (8, 16)}
    assert up["margin"] == pytest.approx(100 * (by_k[16] - by_k[8]), abs=0.01)
    assert not table["comparison"].str.startswith("beta").any()  # beta is not a sweep of its own here


def test_alpha_steps_compare_each_value_with_the_one_before(tmp_path):
    runs = [
        {"run": f"nes-a{a}", "method": "nes", "alpha": a, "beta": 0.16, "counts": _counts(0, noise)}
        for a, noise in ((0.0, 0.3), (0.3, 0.3), (0.5, 0.1))
    ]
    # K-means has no alpha: its seeds make no step
    runs += [{"run": f"km-s{seed}", "method": "kmeans", "counts": _counts(seed, 0.2)} for seed in (0, 1)]
    table = _table(tmp_path, runs)
    assert _row(table, "alpha 0.3 - alpha 0")["margin"] == 0.0
    assert _row(table, "alpha 0.5 - alpha 0.3")["verdict"] == "win"
    assert table["comparison"].str.startswith("alpha").sum() == 2


def test_crf_gain_and_majority_against_hungarian_compare_a_run_with_itself(tmp_path):
    better = _counts(0, 0.3, with_crf=0.1)
    table = _table(tmp_path, [{"run": "nes", "method": "nes", "alpha": 0.3, "beta": 5.12, "counts": better}])
    gain = _row(table, "+ CRF - plain", score="miou")
    assert gain["verdict"] == "win"
    expected = better.scores(f"majority{CRF_SUFFIX}")[1][0] - better.scores("majority")[1][0]
    assert gain["margin"] == pytest.approx(100 * expected, abs=0.01)
    voting = _row(table, "majority - Hungarian")
    expected = better.scores("majority")[1][0] - better.scores("hungarian")[1][0]
    assert voting["margin"] == pytest.approx(100 * expected, abs=0.01)


def test_majority_against_hungarian_only_at_k_equal_to_the_classes(tmp_path):
    table = _table(tmp_path, [{"run": "km", "method": "kmeans", "K": 8, "counts": _counts(0, 0.2, k=8)}])
    assert "majority - Hungarian" not in set(table["comparison"])
