"""metrics.json files -> a table CSV (one row per run and CRF setting) and its Markdown twin
(mean +- std over seeds, methods as rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["dataset", "backbone", "method", "K", "seed", "split", "crf", "acc", "miou", "miou_hungarian", "run"]


def rows_from_metrics(path: Path) -> list[dict]:
    m = json.loads(Path(path).read_text())
    base = {k: m[k] for k in ("dataset", "backbone", "method", "K", "seed", "split", "run")}
    rows = [{**base, "crf": False, "acc": m["acc"], "miou": m["miou"], "miou_hungarian": m["miou_hungarian"]}]
    if "crf" in m:
        c = m["crf"]
        rows.append({**base, "crf": True, "acc": c["acc"], "miou": c["miou"], "miou_hungarian": c["miou_hungarian"]})
    return rows


def build_table(metric_files: list[Path]) -> pd.DataFrame:
    rows = [row for f in metric_files for row in rows_from_metrics(f)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("acc", "miou", "miou_hungarian"):
        df[col] = (100 * df[col]).round(2)  # percent, as in the paper
    return df.sort_values(["method", "K", "crf", "seed"], kind="stable").reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    group = ["method", "backbone", "K", "crf"]
    lines = ["| method | backbone | K | CRF | seeds | Acc | mIoU | mIoU (Hungarian) |", "|---|---|---|---|---|---|---|---|"]
    for key, g in df.groupby(group, sort=False):
        cells = [f"{g[c].mean():.1f} ± {g[c].std(ddof=0):.1f}" for c in ("acc", "miou", "miou_hungarian")]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {'yes' if key[3] else 'no'} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(metric_files: list[Path], csv_path: Path) -> pd.DataFrame:
    df = build_table(metric_files)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    csv_path.with_suffix(".md").write_text(to_markdown(df))
    return df
