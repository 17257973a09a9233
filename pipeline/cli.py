"""`nes`: the command line. People call `segment`, `evaluate`, `table` and `check-config`; the
workflow's rules call the others, one per stage. Each command parses its options, calls the
package and prints; the work is in the modules it names."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

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


def distinct_outputs(outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
    """Refuse, before any work, an output that is one of the command's inputs or another of its
    outputs. Both map what names a path (an option) to a path, a list of paths or None."""
    seen: dict[str, str] = {}
    for kind, named in (("input", inputs), ("output", outputs)):
        for name, given in named.items():
            for path in given if isinstance(given, (list, tuple)) else [given]:
                if path is None:
                    continue
                key = os.path.realpath(path)
                if kind == "output" and key in seen:
                    raise InputError(
                        f"{name} {path}: is also {seen[key]}; an output may not replace an input or another output"
                    )
                seen.setdefault(key, name)


def cmd_extract(args: argparse.Namespace) -> None:
    from .features import extract_shard
    from .spec import ExtractSpec

    spec = ExtractSpec.from_dict(json_option(args.spec, "--spec"), "--spec")
    extract_shard(spec, Path(args.cache), tuple(args.shard), args.overwrite, args.data)


def cmd_gather(args: argparse.Namespace) -> None:
    from .cache import gather

    distinct_outputs({"--out": args.out}, {"a shard manifest": args.shards})
    gather(args.out, args.shards)


def cmd_graph(args: argparse.Namespace) -> None:
    from .cache import cache_for
    from .graph.dataset import graph_of_split

    options = json_option(args.spec, "--spec")
    distinct_outputs({"--out": args.out}, {"--features": args.features})
    cache = cache_for(args.features)
    graph_of_split(cache.tokens, args.features, Path(args.out), options)


def cmd_eigen(args: argparse.Namespace) -> None:
    from .cache import cache_for
    from .formats import store_of, write_eigen_reference
    from .reference import eigen_reference
    from .spec import EigenRef

    spec = EigenRef.from_dict(json_option(args.spec, "--spec"), "--spec")
    distinct_outputs({"--out": args.out}, {"the spec's features": spec.features, "the spec's graph": spec.graph})
    values, vectors, attrs = eigen_reference(
        cache_for(spec.features), store_of(spec.graph), spec.K, spec.alpha, spec.pixel_knn
    )
    write_eigen_reference(Path(args.out), values, vectors, {**attrs, "features": spec.features, "graph": spec.graph})


def cmd_nystrom(args: argparse.Namespace) -> None:
    from .formats import write_nystrom
    from .reference import nystrom_reference
    from .spec import NystromRef

    spec = NystromRef.from_dict(json_option(args.spec, "--spec"), "--spec")
    inputs = {"the spec's eigenvectors": spec.eigen.path, "the spec's features": spec.features}
    distinct_outputs({"--out": args.out}, inputs)
    embedding, attrs = nystrom_reference(spec)
    write_nystrom(Path(args.out), embedding, {**attrs, "spec": spec.to_dict()})


def cmd_align(args: argparse.Namespace) -> None:
    from .cache import cache_for
    from .formats import folder_lock, store_of, write_json
    from .models import RunModel
    from .reference import run_alignment
    from .spec import EigenRef

    spec = EigenRef.from_dict(json_option(args.spec, "--spec"), "--spec")
    distinct_outputs({"--out": args.out}, {"the spec's eigenvectors": spec.path, "--run": args.run})
    model = RunModel.load(Path(args.run))
    result = run_alignment(model, cache_for(spec.features), store_of(spec.graph), Path(spec.path))
    with folder_lock(Path(args.out).parent):  # the evaluation may be replacing its folder
        write_json(Path(args.out), {"run": model.spec.run, **result})
    print(json.dumps(result["partition"]))


def cmd_fit(args: argparse.Namespace) -> None:
    from .fit import fit_run
    from .spec import RunSpec

    fit_run(RunSpec.from_dict(json_option(args.spec, "--spec"), "--spec"), Path(args.run), args.resident)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_into, evaluation_of
    from .formats import write_json
    from .models import RunModel
    from .segmenter import ClassMapping
    from .spec import EvaluationSpec

    distinct_outputs(*evaluation_paths(args))
    model = RunModel.load(Path(args.run))
    if args.spec:
        spec = EvaluationSpec.from_dict(json_option(args.spec, "--spec"), "--spec")
    else:
        view = json_option(args.view, "--view") if args.view else None
        spec = evaluation_of(
            model, args.dataset, args.data_root, args.split, args.protocol, view, args.crf, args.labels,
            features=args.features, overlays=args.overlays, batch_size=args.batch_size, device=args.device,
        )  # fmt: skip
    out_dir, overlays_dir, compare = (Path(p) if p else None for p in (args.out_dir, args.overlays_dir, args.compare))
    record = evaluate_into(model, spec, out_dir, overlays_dir, compare, args.weights_dir, args.data)
    if args.out:
        write_json(Path(args.out), record)
    if args.mapping_out:
        source = f"{model.spec.run} on {record['dataset']}/{spec.split} ({spec.protocol})"
        ClassMapping.from_metrics(record, source).save(Path(args.mapping_out))
    print(json.dumps({k: record[k] for k in ("method", "acc", "miou", "miou_hungarian", "per_class_iou")}))


def cmd_table(args: argparse.Namespace) -> None:
    from .tables import table_inputs, table_outputs, write_table

    metrics, alignments = table_inputs(args.metrics, args.alignments, args.inputs)
    distinct_outputs(
        dict(zip(("--out", "its runs table", "its Markdown twin"), table_outputs(Path(args.out)))),
        {"a metrics file": metrics, "an alignment file": alignments, "--inputs": args.inputs},
    )
    df = write_table(metrics, Path(args.out), alignments)
    print(df.to_string(index=False))


def cmd_segment(args: argparse.Namespace) -> None:
    from .segmenter import Segmenter, expand_inputs, segment_files

    out_dir = args.out_dir or deprecated(args, "--out", "--out-dir")
    if not out_dir:
        raise InputError("nes segment: the following arguments are required: --out-dir")
    mapping = {"auto": "auto", "none": None}.get(args.mapping, args.mapping)
    view = json_option(args.view, "--view") if args.view else None
    seg = Segmenter.from_run(
        args.run, device=args.device, view=view, mapping=mapping, batch_size=1, weights_dir=args.weights_dir
    )
    if args.dataset:
        from .datasets import load_dataset

        images = [s.image_path for s in load_dataset(json_option(args.dataset, "--dataset"), args.split).samples]
    else:
        images = expand_inputs(args.images)
    summary = segment_files(seg, images, Path(out_dir), args.eigenfunctions, args.data)
    print(json.dumps(summary))
    if summary["failed"]:
        raise SystemExit(1)


def cmd_download(args: argparse.Namespace) -> None:
    from .datasets.download import download_camvid

    print(download_camvid(Path(args.dest)))


def cmd_check_config(args: argparse.Namespace) -> None:
    from .plan import DEFAULT_CONFIG, all_tables, check_files

    here = Path.cwd()
    default = args.default or str(
        DEFAULT_CONFIG.relative_to(here) if DEFAULT_CONFIG.is_relative_to(here) else DEFAULT_CONFIG
    )
    config = check_files(args.files, default)
    print(f"ok: {', '.join([default, *args.files])} ({len(all_tables(config))} tables, every run checked)")


def evaluation_paths(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """`nes evaluate`'s outputs and what they may not replace: its inputs, and the run's finished
    evaluations (other than the one --out-dir rewrites)."""
    from . import paths

    out_dir = Path(args.out_dir) if args.out_dir else None
    metrics = paths.name(paths.METRICS)
    rewritten = out_dir / metrics if out_dir else None
    run = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    mine = os.path.realpath(rewritten) if rewritten else None
    finished = [str(p) for p in sorted(run.glob(f"*/{metrics}")) if os.path.realpath(p) != mine]
    outputs = {"--out": args.out, "--mapping-out": args.mapping_out, "--out-dir's metrics.json": rewritten}
    inputs = {"--spec": args.spec if args.spec and args.spec.endswith(".json") else None, "--features": args.features}
    return outputs, {**inputs, "a finished evaluation of the run": finished}


def deprecated(args: argparse.Namespace, old: str, new: str) -> Any:
    """The value of an option's old spelling, with a warning naming the new one."""
    value = getattr(args, old.lstrip("-").replace("-", "_"))
    if value is not None:
        log.warning("%s: deprecated spelling of %s for `nes %s`; use %s", old, new, args.command, new)
    return value


def main(argv: list[str] | None = None) -> None:
    from .cli_args import build_parser
    from .runtime import set_threads, setup_logging

    args = build_parser().parse_args(argv)
    console = log_to_file(Path(args.log)) if args.log else sys.stderr
    setup_logging()
    try:
        set_threads(args.threads)
        globals()[f"cmd_{args.command.replace('-', '_')}"](args)
    except InputError as exc:
        _fail(f"error: {exc}", console)
        raise SystemExit(2) from None
    except Exception as exc:
        from .formats import RESOURCE_ERRORS

        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRORS:
            what = f"{exc.filename or 'an output'}: {RESOURCE_ERRORS[exc.errno]} (nes {args.command})"
            _fail(f"error: {what}; free space or raise the limit, then rerun (complete work is kept)", console)
            raise SystemExit(2) from None
        if isinstance(exc, OSError) and exc.filename:  # a path that cannot be read or written
            if console is not sys.stderr:
                traceback.print_exc()  # into the log
            _fail(f"error: {exc.filename}: {exc.strerror or exc} (nes {args.command})", console)
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
