"""The margins a table's verdict rests on, each with a bootstrap interval over images and seeds.

For every evaluated split, protocol, backbone and K of a table, and for both scores (mIoU under
majority voting and under Hungarian matching):

- Ours - best K-means: psi against the strongest K-means baseline the table has (K-means fitted
  on the training split, on whichever features; the best setting chosen on the evaluated split
  itself, which favours the baseline, so that a win stays a win);
- Ours* - best K-means: K-means on psi's hidden features against the same baseline;
- Ours* - Ours: K-means on psi's hidden features against psi's own clusters (the paper: at
  least as good);
- Ours - exact inductive: psi against the exact eigenvectors of the training split's G extended
  to the evaluated split (`spectral_inductive`), the method psi approximates.

Under Hungarian matching only at K = C, its protocol (above it most clusters go unmatched).

And, where a table has them, the paper's other comparisons:

- majority - Hungarian: the same runs at K = C (the number of classes) under majority voting and
  under Hungarian matching (the paper: 27.7 against 23.5 on Pascal Context at K 60);
- + CRF - plain: the same runs scored after the dense CRF and without it;
- steps: along each of backbone, K, alpha and beta that a method's runs vary in (all else
  fixed), each value against the one before it in the table's order (majority voting only),
  e.g. `K 256 - K 128` (the paper's trends, Tables 1 and 5-7).

Each side is averaged over its seeds; `margin` is in mIoU points with its 95 % interval
(`ci_low`, `ci_high`; intervals.paired_margin) and `verdict` (win / loss / tie: a margin is a
win or a loss only when its interval excludes 0).
"""

from __future__ import annotations

import re
from functools import cache
from itertools import pairwise
from pathlib import Path

import pandas as pd

from .intervals import CRF_SUFFIX, ImageCounts, load_counts, paired_margin
from .spec import Method

MARGIN_COLUMNS = [
    "dataset",
    "protocol",
    "backbone",
    "K",
    "score",
    "comparison",
    "a",
    "b",
    "seeds_a",
    "seeds_b",
    "margin",
    "ci_low",
    "ci_high",
    "verdict",
]
SCORE_MAPPINGS = {"miou": "majority", "miou_hungarian": "hungarian"}
# K-means fitted on the training split on the backbone's features: the baselines
BASELINES = {str(m) for m in Method if m.traits.embedding.of_backbone and not m.traits.transductive}
GROUP = ["dataset", "protocol", "backbone", "K"]
# which runs are measured against which: psi (Ours), and K-means on psi's hidden features (Ours*)
AGAINST = {
    str(Method.NES): (("Ours - best K-means", "baseline"), ("Ours - exact inductive", "exact")),
    str(Method.NES_STAR): (("Ours* - best K-means", "baseline"), ("Ours* - Ours", "psi")),
}
VARIANT = ["method", "alpha", "beta", "graph", "settings"]
STEPS = ["backbone", "K", "alpha", "beta"]  # the settings a trend runs along


def margins(runs: pd.DataFrame, counts: dict[tuple[str, str, str], Path], resamples: int = 1000) -> pd.DataFrame:
    """`runs`: a table's runs (tables.build_runs); `counts`: (dataset, protocol, run) -> the
    per-image counts beside its metrics. Comparisons whose runs have no counts are left out."""
    rows: list[dict | None] = []
    _counts.cache_clear()  # files are read afresh for every table
    refined = runs["crf"].astype(bool)
    plain = runs[~refined]
    with_crf = {tuple(r[["dataset", "protocol", "run"]]) for _, r in runs[refined].iterrows()}

    def compare(key: tuple, score: str, comparison: str, a: pd.DataFrame, b: pd.DataFrame | None, **how) -> None:
        rows.append(_compare(key, score, comparison, a, b, counts, resamples, **how))

    for key, group in plain.groupby(GROUP, sort=False, dropna=False):
        variants: dict[tuple, pd.DataFrame] = dict(list(group.groupby(VARIANT, sort=False, dropna=False)))
        for score, mapping in SCORE_MAPPINGS.items():
            baseline = _best([g for v, g in variants.items() if v[0] in BASELINES], score)
            exact = _best([g for v, g in variants.items() if v[0] == Method.SPECTRAL_INDUCTIVE], score)
            for v, ours in variants.items():
                # the nes runs whose psi an Ours* variant clusters: same settings but the method
                others = {"baseline": baseline, "exact": exact, "psi": variants.get((str(Method.NES), *v[1:]))}
                for comparison, which in AGAINST.get(str(v[0]), ()):
                    # Hungarian matching is the protocol of K = C: above it, most clusters go unmatched
                    compare(key, score, comparison, ours, others[which], mapping=mapping, at_c=mapping == "hungarian")
                if all(tuple(r[["dataset", "protocol", "run"]]) in with_crf for _, r in ours.iterrows()):
                    compare(key, score, "+ CRF - plain", ours, ours, mapping=mapping + CRF_SUFFIX, mapping_b=mapping)
        for ours in variants.values():
            compare(
                key, "miou", "majority - Hungarian", ours, ours, mapping="majority", mapping_b="hungarian", at_c=True
            )
    for step in STEPS:
        # K sets the default beta (20.48 / K): a K trend keeps beta free
        fixed = [c for c in ["dataset", "protocol", *STEPS, *VARIANT] if c != step and (step, c) != ("K", "beta")]
        for _, group in plain.groupby(fixed, sort=False, dropna=False):
            values = list(pd.unique(group[step].dropna()))  # a method without the setting has none
            for before, after in pairwise(values):
                a, b = group[group[step] == after], group[group[step] == before]
                key = tuple(a.iloc[0][GROUP])
                compare(key, "miou", f"{step} {_value(after)} - {step} {_value(before)}", a, b, mapping="majority")
    return pd.DataFrame([r for r in rows if r is not None], columns=MARGIN_COLUMNS)


def _value(value) -> str:
    """A setting as a table shows it: 0.3, 128, lite0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@cache
def _counts(path: Path) -> ImageCounts:
    """A run's counts, read once however many comparisons it takes part in."""
    return load_counts(path)


def _best(groups: list[pd.DataFrame], score: str) -> pd.DataFrame | None:
    """The group of runs with the highest mean score (on the evaluated split)."""
    return max(groups, key=lambda g: g[score].mean(), default=None)


def _label(group: pd.DataFrame) -> str:
    """The runs' id without the seed: the method and every setting that tells variants apart."""
    return re.sub(r"-s\d+$", "", str(group.iloc[0]["run"]))


def _compare(
    key: tuple,
    score: str,
    comparison: str,
    ours: pd.DataFrame,
    other: pd.DataFrame | None,
    counts: dict[tuple[str, str, str], Path],
    resamples: int,
    mapping: str,
    mapping_b: str | None = None,
    at_c: bool = False,
) -> dict | None:
    """One margin row, or None where a side is missing, has no per-image counts, or (`at_c`)
    its K is not the number of classes."""
    if other is None:
        return None
    dataset, protocol = key[0], key[1]
    paths = [[counts.get((dataset, protocol, run)) for run in g["run"]] for g in (ours, other)]
    if any(p is None for side in paths for p in side):
        return None
    loaded: list[list[ImageCounts]] = [[_counts(p) for p in side if p is not None] for side in paths]
    if at_c and int(ours.iloc[0]["K"]) != loaded[0][0].gt.shape[1]:
        return None
    if any(m not in c.tp for m in (mapping, mapping_b or mapping) for side in loaded for c in side):
        return None  # counts written before that protocol was kept per image
    result = paired_margin(loaded[0], loaded[1], mapping, resamples, mapping_b=mapping_b)
    return {
        **dict(zip(GROUP, key)),
        "score": score,
        "comparison": comparison,
        "a": _label(ours),
        "b": _label(other),
        "seeds_a": len(ours),
        "seeds_b": len(other),
        "margin": result.margin,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "verdict": result.verdict,
    }
