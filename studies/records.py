"""How studies record their results: rows appended to a CSV, its header written once."""

from __future__ import annotations

import csv
from pathlib import Path


def append_rows(path: str | Path, fields: list[str], rows: list[dict]) -> None:
    """Append result rows to a CSV, with its header when the file is new."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)
