"""Run planning from the config, and metrics -> table rendering."""

import json

import pandas as pd
import pytest
import yaml

from pipeline.errors import InputError
from pipeline.plan import all_runs, as_param, extraction_spec, table_runs
from pipeline.tables import to_markdown, write_table

from conftest import REPO


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_run_ids_are_readable_and_carry_defining_parameters(config):
    config["train"].update(K=64, alpha=0.3, beta=None)
    config["tables"]["table1"]["seeds"] = [0, 1]
    ids = sorted(spec["run"] for spec in table_runs(config, "table1"))
    assert ids == ["kmeans-lite0-K64-s0", "kmeans-lite0-K64-s1",
                   "nes-lite0-K64-a0.3-b0.32-s0", "nes-lite0-K64-a0.3-b0.32-s1",
                   "nes_star-lite0-K64-a0.3-b0.32-s0", "nes_star-lite0-K64-a0.3-b0.32-s1"]


def test_sweep_adds_runs_and_kmeans_ignores_training_parameters(config):
    config["tables"]["table1"].update(seeds=[0], sweep={"K": [64, 128], "alpha": [0.0, 0.3]})
    specs = table_runs(config, "table1")
    assert len(specs) == 2 + 4 + 4
    # K-means runs depend on K only: the alpha sweep does not duplicate them
    kmeans = {s["run"] for s in specs if s["method"] == "kmeans"}
    assert kmeans == {"kmeans-lite0-K64-s0", "kmeans-lite0-K128-s0"}
    assert len(all_runs(config)) == 2 + 4 + 4
    star = next(s for s in specs if s["method"] == "nes_star")
    assert star["nes_run"] == star["run"].replace("nes_star-", "nes-")


def test_extraction_spec_caches_views_only_for_training(config):
    config["extract"]["views"] = 3
    assert extraction_spec(config, "camvid", "lite0", "train")["views"] == 3
    assert extraction_spec(config, "camvid", "lite0", "val")["views"] == 1
    # training parameters never reach extraction: changing them cannot re-extract
    before = as_param(extraction_spec(config, "camvid", "lite0", "train"))
    config["train"]["beta"] = 0.5
    assert as_param(extraction_spec(config, "camvid", "lite0", "train")) == before


def test_unknown_names_are_refused(config):
    config["tables"]["table1"]["backbone"] = "resnet9000"
    with pytest.raises(InputError, match="resnet9000"):
        table_runs(config, "table1")


def test_table_rows_and_markdown_mean_std(tmp_path):
    files = []
    for seed, (acc, miou) in enumerate([(0.70, 0.40), (0.80, 0.50)]):
        m = {"run": f"nes-x-s{seed}", "method": "nes", "dataset": "camvid", "backbone": "lite0", "K": 8, "seed": seed,
             "split": "val", "acc": acc, "miou": miou, "miou_hungarian": 0.3,
             "crf": {"acc": acc + 0.05, "miou": miou + 0.05, "miou_hungarian": 0.35}}
        f = tmp_path / f"m{seed}.json"
        f.write_text(json.dumps(m))
        files.append(f)
    df = write_table(files, tmp_path / "t.csv")
    assert len(df) == 4 and set(df["crf"]) == {True, False}
    assert pd.read_csv(tmp_path / "t.csv")["acc"].tolist() == [70.0, 80.0, 75.0, 85.0]
    md = (tmp_path / "t.md").read_text()
    assert "| nes | lite0 | 8 | no | 2 | 75.0 ± 5.0 | 45.0 ± 5.0 | 30.0 ± 0.0 |" in md
    assert to_markdown(df).count("\n") == 4
