"""The workflow as the Snakemake catalog lays it out: lint-clean, snakefmt-formatted, and a SLURM
profile that sends GPU jobs to the GPU partition with as many CPUs as they run threads."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow  # runs Snakemake: left out of make test-fast

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, env=env)


def test_snakemake_lint_is_clean():
    result = run(sys.executable, "-m", "snakemake", "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr, result.stdout[
        -3000:
    ]


def test_snakefmt_leaves_every_workflow_file_unchanged():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "rules").glob("*.smk"))]
    result = run(str(BIN / "snakefmt"), "--check", *files)
    assert result.returncode == 0, result.stderr[-3000:]


def test_slurm_profile_puts_gpu_jobs_on_the_gpu_partition_with_cpus_equal_to_threads(tmp_path):
    result = run(
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--profile",
        "profiles/slurm",
        f"{tmp_path}/camvid/table1.csv",
        "--config",
        f"results={tmp_path}",
        "--cores",
        "32",
    )  # a dry run caps threads at the local cores
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n\s*\n", result.stdout):
        rule = re.search(r"^(?:local)?rule (\w+):", block, flags=re.M)
        resources = re.search(r"resources: (.*)", block)
        if rule and resources:
            threads = re.search(r"threads: (\d+)", block)
            jobs.append((rule.group(1), int(threads.group(1)) if threads else 1, resources.group(1)))
    rules = {rule for rule, _, _ in jobs}
    assert {"extract_features", "train", "fit_kmeans", "evaluate"} <= rules
    for rule, threads, resources in jobs:
        if rule in ("gather_features", "table"):
            continue  # local rules
        gpu = "gpu=1" in resources
        assert f"slurm_partition={'gpu' if gpu else 'cpu'}" in resources, (rule, resources)
        assert "cpus_per_task" not in resources, (rule, resources)  # the plugin gives each job its threads
        assert re.search(r"runtime=\d+", resources), (rule, resources)
        if rule in ("train", "extract_features"):
            assert gpu and threads == 8, (rule, threads, resources)


def test_results_path_with_a_space_and_a_command_substitution_is_used_literally(tmp_path, camvid_root):
    """Every placeholder of every shell command is quoted: a results folder named
    `my results$(touch PWNED)` receives the features and logs, and no command runs."""
    import yaml
    from test_workflow import tiny_config

    results = tmp_path / "my results$(touch PWNED)"
    cfg = tiny_config(results, camvid_root)
    cfg["datasets"]["camvid"]["max_images"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    target = results / "camvid" / "features" / "lite0" / "native" / "val.json"
    result = run(sys.executable, "-m", "snakemake", str(target), "--cores", "2", "--configfile", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert target.is_file() and (results / "camvid" / "logs" / "extract_lite0_native_val_0-of-1.log").is_file()
    assert not (REPO / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    assert not list(REPO.glob("my results*")) and not list(tmp_path.glob("*/PWNED"))


def test_every_file_a_sweep_plans_is_made_by_some_rule(tmp_path, camvid_root):
    """Every method with a sweep over every sweepable training key (one table each) plans a DAG
    whose every file is some rule's output: the planner and the rules spell paths once."""
    import yaml
    from test_plan_tables import OTHER_VALUES

    from pipeline.plan import all_eigen, all_nystrom, all_tables, table_alignments, table_metrics
    from pipeline.spec import Method

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    methods = [m.value for m in Method]
    config["results"] = str(tmp_path / "results")
    config["datasets"]["camvid"]["data_root"] = str(camvid_root)
    config["tables"] = {
        "camvid": {
            f"sweep_{key}": {"backbones": ["lite0"], "seeds": [0], "methods": methods, "sweep": {key: [value]}}
            for key, value in OTHER_VALUES.items()
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    tables = [f"{config['results']}/camvid/{table}.csv" for table in config["tables"]["camvid"]]
    result = run(
        sys.executable, "-m", "snakemake", "-n", *tables, "--cores", "2", "--configfile", str(tmp_path / "c.yaml")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    planned = {*all_eigen(config), *all_nystrom(config)}
    for folder, table in all_tables(config):
        planned |= {*table_metrics(config, folder, table), *table_alignments(config, folder, table)}
    made = set(re.findall(r"^\s*output: (.*)$", result.stdout, flags=re.M))
    made = {path for line in made for path in line.split(", ")}
    assert planned - made == set()
    assert any("-knn_k64.npz" in path for path in planned)  # the case that once had no rule


def test_the_reproduction_target_plans_every_claim_table_with_its_margins(tmp_path):
    """`snakemake reproduction` (docs/reproduction.md) builds one DAG over the claim tables of
    `reproduction:`, each with its margins file, on the real datasets beside the project."""
    import yaml

    from pipeline.plan import reproduction_tables

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    claims = reproduction_tables(config)
    assert len(claims) >= 8
    results = tmp_path / "results"
    result = run(
        sys.executable, "-m", "snakemake", "-n", "reproduction", "--cores", "2", "--config", f"results={results}"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    made = set(re.findall(r"^\s*output: (.*)$", result.stdout, flags=re.M))
    made = {path for line in made for path in line.split(", ")}
    for folder, table in claims:
        assert {f"{results}/{folder}/{table}.csv", f"{results}/{folder}/{table}_margins.csv"} <= made, (folder, table)
