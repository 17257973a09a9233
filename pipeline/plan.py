"""From the config to the jobs: run ids, evaluations, tables and the exact parameters each stage
depends on.

A run id is readable and derived from the parameters that define it, e.g.
`nes-lite0-K128-a0.3-b0.16-s0`, so reruns land in the same place and sweeps sort together; every
other setting a run depends on that is off its dataset's defaults joins the id
(`nes-lite0-K128-a0.3-b0.16-epochs10-knn_k64-s0`), so no two settings share a folder. Runs
live under their training dataset (`results/{dataset}/runs/{run}`); an evaluation of a run on a
dataset under one of its protocols is `{run dir}/{dataset}-{protocol}/metrics.json`, so one run
serves every table and protocol that needs it (and a zero-shot run is evaluated on other
datasets). Each rule receives only the parameters its output depends on (through Snakemake
`params:`): a changed beta retrains and re-evaluates but never re-extracts, a changed protocol
re-evaluates only.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from . import paths
from .configcheck import SCHEMA, check_config, check_train, load_yaml
from .errors import InputError
from .spec import (
    BASELINE,
    EigenRef,
    EvaluationSpec,
    ExtractSpec,
    KMeansSettings,
    Method,
    NystromRef,
    ReadOut,
    RunSpec,
    TrainSettings,
    canonical_json,
    fmt,
    read_out_of,
    resolved_beta,
)

DEFAULT_CONFIG = SCHEMA.parents[2] / "config" / "config.yaml"
TRAIN_VIEW = "train"  # the view name of training caches; protocols name the evaluation views
# what reading a dataset's images depends on (not its protocols, training overrides or splits)
SOURCE_KEYS = ("name", "adapter", "data_root", "max_images", "label_dir", "class_names", "unknown_labels")


def dataset_spec(config: dict, dataset: str) -> dict:
    if dataset not in config["datasets"]:
        raise InputError(f"datasets: no dataset {dataset!r} in the config (have: {', '.join(config['datasets'])})")
    return {"name": dataset, **config["datasets"][dataset]}


def source_spec(config: dict, dataset: str) -> dict:
    ds = dataset_spec(config, dataset)
    return {k: ds[k] for k in SOURCE_KEYS if k in ds}


def backbone_spec(config: dict, backbone: str) -> dict:
    if backbone not in config["backbones"]:
        raise InputError(f"backbones: no backbone {backbone!r} in the config (have: {', '.join(config['backbones'])})")
    return {"weights_dir": config.get("weights_dir", "weights"), **config["backbones"][backbone]}


def view_config(config: dict, dataset: str, view: str) -> dict:
    ds = dataset_spec(config, dataset)
    if view == TRAIN_VIEW:
        return dict(ds["train_view"])
    protocols = ds.get("protocols") or {}
    if view not in protocols:
        raise InputError(f"datasets.{dataset}.protocols: no protocol {view!r} (have: {', '.join(protocols) or 'none'})")
    return dict(protocols[view])


def features_path(config: dict, dataset: str, backbone: str, view: str, split: str) -> str:
    return paths.fill(
        paths.FEATURES, results=config["results"], dataset=dataset, backbone=backbone, view=view, split=split
    )


def graph_path(config: dict, dataset: str, backbone: str, view: str, split: str) -> str:
    return paths.fill(
        paths.GRAPH, results=config["results"], dataset=dataset, backbone=backbone, view=view, split=split
    )


def shard_count(config: dict, dataset: str) -> int:
    return int(_extract_config(config, dataset).get("shards", 1))


def feature_shards(config: dict, manifest: str) -> list[str]:
    """The shard manifests of the cache a features manifest describes: an input of every job that
    reads the cache, so a job that must run re-extracts a deleted cache first (its manifest,
    still present, would otherwise be trusted)."""
    where = paths.parse(paths.FEATURES, manifest)
    n = shard_count(config, where["dataset"])
    return [paths.fill(paths.FEATURE_SHARD, **where, shard=i, shards=n) for i in range(n)]


def _extract_config(config: dict, dataset: str) -> dict:
    return {**config["extract"], **(dataset_spec(config, dataset).get("extract") or {})}


def extraction_spec(config: dict, dataset: str, backbone: str, view: str, split: str) -> ExtractSpec:
    ext = _extract_config(config, dataset)
    train = view == TRAIN_VIEW
    spec = view_config(config, dataset, view)
    if spec["mode"] == "sliding":
        raise InputError(
            f"datasets.{dataset}.protocols.{view}: sliding-window protocols are evaluated live, not cached"
        )
    return ExtractSpec(
        source=source_spec(config, dataset),
        backbone_spec=backbone_spec(config, backbone),
        split=split,
        view={k: v for k, v in spec.items() if k not in SCORING_KEYS},  # scoring options do not change features
        views=int(ext["views"]) if train else 1,
        scale=tuple(ext["scale"]),
        flip=ext["flip"],
        seed=ext["seed"],
        batch_size=ext["batch_size"],
        device=config["device"],
    )


# training keys named in every id of a method (K, alpha, beta, graph); any other key a method
# depends on (Method.traits.depends_on) that differs from the dataset's defaults joins the id
ID_KEYS = ("K", "alpha", "beta", "graph")


def _slug(value: Any) -> str:
    """A setting's value as part of a path: 0.003, none, 10x2_5x0.1 (pixel_knn's pairs)."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        nested = any(isinstance(v, (list, tuple)) for v in value)
        return ("_" if nested else "x").join(_slug(v) for v in value)
    return fmt(value)


def nondefault_settings(method: Method, train: dict, defaults: dict) -> dict[str, Any]:
    """The training settings a run of `method` depends on that differ from the dataset's
    defaults (and are not already in every id): a sweep over any of them keeps every value."""
    wanted = method.traits.depends_on
    keys = sorted(k for k in train if k not in ID_KEYS) if wanted is None else sorted(wanted)
    beyond = TrainSettings.BEYOND_PAPER
    return {k: train[k] for k in keys if k in train and train[k] != defaults.get(k, beyond.get(k))}


def settings_suffix(settings: dict[str, Any]) -> str:
    return "".join(f"-{key}{_slug(value)}" for key, value in settings.items())


def settings_label(settings: dict[str, Any]) -> str:
    """What tables show and group by: `epochs=10 knn_k=64`."""
    return " ".join(f"{key}={_slug(value)}" for key, value in settings.items())


def run_id(
    method: Method,
    backbone: str,
    train: dict,
    seed: int,
    protocol: str | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    """The method's id format (Method.traits.run_id) filled in; default runs keep short ids and
    `settings` (nondefault_settings) are appended before the seed."""
    graph = "-gdataset" if train.get("graph", "batch") == "dataset" else ""  # batch graphs keep the short ids
    return method.traits.run_id.format(
        method=method,
        backbone=backbone,
        K=train["K"],
        alpha=fmt(float(train["alpha"])) if "alpha" in train else "",
        beta=fmt(resolved_beta(train.get("beta"), int(train["K"]), train.get("output", "onehot"))),
        graph=graph,
        protocol=protocol,
        extra=settings_suffix(settings or {}),
        seed=seed,
    )


def table_config(config: dict, folder: str, table: str) -> dict:
    tables = config.get("tables") or {}
    if table not in (tables.get(folder) or {}):
        have = [f"{f}/{t}" for f, ts in tables.items() for t in (ts or {})]
        raise InputError(f"tables: no table {folder}/{table} in the config (have: {', '.join(have)})")
    merged = {
        **(config.get("table_defaults") or {}),
        **tables[folder][table],
        "folder": folder,
        "where": f"tables.{folder}.{table}",
    }
    merged.setdefault("dataset", folder)
    missing = [k for k in ("backbones", "methods", "seeds") if not merged.get(k)]
    if missing:
        raise InputError(f"tables.{folder}.{table}: needs {', '.join(missing)} (or table_defaults for them)")
    if "protocol" not in merged:
        protocols = list(dataset_spec(config, folder).get("protocols") or {})
        if not protocols:
            raise InputError(f"tables.{folder}.{table}: dataset {folder} declares no protocols to evaluate with")
        merged["protocol"] = protocols[0]
    view_config(config, folder, merged["protocol"])  # fails early on an unknown protocol
    evaluated = dataset_spec(config, folder)
    if evaluated.get("adapter") == "folder" and not evaluated.get("label_dir"):
        raise InputError(
            f"tables.{folder}.{table}: dataset {folder} is a folder of images without label_dir: nothing to score "
            "a table against (segment it with `segmentations:` instead)"
        )
    return merged


def reproduction_tables(config: dict) -> list[tuple[str, str]]:
    """The tables of `reproduction:` as (folder, table), each refused by name unless configured."""
    out = []
    for entry in config.get("reproduction") or []:
        folder, table = entry.split("/", 1)
        table_config(config, folder, table)  # names the tables there are, when it is not one
        out.append((folder, table))
    return out


def all_tables(config: dict) -> list[tuple[str, str]]:
    return [(folder, table) for folder, ts in (config.get("tables") or {}).items() for table in (ts or {})]


def table_runs(config: dict, folder: str, table: str) -> list[RunSpec]:
    """All run specs of one table: its backbones x methods x seeds x sweep grid (sweeps declared
    in config)."""
    return grid_runs(config, table_config(config, folder, table))


def segmentation_config(config: dict, name: str) -> dict:
    entries = config.get("segmentations") or {}
    if name not in entries:
        raise InputError(f"segmentations: no entry {name!r} in the config (have: {', '.join(entries) or 'none'})")
    merged = {"methods": ["nes"], "seeds": [0], **entries[name], "where": f"segmentations.{name}"}
    merged.setdefault("dataset", name)
    merged.setdefault("split", dataset_spec(config, merged["dataset"])["eval_split"])
    if not merged.get("backbones"):
        raise InputError(f"segmentations.{name}: needs backbones")
    return merged


def segmentation_outputs(config: dict, name: str) -> list[str]:
    """One folder of label PNGs, overlays (and eigenfunction maps) per run of the entry."""
    return [
        paths.fill(paths.SEGMENTATION, results=config["results"], dataset=spec.dataset, run=spec.run)
        for spec in grid_runs(config, segmentation_config(config, name))
    ]


def grid_runs(config: dict, tcfg: dict) -> list[RunSpec]:
    """Backbones x methods x seeds x sweep values; a run that a sweep does not change (K-means
    vs alpha) is one run, and every value of a setting a run depends on is a run of its own."""
    sweep = tcfg.get("sweep") or {}
    keys = list(sweep)
    specs: dict[str, RunSpec] = {}
    for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
        train = copy.deepcopy(config["train"])
        train.update(dataset_spec(config, tcfg["dataset"]).get("train") or {})
        train.update(tcfg.get("train") or {})
        train.update(dict(zip(keys, values)))
        where = tcfg.get("where", "tables")
        check_train(train, f"{where}.sweep {dict(zip(keys, values))} -> train" if keys else f"{where}.train")
        for backbone in tcfg["backbones"]:
            for name in tcfg["methods"]:
                method = Method.parse(name, f"{where}.methods")
                for seed in tcfg["seeds"]:
                    evaluation = (tcfg["folder"], tcfg["protocol"]) if "folder" in tcfg else None
                    spec = make_spec(config, tcfg["dataset"], backbone, method, train, int(seed), evaluation)
                    if specs.setdefault(spec.run, spec) != spec:  # the id misses a setting: never merge silently
                        raise InputError(f"{where}: run {spec.run} planned twice with different settings")
    return list(specs.values())


def table_evaluation(config: dict, folder: str, table: str) -> str:
    return f"{folder}-{table_config(config, folder, table)['protocol']}"


def table_metrics(config: dict, folder: str, table: str) -> list[str]:
    evaluation = table_evaluation(config, folder, table)
    return [metrics_path(config, spec, evaluation) for spec in table_runs(config, folder, table)]


def table_counts(config: dict, folder: str, table: str) -> list[str]:
    """The per-image counts beside every run's metrics: what the margins' intervals resample."""
    evaluation = table_evaluation(config, folder, table)
    return [
        paths.fill(
            paths.PER_IMAGE, results=config["results"], dataset=spec.dataset, run=spec.run, evaluation=evaluation
        )
        for spec in table_runs(config, folder, table)
    ]


def table_alignments(config: dict, folder: str, table: str) -> list[str]:
    """A table with the exact `spectral` reference also measures how well every run's partition
    serves the evaluated split's G, and how close each psi comes to its eigenvectors
    (alignment.json beside each run's metrics)."""
    if Method.SPECTRAL not in table_config(config, folder, table)["methods"]:
        return []
    evaluation = table_evaluation(config, folder, table)
    return [alignment_path(config, spec, evaluation) for spec in table_runs(config, folder, table)]


def alignment_path(config: dict, spec: RunSpec, evaluation: str) -> str:
    return paths.fill(
        paths.ALIGNMENT, results=config["results"], dataset=spec.dataset, run=spec.run, evaluation=evaluation
    )


def eigen_spec(
    config: dict, dataset: str, backbone: str, protocol: str, train: dict, split: str | None = None
) -> EigenRef:
    """The exact top-K eigenvectors of G over a split of `dataset` (default: its evaluation split)
    under the view `protocol` (or the training view) (rule `eigenvectors`), from its dataset-wide
    graph (rule `build_graph`)."""
    split = split or dataset_spec(config, dataset)["eval_split"]
    if view_config(config, dataset, protocol)["mode"] == "sliding":
        raise InputError(
            f"datasets.{dataset}.protocols.{protocol}: the spectral reference needs a cached (single-pass) "
            "protocol; sliding windows are evaluated live"
        )
    k, alpha = int(train["K"]), float(train["alpha"])
    extra = settings_suffix(nondefault_settings(Method.SPECTRAL, train, default_train(config, dataset)))
    where = {"results": config["results"], "dataset": dataset, "backbone": backbone, "view": protocol, "split": split}
    return EigenRef(
        path=paths.fill(paths.EIGEN, **where, reference=paths.reference_name(k, fmt(alpha), extra)),
        graph=paths.fill(paths.GRAPH, **where),
        features=features_path(config, dataset, backbone, protocol, split),
        K=k,
        alpha=alpha,
        pixel_knn=tuple((n, w) for n, w in train["pixel_knn"]),
    )


def nystrom_spec(
    config: dict, train_dataset: str, backbone: str, evaluation: tuple[str, str], train: dict
) -> NystromRef:
    """The training split's exact eigenvectors (of `train_dataset` under its training view) extended
    to every token of the evaluated split by the Nystrom formula (rule `nystrom`)."""
    dataset, protocol = evaluation
    eigen = eigen_spec(
        config, train_dataset, backbone, TRAIN_VIEW, train, dataset_spec(config, train_dataset)["train_split"]
    )
    split = dataset_spec(config, dataset)["eval_split"]
    extra = settings_suffix(nondefault_settings(Method.SPECTRAL_INDUCTIVE, train, default_train(config, train_dataset)))
    return NystromRef(
        path=paths.fill(
            paths.NYSTROM,
            results=config["results"],
            dataset=dataset,
            backbone=backbone,
            view=protocol,
            split=split,
            source=train_dataset,
            reference=paths.reference_name(eigen.K, fmt(eigen.alpha), extra),
        ),
        eigen=eigen,
        features=features_path(config, dataset, backbone, protocol, split),
        k=int(train["knn_k"]),
        graph=dict(config.get("graph") or {}),
    )


def default_train(config: dict, dataset: str) -> dict:
    return {**config["train"], **(dataset_spec(config, dataset).get("train") or {})}


def alignment_spec(config: dict, spec: RunSpec, evaluation: str) -> EigenRef:
    """The evaluated split's eigen reference a run is measured on: the run's K, alpha and pixel
    graph, the dataset's defaults where the run has none (K-means runs have no alpha)."""
    dataset, protocol = evaluation.rsplit("-", 1)
    own: dict[str, Any] = spec.train.to_dict() if spec.train is not None else {"K": spec.K}
    if spec.train is None and spec.alpha is not None:
        own["alpha"] = spec.alpha
    return eigen_spec(config, dataset, spec.backbone, protocol, {**default_train(config, dataset), **own})


def all_eigen(config: dict) -> dict[str, EigenRef]:
    """Eigenvector reference path -> its spec, over every spectral run and alignment of the tables."""
    out: dict[str, EigenRef] = {}
    for folder, table in all_tables(config):
        evaluation = table_evaluation(config, folder, table)
        for spec in table_runs(config, folder, table):
            wanted = [spec.eigen] if spec.eigen is not None else []
            if Method.SPECTRAL in table_config(config, folder, table)["methods"]:
                wanted.append(alignment_spec(config, spec, evaluation))
            for eig in wanted:
                if out.setdefault(eig.path, eig) != eig:
                    raise InputError(
                        f"tables.{folder}.{table}: {eig.path} is wanted with different pixel graphs "
                        "(train.pixel_knn differs between tables but is not part of its name)"
                    )
    return out


def all_nystrom(config: dict) -> dict[str, NystromRef]:
    """Nystrom extension path -> its spec, over every spectral_inductive run of the tables."""
    return {
        spec.nystrom.path: spec.nystrom
        for folder, table in all_tables(config)
        for spec in table_runs(config, folder, table)
        if spec.nystrom is not None
    }


def run_dir(config: dict, spec: RunSpec) -> str:
    return paths.fill(paths.RUN, results=config["results"], dataset=spec.dataset, run=spec.run)


def kmeans_twin_of(runs: dict[tuple[str, str], RunSpec], spec: RunSpec) -> RunSpec | None:
    """The baseline run of the same dataset, backbone, K and seed, when planned: its sample
    predictions join `spec`'s evaluation report."""
    twin = run_id(BASELINE, spec.backbone, {"K": spec.K}, spec.seed)
    return None if twin == spec.run else runs.get((spec.dataset, twin))


def metrics_path(config: dict, spec: RunSpec, evaluation: str) -> str:
    return paths.fill(
        paths.METRICS, results=config["results"], dataset=spec.dataset, run=spec.run, evaluation=evaluation
    )


def make_spec(
    config: dict,
    dataset: str,
    backbone: str,
    method: Method | str,
    train: dict,
    seed: int,
    evaluation: tuple[str, str] | None = None,
) -> RunSpec:
    """One run from its dataset's, backbone's and merged training settings. `evaluation` =
    (dataset, protocol) of the table: where methods that fit on the evaluated split are fit (the
    evaluated split itself, not the training dataset) and filed."""
    method = Method.parse(method, "tables.*.methods")
    traits = method.traits
    settings = nondefault_settings(method, train, default_train(config, dataset))
    common: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "backbone": backbone,
        "K": int(train["K"]),
        "backbone_spec": backbone_spec(config, backbone),
        "device": config["device"],
        "settings": settings_label(settings),
    }
    if traits.evaluated_split:
        target, protocol = _evaluated(method, evaluation)
        split = dataset_spec(config, target)["eval_split"]
        view = {k: v for k, v in view_config(config, target, protocol).items() if k not in SCORING_KEYS}
        placed: dict[str, Any] = {
            "dataset": target,
            "source": source_spec(config, target),
            "train_split": split,
            "train_view": view,
            "evaluation": f"{target}-{protocol}",
            "kmeans": KMeansSettings.from_dict(config["kmeans"]),
        }
        run = run_id(method, backbone, train, seed, protocol, settings)
        if not traits.eigen:  # K-means on the evaluated split itself
            return RunSpec(
                run=run, features=features_path(config, target, backbone, protocol, split), **placed, **common
            )
        nystrom = nystrom_spec(config, dataset, backbone, (target, protocol), train) if traits.nystrom else None
        eigen = nystrom.eigen if nystrom is not None else eigen_spec(config, target, backbone, protocol, train)
        return RunSpec(
            run=run,
            features=eigen.features,
            alpha=eigen.alpha,
            eigen=eigen,
            nystrom=nystrom,
            **{**placed, **common, "K": eigen.K},
        )
    ds = dataset_spec(config, dataset)
    psi = TrainSettings.from_dict(train) if traits.uses_psi else None
    return RunSpec(
        run=run_id(method, backbone, train, seed, settings=settings),
        dataset=dataset,
        source=source_spec(config, dataset),
        train_split=ds["train_split"],
        train_view=ds["train_view"],
        features=features_path(config, dataset, backbone, TRAIN_VIEW, ds["train_split"]),
        alpha=psi.alpha if psi is not None else None,
        train=psi,
        # K-means settings for the runs read out by K-means centres (spec.read_out_of)
        kmeans=KMeansSettings.from_dict(config["kmeans"]) if read_out_of(method, psi) is ReadOut.CENTRES else None,
        graph=graph_path(config, dataset, backbone, TRAIN_VIEW, ds["train_split"])
        if psi is not None and psi.graph == "dataset" and traits.learns_psi
        else None,
        heldout=heldout_features(config, dataset, backbone)
        if psi is not None and psi.monitor and traits.learns_psi
        else None,
        nes_run=run_id(traits.psi_from, backbone, train, seed, settings=settings) if traits.psi_from else None,
        **common,
    )


# view options that change scoring, not features
SCORING_KEYS = ("labels", "crf")


def _evaluated(method: Method, evaluation: tuple[str, str] | None) -> tuple[str, str]:
    if evaluation is None:
        raise InputError(
            f"method {method} labels the split a table evaluates (or is fit on it): use it in tables, not segmentations"
        )
    return evaluation


def heldout_features(config: dict, dataset: str, backbone: str) -> str | None:
    """The evaluation split's cache under the dataset's first cached protocol: where the training
    monitor takes its held-out kernel (None when every protocol slides windows)."""
    ds = dataset_spec(config, dataset)
    for protocol, view in (ds.get("protocols") or {}).items():
        if view["mode"] != "sliding":
            return features_path(config, dataset, backbone, protocol, ds["eval_split"])
    return None


def evaluation_spec(config: dict, spec: RunSpec, evaluation: str) -> EvaluationSpec:
    """What `evaluate` needs for one run on `{dataset}-{protocol}`: the dataset's images and
    label set, the protocol's view, and the cached features unless the protocol slides windows."""
    dataset, protocol = evaluation.rsplit("-", 1)
    ds = dataset_spec(config, dataset)
    view = view_config(config, dataset, protocol)
    cached = view["mode"] != "sliding"
    return EvaluationSpec(
        source=source_spec(config, dataset),
        split=ds["eval_split"],
        protocol=protocol,
        view=view,
        features=features_path(config, dataset, spec.backbone, protocol, ds["eval_split"]) if cached else None,
        overlays=config["evaluate"]["overlays"],
        batch_size=config["evaluate"].get("batch_size", 8),
        device=config["device"],
    )


def all_runs(config: dict) -> dict[tuple[str, str], RunSpec]:
    """(dataset, run id) -> spec over every table; one run shared by several tables is one job."""
    runs: dict[tuple[str, str], RunSpec] = {}
    grids = [table_config(config, folder, table) for folder, table in all_tables(config)]
    grids += [segmentation_config(config, name) for name in config.get("segmentations") or {}]
    for grid in grids:
        for spec in grid_runs(config, grid):
            key = (spec.dataset, spec.run)
            if key in runs and runs[key] != spec:
                new, old = spec.to_dict(), runs[key].to_dict()
                differ = sorted(k for k in {**new, **old} if new.get(k) != old.get(k))
                raise InputError(
                    f"tables: run {spec.run} is declared twice with different parameters ({', '.join(differ)})"
                )
            runs[key] = spec
    return runs


def as_param(obj: Any) -> str:
    """Canonical JSON: what Snakemake compares to decide whether parameters changed."""
    return (
        obj.to_json() if hasattr(obj, "to_json") else canonical_json(obj.to_dict() if hasattr(obj, "to_dict") else obj)
    )


def check_files(paths: list[str | Path], default: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """What `snakemake --configfile A B` would plan with, checked: the default configuration with
    each file merged over it in order, validated key by key and run by run."""
    from snakemake.utils import update_config

    config = load_yaml(default)
    for path in paths:
        update_config(config, load_yaml(path))
    check_config(config)
    all_runs(config)
    return config
