#!/usr/bin/env bash
# Runs once after Snakemake creates the environment, in the workflow's directory (the repository).
set -euo pipefail
python -m pip install -c constraints.txt -e ".[crf,slurm]"
