"""From the config to the jobs: run ids and the exact parameters each stage depends on.

A run id is readable and derived from the parameters that define it, e.g.
`nes-lite0-K128-a0.3-b0.16-s0`, so reruns land in the same place and sweeps sort together. Each
rule receives only the parameters its output depends on (through Snakemake `params:`), so a
changed beta retrains and re-evaluates but never re-extracts.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from .eigenfunctions import default_beta
from .errors import InputError

METHODS = ("kmeans", "nes", "nes_star")


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def dataset_spec(config: dict, dataset: str) -> dict:
    if dataset not in config["datasets"]:
        raise InputError(f"datasets: no dataset {dataset!r} in the config (have: {', '.join(config['datasets'])})")
    return {"name": dataset, **config["datasets"][dataset]}


def backbone_spec(config: dict, backbone: str) -> dict:
    if backbone not in config["backbones"]:
        raise InputError(f"backbones: no backbone {backbone!r} in the config (have: {', '.join(config['backbones'])})")
    return {"weights_dir": config.get("weights_dir", "weights"), **config["backbones"][backbone]}


def features_path(config: dict, dataset: str, backbone: str, split: str) -> str:
    return f"{config['results']}/{dataset}/features/{backbone}/{split}.json"


def extraction_spec(config: dict, dataset: str, backbone: str, split: str) -> dict:
    ds = dataset_spec(config, dataset)
    ext = config["extract"]
    train = split == ds["train_split"]
    return {
        "dataset_spec": ds, "backbone_spec": backbone_spec(config, backbone), "split": split,
        "input_size": ds["input_size"], "views": int(ext["views"]) if train else 1,
        "scale": ext["scale"], "flip": ext["flip"], "seed": ext["seed"], "batch_size": ext["batch_size"],
        "device": config["device"],
    }


def run_id(method: str, backbone: str, train: dict, seed: int) -> str:
    if method == "kmeans":
        return f"kmeans-{backbone}-K{train['K']}-s{seed}"
    beta = train["beta"] if train.get("beta") is not None else default_beta(int(train["K"]))
    return f"{method}-{backbone}-K{train['K']}-a{_fmt(float(train['alpha']))}-b{_fmt(round(beta, 6))}-s{seed}"


def table_runs(config: dict, table: str) -> list[dict]:
    """All run specs of one table: its methods x seeds x sweep grid (sweeps declared in config)."""
    tables = config.get("tables", {})
    if table not in tables:
        raise InputError(f"tables: no table {table!r} in the config (have: {', '.join(tables)})")
    tcfg = tables[table]
    sweep = tcfg.get("sweep") or {}
    keys = list(sweep)
    specs: dict[str, dict] = {}  # by run id: a run that a sweep does not change (K-means vs alpha) is one run
    for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
        train = copy.deepcopy(config["train"])
        train.update(tcfg.get("train", {}))
        train.update(dict(zip(keys, values)))
        for method in tcfg["methods"]:
            for seed in tcfg["seeds"]:
                spec = make_spec(config, tcfg["dataset"], tcfg["backbone"], method, train, int(seed))
                specs.setdefault(spec["run"], spec)
    return list(specs.values())


def make_spec(config: dict, dataset: str, backbone: str, method: str, train: dict, seed: int) -> dict:
    if method not in METHODS:
        raise InputError(f"tables.*.methods: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    ds = dataset_spec(config, dataset)
    spec: dict[str, Any] = {
        "run": run_id(method, backbone, train, seed), "method": method, "seed": seed,
        "dataset": dataset, "backbone": backbone, "dataset_spec": ds,
        "backbone_spec": backbone_spec(config, backbone),
        "features": features_path(config, dataset, backbone, ds["train_split"]),
        "device": config["device"],
    }
    if method == "kmeans":
        spec["train"] = {"K": train["K"]}
        spec["kmeans"] = config["kmeans"]
    else:
        spec["train"] = train
    if method == "nes_star":
        spec["kmeans"] = config["kmeans"]
        spec["nes_run"] = run_id("nes", backbone, train, seed)
    return spec


def all_runs(config: dict) -> dict[tuple[str, str], dict]:
    """(dataset, run id) -> spec over every table; one run shared by several tables is one job."""
    runs: dict[tuple[str, str], dict] = {}
    for table in config.get("tables", {}):
        for spec in table_runs(config, table):
            key = (spec["dataset"], spec["run"])
            if key in runs and runs[key] != spec:
                raise InputError(f"tables: run {spec['run']} is declared twice with different parameters")
            runs[key] = spec
    return runs


def as_param(obj: Any) -> str:
    """Canonical JSON: what Snakemake compares to decide whether parameters changed."""
    return json.dumps(obj, sort_keys=True)
