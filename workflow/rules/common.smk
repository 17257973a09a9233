# Shared by the rule files. The plan of runs and tables, and the functions rules call to look up
# their inputs and parameters (the work itself is in the `pipeline` package).
import hashlib
import os
import sys
from pathlib import Path

from pipeline import paths
from pipeline.formats import write_text
from snakemake.exceptions import WorkflowError
from pipeline.plan import (
    alignment_spec,
    all_eigen,
    all_nystrom,
    all_runs,
    all_tables,
    as_param,
    reproduction_tables,
    evaluation_spec,
    extraction_spec,
    feature_shards,
    kmeans_twin_of,
    run_dir,
    segmentation_config,
    segmentation_outputs,
    source_spec,
    table_alignments,
    table_counts,
    table_metrics,
)
from pipeline.spec import Method

# `nes` (the package's entry point) beside the interpreter that runs Snakemake is found without
# activating its environment; with --sdm conda the rule's environment comes first.
os.environ["PATH"] = (
    f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)

RESULTS = config["results"]


def path(pattern, **values):
    """A pattern of pipeline.paths as a rule's input, output or log: the results folder (and
    `values`) filled, the other wildcards left to the rule."""
    return paths.partial(pattern, results=RESULTS, **values)


def filled(pattern, w, **values):
    """The one file a pattern names for a job's wildcards `w`."""
    return paths.fill(pattern, results=RESULTS, **{**dict(w.items()), **values})


RESULTS_LOCK = []


def hold_results_lock():
    """One running workflow per results folder: a second one (from another working directory,
    which Snakemake's own lock does not see) would rerun, and on failure delete, the first one's
    outputs. Called by `onstart` (a real run's main process, before any job; not dry runs, not
    cluster jobs) and held until the process exits."""
    from filelock import FileLock, Timeout

    Path(RESULTS).mkdir(parents=True, exist_ok=True)
    lock = FileLock(Path(RESULTS) / ".workflow.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise WorkflowError(
            f"{RESULTS}: another snakemake run is writing this results folder (lock {lock.lock_file}); "
            "wait for it to finish, or give this run its own `results:`"
        ) from None
    RESULTS_LOCK.append(lock)


RUNS = all_runs(config)
TABLES = all_tables(config)
REPRODUCTION = reproduction_tables(config)
EIGEN = all_eigen(config)
NYSTROM = all_nystrom(config)
# one conda environment for every rule under `--sdm conda` (path relative to the rule files); its
# post-deploy script pip-installs this package, so pyproject.toml stays the one place versions live
ENV = "../envs/neural-eigenseg.yaml"
# SLURM partitions, chosen by whether a job asks for a GPU (`slurm:` in the config)
SLURM = {"cpu_partition": "cpu", "gpu_partition": "gpu", **(config.get("slurm") or {})}


# every command logs to the rule's log; when it fails, its one-line reason (naming the file or
# key at fault) is also printed on the console above Snakemake's report of the job
NES = "nes --threads {threads} --log {log:q}"
# the run ids each fitting job takes: psi is trained (train), every other method clustered (fit_kmeans)
TRAINED = "|".join(m for m in Method if m.traits.learns_psi)
CLUSTERED = "|".join(m for m in Method if not m.traits.learns_psi)


def spec_file(obj):
    """`obj`'s canonical JSON (the rule's `spec` parameter, which decides reruns) in a file named
    by its hash under {results}/.specs: what the command reads, so that a plan prints a short path
    instead of a kilobyte of JSON. Written once, atomically; safe to delete (the next plan
    rewrites it)."""
    text = as_param(obj)
    path = (
        Path(RESULTS)
        / ".specs"
        / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    )
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return str(path)


def partition(gpu):
    return SLURM["gpu_partition"] if gpu else SLURM["cpu_partition"]


def cache_markers(manifest):
    """The shard manifests of the cache behind a features manifest (plan.feature_shards)."""
    return feature_shards(config, manifest)


def shard_manifests(w):
    return cache_markers(filled(paths.FEATURES, w))


DATASETS = {}
DATA_INDEXES = {}


def loaded_dataset(dataset, split):
    """The split as its adapter reads it, once per plan; loading checks that the images are where
    the config says (the error names the layout expected), so a dry run finds a missing dataset.
    """
    from pipeline.datasets import load_dataset

    if (dataset, split) not in DATASETS:
        DATASETS[(dataset, split)] = load_dataset(source_spec(config, dataset), split)
    return DATASETS[(dataset, split)]


def data_index(dataset, split, parts, outputs):
    """The split's data index files (pipeline.dataindex) for `parts`, brought up to date while the
    jobs are planned: an input of every job that reads the data, so an added, removed, replaced or
    relabelled file reruns it. A job whose JSON output exists from before data tracking gets no
    index (a new input would rerun all finished work once): an output made afresh is tracked.
    """
    from pipeline.dataindex import tracked, update_index

    ds = loaded_dataset(dataset, split)
    if "labels" in parts:
        ds.check_labelled()  # found while planning, not after extraction and training
    if not tracked(outputs):
        return []
    indexes = []
    for part in parts:
        if (dataset, split, part) not in DATA_INDEXES:
            DATA_INDEXES[(dataset, split, part)] = str(
                update_index(
                    ds,
                    part,
                    paths.fill(paths.DATA_INDEX, results=RESULTS, dataset=dataset),
                )
            )
        indexes.append(DATA_INDEXES[(dataset, split, part)])
    return indexes


def extraction_data(w):
    return data_index(w.dataset, w.split, ["images"], [filled(paths.FEATURE_SHARD, w)])


def evaluation_data(w):
    """Labels always; images too when the protocol reads them live (a cached one reads the
    cache, whose shards are inputs already)."""
    dataset = w.evaluation.rsplit("-", 1)[0]
    metrics = filled(paths.METRICS, w)
    parts = ["labels"] if evaluation(w).features else ["images", "labels"]
    return data_index(dataset, evaluation(w).split, parts, [metrics])


def segmentation_data(w):
    folder = Path(filled(paths.SEGMENTATION, w))
    if folder.is_dir() and not (folder / "summary.json").is_file():
        return []  # segmented before data tracking
    return data_index(
        w.dataset,
        segmentation_for(w)["split"],
        ["images"],
        [str(folder / "summary.json")],
    )


def data_option(paths):
    """The commands' `--data` options for a job's data index inputs (none when untracked)."""
    return [x for p in paths for x in ("--data", p)]


def run_spec(w):
    return RUNS[(w.dataset, w.run)]


def kmeans_inputs(w):
    """nes_star clusters psi's hidden features, so it also needs the nes run it builds on;
    spectral methods cluster exact eigenvectors (and their Nystrom extension)."""
    spec = run_spec(w)
    if spec.eigen is not None:
        inputs = {"eigen": spec.eigen.path, "graph": spec.eigen.graph}
        if spec.nystrom is not None:
            inputs["nystrom"] = spec.nystrom.path
        return inputs
    inputs = {"features": spec.features, "cache": cache_markers(spec.features)}
    if spec.nes_run is not None:
        inputs["nes"] = filled(paths.MODEL, w, run=spec.nes_run)
    return inputs


def evaluation(w):
    return evaluation_spec(config, RUNS[(w.dataset, w.run)], w.evaluation)


def evaluation_needs_gpu(w):
    """Sliding-window protocols run the backbone live; cached ones do not."""
    return 0 if evaluation(w).features else 1


def kmeans_twin(w):
    """The evaluation folder of the run's K-means twin (plan.kmeans_twin_of), if planned."""
    twin = kmeans_twin_of(RUNS, RUNS[(w.dataset, w.run)])
    return (
        None
        if twin is None
        else str(Path(filled(paths.METRICS, w, run=twin.run)).parent)
    )


def eigen_params(w):
    wanted = filled(paths.EIGEN, w)
    if wanted not in EIGEN:
        raise ValueError(
            f"{wanted}: no table asks for this eigenvector reference (a table with a spectral method does)"
        )
    return EIGEN[wanted]


def nystrom_params(w):
    wanted = filled(paths.NYSTROM, w)
    if wanted not in NYSTROM:
        raise ValueError(
            f"{wanted}: no table asks for this Nystrom extension (a table with spectral_inductive does)"
        )
    return NYSTROM[wanted]


def alignment(w):
    return alignment_spec(config, RUNS[(w.dataset, w.run)], w.evaluation)


def segmentation_for(w):
    """The `segmentations` entry that asked for this run (its split and eigenfunction maps)."""
    for name in config.get("segmentations") or {}:
        if filled(paths.SEGMENTATION, w) in segmentation_outputs(config, name):
            return segmentation_config(config, name)
    raise ValueError(f"no segmentations entry asks for run {w.run} of {w.dataset}")
