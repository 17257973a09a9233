"""Every paper table as a Snakemake target, on fixture datasets in their real layouts with tiny
random-weight ViTs saved to local files: the dry run of Table 1 lists the expected jobs, each
table runs end to end (about 4 minutes: every table with its first backbone and two values per
sweep), and changing a backbone re-extracts only that backbone's features."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fixtures import TINY_VIT_ARGS, write_ade20k, write_cityscapes, write_image_folder, write_pascal, write_tiny_vit
from pipeline.intervals import load_counts

pytestmark = pytest.mark.workflow  # runs Snakemake: left out of make test-fast

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# tables of the real datasets beside the project (tests/test_workflow.py runs CamVid's; MSRC-21's
# plans are checked in tests/test_plan_tables.py): not the paper's, not on fixtures
REAL_DATA = ("camvid", "msrc")


def snakemake(*args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def job_counts(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M)}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {
        "pascal": write_pascal(base / "pascal"),
        "cityscapes": write_cityscapes(base / "cityscapes"),
        "ade20k": write_ade20k(base / "ade20k"),
        "imagenet": write_image_folder(base / "imagenet"),
    }


def with_roots(config: dict, roots: dict, results: Path) -> dict:
    cfg = copy.deepcopy(config)
    cfg["results"] = str(results)
    for name, root in roots.items():
        cfg["datasets"][name]["data_root"] = str(root)
    return cfg


def test_dry_run_of_table1_lists_three_backbones_by_three_methods_by_seeds(roots, tmp_path):
    cfg = with_roots(CONFIG, roots, tmp_path / "results")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake(
        "-n",
        str(tmp_path / "results" / "pascal" / "table1.csv"),
        "--cores",
        "2",
        "--configfile",
        str(tmp_path / "c.yaml"),
    )
    seeds = len(CONFIG["table_defaults"]["seeds"])
    backbones = 3
    assert job_counts(out) == {
        "extract_features": backbones * 2,
        "gather_features": backbones * 2,  # train view of train, protocol A of val
        "train": backbones * seeds,
        "fit_kmeans": 2 * backbones * seeds,  # kmeans and Ours* (K-means on psi)
        "evaluate": 3 * backbones * seeds,
        "table": 1,
        "total": 4 * backbones + 6 * backbones * seeds + 1,
    }
    for backbone in ("vit_s16", "vit_b16", "vit_l16"):
        assert f"pascal/features/{backbone}/A/val.json" in out and f"pascal/features/{backbone}/train/train.json" in out
        for method in ("kmeans", "nes", "nes_star"):
            assert re.search(rf"runs/{method}-{backbone}-K256-.*s2/pascal-A/metrics.json", out)


def tiny_config(roots: dict, results: Path, weights: Path) -> dict:
    """The real config's tables and protocols, shrunk: tiny views, tiny ViTs, one seed, one epoch."""
    cfg = with_roots(CONFIG, roots, results)
    small = {
        "pascal": (
            {"mode": "centre_crop", "short_side": 72, "crop": 64},
            {"A": {"short_side": 48, "crop": 48}, "B": {"short_side": 72, "crop": 64, "stride": 32}},
        ),
        "cityscapes": (
            {"mode": "centre_crop", "short_side": 64, "crop": 64},
            {"A": {"short_side": 48, "crop": 48}, "B": {"short_side": 64, "crop": 64, "stride": 32}},
        ),
        "ade20k": (
            {"mode": "centre_crop", "short_side": 64, "crop": 64},
            {"B": {"short_side": 64, "crop": 64, "stride": 64}},
        ),
        "imagenet": ({"mode": "centre_crop", "short_side": 72, "crop": 64}, {}),
    }
    for name, (train_view, protocols) in small.items():
        ds = cfg["datasets"][name]
        ds["train_view"] = train_view
        for proto, geometry in protocols.items():
            ds["protocols"][proto].update(geometry)
        ds["extract"] = {"views": 2, "shards": 2 if name == "pascal" else 1}
        ds["train"] = {"K": 6, "epochs": 1, "batch_size": 2}
    cfg["train"].update(K=6, epochs=1, batch_size=2, knn_k=16, heads=2, dim_head=8)
    for name, bb in cfg["backbones"].items():
        if bb["kind"] == "vit":
            bb.update(weights=str(write_tiny_vit(weights / f"{name}.pth", bb["model"])), model_args=TINY_VIT_ARGS)
    cfg["kmeans"] = {"niter": 5, "max_points": 2000}
    cfg["evaluate"] = {"overlays": 1, "batch_size": 4}
    cfg["table_defaults"]["seeds"] = [0]
    # every table, each with its first backbone and its sweeps cut to their first value (the full
    # grids are what the dry run checks; sweeps of several values: tests/test_workflow.py): 96 jobs
    for _folder, tables in cfg["tables"].items():
        for table in tables.values():
            table["backbones"] = table["backbones"][:1]
            table["sweep"] = {k: v[:1] for k, v in (table.get("sweep") or {}).items()}
    cfg["tables"]["pascal"]["table5"]["sweep"] = {"K": [4]}  # 512 centres need more tokens than the fixture has
    return cfg


def run_tables(
    roots: dict, base: Path, tables: list[tuple[str, str]] | None = None, overrides: dict | None = None
) -> dict:
    """Build `tables` (default: all) of the shrunk config; jobs use one thread so two run at once."""
    cfg = tiny_config(roots, base / "results", base / "weights")
    tables = tables or [(f, t) for f, ts in cfg["tables"].items() if f not in REAL_DATA for t in ts]
    for (folder, table), value in (overrides or {}).items():
        cfg["tables"][folder][table].update(value)
    (base / "config.yaml").write_text(yaml.safe_dump(cfg))
    threads = [f"{rule}=1" for rule in ("extract_features", "train", "fit_kmeans", "evaluate")]
    # targets before --configfile (which takes several values); the config file is merged into
    # config/config.yaml, so tables are chosen by target, not by leaving them out
    targets = [str(base / "results" / f / f"{t}.csv") for f, t in tables]
    snakemake(*targets, "--cores", "2", "--set-threads", *threads, "--configfile", str(base / "config.yaml"))
    return {"base": base, "results": base / "results", "config": cfg, "tables": tables}


@pytest.fixture(scope="module")
def paper_run(roots, tmp_path_factory):
    return run_tables(roots, tmp_path_factory.mktemp("paper"))


def check_table(run: dict, folder: str, table: str) -> None:
    cfg = run["config"]
    tcfg = {**cfg["table_defaults"], **cfg["tables"][folder][table]}
    agg = pd.read_csv(run["results"] / folder / f"{table}.csv")
    runs = pd.read_csv(run["results"] / folder / f"{table}_runs.csv")
    assert (runs["dataset"] == folder).all() and (runs["protocol"] == tcfg["protocol"]).all()
    assert (runs["train_dataset"] == tcfg.get("dataset", folder)).all()
    assert set(runs["method"]) == set(tcfg["methods"]) and set(runs["backbone"]) == set(tcfg["backbones"])
    assert set(runs["crf"]) == {True, False}  # every protocol of the config scores with and without CRF
    sweep = tcfg.get("sweep") or {}
    for key, values in sweep.items():
        assert set(runs.loc[runs["method"] != "kmeans", key].round(6)) == {round(float(v), 6) for v in values}
    grid = 1
    for values in sweep.values():
        grid *= len(values)
    per_backbone = sum(len(sweep.get("K", [0])) if m == "kmeans" else grid for m in tcfg["methods"])
    assert len(agg) == len(tcfg["backbones"]) * 2 * per_backbone, agg
    assert agg[["acc_mean", "miou_mean"]].notna().all().all() and (agg["acc_mean"] > 0).all()
    assert (agg["seeds"] == 1).all()
    md = (run["results"] / folder / f"{table}.md").read_text()
    rows = md.split("\nMargins")[0]  # the table, then its margins where it has any
    assert rows.count("\n") == len(agg) + 2 and "±" not in rows  # one seed: no spread to show
    margins = pd.read_csv(run["results"] / folder / f"{table}_margins.csv")
    if "kmeans" in tcfg["methods"] and "nes" in tcfg["methods"]:
        assert "Ours - best K-means" in set(margins["comparison"]) and "Margins" in md


@pytest.mark.parametrize(
    "folder, table", [(f, t) for f, ts in CONFIG["tables"].items() if f not in REAL_DATA for t in ts]
)
def test_every_paper_table_runs_end_to_end(paper_run, folder, table):
    check_table(paper_run, folder, table)


def test_dry_run_of_every_table_resolves(roots, tmp_path):
    """All tables of the real config build one DAG on the fixture roots (no missing rule, no
    conflicting run), with one evaluation per run and table protocol."""
    cfg = with_roots(CONFIG, roots, tmp_path / "results")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    jobs = job_counts(snakemake("-n", "all_tables", "--cores", "2", "--configfile", str(tmp_path / "c.yaml")))
    from pipeline.plan import all_runs, all_tables, table_evaluation, table_runs

    runs = all_runs(cfg)
    evaluations = {
        (s.dataset, s.run, table_evaluation(cfg, f, t)) for f, t in all_tables(cfg) for s in table_runs(cfg, f, t)
    }
    assert jobs["train"] == sum(s.method.traits.learns_psi for s in runs.values())
    assert jobs["fit_kmeans"] == sum(not s.method.traits.learns_psi for s in runs.values())
    assert jobs["evaluate"] == len(evaluations) and jobs["table"] == len(all_tables(cfg))


def test_class_counts_follow_the_protocol(paper_run):
    """Protocol A scores Pascal Context's 59 classes, B its 60; Cityscapes 27; ADE20K 150."""
    res = paper_run["results"]
    for path, classes in (
        (res / "pascal/runs/nes-vit_s16-K6-a0.3-b3.41333-s0/pascal-A/metrics.json", 59),
        (res / "pascal/runs/nes-vit_s16-K6-a0.3-b3.41333-s0/pascal-B/metrics.json", 60),
        (res / "imagenet/runs/nes-vit_s16-K6-a0.3-b3.41333-s0/cityscapes-A/metrics.json", 27),
        (res / "ade20k/runs/nes-vit_s16-K6-a0.3-b0.04-s0/ade20k-B/metrics.json", 150),
    ):
        m = json.loads(path.read_text())
        assert len(m["per_class_iou"]) == classes and len(m["mapping"]) == 6 and "crf" in m
        # the per-image counts reproduce the scores with and without the CRF (its intervals)
        counts = load_counts(path.with_name("per_image.npz"))
        for mapping, scores in (("majority", m), ("hungarian_crf", m["crf"])):
            key = "miou" if mapping.startswith("majority") else "miou_hungarian"
            assert counts.scores(mapping)[1][0] == pytest.approx(scores[key])


def test_changing_a_backbone_reextracts_only_its_features(paper_run):
    cfg = copy.deepcopy(paper_run["config"])
    cfg["backbones"]["clip_b16"]["model_args"] = {**TINY_VIT_ARGS, "depth": 3}
    path = paper_run["base"] / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    targets = [str(paper_run["results"] / f / f"{t}.csv") for f, t in paper_run["tables"]]
    out = snakemake("-n", *targets, "--cores", "2", "--configfile", str(path))
    jobs = job_counts(out)
    # clip_b16 is in Pascal Table 9 only: its training view and protocol A, two shards each
    assert jobs["extract_features"] == 2 + 2 and jobs["train"] == 1 and jobs["fit_kmeans"] == 2, jobs
    assert jobs["evaluate"] == 3 and jobs["table"] == 1, jobs
    assert all("/clip_b16/" in p for p in re.findall(r"output: (\S+features\S+)", out))
