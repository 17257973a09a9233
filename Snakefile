# neural-eigenseg: features -> kernel -> neural eigenfunctions -> evaluation -> tables.
# Rules are wiring only; the work is in the `pipeline` package (installed with `pip install -e .`),
# called through its `nes` entry point. Helpers shared by the rules: workflow/rules/common.smk.
from snakemake.utils import min_version, validate

from pipeline.configcheck import check_config, check_config_files

min_version("9.0")


configfile: "config/config.yaml"


check_config_files(workflow.configfiles)  # read as `nes check-config` reads them
check_config(config)  # errors name the full key path
validate(config, "workflow/schemas/config.schema.yaml")  # fills the schema's defaults


envvars:
    "PATH",


include: "workflow/rules/common.smk"


onstart:
    hold_results_lock()


wildcard_constraints:
    **paths.WILDCARDS,
    folder="|".join(sorted({f for f, _ in TABLES})) or "none",
    table="|".join(sorted({t for _, t in TABLES})) or "none",


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/graph.smk"


# the tables of `default_tables` (the CamVid demo)
rule all:
    default_target: True
    input:
        [
            path(pattern, folder=f, table=t)
            for f, t in TABLES
            if f in config.get("default_tables", [])
            for pattern in (paths.TABLE, paths.TABLE_MARGINS)
        ],


rule all_tables:
    """Every table of the config (the paper's need their datasets and, realistically, a GPU)."""
    input:
        [
            path(pattern, folder=f, table=t)
            for f, t in TABLES
            for pattern in (paths.TABLE, paths.TABLE_MARGINS)
        ],


rule reproduction:
    """Every table behind docs/reproduction.md (config `reproduction:`), with its margins."""
    input:
        [
            path(pattern, folder=f, table=t)
            for f, t in REPRODUCTION
            for pattern in (paths.TABLE, paths.TABLE_MARGINS)
        ],


rule all_segmentations:
    """Every entry of `segmentations` (segment a dataset split with trained runs)."""
    input:
        [
            out
            for name in config.get("segmentations") or {}
            for out in segmentation_outputs(config, name)
        ],
