"""The margins a table's verdict rests on, each with a paired bootstrap interval over images.

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

Each side is averaged over its seeds; `margin` is in mIoU points with its 95 % interval
(`ci_low`, `ci_high`; intervals.paired_margin) and `verdict` (win / loss / tie: a margin is a
win or a loss only when its interval excludes 0).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from .intervals import ImageCounts, load_counts, paired_margin
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


def margins(runs: pd.DataFrame, counts: dict[tuple[str, str, str], Path], resamples: int = 1000) -> pd.DataFrame:
    """`runs`: a table's runs (tables.build_runs); `counts`: (dataset, protocol, run) -> the
    per-image counts beside its metrics. Comparisons whose runs have no counts are left out."""
    rows: list[dict] = []
    _counts.cache_clear()  # files are read afresh for every table
    plain = runs[~runs["crf"].astype(bool)]
    for key, group in plain.groupby(GROUP, sort=False, dropna=False):
        variants: dict[tuple, pd.DataFrame] = dict(list(group.groupby(VARIANT, sort=False, dropna=False)))
        for score, mapping in SCORE_MAPPINGS.items():
            baseline = _best([g for v, g in variants.items() if v[0] in BASELINES], score)
            exact = _best([g for v, g in variants.items() if v[0] == Method.SPECTRAL_INDUCTIVE], score)
            for v, ours in variants.items():
                # the nes runs whose psi an Ours* variant clusters: same settings but the method
                others = {"baseline": baseline, "exact": exact, "psi": variants.get((str(Method.NES), *v[1:]))}
                for comparison, which in AGAINST.get(str(v[0]), ()):
                    row = _compare(key, score, mapping, comparison, ours, others[which], counts, resamples)
                    if row is not None:
                        rows.append(row)
    return pd.DataFrame(rows, columns=MARGIN_COLUMNS)


@cache
def _counts(path: Path) -> ImageCounts:
    """A run's counts, read once however many comparisons it takes part in."""
    return load_counts(path)


def _best(groups: list[pd.DataFrame], score: str) -> pd.DataFrame | None:
    """The group of runs with the highest mean score (on the evaluated split)."""
    return max(groups, key=lambda g: g[score].mean(), default=None)


def _label(group: pd.DataFrame) -> str:
    first = group.iloc[0]
    extra = f" ({first['settings']})" if first["settings"] else ""
    return f"{first['method']}{extra}"


def _compare(
    key: tuple,
    score: str,
    mapping: str,
    comparison: str,
    ours: pd.DataFrame,
    other: pd.DataFrame | None,
    counts: dict[tuple[str, str, str], Path],
    resamples: int,
) -> dict | None:
    if other is None:
        return None
    dataset, protocol = key[0], key[1]
    paths = [[counts.get((dataset, protocol, run)) for run in g["run"]] for g in (ours, other)]
    if any(p is None for side in paths for p in side):
        return None
    loaded: list[list[ImageCounts]] = [[_counts(p) for p in side if p is not None] for side in paths]
    result = paired_margin(loaded[0], loaded[1], mapping, resamples)
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
