"""The options and help of `nes` (pipeline.cli runs the commands): what `nes --help` and
`nes COMMAND --help` show, the commands people call listed before the workflow's."""

from __future__ import annotations

import argparse
import os
from typing import Any


def _version() -> str:
    from . import __version__

    return __version__


# name: (what it does, an example); people call the first group, the workflow's rules the second
RUN = "results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0"
FEATURES = "results/camvid/features/lite0"
PEOPLE = {
    "segment": (
        "segment images with a trained run: label PNG + overlay (+ eigenfunction maps) per image",
        f"nes segment --run {RUN} --out-dir seg --eigenfunctions 8 photos/",
    ),
    "evaluate": (
        "score a run on a labelled split; prints one JSON object",
        f"nes evaluate --run {RUN} --split val --out-dir mine",
    ),
    "table": (
        "metrics.json files -> table CSV + Markdown",
        "nes table --out results/camvid/mine.csv results/camvid/runs/*/camvid-native/metrics.json",
    ),
    "check-config": (
        "check configuration files before a run: YAML syntax (file, line), keys, ranges, every run",
        "nes check-config my_overrides.yaml   # then: snakemake --configfile my_overrides.yaml ...",
    ),
    "download": ("fetch a dataset from its public source (needs internet)", "nes download camvid --dest data/camvid"),
}
WORKFLOW = {
    "extract": (
        "backbone features of a split (or one shard of it) into the Zarr cache",
        f"nes extract --spec extract.json --cache {FEATURES}/train/train.zarr",
    ),
    "gather": (
        "check that a cache's shards are complete and write its manifest",
        f"nes gather --out {FEATURES}/train/train.json {FEATURES}/train/train.zarr/shard-*/extracted.json",
    ),
    "graph": (
        "dataset-wide k-NN graph over every token of a cached split (FAISS)",
        f"nes graph --features {FEATURES}/native/val.json --spec '{{\"k\": 256}}' --out val-graph.json",
    ),
    "eigen": (
        "top-K eigenvectors of a cached split's graph G (the exact spectral reference)",
        "nes eigen --spec eigen.json --out val-eigen-K128-a0.3.npz",
    ),
    "nystrom": (
        "extend a training split's eigenvectors to an evaluated split (Nystrom)",
        "nes nystrom --spec nystrom.json --out val-nystrom.npz",
    ),
    "align": (
        "a run's partition on a split's exact graph (capture), psi's eigen-alignment",
        f"nes align --run {RUN} --spec eigen.json --out alignment.json",
    ),
    "fit": (
        "fit a run (nes, kmeans, nes_star, spectral) from its cache",
        "nes fit --spec run.json --run results/camvid/runs/my-run   (run.json: a run's config.yaml as JSON)",
    ),
}
EXIT_CODES = """exit codes:
  0  done
  1  an unexpected failure (its traceback is in the log), or `segment` skipped an unreadable image
  2  bad input or usage: the message names the file, key or option and what was expected"""
WEIGHTS_DIR_HELP = "where converted backbone weights go (default: $NES_WEIGHTS_DIR, else weights/); never the model's"
DATA_HELP = (
    "a data index of the split ({split}.images.json / .labels.json, written by the workflow's plan); "
    "its digest is recorded in the output (repeatable)"
)
RUN_HELP = "run directory (holds model.pt)"
DEVICE_HELP = "auto (a GPU when present), cpu, cuda or cuda:N"
VIEW_HELP = "view as JSON (default: the run's training view, centre crops as sliding windows)"


def count(least: int) -> Any:
    """An argparse type: an integer of at least `least` (argparse names the option when not)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
        return value

    return parse


def global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--log and --threads, accepted before or after the command (after it they default to
    SUPPRESS, so they do not undo the value given before it)."""
    parser.add_argument(
        "--log",
        default=default,
        help="write the log (progress, tracebacks) to this file; the "
        "console then shows only a failure's one-line reason",
    )
    parser.add_argument("--threads", type=int, default=default, help="torch threads")


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(
        [f"commands:\n{_list(PEOPLE)}", f"commands the workflow's rules call (one per stage):\n{_list(WORKFLOW)}"]
    )
    p = argparse.ArgumentParser(
        prog="nes",
        description="neural-eigenseg: unsupervised semantic segmentation by neural eigenfunctions.",
        epilog=f"{listing}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    global_options(p, None)
    after = argparse.ArgumentParser(add_help=False)
    global_options(after, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of the commands listed below")

    def command(name: str) -> argparse.ArgumentParser:
        summary, example = {**PEOPLE, **WORKFLOW}[name]
        s = sub.add_parser(
            name,
            description=summary,
            epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
            parents=[after],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return s

    s = command("segment")
    s.add_argument("--run", required=True, help=RUN_HELP)
    s.add_argument("--out-dir", help="output folder (required)")
    s.add_argument("--out", help=argparse.SUPPRESS)  # the old spelling of --out-dir
    s.add_argument(
        "--mapping",
        default="auto",
        help="auto: class ids from the run's evaluation when it has one; "
        "none: cluster ids; or a JSON file from `nes evaluate --mapping-out` (or a metrics.json)",
    )
    s.add_argument(
        "--eigenfunctions",
        type=count(0),
        default=0,
        metavar="N",
        help="also write the first N eigenfunctions as heat maps (nes runs)",
    )
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--view", help=VIEW_HELP)
    s.add_argument("--dataset", help="segment a dataset split instead: its config entry as JSON (the workflow's)")
    s.add_argument("--split", default="val", help="the split of --dataset")
    s.add_argument("--weights-dir", help=WEIGHTS_DIR_HELP)
    s.add_argument("--data", action="append", help=DATA_HELP + "; with it, summary.json is written into --out-dir")
    s.add_argument("images", nargs="*", help="image files, folders of images, or glob patterns (quoted)")

    s = command("evaluate")
    s.add_argument("--run", required=True, help=RUN_HELP)
    s.add_argument("--spec", help="evaluation spec as JSON (the workflow passes it; replaces the options below)")
    s.add_argument("--dataset", help="dataset adapter name (default: the run's dataset)")
    s.add_argument("--data-root", help="dataset root (default: the run's data_root)")
    s.add_argument("--split", default="val", help="split (default: val)")
    s.add_argument("--view", help=VIEW_HELP + ', e.g. \'{"mode": "centre_crop", "short_side": 320, "crop": 320}\'')
    s.add_argument("--labels", help="label set where the dataset has several (context59/context60, 27/19)")
    s.add_argument("--protocol", default="custom", help="name recorded in the metrics")
    s.add_argument("--features", help="use this cache manifest instead of running the backbone")
    s.add_argument("--crf", action="store_true", help="also score with dense-CRF post-processing")
    s.add_argument("--out-dir", help="an evaluation folder: metrics.json, overlays/, report.md and its figures")
    s.add_argument("--out", help="write the full metrics JSON to this file")
    s.add_argument("--overlays-dir", help="write image / ground truth / prediction panels here (without --out-dir)")
    s.add_argument("--overlays", type=count(0), default=4, help="how many panels")
    s.add_argument("--compare", help="an evaluation folder of a K-means run: its sample predictions join the report")
    s.add_argument("--mapping-out", help="write the cluster -> class mapping as JSON for `nes segment --mapping`")
    s.add_argument("--batch-size", type=count(1), default=8, help="images per forward pass (default 8)")
    s.add_argument("--weights-dir", help=WEIGHTS_DIR_HELP)
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--data", action="append", help=DATA_HELP)

    s = command("table")
    s.add_argument("--out", required=True, help="the table CSV; {name}_runs.csv and {name}.md are written beside it")
    s.add_argument("--alignments", nargs="*", default=[], help="alignment.json files beside the runs' metrics")
    s.add_argument("--inputs", help='a JSON file {"metrics": [...], "alignments": [...]} (what the workflow passes)')
    s.add_argument("metrics", nargs="*", help="metrics.json files of the runs (one per run and evaluation)")

    s = command("check-config")
    s.add_argument("files", nargs="*", help="override files, merged over --default in order (as --configfile)")
    s.add_argument("--default", help="the workflow's default configuration (default: the repository's)")

    s = command("download")
    s.add_argument("dataset", choices=["camvid"])
    s.add_argument("--dest", default="data/camvid", help="folder to create (default data/camvid)")

    s = command("extract")
    s.add_argument("--spec", required=True, help="extraction spec as JSON (the workflow passes it)")
    s.add_argument("--cache", required=True, help="the cache directory {split}.zarr")
    s.add_argument(
        "--shard", type=int, nargs=2, default=(0, 1), metavar=("INDEX", "COUNT"), help="shard INDEX of COUNT"
    )
    s.add_argument("--overwrite", action="store_true", help="replace a shard written with other settings")
    s.add_argument("--data", action="append", help=DATA_HELP)

    s = command("gather")
    s.add_argument("--out", required=True, help="manifest path {split}.json (the cache is {split}.zarr beside it)")
    s.add_argument("shards", nargs="+", help="the shards' manifests ({split}.zarr/shard-*/extracted.json)")

    s = command("graph")
    s.add_argument("--features", required=True, help="the cache's manifest")
    s.add_argument(
        "--spec",
        default="{}",
        help="graph options as JSON: k, exact_max_tokens, approximate, "
        "target_recall, block, nlist, nprobe, hnsw_m, ef_search",
    )
    s.add_argument("--out", required=True, help="manifest path {split}.json; the graph goes to {split}.zarr")

    for name, what in (
        ("eigen", "features and graph manifests, K, alpha, pixel_knn"),
        ("nystrom", "plan.nystrom_spec"),
    ):
        s = command(name)
        s.add_argument("--spec", required=True, help=f"JSON: {what} (the workflow passes it)")
        s.add_argument("--out", required=True, help="output .npz")

    s = command("align")
    s.add_argument("--run", required=True, help=RUN_HELP)
    s.add_argument("--spec", required=True, help="JSON: features and graph manifests, the eigenvector reference")
    s.add_argument("--out", required=True, help="alignment JSON")

    s = command("fit")
    s.add_argument("--spec", required=True, help="run spec as JSON (the workflow passes it)")
    # --run-dir: the old spelling, still accepted
    s.add_argument("--run", "--run-dir", required=True, help="where model.pt, config.yaml and the training log go")
    s.add_argument(
        "--resident",
        choices=["auto", "on", "off"],
        default=os.environ.get("NES_RESIDENT", "auto"),
        help="hold the training cache in (device) memory: auto when it takes at most half of what is "
        "free (default; $NES_RESIDENT); results are the same either way",
    )
    return p


def _list(commands: dict[str, tuple[str, str]]) -> str:
    return "\n".join(f"  {name:<13} {summary}" for name, (summary, _) in commands.items())
