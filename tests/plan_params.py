"""Every parameter string the workflow's rules receive for a configuration: what Snakemake
compares to decide a rerun. `tests/data/params_golden.json.gz` holds them as planned before the
typed run spec; test_spec.py checks they stay byte-identical."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import yaml

from pipeline import plan

REPO = Path(__file__).resolve().parents[1]


def config_as_golden() -> dict:
    """config/config.yaml with the defaults changed since the golden file was written set as they
    were then: a changed default changes parameters on purpose; the file guards the typed spec's
    rendering of them."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"]["monitor"] = 6
    for key in ("extract", "train"):
        config["datasets"]["camvid"].pop(key, None)
    return config


def golden_configs() -> dict[str, dict]:
    """The default config, the same with segmentations and runs off the defaults, and the
    workflow test's tiny config."""
    base = config_as_golden()
    extra = copy.deepcopy(base)
    extra["segmentations"] = {
        "camvid": {"backbones": ["lite0"], "methods": ["nes", "kmeans"], "seeds": [0, 1], "eigenfunctions": 4}
    }
    extra["tables"]["camvid"]["off_defaults"] = {
        "backbones": ["lite0", "dinov2_s14"],
        "methods": ["kmeans", "nes", "nes_star", "spectral", "spectral_inductive", "kmeans_transductive"],
        "seeds": [0],
        "sweep": {"epochs": [5, 10], "knn_k": [64], "image_centred": [False, True]},
    }
    extra["tables"]["camvid"]["beta_null"] = {
        "backbones": ["lite0"],
        "methods": ["nes"],
        "seeds": [3],
        "train": {"beta": None, "monitor": 0, "graph": "dataset"},
    }
    tiny = {
        "results": "results",
        "datasets": {
            "camvid": {
                "adapter": "camvid",
                "data_root": "data/camvid",
                "train_split": "train",
                "eval_split": "val",
                "train_view": {"mode": "resize", "size": [360, 480]},
                "protocols": {"native": {"mode": "resize", "size": [360, 480]}},
                "max_images": 6,
            }
        },
        "train": {"K": 8, "epochs": 1, "batch_size": 3, "knn_k": 16, "heads": 2, "dim_head": 16},
        "kmeans": {"niter": 5, "max_points": 1000},
        "evaluate": {"overlays": 1},
        "tables": {
            "camvid": {"table1": {"backbones": ["lite0"], "methods": ["kmeans", "nes", "nes_star"], "seeds": [0]}}
        },
    }
    merged_tiny = config_as_golden()
    from snakemake.utils import update_config

    update_config(merged_tiny, tiny)
    return {"default": base, "extended": extra, "tiny": merged_tiny}


def all_params(config: dict) -> dict[str, str]:
    """Job -> the canonical JSON its rule's `params.spec` carries, for every job the tables and
    segmentations of `config` plan."""
    out: dict[str, str] = {}
    runs = plan.all_runs(config)
    for (dataset, run), spec in runs.items():
        out[f"fit {dataset}/{run}"] = plan.as_param(spec)
    features = set()
    for folder, table in plan.all_tables(config):
        evaluation = plan.table_evaluation(config, folder, table)
        for spec in plan.table_runs(config, folder, table):
            ev = plan.evaluation_spec(config, spec, evaluation)
            out[f"evaluate {spec.dataset}/{spec.run}/{evaluation}"] = plan.as_param(ev)
            features.add(spec.features)
            if ev.features:
                features.add(ev.features)
        for path in plan.table_alignments(config, folder, table):
            run = Path(path).parents[1].name
            spec = next(s for s in plan.table_runs(config, folder, table) if s.run == run)
            out[f"align {path}"] = plan.as_param(plan.alignment_spec(config, spec, evaluation))
    for path, spec in plan.all_eigen(config).items():
        out[f"eigen {path}"] = plan.as_param(spec)
        features.add(spec.features)
    for path, spec in plan.all_nystrom(config).items():
        out[f"nystrom {path}"] = plan.as_param(spec)
    for path in sorted(features):
        dataset, _, backbone, view, split = Path(path).relative_to(config["results"]).with_suffix("").parts
        out[f"extract {path}"] = plan.as_param(plan.extraction_spec(config, dataset, backbone, view, split))
    for name in config.get("segmentations") or {}:
        entry = plan.segmentation_config(config, name)
        out[f"segment {name}"] = plan.as_param(plan.source_spec(config, entry["dataset"]))
    return out


def golden() -> dict[str, dict[str, str]]:
    with gzip.open(REPO / "tests" / "data" / "params_golden.json.gz", "rt") as fh:
        return json.load(fh)


if __name__ == "__main__":  # wrote the golden file, once, before the typed run spec
    golden = {name: all_params(cfg) for name, cfg in golden_configs().items()}
    with gzip.open(REPO / "tests" / "data" / "params_golden.json.gz", "wt") as fh:
        json.dump(golden, fh, sort_keys=True, indent=0)
    print({k: len(v) for k, v in golden.items()})
