# neural-eigenseg: features -> kernel -> neural eigenfunctions -> evaluation -> tables.
# Rules are wiring only; the work is in the `pipeline` package (installed with `pip install -e .`).
import sys

from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "config/config.yaml"
validate(config, "workflow/schemas/config.schema.yaml")

from pipeline.plan import all_runs, as_param, extraction_spec, features_path, table_runs

RESULTS = config["results"]
# the package runs under the interpreter that runs Snakemake: no activated venv needed
NES = f"{sys.executable} -m pipeline"
RUNS = all_runs(config)


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


rule all:
    input:
        [f"{RESULTS}/{t['dataset']}/{name}.csv" for name, t in config["tables"].items()],
    default_target: True
