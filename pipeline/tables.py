"""metrics.json files -> a table: `{table}.csv` with the mean and standard deviation over seeds per
setting (the paper's rows), `{table}_runs.csv` with one row per run and CRF setting, and a Markdown
twin `{table}.md` in the paper's layout (methods as rows, Acc and mIoU as mean ± std).

Beside the scores each row carries what it cost (wall time and peak memory of fitting, and of the
dataset-wide graph where one was built, from model.pt via metrics.json) and, for runs whose
`alignment.json` the table is given (tables with the spectral reference; the file sits beside the
run's metrics.json), how well the run's hard partition serves the evaluated split's exact G:
`capture` (within-cluster association over the top-K eigenvalue sum), `onehot_cos` (principal
cosines of the cluster indicators against the top-K eigenvectors) and `perplexity` (clusters in
effective use). For psi also, as a diagnostic only, the principal cosine of its logits' span
(`logit_cos`) and of random linear functions of its input (`logit_cos_random`, the floor)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

import pandas as pd

from . import paths
from .errors import InputError
from .formats import read_json, write_text
from .spec import Method

SCORES = ["acc", "miou", "miou_hungarian"]
ALIGNMENT = ["capture", "onehot_cos", "perplexity", "logit_cos", "logit_cos_random"]
COSTS = ["graph_s", "graph_mb", "train_s", "train_mb"]
RUN_COLUMNS = [
    "dataset",
    "protocol",
    "train_dataset",
    "backbone",
    "method",
    "K",
    "alpha",
    "beta",
    "graph",
    "settings",
    "seed",
    "split",
    "crf",
    *SCORES,
    *ALIGNMENT,
    *COSTS,
    "run",
]
# `settings`: every other setting a run has off the defaults (`epochs=10 knn_k=64`; "" for default runs)
SETTING = [c for c in RUN_COLUMNS if c not in ("seed", "split", *SCORES, *ALIGNMENT, *COSTS, "run")]
METHOD_NAMES = {str(method): method.traits.label for method in Method}


def extras(metrics_path: Path, m: dict, alignments: AbstractSet[Path]) -> dict:
    """Alignment (when the table was given the alignment.json beside metrics.json) and costs of
    one run."""
    out: dict = {}
    aligned = Path(metrics_path).with_name("alignment.json")
    if aligned.resolve() in alignments:
        aligned = json.loads(aligned.read_text())
        part = aligned.get("partition") or {}
        out.update(
            capture=part.get("capture"),
            onehot_cos=part.get("onehot_cos"),
            perplexity=part.get("perplexity"),
            logit_cos=(aligned.get("logits") or {}).get("principal_cos"),
            logit_cos_random=(aligned.get("random_input") or {}).get("principal_cos"),
        )
    fit = m.get("fit") or {}
    for stage in ("graph", "train"):
        cost = fit.get(stage) or {}
        out.update({f"{stage}_s": cost.get("wall_s"), f"{stage}_mb": cost.get("peak_rss_mb")})
    return out


def rows_from_metrics(path: Path, alignments: AbstractSet[Path] = frozenset()) -> list[dict]:
    m = json.loads(Path(path).read_text())
    base = {**{k: m.get(k) for k in RUN_COLUMNS if k not in ("crf", *SCORES)}, **extras(path, m, alignments)}
    rows = [{**base, "crf": False, **{k: m.get(k) for k in SCORES}}]
    if "crf" in m:
        rows.append({**base, "crf": True, **{k: m["crf"].get(k) for k in SCORES}})
    for row in rows:
        bad = [k for k in SCORES if not isinstance(row[k], (int, float)) or not math.isfinite(row[k])]
        if bad:
            raise InputError(f"{path}: {', '.join(bad)} not a number ({row[bad[0]]!r}); re-evaluate this run")
    return rows


def build_runs(metric_files: list[Path], alignment_files: Sequence[Path] = ()) -> pd.DataFrame:
    alignments = {Path(a).resolve() for a in alignment_files}
    unmatched = alignments - {Path(f).with_name("alignment.json").resolve() for f in metric_files}
    if unmatched:
        raise InputError(f"alignments without metrics beside them: {', '.join(map(str, sorted(unmatched)))}")
    seen: dict[Path, Path] = {}
    for f in metric_files:
        if Path(f).resolve() in seen:
            raise InputError(f"{f}: given twice (as {seen[Path(f).resolve()]}); each evaluation counts once")
        seen[Path(f).resolve()] = Path(f)
    rows = [row for f in metric_files for row in rows_from_metrics(f, alignments)]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    key = ["dataset", "protocol", "run", "crf"]
    twice = df[df.duplicated(key, keep=False)]
    if len(twice):
        raise InputError(
            f"run {twice['run'].iloc[0]} is scored twice on {twice['dataset'].iloc[0]}-{twice['protocol'].iloc[0]} "
            "(copies of one metrics.json?); a run counts once, seeds are other runs"
        )
    df["settings"] = df["settings"].fillna("")  # metrics written before runs carried it
    for col in SCORES:
        df[col] = (100 * df[col].astype(float)).round(2)  # percent, as in the paper
    for col in (*ALIGNMENT, *COSTS):
        df[col] = df[col].astype(float)
    df[ALIGNMENT] = df[ALIGNMENT].round(3)
    return df.sort_values(
        ["backbone", "method", "K", "alpha", "beta", "graph", "settings", "crf", "seed"], kind="stable"
    ).reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof 1: the spread of seeds drawn from many) over seeds
    of every setting; alignment and costs as means."""
    grouped = runs.groupby(SETTING, sort=False, dropna=False)
    out = grouped.agg(
        seeds=("seed", "count"),
        **{f"{c}_{stat}": (c, stat) for c in SCORES for stat in ("mean", "std")},
        **{c: (c, "mean") for c in (*ALIGNMENT, *COSTS)},
    )
    for c in SCORES:
        out[f"{c}_std"] = grouped[c].std(ddof=1).values
    out = out.reset_index().round(2)
    out[ALIGNMENT] = grouped[ALIGNMENT].mean().values.round(3)
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """Methods as rows; backbone and swept parameters as leading columns only where they vary."""
    varying = [
        c
        for c in ("dataset", "protocol", "backbone", "K", "alpha", "beta", "graph", "settings")
        if table[c].nunique() > 1
    ]
    # alignment where measured; costs where a dataset-wide graph was built (the graph tables)
    trailing = [c for c in ALIGNMENT if table[c].notna().any()]
    trailing += COSTS if table["graph_s"].notna().any() or "spectral_inductive" in set(table["method"]) else []
    header = [
        *varying,
        "method",
        "CRF",
        "seeds",
        "Acc",
        "mIoU",
        "mIoU (Hungarian)",
        *(TRAILING_NAMES[c] for c in trailing),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        lead = [(row[c] or "defaults") if c == "settings" else _cell(row[c]) for c in varying]
        cells = [_mean_sd(row[f"{c}_mean"], row[f"{c}_std"]) for c in SCORES]
        lines.append(
            "| "
            + " | ".join(
                [
                    *lead,
                    METHOD_NAMES.get(row["method"], row["method"]),
                    "yes" if row["crf"] else "no",
                    str(row["seeds"]),
                    *cells,
                    *(_cell(row[c], 1 if c == "perplexity" else 3 if c in ALIGNMENT else 0) for c in trailing),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


TRAILING_NAMES = {
    "capture": "capture",
    "onehot_cos": "one-hot cos",
    "perplexity": "perplexity",
    "logit_cos": "logit cos (diagnostic)",
    "logit_cos_random": "logit cos, random floor",
    "graph_s": "graph (s)",
    "graph_mb": "graph peak (MB)",
    "train_s": "fit (s)",
    "train_mb": "fit peak (MB)",
}


def _mean_sd(mean: float, sd: float) -> str:
    """`mean ± sd`; one seed has no spread to show."""
    return f"{mean:.1f}" if pd.isna(sd) else f"{mean:.1f} ± {sd:.1f}"


def _cell(value, digits: int | None = None) -> str:
    if pd.isna(value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else f"{value:g}"
    return str(value)


def per_image_counts(metric_files: list[Path]) -> dict[tuple[str, str, str], Path]:
    """(dataset, protocol, run) -> the per-image counts file beside its metrics.json, if written."""
    out = {}
    for path in metric_files:
        counts = Path(path).with_name(paths.name(paths.PER_IMAGE))
        if counts.is_file():
            m = json.loads(Path(path).read_text())
            out[(m.get("dataset"), m.get("protocol"), m.get("run"))] = counts
    return out


def margins_markdown(verdict: pd.DataFrame) -> str:
    """The margins under the table, when it has any."""
    if verdict.empty:
        return ""
    lines = [
        "",
        "Margins in mIoU points (seeds averaged; 95 % bootstrap interval over images, paired, and seeds; "
        "win / loss only when the interval excludes 0):",
        "",
        "| backbone | K | score | comparison | margin | 95 % interval | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in verdict.iterrows():
        lines.append(
            f"| {r['backbone']} | {r['K']} | {r['score']} | {r['comparison']} ({r['a']} vs {r['b']}) | "
            f"{r['margin']:+.1f} | [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def table_outputs(csv_path: Path) -> tuple[Path, Path, Path, Path]:
    """The files of a table: `{name}.csv`, `{name}_runs.csv`, `{name}.md` and
    `{name}_margins.csv` (its path must end in .csv, or the Markdown twin would take the table's
    own name)."""
    if csv_path.suffix != ".csv":
        raise InputError(f"--out {csv_path}: a table's path ends in .csv ({csv_path.stem}.md is written beside it)")
    return (
        csv_path,
        csv_path.with_name(csv_path.stem + "_runs.csv"),
        csv_path.with_suffix(".md"),
        csv_path.with_name(csv_path.stem + "_margins.csv"),
    )


def table_inputs(
    metrics: Sequence[str], alignments: Sequence[str], listed: str | None = None
) -> tuple[list[Path], list[Path]]:
    """The metrics and alignment files of a table: as given, plus those a JSON file lists
    (`{"metrics": [...], "alignments": [...]}`, what the workflow passes), each checked readable."""
    metrics, alignments = list(metrics), list(alignments)
    if listed:
        data = read_json(listed, "a list of the table's inputs")
        shape = isinstance(data, dict) and set(data) <= {"metrics", "alignments"}
        if not shape or not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in data.values()):
            raise InputError(f'{listed}: expected {{"metrics": [paths], "alignments": [paths]}}, got {str(data)[:80]}')
        metrics += data.get("metrics", [])
        alignments += data.get("alignments", [])
    if not metrics:
        raise InputError("nes table: no metrics.json given (as arguments or in --inputs)")
    for path in [*metrics, *alignments]:
        read_json(path, "a metrics.json or alignment.json of an evaluated run")
    return [Path(p) for p in metrics], [Path(p) for p in alignments]


def write_table(metric_files: list[Path], csv_path: Path, alignment_files: Sequence[Path] = ()) -> pd.DataFrame:
    """Write the table's files (each atomically) and return the aggregated table. The margins
    (verdicts.py) use the per-image counts beside each metrics.json, where there are any."""
    from .verdicts import margins

    csv_path, runs_path, markdown_path, margins_path = table_outputs(Path(csv_path))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    runs = build_runs(metric_files, alignment_files)
    table = aggregate(runs)
    verdict = margins(runs, per_image_counts(metric_files))
    write_text(runs_path, runs.to_csv(index=False))
    write_text(margins_path, verdict.to_csv(index=False))
    write_text(markdown_path, to_markdown(table) + margins_markdown(verdict))
    write_text(csv_path, table.to_csv(index=False))  # last: the file the workflow tracks
    return table
