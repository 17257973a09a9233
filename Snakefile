# neural-eigenseg: features -> kernel -> neural eigenfunctions -> evaluation -> tables.
# Rules are wiring only; the work is in the `pipeline` package (installed with `pip install -e .`).
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config/config.yaml"

from pipeline.configcheck import check_config

check_config(config)  # errors name the full key path
validate(config, "workflow/schemas/config.schema.yaml")  # fills the schema's defaults

from pipeline.plan import (alignment_spec, all_eigen, all_nystrom, all_runs, all_tables, as_param, evaluation_spec, extraction_spec,
                           run_dir, segmentation_config, segmentation_outputs, shard_count, source_spec,
                           table_alignments, table_metrics)

RESULTS = config["results"]
# the package runs under the interpreter that runs Snakemake: no activated venv needed
NES = f"{sys.executable} -m pipeline"
RUNS = all_runs(config)
TABLES = all_tables(config)
EIGEN = all_eigen(config)
NYSTROM = all_nystrom(config)


wildcard_constraints:
    dataset="[^/]+",
    backbone="[^/]+",
    view="[^/]+",
    split="[^/.]+",
    run="[^/]+",
    evaluation="[^/]+-[^/-]+",
    folder="|".join(sorted({f for f, _ in TABLES})) or "none",
    table="|".join(sorted({t for _, t in TABLES})) or "none",


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/graph.smk"


rule all:
    """The tables of `default_tables` (the CamVid demo)."""
    input:
        [f"{RESULTS}/{f}/{t}.csv" for f, t in TABLES if f in config.get("default_tables", [])],
    default_target: True


rule all_tables:
    """Every table of the config (the paper's need their datasets and, realistically, a GPU)."""
    input:
        [f"{RESULTS}/{f}/{t}.csv" for f, t in TABLES],


rule all_segmentations:
    """Every entry of `segmentations` (segment a dataset split with trained runs)."""
    input:
        [out for name in config.get("segmentations") or {} for out in segmentation_outputs(config, name)],
