"""End to end: the Snakemake workflow on a few CamVid images produces the table; reruns are
minimal; the CLI evaluates and segments from the run directories it left."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def tiny_config(results: Path, camvid_root: Path, **train) -> dict:
    return {
        "results": str(results),
        "datasets": {"camvid": {"adapter": "camvid", "data_root": str(camvid_root), "train_split": "train",
                                "eval_split": "val", "train_view": {"mode": "resize", "size": [360, 480]},
                                "protocols": {"native": {"mode": "resize", "size": [360, 480]}}, "max_images": 6}},
        "train": {"K": 8, "epochs": 1, "batch_size": 3, "knn_k": 16, "heads": 2, "dim_head": 16, **train},
        "kmeans": {"niter": 5, "max_points": 1000},
        "evaluate": {"overlays": 1},
        "tables": {"camvid": {"table1": {"backbones": ["lite0"], "methods": ["kmeans", "nes", "nes_star"], "seeds": [0]}}},
    }


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, camvid_root):
    base = tmp_path_factory.mktemp("wf")
    results = base / "results"
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(results, camvid_root)))
    snakemake(str(results / "camvid" / "table1.csv"), "--cores", "2", "--configfile", str(cfg))
    return {"base": base, "results": results, "config": cfg, "camvid_root": camvid_root}


def test_table_has_every_method_with_sane_scores(workflow):
    runs = pd.read_csv(workflow["results"] / "camvid" / "table1_runs.csv")
    assert list(runs.columns[:9]) == ["dataset", "protocol", "train_dataset", "backbone", "method", "K", "alpha", "beta", "seed"]
    assert sorted(runs["method"]) == ["kmeans", "nes", "nes_star"]
    assert (runs["split"] == "val").all() and (runs["K"] == 8).all() and (runs["protocol"] == "native").all()
    for col in ("acc", "miou", "miou_hungarian"):
        assert runs[col].between(1, 100).all(), runs
    assert (runs["miou"] >= runs["miou_hungarian"] - 1e-9).all()  # majority voting can only do better with K > C
    table = pd.read_csv(workflow["results"] / "camvid" / "table1.csv")
    assert sorted(table["method"]) == ["kmeans", "nes", "nes_star"] and (table["seeds"] == 1).all()
    assert (table["miou_std"] == 0).all() and sorted(table["miou_mean"]) == sorted(runs["miou"])
    md = (workflow["results"] / "camvid" / "table1.md").read_text()
    assert "| Ours |" in md and "| Ours* |" in md and "| K-means |" in md and "±" in md


def test_run_directories_hold_what_they_need(workflow):
    runs = workflow["results"] / "camvid" / "runs"
    nes = next(runs.glob("nes-*"))
    log = pd.read_csv(nes / "train_log.csv")
    assert list(log.columns) == ["step", "epoch", "loss", "trace", "penalty", "tau", "lr", "seconds"]
    assert log["tau"].iloc[0] == pytest.approx(1.0) and np.isfinite(log["loss"]).all()
    assert Image.open(nes / "loss.png").size[0] > 100
    for run in runs.iterdir():
        ckpt = torch.load(run / "model.pt", weights_only=True)
        assert ckpt["method"] in run.name and ckpt["config"]["run"] == run.name
        assert yaml.safe_load((run / "config.yaml").read_text())["run"] == run.name
        metrics = json.loads((run / "camvid-native" / "metrics.json").read_text())
        assert set(metrics["per_class_iou"]) == {"sky", "building", "pole", "road", "pavement", "tree", "sign_symbol",
                                                 "fence", "car", "pedestrian", "bicyclist"}
        panel = next((run / "camvid-native" / "overlays").glob("*.png"))
        assert Image.open(panel).size == (4 * 480, 360 + 18)


def test_changing_beta_retrains_but_never_reextracts(workflow):
    cfg = yaml.safe_load(workflow["config"].read_text())
    cfg["train"]["beta"] = 0.5
    changed = workflow["base"] / "beta.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", str(workflow["results"] / "camvid" / "table1.csv"), "--cores", "2", "--configfile", str(changed))
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert jobs == {"train": "1", "fit_kmeans": "1", "evaluate": "2", "table": "1", "total": "5"}, out[-2000:]
    # a protocol change re-evaluates and re-extracts the evaluation view only
    cfg = yaml.safe_load(workflow["config"].read_text())
    cfg["datasets"]["camvid"]["protocols"]["native"]["size"] = [240, 320]
    changed.write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", str(workflow["results"] / "camvid" / "table1.csv"), "--cores", "2", "--configfile", str(changed))
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert jobs == {"extract_features": "1", "gather_features": "1", "evaluate": "3", "table": "1", "total": "6"}, out[-2000:]
    # nothing changed: nothing to do
    same = snakemake("-n", str(workflow["results"] / "camvid" / "table1.csv"), "--cores", "2", "--configfile", str(workflow["config"]))
    assert "Nothing to be done" in same


def test_cli_evaluate_on_live_features_matches_the_workflow(workflow):
    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    before = sorted(p.name for p in run.iterdir())
    result = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--run", str(run), "--dataset", "camvid",
                             "--data-root", str(workflow["camvid_root"]), "--split", "val"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(printed) == {"method", "acc", "miou", "miou_hungarian", "per_class_iou"}
    # same six images as the workflow (the run's dataset spec), features from the backbone rather
    # than the float16 cache: the scores agree up to rounding
    cached = json.loads((run / "camvid-native" / "metrics.json").read_text())
    assert printed["method"] == "nes"
    assert printed["miou"] == pytest.approx(cached["miou"], abs=0.01)
    assert printed["acc"] == pytest.approx(cached["acc"], abs=0.01)
    assert sorted(p.name for p in run.iterdir()) == before  # wrote nothing


def test_cli_segment_writes_labels_and_overlays_and_names_bad_files(workflow, tmp_path):
    run = next((workflow["results"] / "camvid" / "runs").glob("kmeans-*"))
    images = sorted((workflow["camvid_root"] / "val").glob("*.png"))[:2]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG broken")
    out = tmp_path / "seg"
    result = subprocess.run([sys.executable, "-m", "pipeline", "segment", "--run", str(run), "--out", str(out),
                             *map(str, images), str(corrupt)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "corrupt.png" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["segmented"] == 2 and summary["failed"] == [str(corrupt)]
    for image in images:
        labels = np.asarray(Image.open(out / f"{image.stem}_labels.png"))
        overlay = np.asarray(Image.open(out / f"{image.stem}_overlay.png"))
        original = np.asarray(Image.open(image).convert("RGB"))
        assert labels.shape == original.shape[:2] and overlay.shape == original.shape
        assert labels.max() < 8 and len(np.unique(labels)) > 1
        assert np.abs(overlay.astype(int) - original).mean() > 5
