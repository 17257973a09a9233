"""A run + a split + a view -> metrics (rule `evaluate`, `nes evaluate`): `evaluate_run`.

Logits at the scoring geometry (predict.py) are arg-maxed; a K x C confusion matrix accumulates
in one pass, so memory is O(K x C) plus one image. Clusters are matched to classes once over the whole split,
separately for CRF and non-CRF predictions. Features come from the cache (workflow) or a live
backbone (sliding windows, the CLI on any images).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics as M
from . import paths
from .backbones import Backbone, BackboneSpec
from .cache import FeatureCache, cache_for
from .datasets import Dataset, load_dataset
from .errors import InputError
from .formats import store_of, whole_folder, write_json
from .intervals import CRF_SUFFIX, ImageCounts, save_counts
from .models import RunModel
from .predict import backbone_for, image_logits, logits_to_image, scored_size
from .runtime import progress, resolve_device
from .segmenter import default_view
from .spec import Embedding, EvaluationSpec
from .views import View
from .visualise import blend, colourise, palette, save_panel

log = logging.getLogger(__name__)

Prediction = tuple[int, torch.Tensor]  # image index, (K, H, W) logits at the view's scoring geometry


def cached_predictions(
    model: RunModel,
    cache: FeatureCache,
    dataset: Dataset,
    view: View,
    stride: int,
    batch_size: int,
    device: torch.device,
) -> Iterator[Prediction]:
    """Plain (un-augmented) items of a cache, checked against the run's backbone and the
    dataset's image ids."""
    items = cache.plain_items()
    if len(items) != len(dataset) or cache.ids != [s.id for s in dataset.samples]:
        raise InputError(f"{cache.path}: cached images do not match dataset {dataset.name}/{dataset.split}; re-extract")
    geometry = ("mode", "size", "short_side", "crop", "interpolation")
    cached = {k: cache.attrs.get("view_spec", {}).get(k) for k in geometry}
    wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ((k, getattr(view, k)) for k in geometry)}
    if cached != wanted:
        raise InputError(
            f"{cache.path}: cached for view {cached}, but evaluation asks for {wanted}; "
            "use a cache of the same view or run the backbone live (no --features)"
        )
    check_cache_for_run(model, cache)
    if model.item_lookup and store_of(model.lookup_features).resolve() != Path(cache.path).resolve():
        raise InputError(
            f"{model.spec.run} labels the tokens of {model.lookup_features} by item: it can only be scored "
            f"on that cache, not {cache.path}"
        )
    input_size = tuple(cache.attrs["input_size"])
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        if model.item_lookup:
            logits = model.item_logits(torch.as_tensor(chunk), cache.grid).float()
        else:
            data = cache.read(chunk, ("high", "input"))
            logits = model.token_logits(
                torch.from_numpy(data["high"]).to(device), torch.from_numpy(data["input"]).to(device)
            ).float()
        for j, item in enumerate(chunk):
            out = scored_size(view, cache.image_size[item])
            yield int(cache.image_index[item]), logits_to_image(logits[j], stride, input_size, out)


def check_cache_for_run(model: RunModel, cache: FeatureCache) -> None:
    """A cache of another backbone (or other backbone settings) would be scored silently when its
    dimensions happen to agree: its recorded backbone must be the run's, weights folder aside."""
    local = {"weights_dir"}
    cached = {k: v for k, v in (cache.attrs.get("backbone") or {}).items() if k not in local}
    wanted = {k: v for k, v in model.spec.backbone_spec.items() if k not in local}
    if cached and cached != wanted:
        differ = sorted(k for k in cached.keys() | wanted.keys() if cached.get(k) != wanted.get(k))
        shown = "; ".join(f"{k}: {cached.get(k)!r} (cache) vs {wanted.get(k)!r} (run)" for k in differ[:3])
        raise InputError(f"{cache.path}: features of another backbone than run {model.spec.run} ({shown})")
    embedding = model.spec.embedding
    if (model.psi is not None or embedding.cache_array == "input") and model.input_dim not in (
        None,
        cache.dim("input"),
    ):
        raise InputError(
            f"{cache.path}: psi's input has {cache.dim('input')} channels, run {model.spec.run} expects "
            f"{model.input_dim}"
        )
    # the width of what a K-means run's centres were fitted on, taken from this cache
    widths = {
        Embedding.BACKBONE: cache.dim("high"),
        Embedding.PSI_INPUT: cache.dim("input"),
        Embedding.FINAL_TOKENS: model.final_dim,
    }
    width = widths.get(embedding)
    if model.psi is None and model.centres.numel() and not model.item_lookup and model.centres.shape[1] != width:
        raise InputError(
            f"{cache.path}: {width}-channel features ({embedding}), run {model.spec.run}'s centres have "
            f"{model.centres.shape[1]}"
        )


def live_predictions(
    model: RunModel, backbone: Backbone, dataset: Dataset, view: View, batch_size: int, device: torch.device
) -> Iterator[Prediction]:
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        yield from zip(idx, image_logits(model, backbone, [dataset.load_image(i) for i in idx], view, device))


def evaluate(
    model: RunModel,
    dataset: Dataset,
    predictions: Iterator[Prediction],
    view: View,
    crf: bool = False,
    overlay_dir: Path | None = None,
    n_overlays: int = 4,
    crf_workers: int | None = None,
) -> dict[str, Any]:
    """One pass over the split; the dense CRF (when on) runs in `crf_workers` processes (default:
    torch's thread count) while the next images are predicted."""
    k, c = model.num_clusters, dataset.num_classes
    conf = np.zeros((k, c), dtype=np.int64)
    conf_crf = np.zeros((k, c), dtype=np.int64)  # used when crf is on
    crf_pool = None
    if crf:
        from .crf import CRFPool

        crf_pool = CRFPool(crf_workers or torch.get_num_threads())
    kept: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    per_image: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # sparse (cluster, class, count)
    per_image_crf: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # the same after the CRF

    def add_refined(done: list) -> None:
        for (idx, lab), refined in done:
            refined_conf = M.confusion_matrix(refined, lab, k, c, dataset.ignore_index)
            conf_crf[...] += refined_conf
            per_image_crf[idx] = _sparse(refined_conf)

    # sample images for panels and reports: spread evenly over the split (neighbouring video
    # frames look alike), the same for every run
    samples = set(np.linspace(0, len(dataset) - 1, n_overlays).round().astype(int).tolist()) if n_overlays else set()
    started = time.time()
    bar = progress(total=len(dataset), desc=f"evaluate {model.method}", unit="img")
    for image_idx, logits in predictions:
        image = dataset.load_image(image_idx)
        image, scored_label = view.scored(image, dataset.load_label(image_idx, expected_hw=image.shape[:2]))
        if scored_label is None:
            raise InputError(f"{dataset.samples[image_idx].id}: no label to score against")
        label = scored_label
        if tuple(logits.shape[-2:]) != label.shape:
            raise ValueError(
                f"prediction {tuple(logits.shape[-2:])} and label {label.shape} differ for "
                f"{dataset.samples[image_idx].id}"
            )
        clusters = logits.argmax(0).cpu().numpy()
        image_conf = M.confusion_matrix(clusters, label, k, c, dataset.ignore_index)
        conf += image_conf
        per_image[image_idx] = _sparse(image_conf)
        if crf_pool is not None:
            probs = logits.softmax(0).cpu().numpy()
            add_refined(crf_pool.submit((image_idx, label), probs, np.ascontiguousarray(image)))
        if image_idx in samples:
            kept.append((image_idx, image, label, clusters))
        bar.update(1)
    if crf_pool is not None:
        add_refined(crf_pool.finish())
    bar.close()
    if conf.sum() == 0:
        raise InputError(
            f"{dataset.name}/{dataset.split}: no pixel has a class label to score (every label pixel is ignored or "
            "void); check the labels and the protocol's label set"
        )
    result = summarise(conf, dataset.class_names)
    result.update(num_images=len(dataset), seconds=round(time.time() - started, 2), confusion=conf.tolist())
    order = sorted(per_image)
    ids = [dataset.samples[i].id for i in order]
    # for intervals over images (intervals.py); not part of metrics.json
    result["per_image"] = ImageCounts.from_confusions(ids, [per_image[i] for i in order], _mappings(result), c)
    if crf_pool is not None:
        result["crf"] = summarise(conf_crf, dataset.class_names)
        refined_counts = ImageCounts.from_confusions(
            ids, [per_image_crf[i] for i in order], _mappings(result["crf"], CRF_SUFFIX), c
        )
        result["per_image"] = result["per_image"].joined(refined_counts)
    if overlay_dir is not None and kept:
        write_overlays(kept, np.array(result["mapping"]), dataset, overlay_dir)
    return result


def _sparse(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image's confusion as (cluster, class, count) of its non-zero cells."""
    rows, cols = np.nonzero(conf)
    return rows, cols, conf[rows, cols]


def _mappings(summary: dict[str, Any], suffix: str = "") -> dict[str, np.ndarray]:
    """The cluster -> class mappings a summary was scored with, by protocol name."""
    return {
        f"majority{suffix}": np.array(summary["mapping"]),
        f"hungarian{suffix}": np.array(summary["mapping_hungarian"]),
    }


def summarise(conf: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    majority, hung = M.majority_vote(conf), M.hungarian(conf)
    s_major, s_hung = M.scores(conf, majority), M.scores(conf, hung)
    return {
        "acc": s_major["acc"],
        "miou": s_major["miou"],
        "acc_hungarian": s_hung["acc"],
        "miou_hungarian": s_hung["miou"],
        "per_class_iou": dict(zip(class_names, _nan_to_none(s_major["iou"]))),
        "per_class_iou_hungarian": dict(zip(class_names, _nan_to_none(s_hung["iou"]))),
        "mapping": majority.tolist(),
        "mapping_hungarian": hung.tolist(),
    }


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def write_overlays(kept, mapping: np.ndarray, dataset: Dataset, out_dir: Path) -> None:
    """A panel per sample image (image / ground truth / prediction / overlay), plus the pieces
    under samples/ ({id}_image.png, {id}_truth.png and {id}_prediction.png as class ids, 255 =
    ignore or unmatched) that reports combine across runs."""
    from PIL import Image

    colours = palette(max(dataset.num_classes, 1))
    for image_idx, image, label, clusters in kept:
        sample_id = dataset.samples[image_idx].id
        mapped = M.remap(clusters, mapping)
        pred = colourise(mapped, colours)
        gt = colourise(np.where(label == dataset.ignore_index, -1, label), colours)
        save_panel(
            [image, gt, pred, blend(image, pred)],
            ["image", "ground truth", "prediction (majority vote)", "overlay"],
            out_dir / f"{sample_id}.png",
        )
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out_dir / "samples" / f"{sample_id}_image.png")
        Image.fromarray(np.where(label == dataset.ignore_index, 255, label).astype(np.uint8)).save(
            out_dir / "samples" / f"{sample_id}_truth.png"
        )
        Image.fromarray(np.where(mapped < 0, 255, mapped).astype(np.uint8)).save(
            out_dir / "samples" / f"{sample_id}_prediction.png"
        )


def metrics_record(
    model: RunModel, dataset: Dataset, evaluation: EvaluationSpec, result: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json: the run's identity and settings (what tables group by) with its scores."""
    spec = model.spec
    return {
        "run": spec.run,
        "method": str(model.method),
        "dataset": dataset.name,
        "train_dataset": spec.dataset,
        "protocol": evaluation.protocol,
        "backbone": spec.backbone,
        "K": model.num_clusters,
        "alpha": spec.alpha,
        "beta": spec.beta,
        "graph": spec.graph_kind,
        "settings": spec.settings,
        "seed": spec.seed,
        "split": evaluation.split,
        "fit": model.fit,
        **result,
    }


def labelled_split(spec: EvaluationSpec, view: View) -> Dataset:
    """The evaluated split, refused by name unless every image has a label."""
    dataset = load_dataset(spec.source, spec.split, view.labels)
    dataset.check_labelled()
    return dataset


def evaluate_run(
    model: RunModel,
    spec: EvaluationSpec,
    overlay_dir: Path | None = None,
    weights_dir: str | Path | None = None,
    data: list[str] | None = None,
    per_image: Path | None = None,
) -> dict[str, Any]:
    """One run scored on one split under one view: its metrics record (metrics.json's content).
    Reads the spec's cache when it names one, runs the backbone live otherwise; `data` names the
    split's data index files, whose digests the record keeps; `per_image` is where the per-image
    counts go (intervals.ImageCounts), when wanted."""
    view = View.from_config(spec.view, "view")
    dataset = labelled_split(spec, view)
    device = resolve_device(spec.device)
    model = model.to(device)
    if spec.features:
        stride = BackboneSpec.from_config(model.spec.backbone_spec).stride
        predictions = cached_predictions(
            model, cache_for(spec.features), dataset, view, stride, spec.batch_size, device
        )
    else:
        backbone = backbone_for(model, weights_dir).to(device)
        predictions = live_predictions(model, backbone, dataset, view, spec.batch_size, device)
    result = evaluate(
        model, dataset, predictions, view, crf=view.crf, overlay_dir=overlay_dir, n_overlays=spec.overlays
    )
    counts = result.pop("per_image")
    if per_image is not None:
        save_counts(per_image, counts)
    record = metrics_record(model, dataset, spec, result)
    if data:
        from .dataindex import digests

        record["data"] = digests(data)
    return record


def evaluation_of(
    model: RunModel,
    dataset: str | None = None,
    data_root: str | None = None,
    split: str = "val",
    protocol: str = "custom",
    view: dict[str, Any] | None = None,
    crf: bool = False,
    labels: str | None = None,
    **options: Any,
) -> EvaluationSpec:
    """An evaluation of `model` that no plan made (`nes evaluate` without --spec): the run's own
    dataset and view unless others are given; `options` are EvaluationSpec's remaining fields."""
    source = dict(model.spec.source)
    if dataset and dataset != source.get("name"):
        source = {"name": dataset, "adapter": dataset}
    if data_root:
        source["data_root"] = data_root
    view = dict(view) if view else default_view(model)
    view["crf"] = bool(crf or view.get("crf"))
    if labels:
        view["labels"] = labels
    return EvaluationSpec(source=source, split=split, protocol=protocol, view=view, **options)


# what an evaluation folder holds: written together, never mixed with another evaluation's
EVALUATION_FILES = tuple(
    paths.name(p)
    for p in (
        paths.METRICS,
        paths.PER_IMAGE,
        paths.OVERLAYS,
        paths.EVALUATION_REPORT,
        paths.PER_CLASS_FIGURE,
        paths.CONFUSION_FIGURE,
        paths.SAMPLES_FIGURE,
    )
)


def evaluate_into(
    model: RunModel,
    spec: EvaluationSpec,
    out_dir: Path | None = None,
    overlays_dir: Path | None = None,
    compare: Path | None = None,
    weights_dir: str | Path | None = None,
    data: list[str] | None = None,
) -> dict[str, Any]:
    """`evaluate_run` into an evaluation folder as the workflow lays it out (`out_dir`:
    metrics.json, overlays/ and report.md with its figures), or with its overlays alone
    (`overlays_dir`), written whole or not at all (formats.whole_folder: an interrupted or failed
    evaluation leaves the previous folder as it was; other files in it, such as an
    alignment.json, stay). Returns the metrics record."""
    from contextlib import nullcontext

    from .report import write_report

    if out_dir is None:
        with whole_folder(overlays_dir, owned=("samples",)) if overlays_dir else nullcontext() as folder:
            return evaluate_run(model, spec, folder, weights_dir, data)
    with whole_folder(out_dir, owned=EVALUATION_FILES) as folder:
        overlays, counts = (folder / paths.name(p) for p in (paths.OVERLAYS, paths.PER_IMAGE))
        record = evaluate_run(model, spec, overlays, weights_dir, data, counts)
        write_json(folder / paths.name(paths.METRICS), record)
        write_report(folder, record, compare)
    return record
