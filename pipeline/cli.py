"""`nes`: the command line. Workflow rules call `extract`, `fit`, `evaluate` and `table`;
people call `segment` and `evaluate` on their own runs and images."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import InputError

log = logging.getLogger("nes")


def cmd_extract(args: argparse.Namespace) -> None:
    from .backbones import Backbone, BackboneSpec
    from .datasets import load_dataset
    from .features import extract_split
    from .runtime import resolve_device, write_json_atomic

    spec = json.loads(args.spec)
    dataset = load_dataset(spec["dataset_spec"], spec["split"])
    backbone = Backbone(BackboneSpec.from_config(spec["backbone_spec"]))
    out = Path(args.out)
    manifest = extract_split(dataset, backbone, out.with_suffix(".zarr"), spec["input_size"], views=spec["views"],
                             scale=tuple(spec["scale"]), flip=spec["flip"], batch_size=spec["batch_size"],
                             seed=spec["seed"], device=resolve_device(spec["device"]),
                             extra_attrs={"backbone": spec["backbone_spec"]})
    write_json_atomic(out, manifest)


def cmd_fit(args: argparse.Namespace) -> None:
    from .fit import fit_run

    fit_run(json.loads(args.spec), Path(args.run_dir))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .datasets import load_dataset
    from .evaluate import backbone_for, cached_batches, evaluate, live_batches
    from .fit import cache_for
    from .models import RunModel
    from .runtime import resolve_device, write_json_atomic

    model = RunModel.load(Path(args.run))
    cfg = model.config
    ds_spec = dict(cfg["dataset_spec"])
    if args.dataset and args.dataset != ds_spec["name"]:
        ds_spec = {"name": args.dataset, "adapter": args.dataset, "input_size": ds_spec["input_size"]}
    if args.data_root:
        ds_spec["data_root"] = args.data_root
    split = args.split or ds_spec.get("eval_split", "val")
    dataset = load_dataset(ds_spec, split)
    if not dataset.has_labels:
        raise InputError(f"{dataset.name}/{split}: no labels, nothing to evaluate against (use `nes segment`)")
    device = resolve_device(args.device)
    input_size = tuple(ds_spec["input_size"])
    stride = int(cfg["backbone_spec"]["stride"])
    if args.features:
        batches = cached_batches(cache_for(args.features), dataset, args.batch_size)
    else:
        batches = live_batches(backbone_for(model).to(device), dataset, input_size, args.batch_size, device)
    overlay_dir = Path(args.overlays_dir) if args.overlays_dir else None
    result = evaluate(model, dataset, batches, stride, input_size, crf=args.crf, overlay_dir=overlay_dir,
                      n_overlays=args.overlays, device=device)
    full = {"run": cfg["run"], "method": model.method, "dataset": ds_spec["name"], "backbone": cfg["backbone"],
            "K": model.num_clusters, "seed": cfg["seed"], "split": split, **result}
    if args.out:
        write_json_atomic(Path(args.out), full)
    brief = {k: full[k] for k in ("method", "acc", "miou", "miou_hungarian", "per_class_iou")}
    print(json.dumps(brief))


def cmd_table(args: argparse.Namespace) -> None:
    from .tables import write_table

    df = write_table([Path(p) for p in args.metrics], Path(args.out))
    print(df.to_string(index=False))


def cmd_segment(args: argparse.Namespace) -> None:
    from PIL import Image

    from .datasets import read_rgb
    from .evaluate import backbone_for, logits_to_image
    from .features import encode_images
    from .models import RunModel
    from .runtime import resolve_device
    from .visualise import blend, colourise, palette, save_labels

    model = RunModel.load(Path(args.run))
    device = resolve_device(args.device)
    backbone = backbone_for(model).to(device)
    model = model.to(device)
    input_size = tuple(model.config["dataset_spec"]["input_size"])
    stride = int(model.config["backbone_spec"]["stride"])
    colours = palette(model.num_clusters)
    out = Path(args.out)
    failed = []
    for path in map(Path, args.images):
        try:
            image = read_rgb(path)
        except InputError as exc:
            log.error("%s", exc)
            failed.append(str(path))
            continue
        feats = encode_images(backbone, [image], input_size, device)
        logits = model.token_logits(feats["high"], feats["input"])[0].float()
        clusters = logits_to_image(logits, stride, input_size, image.shape[:2]).argmax(0).cpu().numpy()
        save_labels(clusters, out / f"{path.stem}_labels.png")
        Image.fromarray(blend(image, colourise(clusters, colours))).save(out / f"{path.stem}_overlay.png")
    done = len(args.images) - len(failed)
    print(json.dumps({"segmented": done, "failed": failed, "out": str(out)}))
    if failed:
        raise SystemExit(1)


def cmd_download(args: argparse.Namespace) -> None:
    from .datasets.download import download_camvid

    print(download_camvid(Path(args.dest)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nes", description=__doc__)
    p.add_argument("--log", help="also write the log to this file")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("extract", help="backbone features of a split into the Zarr cache")
    s.add_argument("--spec", required=True, help="extraction spec as JSON (the workflow passes it)")
    s.add_argument("--out", required=True, help="manifest path {split}.json; the cache goes to {split}.zarr")
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("fit", help="fit a run (nes, kmeans, nes_star) from the training cache")
    s.add_argument("--spec", required=True, help="run spec as JSON (the workflow passes it)")
    s.add_argument("--run-dir", required=True)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("evaluate", help="score a run on a labelled split; prints one JSON object")
    s.add_argument("--run", required=True, help="run directory (holds model.pt)")
    s.add_argument("--dataset", help="dataset adapter name (default: the run's dataset)")
    s.add_argument("--data-root", help="dataset root (default: the run's data_root)")
    s.add_argument("--split", help="split (default: the dataset's eval split)")
    s.add_argument("--features", help="use this cache manifest instead of running the backbone")
    s.add_argument("--crf", action="store_true", help="also score with dense-CRF post-processing")
    s.add_argument("--out", help="write the full metrics JSON here (nothing is written otherwise)")
    s.add_argument("--overlays-dir", help="write image / ground truth / prediction panels here")
    s.add_argument("--overlays", type=int, default=4, help="how many panels")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("table", help="metrics.json files -> table CSV + Markdown")
    s.add_argument("--out", required=True)
    s.add_argument("metrics", nargs="+")
    s.set_defaults(func=cmd_table)

    s = sub.add_parser("download", help="fetch a dataset from its public source (needs internet)")
    s.add_argument("dataset", choices=["camvid"])
    s.add_argument("--dest", default="data/camvid")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("segment", help="segment images with a trained run: label PNG + overlay per image")
    s.add_argument("--run", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("images", nargs="+")
    s.set_defaults(func=cmd_segment)
    return p


def main(argv: list[str] | None = None) -> None:
    from .runtime import set_threads, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(Path(args.log) if args.log else None)
    set_threads(args.threads)
    try:
        args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
