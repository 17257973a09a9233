"""Run planning from the config, and metrics -> table rendering."""

import json

import pandas as pd
import pytest
import yaml
from conftest import REPO

from pipeline.errors import InputError
from pipeline.plan import (
    all_eigen,
    all_runs,
    as_param,
    default_train,
    evaluation_spec,
    extraction_spec,
    make_spec,
    table_alignments,
    table_evaluation,
    table_metrics,
    table_runs,
)
from pipeline.spec import Method, TrainSettings
from pipeline.tables import build_runs, to_markdown, write_table


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_run_ids_are_readable_and_carry_defining_parameters(config):
    config["train"].update(K=64, alpha=0.3, beta=None)
    config["tables"]["camvid"]["table1"]["seeds"] = [0, 1]
    ids = sorted(spec.run for spec in table_runs(config, "camvid", "table1"))
    assert ids == [
        "kmeans-lite0-K64-s0",
        "kmeans-lite0-K64-s1",
        "nes-lite0-K64-a0.3-b0.32-s0",
        "nes-lite0-K64-a0.3-b0.32-s1",
        "nes_star-lite0-K64-a0.3-b0.32-s0",
        "nes_star-lite0-K64-a0.3-b0.32-s1",
    ]


def test_sweep_adds_runs_and_kmeans_ignores_training_parameters(config):
    config["tables"] = {
        "camvid": {"table1": {"backbones": ["lite0"], "seeds": [0], "sweep": {"K": [64, 128], "alpha": [0.0, 0.3]}}}
    }
    specs = table_runs(config, "camvid", "table1")
    assert len(specs) == 2 + 4 + 4
    # K-means runs depend on K only: the alpha sweep does not duplicate them
    kmeans = {s.run for s in specs if s.method == "kmeans"}
    assert kmeans == {"kmeans-lite0-K64-s0", "kmeans-lite0-K128-s0"}
    assert len(all_runs(config)) == 2 + 4 + 4
    star = next(s for s in specs if s.method == "nes_star")
    assert star.nes_run == star.run.replace("nes_star-", "nes-")


# a value off the demo defaults for every sweepable training key (the schema lists them)
OTHER_VALUES = {
    "K": 64,
    "epochs": 10,
    "batch_size": 16,
    "lr": 3.0e-3,
    "lr_min": 0.0,
    "tau_max": 2.0,
    "tau_min": 0.1,
    "beta": 0.5,
    "t": 0.1,
    "alpha": 0.0,
    "knn_k": 64,
    "pixel_knn": [[20, 2.0], [10, 0.1]],
    "depth": 3,
    "heads": 18,
    "dim_head": 32,
    "mlp_ratio": 1.0,
    "graph": "dataset",
    "monitor": 6,
    "image_centred": True,
    "normalised_cut": True,
    "output": "eigenfunctions",
    "precision": "float32",
    "search_precision": "bfloat16",
}


# the training keys each method's result depends on (psi's: all of them)
DEPENDS_ON = {
    "kmeans": {"K"},
    "kmeans_transductive": {"K"},
    "kmeans_tokens": {"K"},
    "kmeans_input": {"K"},
    "spectral": {"K", "alpha", "pixel_knn"},
    "spectral_inductive": {"K", "alpha", "pixel_knn", "knn_k"},
}


def default_nes_spec(config):
    (spec,) = _sweep(config, "K", [config["train"]["K"]], ["nes"])
    return spec


def test_a_sweep_over_any_training_key_keeps_every_value(config):
    """Every sweepable key: the default value keeps its short id, the other value is another run
    whose id and table setting name it; methods that do not depend on the key stay one run."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    sweepable = schema["$defs"]["sweep"]["propertyNames"]["enum"]
    assert set(sweepable) == set(OTHER_VALUES)
    methods = [m.value for m in Method]
    default = {s.method: s.run for s in _sweep(config, "K", [config["train"]["K"]], methods)}
    assert (
        default["nes"] == "nes-lite0-K128-a0.3-b0.16-s0" and default["spectral"] == "spectral-lite0-K128-a0.3-native-s0"
    )
    defaults = default_train(config, "camvid")
    for key in sweepable:
        values = [defaults.get(key, TrainSettings.BEYOND_PAPER.get(key)), OTHER_VALUES[key]]
        specs = _sweep(config, key, values, methods)
        for method in methods:
            runs = [s for s in specs if s.method == method]
            depends = key in DEPENDS_ON.get(method, {key})
            assert len(runs) == (2 if depends else 1), (key, method, [s.run for s in runs])
            assert default[method] in {s.run for s in runs}, (key, method)
            if depends and key not in ("K", "alpha", "beta", "graph"):
                (other,) = [s for s in runs if s.run != default[method]]
                assert key in other.run and other.settings.startswith(f"{key}="), other.run
        star = next(s for s in specs if s.method == "nes_star" and s.run != default["nes_star"])
        assert star.nes_run == star.run.replace("nes_star-", "nes-")
    # plain eigenfunctions: NeuralEF's penalty weight 1 unless beta is given; K-means reads them out
    (eigen,) = _sweep(config, "output", ["eigenfunctions"], ["nes"])
    assert eigen.run == "nes-lite0-K128-a0.3-b1-outputeigenfunctions-s0" and eigen.psi.beta == 1.0
    assert eigen.kmeans is not None and default_nes_spec(config).kmeans is None
    # readable ids: pixel_knn's pairs, floats as written
    runs = {s.run for s in _sweep(config, "pixel_knn", [[[20, 2.0], [10, 0.1]]], ["nes"])}
    assert runs == {"nes-lite0-K128-a0.3-b0.16-pixel_knn20x2_10x0.1-s0"}
    specs = _sweep(config, "lr", [3.0e-3], ["nes", "spectral_inductive"])
    assert {s.run for s in specs} == {
        "nes-lite0-K128-a0.3-b0.16-lr0.003-s0",
        "spectral_inductive-lite0-K128-a0.3-native-s0",
    }
    # the Nystrom extension depends on knn_k: each value its own file
    paths = {s.nystrom.path for s in _sweep(config, "knn_k", [256, 64], ["spectral_inductive"])}
    assert paths == {
        "results/camvid/graphs/lite0/native/val-nystrom-camvid-K128-a0.3.npz",
        "results/camvid/graphs/lite0/native/val-nystrom-camvid-K128-a0.3-knn_k64.npz",
    }


def test_a_table_override_off_the_defaults_is_its_own_run(config):
    """Two tables training with other epochs are two runs (before, the second silently reused
    the first's id)."""
    config["tables"]["camvid"]["long"] = {
        "backbones": ["lite0"],
        "seeds": [0],
        "methods": ["nes"],
        "train": {"epochs": 10},
    }
    long = table_runs(config, "camvid", "long")
    assert [s.run for s in long] == ["nes-lite0-K128-a0.3-b0.16-epochs10-s0"] and long[0].settings == "epochs=10"
    assert "settings" not in table_runs(config, "camvid", "table1")[0].to_dict()  # default runs' params as before
    all_runs(config)  # no clash with table1's default run


def _sweep(config, key, values, methods):
    config["tables"] = {
        "camvid": {"t": {"backbones": ["lite0"], "seeds": [0], "methods": methods, "sweep": {key: values}}}
    }
    return table_runs(config, "camvid", "t")


def test_paper_tables_share_runs_across_tables_and_protocols(config):
    """Table 1 (protocol A) and Table 3 (protocol B) evaluate the same ViT-S runs; beta: null and
    beta 0.08 at K = 256 are one run; the zero-shot table trains on the image folder."""
    t1 = {s.run for s in table_runs(config, "pascal", "table1")}
    t3 = {s.run for s in table_runs(config, "pascal", "table3")}
    assert len(t1) == 3 * 3 * 3 and t3 < t1
    assert (
        table_evaluation(config, "pascal", "table1") == "pascal-A"
        and table_evaluation(config, "pascal", "table3") == "pascal-B"
    )
    t7 = {s.run for s in table_runs(config, "pascal", "table7")}
    assert "nes-vit_s16-K256-a0.3-b0.08-s0" in t7 & t1
    t8 = table_runs(config, "pascal", "table8")
    assert {s.dataset for s in t8} == {"imagenet"} and all(s.features.startswith("results/imagenet/") for s in t8)
    assert all(
        m.endswith("/pascal-A/metrics.json") and m.startswith("results/imagenet/runs/")
        for m in table_metrics(config, "pascal", "table8")
    )
    k60 = table_runs(config, "pascal", "matching")
    assert {s.K for s in k60} == {60}
    ade = table_runs(config, "ade20k", "table4")
    assert {s.run for s in ade} >= {"nes-vit_s16-K512-a0.3-b0.04-s2"}
    # sliding-window protocols are evaluated live, single-pass ones from a cache of their view
    run = table_runs(config, "pascal", "table1")[0]
    assert evaluation_spec(config, run, "pascal-B").features is None
    assert evaluation_spec(config, run, "pascal-A").features == f"results/pascal/features/{run.backbone}/A/val.json"
    assert len(all_runs(config)) > 100


def test_spectral_runs_fit_the_evaluated_split_and_share_eigenvectors_across_seeds(config):
    """The camvid graph table: spectral runs live under the evaluated dataset, are named by the
    protocol whose cache they cluster, and share one eigenvector reference with psi's alignments;
    a zero-shot table's spectral run is fit on the evaluation dataset, not the training folder."""
    specs = {s.run: s for s in table_runs(config, "camvid", "graph")}
    assert set(specs) == {
        "kmeans-lite0-K128-s0",
        "kmeans-lite0-K128-s1",
        "nes-lite0-K128-a0.3-b0.16-s0",
        "nes-lite0-K128-a0.3-b0.16-s1",
        "nes-lite0-K128-a0.3-b0.16-gdataset-s0",
        "nes-lite0-K128-a0.3-b0.16-gdataset-s1",
        "spectral-lite0-K128-a0.3-native-s0",
        "spectral-lite0-K128-a0.3-native-s1",
    }
    spectral = specs["spectral-lite0-K128-a0.3-native-s0"]
    eigen = "results/camvid/graphs/lite0/native/val-eigen-K128-a0.3.npz"
    assert spectral.features == "results/camvid/features/lite0/native/val.json" and spectral.eigen.path == eigen
    assert specs["nes-lite0-K128-a0.3-b0.16-gdataset-s0"].graph == "results/camvid/graphs/lite0/train/train.json"
    assert sorted(table_alignments(config, "camvid", "graph")) == sorted(
        f"results/camvid/runs/{r}/camvid-native/alignment.json" for r in specs
    )
    assert table_alignments(config, "camvid", "table1") == []  # no spectral reference, no alignment
    assert eigen in all_eigen(config)
    # the verdict's controls: K-means on val itself, and train's eigenvectors extended to val
    verdict = {s.run: s for s in table_runs(config, "camvid", "verdict")}
    transductive = verdict["kmeans_transductive-dinov2_s14-K128-native-s2"]
    assert transductive.features == "results/camvid/features/dinov2_s14/native/val.json"
    inductive = verdict["spectral_inductive-lite0-K128-a0.3-native-s1"]
    assert inductive.eigen.path == "results/camvid/graphs/lite0/train/train-eigen-K128-a0.3.npz"
    assert inductive.nystrom.path == "results/camvid/graphs/lite0/native/val-nystrom-camvid-K128-a0.3.npz"
    assert inductive.nystrom.features == spectral.features and inductive.eigen.path in all_eigen(config)
    config["tables"]["pascal"]["table8"]["methods"] = ["spectral"]
    (zero_shot,) = table_runs(config, "pascal", "table8")[:1]
    assert zero_shot.dataset == "pascal" and zero_shot.features == "results/pascal/features/vit_s16/A/val.json"
    config["tables"]["pascal"]["table3"]["methods"] = ["spectral"]
    with pytest.raises(InputError, match="sliding windows are evaluated live"):
        table_runs(config, "pascal", "table3")
    for method in ("spectral", "spectral_inductive", "kmeans_transductive"):
        with pytest.raises(InputError, match="use it in tables"):
            make_spec(config, "camvid", "lite0", method, config["train"], 0)


def test_extraction_spec_caches_views_only_for_training(config):
    config["extract"]["views"] = 3
    assert extraction_spec(config, "camvid", "lite0", "train", "train").views == 3
    assert extraction_spec(config, "camvid", "lite0", "native", "val").views == 1
    assert extraction_spec(config, "pascal", "vit_s16", "train", "train").views == 4  # dataset override
    # training parameters and scoring options never reach extraction: changing them cannot re-extract
    before = as_param(extraction_spec(config, "pascal", "vit_s16", "A", "val"))
    config["train"]["beta"] = 0.5
    config["datasets"]["pascal"]["train"]["K"] = 64
    config["datasets"]["pascal"]["protocols"]["A"]["crf"] = False
    config["datasets"]["pascal"]["protocols"]["B"]["stride"] = 100
    assert as_param(extraction_spec(config, "pascal", "vit_s16", "A", "val")) == before
    with pytest.raises(InputError, match="evaluated live"):
        extraction_spec(config, "pascal", "vit_s16", "B", "val")


def test_unknown_names_are_refused(config):
    config["tables"]["camvid"]["table1"]["backbones"] = ["resnet9000"]
    with pytest.raises(InputError, match="resnet9000"):
        table_runs(config, "camvid", "table1")
    config["tables"]["camvid"]["table1"].update(backbones=["lite0"], protocol="Z")
    with pytest.raises(InputError, match="no protocol 'Z'"):
        table_runs(config, "camvid", "table1")


def _metrics(tmp_path, name, **fields):
    m = {
        "run": name,
        "method": "nes",
        "dataset": "camvid",
        "train_dataset": "camvid",
        "protocol": "native",
        "backbone": "lite0",
        "K": 8,
        "alpha": 0.3,
        "beta": 2.56,
        "split": "val",
        **fields,
    }
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(m))
    return f


def test_table_mean_std_over_seeds_runs_csv_and_markdown(tmp_path):
    files = [
        _metrics(
            tmp_path,
            f"nes-s{seed}",
            seed=seed,
            acc=acc,
            miou=miou,
            miou_hungarian=0.3,
            crf={"acc": acc + 0.05, "miou": miou + 0.05, "miou_hungarian": 0.35},
        )
        for seed, (acc, miou) in enumerate([(0.70, 0.40), (0.80, 0.50)])
    ]
    files.append(
        _metrics(
            tmp_path, "kmeans-s0", method="kmeans", alpha=None, beta=None, seed=0, acc=0.6, miou=0.3, miou_hungarian=0.2
        )
    )
    table = write_table(files, tmp_path / "t.csv")
    runs = pd.read_csv(tmp_path / "t_runs.csv")
    assert len(runs) == 5 and runs.loc[runs["method"] == "nes", "acc"].tolist() == [70.0, 80.0, 75.0, 85.0]
    saved = pd.read_csv(tmp_path / "t.csv")
    nes = saved[(saved["method"] == "nes") & ~saved["crf"]].iloc[0]
    # the sample SD over seeds (ddof 1): 70 and 80 -> sqrt((5^2 + 5^2) / 1) = 7.07
    assert (nes["seeds"], nes["acc_mean"], nes["acc_std"], nes["miou_mean"], nes["miou_std"]) == (
        2,
        75.0,
        7.07,
        45.0,
        7.07,
    )
    assert len(saved) == 3 and saved["alpha"].isna().sum() == 1  # K-means has no alpha
    md = (tmp_path / "t.md").read_text()
    assert "| Ours | no | 2 | 75.0 ± 7.1 | 45.0 ± 7.1 | 30.0 ± 0.0 |" in md
    assert "| K-means | no | 1 | 60.0 | 30.0 | 20.0 |" in md  # one seed: no spread to show
    assert to_markdown(table).count("\n") == 2 + 3


def test_markdown_shows_the_swept_parameter(tmp_path):
    files = [
        _metrics(tmp_path, f"nes-a{a}", seed=0, alpha=a, acc=0.5, miou=0.4, miou_hungarian=0.3) for a in (0.0, 0.3)
    ]
    md = to_markdown(write_table(files, tmp_path / "t.csv"))
    assert md.splitlines()[0].startswith("| alpha | method |")
    assert "| 0 | Ours |" in md and "| 0.3 | Ours |" in md


def test_runs_off_the_defaults_are_rows_of_their_own(tmp_path):
    """Seeds of one setting are averaged; a run with other epochs is another row, not a seed."""
    files = [
        _metrics(tmp_path, f"nes-s{seed}", seed=seed, acc=0.5, miou=0.4 + seed / 10, miou_hungarian=0.3)
        for seed in (0, 1)
    ]
    files.append(
        _metrics(tmp_path, "nes-epochs10-s0", seed=0, settings="epochs=10", acc=0.6, miou=0.7, miou_hungarian=0.3)
    )
    table = write_table(files, tmp_path / "t.csv")
    assert sorted(zip(table["settings"], table["seeds"])) == [("", 2), ("epochs=10", 1)]
    md = to_markdown(table)
    assert md.splitlines()[0].startswith("| settings | method |")
    assert "| defaults | Ours | no | 2 |" in md and "| epochs=10 | Ours | no | 1 | 60.0 | 70.0 |" in md


def test_alignment_and_costs_join_the_rows(tmp_path):
    """The alignment.json files a table is given (beside their runs' metrics) and the fit costs
    become columns (means over seeds); the graph kind varies, so it leads the Markdown rows."""
    files = []
    for seed, cos in ((0, 0.6), (1, 0.8)):
        run = tmp_path / f"nes-gdataset-s{seed}" / "camvid-native"
        run.mkdir(parents=True)
        (run / "alignment.json").write_text(
            json.dumps(
                {
                    "partition": {"capture": cos - 0.2, "onehot_cos": cos, "perplexity": 50 + seed},
                    "logits": {"matched_abs_cos": cos, "principal_cos": cos + 0.1},
                    "random_input": {"matched_abs_cos": 0.1, "principal_cos": 0.4},
                }
            )
        )
        metrics = _metrics(
            tmp_path,
            f"nes-gdataset-s{seed}",
            seed=seed,
            graph="dataset",
            acc=0.5,
            miou=0.4,
            miou_hungarian=0.3,
            fit={
                "graph": {"wall_s": 100.0, "peak_rss_mb": 4000.0},
                "train": {"wall_s": 50.0 + seed, "peak_rss_mb": 2000.0},
            },
        )
        files.append(metrics.replace(run / "metrics.json"))
    files.append(
        _metrics(
            tmp_path,
            "spectral-s0",
            method="spectral",
            graph="exact",
            beta=None,
            seed=0,
            acc=0.6,
            miou=0.5,
            miou_hungarian=0.3,
            fit={
                "graph": {"wall_s": 20.0, "peak_rss_mb": 900.0},
                "train": {"wall_s": 70.0, "peak_rss_mb": 3000.0, "eigsh_s": 60.0},
            },
        )
    )
    without = write_table(files, tmp_path / "t.csv")  # alignments count only where the table asks for them
    assert without["capture"].isna().all()
    table = write_table(files, tmp_path / "t.csv", [f.with_name("alignment.json") for f in files[:2]])
    nes = table[table["method"] == "nes"].iloc[0]
    assert (nes["capture"], nes["onehot_cos"], nes["perplexity"], nes["logit_cos"], nes["graph_s"], nes["train_s"]) == (
        0.5,
        0.7,
        50.5,
        0.8,
        100.0,
        50.5,
    )
    assert table.loc[table["method"] == "spectral", "capture"].isna().all()
    md = to_markdown(table)
    assert md.splitlines()[0] == (
        "| graph | method | CRF | seeds | Acc | mIoU | mIoU (Hungarian) | capture | one-hot cos | perplexity "
        "| logit cos (diagnostic) | logit cos, random floor | graph (s) | graph peak (MB) | fit (s) "
        "| fit peak (MB) |"
    )
    assert (
        "| dataset | Ours | no | 2 | 50.0 ± 0.0 | 40.0 ± 0.0 | 30.0 ± 0.0 | 0.500 | 0.700 | 50.5 | 0.800 | "
        "0.400 | 100 | 4000 "
        "| 50 | 2000 |"
    ) in md
    assert "| exact | Spectral (exact, transductive) | no | 1 |" in md


def test_msrc_tables_train_on_their_batch_and_score_both_protocols(config):
    """MSRC-21's table1 and verdict: protocol A, its own training defaults (32 images x 20 epochs)
    under the short ids, and K = 21 runs beside K = 128 for the STEGO family's protocol."""
    t1 = {s.run: s for s in table_runs(config, "msrc", "table1")}
    nes = t1["nes-lite0-K128-a0.3-b0.16-s0"]
    assert (nes.psi.batch_size, nes.psi.epochs) == (32, 20) and nes.settings == ""
    assert nes.features == "results/msrc/features/lite0/train/train.json"
    assert table_evaluation(config, "msrc", "table1") == "msrc-A"
    verdict = {s.run for s in table_runs(config, "msrc", "verdict")}
    assert {
        "kmeans-dinov2_s14-K21-s2",
        "nes-lite0-K21-a0.3-b0.975238-s0",
        "spectral_inductive-lite0-K21-a0.3-A-s1",
    } <= verdict
    assert len(verdict) == 2 * 8 * 3 * 2


def test_a_table_counts_each_run_once_and_only_numbers(tmp_path):
    """The same metrics.json given twice, a copy of one run's metrics under another name, or a
    score that is not a number would each pass for another seed: refused, naming the file."""
    from pipeline.errors import InputError

    a = _metrics(tmp_path, "nes-s0", seed=0, acc=0.7, miou=0.4, miou_hungarian=0.3)
    b = _metrics(tmp_path, "nes-s1", seed=1, acc=0.8, miou=0.5, miou_hungarian=0.3)
    assert len(build_runs([a, b])) == 2
    with pytest.raises(InputError, match=r"nes-s0\.json: given twice"):
        build_runs([a, b, tmp_path / "." / "nes-s0.json"])
    copy = tmp_path / "copy.json"
    copy.write_text(a.read_text())
    with pytest.raises(InputError, match=r"run nes-s0 is scored twice on camvid-native"):
        build_runs([a, b, copy])
    nan = tmp_path / "nan.json"
    nan.write_text(a.read_text().replace('"miou": 0.4', '"miou": NaN').replace("nes-s0", "nes-s2"))
    with pytest.raises(InputError, match=r"nan\.json: miou not a number \(nan\)"):
        build_runs([a, nan])


def test_metrics_files_are_valid_json_even_with_non_finite_values(tmp_path):
    import math

    import numpy as np

    from pipeline.formats import read_json, write_json

    write_json(tmp_path / "m.json", {"miou": float("nan"), "iou": np.array([0.5, np.inf]), "k": np.float32(0.25)})
    assert read_json(tmp_path / "m.json") == {"miou": None, "iou": [0.5, None], "k": 0.25}
    assert math.isfinite(read_json(tmp_path / "m.json")["k"])
