"""metrics.json files -> a table: `{table}.csv` with the mean and standard deviation over seeds per
setting (the paper's rows), `{table}_runs.csv` with one row per run and CRF setting, and a Markdown
twin `{table}.md` in the paper's layout (methods as rows, Acc and mIoU as mean ± std)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

RUN_COLUMNS = ["dataset", "protocol", "train_dataset", "backbone", "method", "K", "alpha", "beta", "seed", "split",
               "crf", "acc", "miou", "miou_hungarian", "run"]
SETTING = ["dataset", "protocol", "train_dataset", "backbone", "method", "K", "alpha", "beta", "crf"]
SCORES = ["acc", "miou", "miou_hungarian"]
METHOD_NAMES = {"kmeans": "K-means", "nes": "Ours", "nes_star": "Ours*"}


def rows_from_metrics(path: Path) -> list[dict]:
    m = json.loads(Path(path).read_text())
    base = {k: m.get(k) for k in RUN_COLUMNS if k not in ("crf", *SCORES)}
    rows = [{**base, "crf": False, **{k: m[k] for k in SCORES}}]
    if "crf" in m:
        rows.append({**base, "crf": True, **{k: m["crf"][k] for k in SCORES}})
    return rows


def build_runs(metric_files: list[Path]) -> pd.DataFrame:
    rows = [row for f in metric_files for row in rows_from_metrics(f)]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for col in SCORES:
        df[col] = (100 * df[col].astype(float)).round(2)  # percent, as in the paper
    return df.sort_values(["backbone", "method", "K", "alpha", "beta", "crf", "seed"], kind="stable").reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and (population) standard deviation over seeds of every setting."""
    grouped = runs.groupby(SETTING, sort=False, dropna=False)
    out = grouped.agg(seeds=("seed", "count"), **{f"{c}_{stat}": (c, stat) for c in SCORES for stat in ("mean", "std")})
    for c in SCORES:
        out[f"{c}_std"] = grouped[c].std(ddof=0).values
    return out.reset_index().round(2)


def to_markdown(table: pd.DataFrame) -> str:
    """Methods as rows; backbone and swept parameters as leading columns only where they vary."""
    varying = [c for c in ("dataset", "protocol", "backbone", "K", "alpha", "beta") if table[c].nunique() > 1]
    header = [*varying, "method", "CRF", "seeds", "Acc", "mIoU", "mIoU (Hungarian)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        lead = ["–" if pd.isna(row[c]) else f"{row[c]:g}" if isinstance(row[c], float) else str(row[c]) for c in varying]
        cells = [f"{row[f'{c}_mean']:.1f} ± {row[f'{c}_std']:.1f}" for c in SCORES]
        lines.append("| " + " | ".join([*lead, METHOD_NAMES.get(row["method"], row["method"]),
                                        "yes" if row["crf"] else "no", str(row["seeds"]), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_table(metric_files: list[Path], csv_path: Path) -> pd.DataFrame:
    """Write the three files (each atomically) and return the aggregated table."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    runs = build_runs(metric_files)
    table = aggregate(runs)
    for frame, path in ((runs, csv_path.with_name(csv_path.stem + "_runs.csv")), (table, csv_path)):
        tmp = path.with_name(path.name + ".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)
    md = csv_path.with_suffix(".md")
    md.with_name(md.name + ".tmp").write_text(to_markdown(table))
    md.with_name(md.name + ".tmp").replace(md)
    return table
