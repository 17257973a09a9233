"""`nes`: the command line. Workflow rules call `extract`, `fit`, `evaluate` and `table`;
people call `segment` and `evaluate` on their own runs and images."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .errors import InputError

log = logging.getLogger("nes")


def json_option(text: str, option: str) -> Any:
    """An option's JSON value, given inline or as the path of a JSON file (what the workflow
    passes), or one line naming the option and where the JSON breaks."""
    if not text.lstrip().startswith(("{", "[", '"')) and text.endswith(".json"):
        from .formats import read_json

        return read_json(text, f"the JSON value of {option}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}") from None


def cmd_extract(args: argparse.Namespace) -> None:
    from .backbones import Backbone, BackboneSpec
    from .dataindex import digests
    from .datasets import load_dataset
    from .features import extract_split
    from .runtime import resolve_device
    from .views import View

    spec = json_option(args.spec, "--spec")
    dataset = load_dataset(spec["dataset_spec"], spec["split"])
    backbone = Backbone(BackboneSpec.from_config(spec["backbone_spec"]))
    manifest = extract_split(
        dataset,
        backbone,
        Path(args.cache),
        View.from_config(spec["view"], "view"),
        views=spec["views"],
        scale=tuple(spec["scale"]),
        flip=spec["flip"],
        batch_size=spec["batch_size"],
        seed=spec["seed"],
        device=resolve_device(spec["device"]),
        extra_attrs={"backbone": spec["backbone_spec"]},
        shard=tuple(args.shard),
        overwrite=args.overwrite,
        data=digests(args.data) if args.data else None,
    )
    log.info(
        "%s: shard %d of %d complete (%d items)",
        args.cache,
        manifest["shard"][0] + 1,
        manifest["shard"][1],
        manifest["items"],
    )


def cmd_gather(args: argparse.Namespace) -> None:
    """Check that the shards form one complete cache, then write the manifest later stages read."""
    from .cache import cache_for
    from .formats import write_json

    out = Path(args.out)
    cache = cache_for(out)
    shards = [json.loads(Path(p).read_text()) for p in args.shards]
    if sorted(tuple(s["shard"]) for s in shards) != [(i, len(cache.shards)) for i in range(len(cache.shards))]:
        raise InputError(
            f"{out}: shard manifests {', '.join(args.shards)} do not match the cache's {len(cache.shards)} shards"
        )
    repeated = sorted({i for i in cache.ids if cache.ids.count(i) > 1})
    if repeated:
        raise InputError(f"{cache.path}: image id(s) {', '.join(repeated[:5])} occur twice; ids must name one image")
    write_json(
        out,
        {
            "path": str(cache.path),
            "items": len(cache),
            "images": len(cache.ids),
            "shards": len(cache.shards),
            "grid": list(cache.grid),
            "high_dim": cache.dim("high"),
            "input_dim": cache.dim("input"),
        },
    )


def cmd_graph(args: argparse.Namespace) -> None:
    """Dataset-wide k-NN graph over every token of a cached split (rule `build_graph`)."""
    from .cache import cache_for
    from .formats import store_of, write_json
    from .graph.dataset import build_dataset_graph
    from .runtime import measured

    spec = json_option(args.spec, "--spec")
    cache = cache_for(args.features)
    out = Path(args.out)
    with measured() as cost:
        high = cache.read(np.arange(len(cache)), ("high",))["high"]
        attrs = build_dataset_graph(
            high.reshape(-1, high.shape[-1]), store_of(out), attrs={"features": args.features}, **spec
        )
    log.info("graph of %d tokens in %.1f s, peak memory %.0f MB", attrs["tokens"], cost["wall_s"], cost["peak_rss_mb"])
    write_json(out, {**{k: v for k, v in attrs.items() if k != "fingerprint"}, "cost": cost})


def cmd_eigen(args: argparse.Namespace) -> None:
    """Top-K eigenpairs of a cached split's G (rule `eigenvectors`)."""
    from .cache import cache_for
    from .formats import store_of, write_eigen_reference
    from .reference import eigen_reference
    from .spec import EigenRef

    spec = EigenRef.from_dict(json_option(args.spec, "--spec"), "--spec")
    values, vectors, attrs = eigen_reference(
        cache_for(spec.features), store_of(spec.graph), spec.K, spec.alpha, spec.pixel_knn
    )
    write_eigen_reference(Path(args.out), values, vectors, {**attrs, "features": spec.features, "graph": spec.graph})


def cmd_nystrom(args: argparse.Namespace) -> None:
    """The training split's eigenvectors extended to an evaluated split (rule `nystrom`)."""
    from .formats import write_nystrom
    from .reference import nystrom_reference
    from .spec import NystromRef

    spec = NystromRef.from_dict(json_option(args.spec, "--spec"), "--spec")
    embedding, attrs = nystrom_reference(spec)
    write_nystrom(Path(args.out), embedding, {**attrs, "spec": spec.to_dict()})


def cmd_align(args: argparse.Namespace) -> None:
    """How well a run's partition serves the evaluated split's G, and psi's alignment with its
    exact eigenvectors (rule `align`)."""
    from .cache import cache_for
    from .formats import store_of, write_json
    from .models import RunModel
    from .reference import run_alignment
    from .spec import EigenRef

    spec = EigenRef.from_dict(json_option(args.spec, "--spec"), "--spec")
    model = RunModel.load(Path(args.run))
    result = run_alignment(model, cache_for(spec.features), store_of(spec.graph), Path(spec.path))
    write_json(Path(args.out), {"run": model.spec.run, **result})
    print(json.dumps(result["partition"]))


def cmd_fit(args: argparse.Namespace) -> None:
    from .fit import fit_run
    from .spec import RunSpec

    fit_run(RunSpec.from_dict(json_option(args.spec, "--spec"), "--spec"), Path(args.run_dir), args.resident)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .backbones import BackboneSpec
    from .cache import cache_for
    from .datasets import load_dataset
    from .evaluate import (
        backbone_for,
        cached_predictions,
        evaluate,
        live_predictions,
        metrics_record,
    )
    from .formats import write_json
    from .models import RunModel
    from .runtime import resolve_device
    from .segmenter import ClassMapping, default_view
    from .spec import EvaluationSpec
    from .views import View

    if args.out_dir:
        args.out, args.overlays_dir, args.report = (
            str(Path(args.out_dir) / "metrics.json"),
            str(Path(args.out_dir) / "overlays"),
            True,
        )
    model = RunModel.load(Path(args.run))
    if args.spec:
        spec = EvaluationSpec.from_dict(json_option(args.spec, "--spec"), "--spec")
    else:
        source = dict(model.spec.source)
        if args.dataset and args.dataset != source.get("name"):
            source = {"name": args.dataset, "adapter": args.dataset}
        if args.data_root:
            source["data_root"] = args.data_root
        view = json_option(args.view, "--view") if args.view else default_view(model)
        view["crf"] = bool(args.crf or view.get("crf"))
        if args.labels:
            view["labels"] = args.labels
        spec = EvaluationSpec(
            source=source,
            split=args.split,
            protocol=args.protocol,
            view=view,
            features=args.features,
            overlays=args.overlays,
            batch_size=args.batch_size,
            device=args.device,
        )
    view = View.from_config(spec.view, "view")
    dataset = load_dataset(spec.source, spec.split, view.labels)
    if not dataset.has_labels:
        unlabelled = [s for s in dataset.samples if s.label_path is None]
        if len(unlabelled) < len(dataset.samples):  # some have labels: name the first that does not
            missing = f"no label for {unlabelled[0].image_path} (and {len(unlabelled) - 1} more)"
            raise InputError(f"{dataset.name}/{spec.split}: {missing}; every image needs one to evaluate")
        raise InputError(f"{dataset.name}/{spec.split}: no labels, nothing to evaluate against (use `nes segment`)")
    device = resolve_device(spec.device)
    model = model.to(device)
    stride = BackboneSpec.from_config(model.spec.backbone_spec).stride
    if spec.features:
        predictions = cached_predictions(
            model, cache_for(spec.features), dataset, view, stride, spec.batch_size, device
        )
    else:
        backbone = backbone_for(model, args.weights_dir).to(device)
        predictions = live_predictions(model, backbone, dataset, view, spec.batch_size, device)
    overlay_dir = Path(args.overlays_dir) if args.overlays_dir else None
    result = evaluate(
        model, dataset, predictions, view, crf=view.crf, overlay_dir=overlay_dir, n_overlays=spec.overlays
    )
    full = metrics_record(model, dataset, spec, result)
    if args.data:
        from .dataindex import digests

        full["data"] = digests(args.data)
    if args.out:
        write_json(Path(args.out), full)
    if args.report:
        from .report import write_report

        if not args.out:
            raise InputError("--report needs --out (the report is written beside metrics.json)")
        write_report(Path(args.out).parent, full, Path(args.compare) if args.compare else None)
    if args.mapping_out:
        ClassMapping.from_metrics(full, f"{model.spec.run} on {dataset.name}/{spec.split} ({spec.protocol})").save(
            Path(args.mapping_out)
        )
    brief = {k: full[k] for k in ("method", "acc", "miou", "miou_hungarian", "per_class_iou")}
    print(json.dumps(brief))


def cmd_table(args: argparse.Namespace) -> None:
    from .formats import read_json
    from .tables import write_table

    metrics, alignments = list(args.metrics), list(args.alignments)
    if args.inputs:
        listed = read_json(args.inputs, "a list of the table's inputs")
        metrics += listed.get("metrics", [])
        alignments += listed.get("alignments", [])
    if not metrics:
        raise InputError("nes table: no metrics.json given (as arguments or in --inputs)")
    for path in [*metrics, *alignments]:
        read_json(path, "a metrics.json or alignment.json of an evaluated run")
    df = write_table([Path(p) for p in metrics], Path(args.out), [Path(p) for p in alignments])
    print(df.to_string(index=False))


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their images (sorted), anything else as a glob pattern."""
    import glob

    from .datasets.base import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file())
            skipped = [f.name for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
            if skipped:
                log.info("%s: skipped %d file(s) that are not images: %s", p, len(skipped), ", ".join(skipped[:10]))
            paths += [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        elif p.exists() or not glob.has_magic(item):
            paths.append(p)  # a missing file is reported by name with the unreadable ones
        else:
            paths += sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
    return paths


def segment_outputs(images: list[Path], out: Path, eigenfunctions: bool) -> dict[Path, dict[str, Path]]:
    """The files `nes segment` writes per input ({stem}_labels.png, _overlay.png and
    _eigenfunctions.png in `out`), checked before anything is written: two inputs with one stem
    would overwrite each other's outputs, and no output may replace an input."""
    kinds = ("labels", "overlay", *(("eigenfunctions",) if eigenfunctions else ()))
    by_stem: dict[str, list[Path]] = {}
    for path in images:
        by_stem.setdefault(path.stem, []).append(path)
    shared = {stem: paths for stem, paths in by_stem.items() if len(paths) > 1}
    if shared:
        stem, paths = next(iter(shared.items()))
        raise InputError(
            f"{', '.join(map(str, paths))} share the name {stem!r}: their outputs would overwrite each other "
            f"({len(shared)} such name(s)); segment them into separate --out folders or rename them"
        )
    planned = {path: {kind: out / f"{path.stem}_{kind}.png" for kind in kinds} for path in images}
    inputs = {os.path.abspath(p): p for p in images}
    for files in planned.values():
        for file in files.values():
            if os.path.abspath(file) in inputs:
                raise InputError(
                    f"{file}: is one of the images to segment and would be overwritten; choose another --out"
                )
    return planned


def cmd_segment(args: argparse.Namespace) -> None:
    from PIL import Image

    from .datasets import read_rgb
    from .runtime import progress
    from .segmenter import UNMATCHED, Segmenter
    from .visualise import (
        blend,
        colourise,
        palette,
        save_heatmaps,
        save_labels,
        with_legend,
    )

    mapping = {"auto": "auto", "none": None}.get(args.mapping, args.mapping)
    seg = Segmenter.from_run(
        args.run,
        device=args.device,
        view=json_option(args.view, "--view") if args.view else None,
        mapping=mapping,
        batch_size=1,
        weights_dir=args.weights_dir,
    )
    if args.eigenfunctions and not seg.model.method.traits.learns_psi:
        raise InputError(f"--eigenfunctions: {args.run} is a {seg.model.method} run; eigenfunction maps need a nes run")
    if seg.mapping is not None:
        names, colours = seg.mapping.class_names, palette(len(seg.mapping.class_names))
        log.info("class ids from %s", seg.mapping.source)
    else:
        names, colours = [f"cluster {k}" for k in range(seg.num_clusters)], palette(seg.num_clusters)
    if args.dataset:
        from .datasets import load_dataset

        images = [
            sample.image_path for sample in load_dataset(json_option(args.dataset, "--dataset"), args.split).samples
        ]
    else:
        images = expand_inputs(args.images)
    if not images:
        raise InputError(f"no images found in {' '.join(args.images) or args.dataset}")
    out = Path(args.out)
    planned = segment_outputs(images, out, bool(args.eigenfunctions))
    failed = []
    for path in progress(images, desc="segment", unit="img"):
        try:
            image = read_rgb(path)
        except InputError as exc:
            log.error("skipped: %s", exc)
            failed.append(str(path))
            continue
        try:
            labels, maps = seg.labels(image, args.eigenfunctions)
        except InputError as exc:
            log.error("skipped %s: %s", path, exc)
            failed.append(str(path))
            continue
        files = planned[path]
        save_labels(labels, files["labels"])
        present = [i for i in np.unique(labels) if i != UNMATCHED]
        overlay = with_legend(
            blend(image, colourise(np.where(labels == UNMATCHED, -1, labels), colours)), present, names, colours
        )
        Image.fromarray(overlay).save(files["overlay"])
        if maps is not None:
            save_heatmaps(maps, [f"eigenfunction {i + 1}" for i in range(len(maps))], files["eigenfunctions"])
    summary = {
        "segmented": len(images) - len(failed),
        "skipped": len(failed),
        "failed": failed,
        "out": str(out),
        "labels": "classes" if seg.mapping is not None else "clusters",
    }
    log.info("segmented %d image(s), skipped %d", summary["segmented"], summary["skipped"])
    if args.data:
        from .dataindex import digests
        from .formats import write_json

        write_json(out / "summary.json", {**summary, "data": digests(args.data)})
    print(json.dumps(summary))
    if failed:
        raise SystemExit(1)


def cmd_download(args: argparse.Namespace) -> None:
    from .datasets.download import download_camvid

    print(download_camvid(Path(args.dest)))


def cmd_check_config(args: argparse.Namespace) -> None:
    from .plan import all_tables, check_files

    config = check_files(args.files, args.default)
    print(f"ok: {', '.join([args.default, *args.files])} ({len(all_tables(config))} tables, every run checked)")


def _version() -> str:
    from . import __version__

    return __version__


EXAMPLES = {
    name: "example:\n  " + text
    for name, text in {
        "extract": "nes extract --spec extract.json --cache results/camvid/features/lite0/train/train.zarr",
        "gather": "nes gather --out results/camvid/features/lite0/train/train.json "
        "results/camvid/features/lite0/train/train.zarr/shard-*/extracted.json",
        "graph": "nes graph --features results/camvid/features/lite0/native/val.json --spec '{\"k\": 256}' "
        "--out results/camvid/graphs/lite0/native/val.json",
        "eigen": "nes eigen --spec eigen.json --out val-eigen-K128-a0.3.npz   (the workflow's rule eigenvectors)",
        "nystrom": "nes nystrom --spec nystrom.json --out val-nystrom.npz   (the workflow's rule nystrom)",
        "align": "nes align --run results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0 --spec eigen.json "
        "--out alignment.json",
        "fit": "nes fit --spec run.json --run-dir results/camvid/runs/my-run   (run.json: a run's config.yaml as JSON, "
        "or the file a plan names)",
        "evaluate": "nes evaluate --run results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0 --split val --out-dir mine",
        "table": "nes table --out results/camvid/mine.csv results/camvid/runs/*/camvid-native/metrics.json",
        "download": "nes download camvid --dest data/camvid",
        "check-config": "nes check-config my_overrides.yaml   # then: snakemake --configfile my_overrides.yaml ...",
        "segment": "nes segment --run results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0 --out seg "
        "--eigenfunctions 8 photos/",
    }.items()
}


WEIGHTS_DIR_HELP = "where converted backbone weights go (default: $NES_WEIGHTS_DIR, else weights/); never the model's"


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


DATA_HELP = (
    "a data index of the split ({split}.images.json / .labels.json, written by the workflow's plan); "
    "its digest is recorded in the output (repeatable)"
)


def command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its summary and an example."""
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nes", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument(
        "--log",
        help="write the log (progress, and any traceback) to this file; the console then shows "
        "only a failure's one-line reason",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    sub = p.add_subparsers(dest="command", required=True)

    s = command(sub, "extract", "backbone features of a split (or one shard of it) into the Zarr cache")
    s.add_argument("--spec", required=True, help="extraction spec as JSON (the workflow passes it)")
    s.add_argument("--cache", required=True, help="the cache directory {split}.zarr")
    s.add_argument(
        "--shard", type=int, nargs=2, default=(0, 1), metavar=("INDEX", "COUNT"), help="extract shard INDEX of COUNT"
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a shard written with other settings (default: refuse, naming what differs)",
    )
    s.add_argument("--data", action="append", help=DATA_HELP)
    s.set_defaults(func=cmd_extract)

    s = command(sub, "gather", "check that a cache's shards are complete and write its manifest")
    s.add_argument("--out", required=True, help="manifest path {split}.json (the cache is {split}.zarr beside it)")
    s.add_argument("shards", nargs="+", help="the shards' manifests ({split}.zarr/shard-*/extracted.json)")
    s.set_defaults(func=cmd_gather)

    s = command(sub, "graph", "dataset-wide k-NN graph over every token of a cached split (FAISS)")
    s.add_argument("--features", required=True, help="the cache's manifest")
    s.add_argument(
        "--spec",
        default="{}",
        help="graph options as JSON: k, exact_max_tokens, approximate, target_recall, block, nlist, nprobe, "
        "hnsw_m, ef_search",
    )
    s.add_argument("--out", required=True, help="manifest path {split}.json; the graph goes to {split}.zarr")
    s.set_defaults(func=cmd_graph)

    s = command(sub, "eigen", "top-K eigenvectors of a cached split's graph G (the exact spectral reference)")
    s.add_argument("--spec", required=True, help="JSON: features and graph manifests, K, alpha, pixel_knn")
    s.add_argument("--out", required=True, help=".npz with values, vectors and attributes")
    s.set_defaults(func=cmd_eigen)

    s = command(sub, "nystrom", "extend a training split's eigenvectors to an evaluated split (Nystrom)")
    s.add_argument("--spec", required=True, help="JSON from the workflow (plan.nystrom_spec)")
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_nystrom)
    s = command(sub, "align", "a run's partition on a split's exact graph (capture), psi's eigen-alignment")
    s.add_argument("--run", required=True, help="run directory (holds model.pt)")
    s.add_argument(
        "--spec", required=True, help="JSON: features and graph manifests, path of the eigenvector reference"
    )
    s.add_argument("--out", required=True, help="alignment JSON")
    s.set_defaults(func=cmd_align)

    s = command(sub, "fit", "fit a run (nes, kmeans, nes_star, spectral) from its cache")
    s.add_argument("--spec", required=True, help="run spec as JSON (the workflow passes it)")
    s.add_argument("--run-dir", required=True, help="where model.pt, config.yaml and the training log go")
    s.add_argument(
        "--resident",
        choices=["auto", "on", "off"],
        default=os.environ.get("NES_RESIDENT", "auto"),
        help="hold the training cache in (device) memory: auto when it takes at most half of what is free "
        "(default; $NES_RESIDENT); results are the same either way",
    )
    s.set_defaults(func=cmd_fit)

    s = command(sub, "evaluate", "score a run on a labelled split; prints one JSON object")
    s.add_argument("--run", required=True, help="run directory (holds model.pt)")
    s.add_argument("--spec", help="evaluation spec as JSON (the workflow passes it; replaces the options below)")
    s.add_argument("--dataset", help="dataset adapter name (default: the run's dataset)")
    s.add_argument("--data-root", help="dataset root (default: the run's data_root)")
    s.add_argument("--split", default="val", help="split (default: val)")
    s.add_argument(
        "--view",
        help='view as JSON, e.g. \'{"mode": "centre_crop", "short_side": 320, "crop": 320}\' '
        "(default: the run's training view, centre crops as sliding windows)",
    )
    s.add_argument("--labels", help="label set where the dataset has several (context59/context60, 27/19)")
    s.add_argument("--protocol", default="custom", help="name recorded in the metrics")
    s.add_argument("--features", help="use this cache manifest instead of running the backbone")
    s.add_argument("--crf", action="store_true", help="also score with dense-CRF post-processing")
    s.add_argument(
        "--out-dir",
        help="an evaluation folder: metrics.json, overlays/ and report.md with its figures (the workflow's)",
    )
    s.add_argument("--out", help="write the full metrics JSON here (nothing is written otherwise)")
    s.add_argument("--overlays-dir", help="write image / ground truth / prediction panels here")
    s.add_argument("--overlays", type=count(0), default=4, help="how many panels")
    s.add_argument("--report", action="store_true", help="also write report.md and its figures beside --out")
    s.add_argument("--compare", help="an evaluation folder of a K-means run: its sample predictions join the report")
    s.add_argument(
        "--mapping-out", help="write the cluster -> class mapping (majority vote) as JSON for `nes segment --mapping`"
    )
    s.add_argument("--batch-size", type=count(1), default=8, help="images per forward pass (default 8)")
    s.add_argument("--weights-dir", help=WEIGHTS_DIR_HELP)
    s.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda or cuda:N")
    s.add_argument("--data", action="append", help=DATA_HELP)
    s.set_defaults(func=cmd_evaluate)

    s = command(sub, "table", "metrics.json files -> table CSV + Markdown")
    s.add_argument("--out", required=True, help="the table CSV; {name}_runs.csv and {name}.md are written beside it")
    s.add_argument(
        "--alignments", nargs="*", default=[], help="alignment.json files beside the runs' metrics (partition measures)"
    )
    s.add_argument("--inputs", help='a JSON file {"metrics": [...], "alignments": [...]} (what the workflow passes)')
    s.add_argument("metrics", nargs="*", help="metrics.json files of the runs (one per run and evaluation)")
    s.set_defaults(func=cmd_table)

    s = command(
        sub, "check-config", "check configuration files before a run: YAML syntax (file, line), keys, ranges, every run"
    )
    s.add_argument(
        "files", nargs="*", help="override files, merged over --default in order (as snakemake --configfile)"
    )
    s.add_argument("--default", default="config/config.yaml", help="the workflow's default configuration")
    s.set_defaults(func=cmd_check_config)

    s = command(sub, "download", "fetch a dataset from its public source (needs internet)")
    s.add_argument("dataset", choices=["camvid"])
    s.add_argument("--dest", default="data/camvid", help="folder to create (default data/camvid)")
    s.set_defaults(func=cmd_download)

    s = command(
        sub, "segment", "segment images with a trained run: label PNG + overlay (+ eigenfunction maps) per image"
    )
    s.add_argument("--run", required=True, help="run directory (holds model.pt)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument(
        "--mapping",
        default="auto",
        help="auto: class ids from the run's evaluation when it has one; none: cluster ids; "
        "or a JSON file from `nes evaluate --mapping-out` (or a metrics.json)",
    )
    s.add_argument(
        "--eigenfunctions",
        type=count(0),
        default=0,
        metavar="N",
        help="also write the first N eigenfunctions as heat maps (nes runs)",
    )
    s.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda or cuda:N")
    s.add_argument("--view", help="view as JSON (default: the run's training view, centre crops as sliding windows)")
    s.add_argument(
        "--dataset", help="segment a dataset split instead: its config entry as JSON (the workflow passes it)"
    )
    s.add_argument("--split", default="val", help="the split of --dataset")
    s.add_argument("--weights-dir", help=WEIGHTS_DIR_HELP)
    s.add_argument("--data", action="append", help=DATA_HELP + "; with it, summary.json is written into --out")
    s.add_argument("images", nargs="*", help="image files, folders of images, or glob patterns (quoted)")
    s.set_defaults(func=cmd_segment)
    return p


def main(argv: list[str] | None = None) -> None:
    from .runtime import set_threads, setup_logging

    args = build_parser().parse_args(argv)
    console = log_to_file(Path(args.log)) if args.log else sys.stderr
    setup_logging()
    try:
        set_threads(args.threads)
        args.func(args)
    except InputError as exc:
        _fail(f"error: {exc}", console)
        raise SystemExit(2) from None
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            _fail(f"error: no space left on device writing {exc.filename or 'an output'} ({args.command})", console)
            raise SystemExit(2) from None
        if console is sys.stderr:
            raise
        traceback.print_exc()  # into the log
        _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", console)
        raise SystemExit(1) from None


def log_to_file(path: Path) -> TextIO:
    """Send everything written to stderr (the log, progress, tracebacks, C libraries' messages)
    to `path` and return a stream to the console, where only a failure's one-line reason goes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    console = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)
    return console


def _fail(line: str, console: TextIO) -> None:
    print(line, file=sys.stderr)
    if console is not sys.stderr:
        print(line, file=console)


if __name__ == "__main__":
    main()
