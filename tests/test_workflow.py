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

pytestmark = pytest.mark.workflow  # runs Snakemake: left out of make test-fast

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def tiny_config(results: Path, camvid_root: Path, **train) -> dict:
    return {
        "results": str(results),
        "datasets": {
            "camvid": {
                "adapter": "camvid",
                "data_root": str(camvid_root),
                "train_split": "train",
                "eval_split": "val",
                "train_view": {"mode": "resize", "size": [360, 480]},
                "protocols": {"native": {"mode": "resize", "size": [360, 480]}},
                "max_images": 6,
                "extract": {"shards": 1},  # the demo's two shards per split would double tiny jobs
            }
        },
        "train": {"K": 8, "epochs": 1, "batch_size": 3, "knn_k": 16, "heads": 2, "dim_head": 16, "monitor": 2, **train},
        "kmeans": {"niter": 5, "max_points": 1000},
        "evaluate": {"overlays": 1},
        "tables": {
            "camvid": {"table1": {"backbones": ["lite0"], "methods": ["kmeans", "nes", "nes_star"], "seeds": [0]}}
        },
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
    assert list(runs.columns[:11]) == [
        "dataset",
        "protocol",
        "train_dataset",
        "backbone",
        "method",
        "K",
        "alpha",
        "beta",
        "graph",
        "settings",
        "seed",
    ]
    assert sorted(runs["method"]) == ["kmeans", "nes", "nes_star"]
    assert (runs["split"] == "val").all() and (runs["K"] == 8).all() and (runs["protocol"] == "native").all()
    for col in ("acc", "miou", "miou_hungarian"):
        assert runs[col].between(1, 100).all(), runs
    assert (runs["miou"] >= runs["miou_hungarian"] - 1e-9).all()  # majority voting can only do better with K > C
    table = pd.read_csv(workflow["results"] / "camvid" / "table1.csv")
    assert sorted(table["method"]) == ["kmeans", "nes", "nes_star"] and (table["seeds"] == 1).all()
    # one seed: no spread (the sample SD, ddof 1, is undefined), the mean is the run
    assert table["miou_std"].isna().all() and sorted(table["miou_mean"]) == sorted(runs["miou"])
    md = (workflow["results"] / "camvid" / "table1.md").read_text()
    assert "| Ours |" in md and "| Ours* |" in md and "| K-means |" in md and "±" not in md.split("Margins")[0]


def test_every_evaluation_has_per_image_counts_and_the_table_its_margins(workflow):
    """The counts beside each metrics.json give back its scores; the table's margins compare Ours
    and Ours* with the best K-means, each with an interval around it."""
    from pipeline.intervals import load_counts

    for metrics_path in (workflow["results"] / "camvid" / "runs").glob("*/camvid-native/metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        counts = load_counts(metrics_path.with_name("per_image.npz"))
        assert len(counts.ids) == metrics["num_images"]
        assert counts.scores("majority")[1][0] == pytest.approx(metrics["miou"])
        assert counts.scores("hungarian")[1][0] == pytest.approx(metrics["miou_hungarian"])
    margins = pd.read_csv(workflow["results"] / "camvid" / "table1_margins.csv")
    assert sorted(set(margins["comparison"])) == ["Ours - best K-means", "Ours* - Ours", "Ours* - best K-means"]
    against_kmeans = margins["comparison"].str.endswith("best K-means")
    assert set(margins["score"]) == {"miou"}  # Hungarian matching is compared at K = C only (K 8 < 11 here)
    # each side named by its runs' id without the seed
    b = margins["b"].str.split("-").str[0]
    assert (b[against_kmeans] == "kmeans").all() and (b[~against_kmeans] == "nes").all()
    assert not margins["a"].str.contains(r"-s\d+$").any()
    assert ((margins["ci_low"] <= margins["margin"]) & (margins["margin"] <= margins["ci_high"])).all()
    assert set(margins["verdict"]) <= {"win", "loss", "tie"}
    runs = pd.read_csv(workflow["results"] / "camvid" / "table1_runs.csv").set_index("method")
    ours = margins[(margins["comparison"] == "Ours - best K-means") & (margins["score"] == "miou")].iloc[0]
    assert ours["margin"] == pytest.approx(runs.loc["nes", "miou"] - runs.loc["kmeans", "miou"], abs=0.02)
    assert "Margins in mIoU points" in (workflow["results"] / "camvid" / "table1.md").read_text()


def test_run_directories_hold_what_they_need(workflow):
    runs = workflow["results"] / "camvid" / "runs"
    nes = next(runs.glob("nes-*"))
    log = pd.read_csv(nes / "train_log.csv")
    assert list(log.columns) == [
        "step",
        "epoch",
        "loss",
        "trace",
        "penalty",
        "tau",
        "lr",
        "same_image",
        "usage",
        "seconds",
    ]
    assert log["same_image"].between(0, 1).all() and log["usage"].between(1, 8).all()
    assert log["tau"].iloc[0] == pytest.approx(1.0) and np.isfinite(log["loss"]).all()
    assert Image.open(nes / "loss.png").size[0] > 100
    # capture of the kernel against exact spectral clustering at the monitor's checkpoints
    capture = pd.read_csv(nes / "capture_log.csv")
    assert len(capture) >= 2 and capture[["batch_psi", "heldout_spectral"]].stack().between(0, 1).all()
    assert Image.open(nes / "capture.png").size[0] > 100
    assert not (nes / "checkpoint.pt").exists()  # the resume point goes once model.pt is saved
    for run in runs.iterdir():
        ckpt = torch.load(run / "model.pt", weights_only=True)
        assert ckpt["method"] in run.name and ckpt["config"]["run"] == run.name
        assert yaml.safe_load((run / "config.yaml").read_text())["run"] == run.name
        metrics = json.loads((run / "camvid-native" / "metrics.json").read_text())
        assert set(metrics["per_class_iou"]) == {
            "sky",
            "building",
            "pole",
            "road",
            "pavement",
            "tree",
            "sign_symbol",
            "fence",
            "car",
            "pedestrian",
            "bicyclist",
        }
        panel = next((run / "camvid-native" / "overlays").glob("*.png"))
        assert Image.open(panel).size == (4 * 480, 360 + 18)


def test_changing_beta_retrains_but_never_reextracts(workflow):
    cfg = yaml.safe_load(workflow["config"].read_text())
    cfg["train"]["beta"] = 0.5
    changed = workflow["base"] / "beta.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    out = snakemake(
        "-n", "-p", str(workflow["results"] / "camvid" / "table1.csv"), "--cores", "2", "--configfile", str(changed)
    )
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert jobs == {"train": "1", "fit_kmeans": "1", "evaluate": "2", "table": "1", "total": "5"}, out[-2000:]
    # the plan reads like commands: settings travel in a file holding exactly the rule's params
    commands = re.findall(r"^(?:Shell command: )?(nes --threads .*)$", out, flags=re.M)
    lengths = [len(c.replace(str(workflow["results"]), "results")) for c in commands]  # as with the default results/
    # paths only (run folder, spec file, K-means twin, weights, data index): inlined settings were kilobytes
    assert len(commands) == 5 and max(lengths) < 450, commands
    fit = next(c for c in commands if " fit --spec " in c)
    spec_file = Path(re.search(r"--spec (\S+\.json)", fit).group(1).strip("'"))
    assert json.loads(spec_file.read_text())["train"]["beta"] == 0.5
    # a protocol change re-evaluates and re-extracts the evaluation view only
    cfg = yaml.safe_load(workflow["config"].read_text())
    cfg["datasets"]["camvid"]["protocols"]["native"]["size"] = [240, 320]
    changed.write_text(yaml.safe_dump(cfg))
    out = snakemake(
        "-n", str(workflow["results"] / "camvid" / "table1.csv"), "--cores", "2", "--configfile", str(changed)
    )
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert jobs == {"extract_features": "1", "gather_features": "1", "evaluate": "3", "table": "1", "total": "6"}, out[
        -2000:
    ]
    # the dataset-wide graph of a cached split is one job on top of the cache
    out = snakemake(
        "-n",
        str(workflow["results"] / "camvid" / "graphs" / "lite0" / "train" / "train.json"),
        "--cores",
        "2",
        "--configfile",
        str(workflow["config"]),
    )
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    assert jobs == {"build_graph": "1", "total": "1"}, out[-2000:]
    # nothing changed: nothing to do
    same = snakemake(
        "-n",
        str(workflow["results"] / "camvid" / "table1.csv"),
        "--cores",
        "2",
        "--configfile",
        str(workflow["config"]),
    )
    assert "Nothing to be done" in same


def test_a_deleted_cache_is_re_extracted_not_trusted(workflow):
    """Each shard's data is a tracked output: with the training cache gone (its manifest still
    there), a change that retrains re-extracts it first instead of failing on a manifest that
    points at nothing."""
    cache = workflow["results"] / "camvid" / "features" / "lite0" / "train" / "train.zarr"
    cfg = yaml.safe_load(workflow["config"].read_text())
    cfg["train"]["beta"] = 0.5
    changed = workflow["base"] / "beta-deleted.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    target = str(workflow["results"] / "camvid" / "table1.csv")
    moved = cache.with_name("moved.zarr")
    cache.rename(moved)
    try:
        out = snakemake("-n", target, "--cores", "2", "--configfile", str(changed))
        jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
        assert jobs.get("extract_features") == "1" and jobs.get("gather_features") == "1", out[-2000:]
    finally:
        moved.rename(cache)
    assert "Nothing to be done" in snakemake("-n", target, "--cores", "2", "--configfile", str(workflow["config"]))


def test_cli_evaluate_on_live_features_matches_the_workflow(workflow):
    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    before = sorted(p.name for p in run.iterdir())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "evaluate",
            "--run",
            str(run),
            "--dataset",
            "camvid",
            "--data-root",
            str(workflow["camvid_root"]),
            "--split",
            "val",
        ],
        capture_output=True,
        text=True,
    )
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


def segment(*args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "segment", *map(str, args)], capture_output=True, text=True
    )


def test_cli_segment_folder_with_a_corrupt_file(workflow, tmp_path):
    """Folders and globs in; a corrupt file is skipped by name, the others are written, exit 1;
    cluster ids without a mapping, class ids (with a legend) through the run's evaluation."""
    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    images = sorted((workflow["camvid_root"] / "val").glob("*.png"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    clusters_out, classes_out = tmp_path / "clusters", tmp_path / "classes"
    result = segment("--run", run, "--out-dir", clusters_out, "--mapping", "none", "--eigenfunctions", 3, folder)
    assert result.returncode == 1 and "corrupt.png" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {
        "segmented": 2,
        "skipped": 1,
        "failed": [str(folder / "corrupt.png")],
        "out": str(clusters_out),
        "labels": "clusters",
    }
    # a glob: the good files only; --out is the old spelling of --out-dir, still accepted with a warning
    result = segment("--run", run, "--out", classes_out, str(folder / "0*.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--out: deprecated spelling of --out-dir" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["labels"] == "classes"
    for image in images:
        original = np.asarray(Image.open(image).convert("RGB"))
        clusters = np.asarray(Image.open(clusters_out / f"{image.stem}_labels.png"))
        classes = np.asarray(Image.open(classes_out / f"{image.stem}_labels.png"))
        assert clusters.shape == classes.shape == original.shape[:2]
        assert clusters.max() < 8 and len(np.unique(clusters)) > 1 and classes.max() < 11
        mapping = np.array(json.loads((run / "camvid-native" / "metrics.json").read_text())["mapping"])
        np.testing.assert_array_equal(classes, mapping[clusters])  # same clusters, mapped to classes
        overlay = np.asarray(Image.open(classes_out / f"{image.stem}_overlay.png"))
        assert overlay.shape[0] == original.shape[0] and overlay.shape[1] > original.shape[1]  # legend on the right
        assert np.abs(overlay[:, : original.shape[1]].astype(int) - original).mean() > 5
        heat = Image.open(clusters_out / f"{image.stem}_eigenfunctions.png")
        assert heat.size == (3 * 240, 180 + 18)


def test_segmenter_predicts_what_evaluation_scores(workflow):
    """The Python API gives the evaluation path's logits (singly or batched) and its class map."""
    from pipeline.datasets import load_dataset
    from pipeline.evaluate import live_predictions
    from pipeline.segmenter import Segmenter
    from pipeline.views import View

    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    seg = Segmenter.from_run(run, device="cpu")
    ds = load_dataset(
        {"name": "camvid", "adapter": "camvid", "data_root": str(workflow["camvid_root"]), "max_images": 3}, "val"
    )
    view = View.from_config({"mode": "resize", "size": [360, 480]})
    live = dict(live_predictions(seg.model, seg.backbone, ds, view, 2, torch.device("cpu")))
    images = [ds.load_image(i) for i in range(3)]
    logits = seg.predict_logits(images)  # a batch
    for i, image in enumerate(images):
        torch.testing.assert_close(logits[i], live[i], rtol=0, atol=0)
        torch.testing.assert_close(seg.predict_logits(image), live[i], rtol=0, atol=0)  # one image
        labels = seg.predict(image)
        np.testing.assert_array_equal(labels, seg.mapping.mapping[live[i].argmax(0).numpy()])


def test_segmenting_a_large_image_keeps_memory_bounded(workflow, monkeypatch):
    """Above `max_elements` resized logit values, labels come from view-resolution logits resized
    in bands of rows: no (K, H, W) array is ever made, and the labels are those of the full path."""
    import torch.nn.functional as F

    import pipeline.predict as predict
    from pipeline.datasets import read_rgb
    from pipeline.segmenter import Segmenter

    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    seg = Segmenter.from_run(run, device="cpu", mapping=None)
    image = read_rgb(next((workflow["camvid_root"] / "val").glob("*.png")))
    large = np.repeat(np.repeat(image, 3, axis=0), 3, axis=1)  # 1080 x 1440
    full = seg.labels(large)[0]  # K x H x W below the default bound: the plain path
    k, (h, w) = seg.num_clusters, large.shape[:2]
    seg.max_elements = k * h * w // 20
    biggest, bands = [], []
    real_grid, real_interp = F.grid_sample, F.interpolate
    monkeypatch.setattr(
        predict.F, "grid_sample", lambda *a, **kw: bands.append(real_grid(*a, **kw).numel()) or real_grid(*a, **kw)
    )
    monkeypatch.setattr(
        predict.F,
        "interpolate",
        lambda *a, **kw: biggest.append(real_interp(*a, **kw).numel()) or real_interp(*a, **kw),
    )
    labels, maps = seg.labels(large, eigenfunctions=3)
    # resized bands stay under the bound; nothing ever holds the full (K, H, W) logits
    assert labels.shape == (h, w) and max(biggest) < k * h * w / 2
    assert max(bands) <= seg.max_elements and len(bands) > 1
    assert (labels == full).mean() > 0.999
    assert maps.shape[0] == 3 and maps.shape[1] * maps.shape[2] * 3 <= seg.max_elements


def test_eigenfunction_maps_come_from_psi_whatever_reads_clusters_out(workflow):
    """Maps are psi's outputs: a one-hot run's are its logits x tau_min, and the same psi read out
    by K-means centres (`train.output: eigenfunctions`) draws the same maps though its labels
    are the nearest centres, not the arg-max."""
    import dataclasses

    import torch.nn.functional as F

    from pipeline.datasets import read_rgb
    from pipeline.models import RunModel
    from pipeline.segmenter import Segmenter

    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    onehot = Segmenter.from_run(run, device="cpu", mapping=None)
    image = read_rgb(next((workflow["camvid_root"] / "val").glob("*.png")))
    labels, maps = onehot.labels(image, eigenfunctions=3)
    logits = onehot.predict_logits(image)
    np.testing.assert_allclose(maps, logits[:3].numpy() * onehot.model.spec.psi.tau_min, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(onehot.eigenfunctions(image, 3), maps, rtol=1e-4, atol=1e-5)  # psi's own pass
    model = onehot.model
    spec = dataclasses.replace(model.spec, train=dataclasses.replace(model.spec.psi, output="eigenfunctions"))
    centres = F.normalize(torch.randn(model.spec.K, model.spec.K, generator=torch.Generator().manual_seed(0)), dim=1)
    eigen = Segmenter(
        RunModel(spec, model.psi, centres, input_dim=model.input_dim), onehot.view, device=torch.device("cpu")
    )
    eigen_labels, eigen_maps = eigen.labels(image, eigenfunctions=3)
    np.testing.assert_allclose(eigen_maps, maps, rtol=1e-4, atol=1e-5)  # from psi, not from its logits
    assert eigen_labels.shape == labels.shape and (eigen_labels != labels).mean() > 0.05


def test_own_images_without_labels_train_and_segment_through_the_workflow(camvid_root, tmp_path):
    """README "Use your own images": a folder of images, no labels -> extract, train, segment."""
    images = tmp_path / "mine"
    images.mkdir()
    for path in sorted((camvid_root / "val").glob("*.png"))[:4]:
        (images / f"{path.stem}.jpg").write_bytes(path.read_bytes())  # any suffix PIL reads
    results = tmp_path / "results"
    cfg = {
        "results": str(results),
        "datasets": {
            "mine": {
                "adapter": "folder",
                "data_root": str(images),
                "train_split": "train",
                "eval_split": "train",
                "train_view": {"mode": "resize", "size": [180, 240]},
            }
        },
        "train": {"K": 6, "epochs": 1, "batch_size": 2, "knn_k": 16, "heads": 2, "dim_head": 16},
        "segmentations": {"mine": {"backbones": ["lite0"], "eigenfunctions": 2}},
    }
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(cfg))
    snakemake("all_segmentations", "--cores", "2", "--configfile", str(tmp_path / "mine.yaml"))
    out = results / "mine" / "runs" / "nes-lite0-K6-a0.3-b3.41333-s0" / "segment"
    for path in sorted(images.iterdir()):
        labels = np.asarray(Image.open(out / f"{path.stem}_labels.png"))
        assert labels.shape == (360, 480) and labels.max() < 6  # cluster ids: nothing to map them to
        assert Image.open(out / f"{path.stem}_eigenfunctions.png").size == (2 * 240, 180 + 18)
        assert (out / f"{path.stem}_overlay.png").is_file()


def test_every_evaluation_has_a_report(workflow):
    runs = workflow["results"] / "camvid" / "runs"
    nes = next(runs.glob("nes-*")) / "camvid-native"
    md = (nes / "report.md").read_text()
    assert md.startswith(f"# {nes.parent.name} on camvid (native, val)")
    for link in ("per_class_iou.png", "confusion.png", "../loss.png", "samples.png", "overlays/"):
        assert f"({link})" in md, link
    metrics = json.loads((nes / "metrics.json").read_text())
    assert f"| majority vote | {100 * metrics['acc']:.1f} | {100 * metrics['miou']:.1f} |" in md
    conf = np.array(metrics["confusion"])
    assert conf.shape == (8, 11) and conf.sum() > 0.9 * 360 * 480  # one image's worth at least (void excluded)
    assert Image.open(nes / "per_class_iou.png").size[1] > 200 and Image.open(nes / "confusion.png").size[0] > 200
    # input / ground truth / prediction / the K-means run's prediction, one row per sample image
    assert Image.open(nes / "samples.png").size == (4 * 480, 360 + 18)
    kmeans = next(runs.glob("kmeans-*")) / "camvid-native"
    assert Image.open(kmeans / "samples.png").size == (3 * 480, 360 + 18)
    assert "Training curves" not in (kmeans / "report.md").read_text()


def test_snakemake_report_collects_the_figures(workflow, tmp_path):
    html = tmp_path / "report.html"
    snakemake(
        "--report",
        str(html),
        str(workflow["results"] / "camvid" / "table1.csv"),
        "--configfile",
        str(workflow["config"]),
    )
    text = html.read_text(errors="ignore")
    assert len(text) > 10_000 and "per-class IoU (camvid-native)" in text


def test_graph_table_compares_batch_dataset_and_exact_spectral(workflow):
    """results/camvid/graph.csv: K-means (fitted on train and on val itself), psi on per-batch and
    on dataset-wide graphs, exact spectral clustering of the evaluated split and of the train
    split extended to it (Nystrom), with every run's capture of the evaluated G, psi's logit
    alignment and each one's cost. The batch-graph runs are table1's: they are not trained again."""
    cfg = yaml.safe_load(workflow["config"].read_text())
    cfg["tables"]["camvid"]["graph"] = {
        "backbones": ["lite0"],
        "seeds": [0],
        "sweep": {"graph": ["batch", "dataset"]},
        "methods": ["kmeans", "kmeans_transductive", "nes", "spectral", "spectral_inductive"],
    }
    path = workflow["base"] / "graph.yaml"
    path.write_text(yaml.safe_dump(cfg))
    target = str(workflow["results"] / "camvid" / "graph.csv")
    out = snakemake("-n", target, "--cores", "2", "--configfile", str(path))
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))
    # graphs of the train and val caches, one psi on the dataset graph, eigenvectors of val and of
    # train, the Nystrom extension, three new fits (K-means on val, both spectral), four new
    # evaluations, an alignment of each of the six runs, the table
    assert jobs == {
        "build_graph": "2",
        "train": "1",
        "eigenvectors": "2",
        "nystrom": "1",
        "fit_kmeans": "3",
        "evaluate": "4",
        "align": "6",
        "table": "1",
        "total": "20",
    }, out[-2000:]
    snakemake(target, "--cores", "2", "--configfile", str(path))
    runs = pd.read_csv(workflow["results"] / "camvid" / "graph_runs.csv").set_index("run")
    assert sorted(zip(runs["method"], runs["graph"].fillna("-"))) == [
        ("kmeans", "-"),
        ("kmeans_transductive", "-"),
        ("nes", "batch"),
        ("nes", "dataset"),
        ("spectral", "exact"),
        ("spectral_inductive", "exact"),
    ]
    assert runs["capture"].between(0, 1).all() and runs["onehot_cos"].between(0, 1).all()
    assert runs["perplexity"].between(1, 8).all()
    nes, other = runs[runs["method"] == "nes"], runs[runs["method"] != "nes"]
    assert nes[["logit_cos", "logit_cos_random"]].stack().between(0, 1).all() and other["logit_cos"].isna().all()
    assert (runs["train_s"] > 0).all() and (runs["train_mb"] > 100).all()
    has_graph = (runs["graph"] == "dataset") | runs["method"].str.startswith("spectral")
    assert (runs.loc[has_graph, "graph_s"] > 0).all() and runs.loc[~has_graph, "graph_s"].isna().all()
    assert runs["acc"].between(1, 100).all() and runs["miou"].between(1, 100).all()
    spectral = runs[runs["method"] == "spectral"].index[0]
    assert spectral == "spectral-lite0-K8-a0.3-native-s0"
    assert runs[runs["method"] == "kmeans_transductive"].index[0] == "kmeans_transductive-lite0-K8-native-s0"
    metrics = json.loads(
        (workflow["results"] / "camvid" / "runs" / spectral / "camvid-native" / "metrics.json").read_text()
    )
    assert metrics["fit"]["train"]["eigsh_s"] > 0 and metrics["beta"] is None
    inductive = runs[runs["method"] == "spectral_inductive"].index[0]
    metrics = json.loads(
        (workflow["results"] / "camvid" / "runs" / inductive / "camvid-native" / "metrics.json").read_text()
    )
    assert metrics["fit"]["train"]["nystrom_s"] > 0 and metrics["fit"]["train"]["eigsh_s"] > 0
    md = (workflow["results"] / "camvid" / "graph.md").read_text()
    assert "| Spectral (exact, transductive) |" in md and "| Spectral (exact, Nystrom) |" in md
    assert "capture" in md and "graph (s)" in md
    # a transductive run scores its own split only: the CLI refuses to segment with it
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "segment",
            "--run",
            str(workflow["results"] / "camvid" / "runs" / spectral),
            "--out",
            str(workflow["base"] / "seg"),
            str(next((workflow["camvid_root"] / "val").glob("*.png"))),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2 and "transductive" in result.stderr


def test_data_changes_rerun_what_reads_them_and_nothing_else(camvid_root, tmp_path):
    """A split's content is an input (reliability: data changes): relabelling re-evaluates,
    replacing or adding an image re-extracts; touching a file, or a plan, reruns nothing."""
    from pipeline.datasets.camvid import CLASS_NAMES

    data, labels = tmp_path / "data", tmp_path / "labels"
    for split, n in (("train", 3), ("val", 2)):
        (data / split).mkdir(parents=True)
        for path in sorted((camvid_root / split).glob("*.png"))[: n + 1]:
            (data / split / path.name).write_bytes(path.read_bytes())
        labels.mkdir(exist_ok=True)
        for path in sorted((camvid_root / f"{split}annot").glob("*.png"))[: n + 1]:
            (labels / path.name).write_bytes(path.read_bytes())
    spare = sorted((data / "train").iterdir())[-1]
    spare.rename(tmp_path / spare.name)  # added later
    spare_val = sorted((data / "val").iterdir())[-1]
    spare_val.rename(tmp_path / "spare_val.png")  # replaces an image later
    results = tmp_path / "results"
    cfg = {
        "results": str(results),
        "datasets": {
            "mine": {
                "adapter": "folder",
                "data_root": str(data),
                "label_dir": str(labels),
                "class_names": CLASS_NAMES,
                "unknown_labels": "ignore",
                "train_split": "train",
                "eval_split": "val",
                "train_view": {"mode": "resize", "size": [180, 240]},
                "protocols": {"native": {"mode": "resize", "size": [180, 240]}},
            }
        },
        "train": {"K": 4},
        "kmeans": {"niter": 5, "max_points": 1000},
        "evaluate": {"overlays": 1},
        "tables": {"mine": {"table1": {"backbones": ["lite0"], "methods": ["kmeans"], "seeds": [0]}}},
    }
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(cfg))
    target = str(results / "mine" / "table1.csv")

    def planned():
        out = snakemake("-n", target, "--cores", "2", "--configfile", str(config))
        if "Nothing to be done" in out:
            return {}
        return dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], flags=re.M))

    snakemake(target, "--cores", "2", "--configfile", str(config))
    index = results / "mine" / "data" / "val.labels.json"
    manifest = results / "mine" / "features" / "lite0" / "native" / "val.zarr" / "shard-0-of-1" / "extracted.json"
    metrics = results / "mine" / "runs" / "kmeans-lite0-K4-s0" / "mine-native" / "metrics.json"
    assert set(json.loads(manifest.read_text())["data"]) == {"images"}
    assert set(json.loads(metrics.read_text())["data"]) == {"labels"}  # its images are in the cache
    # touched (a copy, a checkout): same content, nothing to do
    first = sorted((data / "train").iterdir())[0]
    os.utime(first, (first.stat().st_atime + 100, first.stat().st_mtime + 100))
    assert planned() == {}
    # relabelled: re-evaluated, not re-extracted
    label = labels / sorted((data / "val").iterdir())[0].name
    arr = np.asarray(Image.open(label)).copy()
    arr[:40] = 3
    Image.fromarray(arr).save(label)
    assert planned() == {"evaluate": "1", "table": "1", "total": "2"}
    assert json.loads(index.read_text())["files"].keys() == {p.stem for p in (data / "val").iterdir()}
    # an image replaced: that split re-extracted
    (tmp_path / "spare_val.png").replace(sorted((data / "val").iterdir())[-1])
    assert planned() == {"extract_features": "1", "gather_features": "1", "evaluate": "1", "table": "1", "total": "4"}
    # an image added to the training split: its cache, the clustering and what follows
    (tmp_path / spare.name).rename(spare)
    jobs = planned()
    assert jobs["extract_features"] == "2" and jobs["fit_kmeans"] == "1" and jobs["evaluate"] == "1", jobs
    snakemake(target, "--cores", "2", "--configfile", str(config))
    assert planned() == {}
    # outputs from before data tracking (no `data` record, no recorded index input) are kept as they are
    for path in (manifest, metrics):
        record, times = json.loads(path.read_text()), (path.stat().st_atime, path.stat().st_mtime)
        del record["data"]
        path.write_text(json.dumps(record))
        os.utime(path, times)
    snakemake("--cleanup-metadata", str(manifest), str(metrics), "--configfile", str(config))
    assert planned() == {}


def readme_examples() -> tuple[list[str], list[str]]:
    """The README's Python blocks, and the `nes` commands of its shell blocks (the others, `make`
    and `snakemake` runs, take minutes to hours and are exercised by the tests above)."""
    text = (REPO / "README.md").read_text()
    python = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    shell = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
        if line.startswith("nes ")
    ]
    return python, shell


def test_the_readme_examples_run_as_written(workflow, tmp_path, camvid_root):
    """Every Python block and `nes` command of the README, run as written in a folder holding what
    they name: the demo's run (here the workflow's tiny run under the demo's name) and a photo."""
    python, shell = readme_examples()
    assert python and shell, "the README lost its examples"
    demo_run = tmp_path / "results" / "camvid" / "runs" / "nes-lite0-K128-a0.3-b0.16-s0"
    demo_run.parent.mkdir(parents=True)
    demo_run.symlink_to(next((workflow["results"] / "camvid" / "runs").glob("nes-*")))
    frame = sorted((camvid_root / "val").glob("*.png"))[0]
    Image.open(frame).convert("RGB").save(tmp_path / "photo.jpg", quality=90)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NES_WEIGHTS_DIR": str(REPO / "weights"),
    }
    for block in python:
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, block + done.stderr[-3000:]
    for command in shell:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, command + done.stderr[-3000:]
    assert Image.open(tmp_path / "seg" / "photo_labels.png").size == Image.open(frame).size


def test_an_evaluation_cut_short_leaves_the_previous_folder_whole(workflow, tmp_path):
    """`nes evaluate --out-dir` under a file-size limit (the figures do not fit): the error names
    the folder and the cause in one line, and the folder holds the previous evaluation, file for
    file, not a mix of the two."""
    import resource

    run = next((workflow["results"] / "camvid" / "runs").glob("nes-*"))
    out = tmp_path / "evaluation"
    command = [sys.executable, "-m", "pipeline", "evaluate", "--run", str(run), "--split", "val", "--out-dir", str(out)]
    command += ["--dataset", "camvid", "--data-root", str(workflow["camvid_root"]), "--overlays", "1"]
    command += ["--features", str(workflow["results"] / "camvid" / "features" / "lite0" / "native" / "val.json")]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 1024, 8 * 1024))

    result = subprocess.run([*command, "--protocol", "again"], capture_output=True, text=True, preexec_fn=limited)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {out}: file larger than the file-size limit (ulimit -f) (nes evaluate); "
        "free space or raise the limit, then rerun (complete work is kept)"
    ]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["evaluation"]  # no half-written sibling left
