"""Where every file of a results folder lives, each spelled once.

A pattern is a path template over named wildcards. The planner fills every wildcard (`fill`) to
name the files a run needs; the rules take the same pattern with only `{results}` filled
(`partial`) as their outputs and inputs, so a file the planner asks for is always one that
some rule makes. `WILDCARDS` holds what each wildcard may match (the Snakefile's constraints).

`{reference}` names an exact eigenvector reference by its settings: `K128-a0.3`, followed by any
setting the reference depends on that is off the dataset's defaults (`K128-a0.3-knn_k64`).
"""

from __future__ import annotations

import re
from typing import Any

# feature caches (stage 1): a manifest `{split}.json` beside its chunked store `{split}.zarr`,
# whose shards each hold their own manifest once complete
FEATURES = "{results}/{dataset}/features/{backbone}/{view}/{split}.json"
FEATURE_STORE = "{results}/{dataset}/features/{backbone}/{view}/{split}.zarr"
FEATURE_SHARD = FEATURE_STORE + "/shard-{shard}-of-{shards}/extracted.json"

# kernels and exact references over a whole cached split
GRAPH = "{results}/{dataset}/graphs/{backbone}/{view}/{split}.json"
EIGEN = "{results}/{dataset}/graphs/{backbone}/{view}/{split}-eigen-{reference}.npz"
NYSTROM = "{results}/{dataset}/graphs/{backbone}/{view}/{split}-nystrom-{source}-{reference}.npz"

# runs (filed under the dataset they were fit on) and their evaluations `{dataset}-{protocol}`
RUN = "{results}/{dataset}/runs/{run}"
MODEL = RUN + "/model.pt"
TRAIN_LOG = RUN + "/train_log.csv"
CURVES = RUN + "/loss.png"
EVALUATION = RUN + "/{evaluation}"
METRICS = EVALUATION + "/metrics.json"
PER_IMAGE = EVALUATION + "/per_image.npz"  # per-image counts for intervals over images (intervals.py)
ALIGNMENT = EVALUATION + "/alignment.json"
# what `nes evaluate --out-dir` writes beside the metrics (pipeline.report names them by these)
OVERLAYS = EVALUATION + "/overlays"
EVALUATION_REPORT = EVALUATION + "/report.md"
PER_CLASS_FIGURE = EVALUATION + "/per_class_iou.png"
CONFUSION_FIGURE = EVALUATION + "/confusion.png"
SAMPLES_FIGURE = EVALUATION + "/samples.png"
SEGMENTATION = RUN + "/segment"

# tables, written under the folder of the dataset they evaluate
TABLE = "{results}/{folder}/{table}.csv"
TABLE_RUNS = "{results}/{folder}/{table}_runs.csv"
TABLE_MARKDOWN = "{results}/{folder}/{table}.md"
TABLE_MARGINS = "{results}/{folder}/{table}_margins.csv"  # the verdict's margins with intervals (verdicts.py)

# the data index of a dataset's files (pipeline.dataindex), logs and Snakemake benchmarks
DATA_INDEX = "{results}/{dataset}/data"
LOG = "{results}/{dataset}/logs/{name}.log"
BENCHMARK = "{results}/{dataset}/benchmarks/{name}.tsv"

NAME = r"[A-Za-z0-9_]+"
WILDCARDS: dict[str, str] = {
    "dataset": NAME,
    "backbone": NAME,
    "view": NAME,
    "split": NAME,
    "source": NAME,
    "run": r"[A-Za-z0-9_.+-]+",
    "evaluation": rf"{NAME}-{NAME}",
    "reference": r"K\d+-a[A-Za-z0-9_.+-]+",
    "shard": r"\d+",
    "shards": r"\d+",
}


def fill(pattern: str, **values: Any) -> str:
    """The path of one file: every wildcard of `pattern` given."""
    return pattern.format(**values)


def name(pattern: str) -> str:
    """The last part of a pattern: a file's name inside the folder it belongs to."""
    return pattern.rsplit("/", 1)[-1]


def partial(pattern: str, **values: Any) -> str:
    """`pattern` with only the given wildcards filled: a rule's input, output or log takes it with
    `results` given and the rest left open."""
    for name, value in values.items():
        pattern = pattern.replace(f"{{{name}}}", str(value))
    return pattern


def reference_name(K: int, alpha: str, suffix: str = "") -> str:
    """The `{reference}` wildcard: the eigenvectors' K and alpha, then settings off the defaults."""
    return f"K{K}-a{alpha}{suffix}"


def parse(pattern: str, path: str) -> dict[str, str]:
    """The wildcards of a path `pattern` made (the inverse of `fill`); the error names both."""
    parts = re.split(r"\{(\w+)\}", pattern)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{WILDCARDS.get(part, '.+')})" for i, part in enumerate(parts)
    )
    found = re.fullmatch(regex, str(path))
    if found is None:
        raise ValueError(f"{path}: not a path of the form {pattern}")
    return found.groupdict()
