"""A run + a split + a view -> metrics (rule `evaluate`, `nes evaluate`).

Token logits are upsampled bilinearly to the padded input, cropped to the input, brought to the
scoring geometry of the view (views.py: the original size for `resize` and `sliding`, the centre
crop for `centre_crop`) and arg-maxed; a K x C confusion matrix accumulates in one pass, so
memory is O(K x C) plus one image. Clusters are matched to classes once over the whole split,
separately for CRF and non-CRF predictions. Features come from the cache (workflow) or a live
backbone (sliding windows, the CLI on any images).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from .backbones import Backbone, BackboneSpec
from .cache import FeatureCache
from .datasets import Dataset
from .errors import InputError
from .features import encode_crops
from .formats import store_of
from .models import RunModel, TokenScorer
from .runtime import progress
from .spec import EvaluationSpec
from .views import View
from .visualise import blend, colourise, palette, save_panel

log = logging.getLogger(__name__)

Prediction = tuple[int, torch.Tensor]  # image index, (K, H, W) logits at the view's scoring geometry


def logits_to_image(
    logits: torch.Tensor, stride: int, input_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """(K, h, w) token logits -> (K, H, W): upsampled to the padded input, cropped to `input_size`,
    resized to `out_size`."""
    _k, h, w = logits.shape
    # a genuinely channels-last (1, K, h, w) tensor takes torch's vectorised CPU path and makes
    # the argmax over K contiguous: about 6x faster than a view of a permuted batch (whose odd
    # batch stride falls back to a slow generic kernel)
    x = logits.permute(1, 2, 0).contiguous()[None].permute(0, 3, 1, 2)
    up = F.interpolate(x, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(out_size):
        up = F.interpolate(up, size=tuple(out_size), mode="bilinear", align_corners=False)
    return up[0]


def scored_size(view: View, image_hw: tuple[int, int]) -> tuple[int, int]:
    return view.input_size if view.mode == "centre_crop" else (int(image_hw[0]), int(image_hw[1]))


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
    if model.psi is not None and model.input_dim != cache.dim("input"):
        raise InputError(
            f"{cache.path}: psi's input has {cache.dim('input')} channels, run {model.spec.run} expects "
            f"{model.input_dim}"
        )
    if (
        model.psi is None
        and model.centres.numel()
        and not model.item_lookup
        and model.centres.shape[1] != cache.dim("high")
    ):
        raise InputError(
            f"{cache.path}: {cache.dim('high')}-channel features, run {model.spec.run}'s centres have "
            f"{model.centres.shape[1]}"
        )


def image_logits(
    model: TokenScorer,
    backbone: Backbone,
    images: list[np.ndarray],
    view: View,
    device: torch.device,
    window_batch: int = 8,
    at_view: bool = False,
) -> list[torch.Tensor]:
    """Logits at the scoring geometry for images of any size, from a live backbone: one forward
    pass for `resize` / `centre_crop` views; sliding windows (protocol B) otherwise. `at_view`:
    stop at the view's own resolution (its input size, or the resized canvas of the windows),
    whose size the view bounds, and leave the last resize to the caller (`resample_rows`)."""
    stride = backbone.spec.stride
    if view.mode != "sliding":
        feats = encode_crops(backbone, [view.prepare(im) for im in images], device, view.input_size)
        logits = model.token_logits(feats["high"], feats["input"]).float()
        return [
            logits_to_image(
                logits[j], stride, view.input_size, view.input_size if at_view else scored_size(view, im.shape[:2])
            )
            for j, im in enumerate(images)
        ]
    return [sliding_logits(model, backbone, im, view, device, window_batch, resize=not at_view) for im in images]


def resample_rows(logits: torch.Tensor, out_hw: tuple[int, int], reduce, max_elements: int = 2**27) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as F.interpolate) of (K, h, w) logits to `out_hw`, in
    bands of output rows so that at most `max_elements` resized values exist at once; `reduce`
    maps each (K, rows, W) band to what is kept (e.g. its argmax over K)."""
    k = logits.shape[0]
    height, width = out_hw
    rows = max(1, max_elements // max(1, k * width))
    gx = (torch.arange(width, dtype=torch.float32, device=logits.device) + 0.5) / width * 2 - 1
    bands = []
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        gy = (torch.arange(r0, r1, dtype=torch.float32, device=logits.device) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, rows, W, 2) as (x, y)
        band = F.grid_sample(logits[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        bands.append(reduce(band))
    return torch.cat(bands, dim=-2)


def max_canvas_values() -> int:
    """Logit values a sliding-window canvas may hold at once (default 2^27: 512 MiB in float32, the
    bound `Segmenter` keeps for resized logits); a larger canvas is built in bands."""
    return int(os.environ.get("NES_MAX_CANVAS_VALUES", 2**27))


def sliding_logits(
    model: TokenScorer,
    backbone: Backbone,
    image: np.ndarray,
    view: View,
    device: torch.device,
    window_batch: int = 8,
    resize: bool = True,
) -> torch.Tensor:
    """Protocol B: short side resized, windows of the crop size at the view's stride, logits of
    overlapping windows averaged, then (with `resize`) resized to the original image size.
    The averaged logits live at the resized image's size, which extreme aspect ratios blow up
    (10 x 10000 at short side 512: 512 x 512000): above `max_canvas_values()` the canvas is
    built in bands of its long axis, each resized to the image's size as it is finished
    (`_banded_sliding_logits`; the result is then at the image's size whatever `resize` says)."""
    height, width = view.resized_shape(*image.shape[:2])
    if model.num_clusters * height * width > max_canvas_values():
        return _banded_sliding_logits(model, backbone, image, view, device, window_batch, max_canvas_values())
    resized = view.resize(image, (height, width))
    canvas = torch.zeros(model.num_clusters, height, width, device=device)
    count = torch.zeros(1, height, width, device=device)
    for window, logits in _window_logits(model, backbone, resized, view.windows(height, width), device, window_batch):
        t, b, l, r = window
        canvas[:, t:b, l:r] += logits
        count[:, t:b, l:r] += 1
    canvas /= count
    if resize and (height, width) != tuple(image.shape[:2]):
        canvas = F.interpolate(canvas[None], size=tuple(image.shape[:2]), mode="bilinear", align_corners=False)[0]
    return canvas


def _window_logits(
    model: TokenScorer,
    backbone: Backbone,
    resized: torch.Tensor,
    windows: list[tuple[int, int, int, int]],
    device: torch.device,
    window_batch: int,
) -> Iterator[tuple[tuple[int, int, int, int], torch.Tensor]]:
    """(window, its (K, b - t, r - l) logits) for each window of a resized (3, H, W) image."""
    stride = backbone.spec.stride
    for start in range(0, len(windows), window_batch):
        group = windows[start : start + window_batch]
        feats = encode_crops(backbone, [resized[:, t:b, l:r] for t, b, l, r in group], device)
        logits = model.token_logits(feats["high"], feats["input"]).float()
        for j, (t, b, l, r) in enumerate(group):
            yield (t, b, l, r), logits_to_image(logits[j], stride, (b - t, r - l), (b - t, r - l))


def _banded_sliding_logits(
    model: TokenScorer,
    backbone: Backbone,
    image: np.ndarray,
    view: View,
    device: torch.device,
    window_batch: int,
    budget: int,
) -> torch.Tensor:
    """`sliding_logits` at the image's size with the canvas built band by band along its long
    axis, so that about `budget` canvas values exist at once: each band averages the windows that
    overlap it (a window across two bands is computed for both), is resized on its short axis,
    then interpolated on its long axis at exactly the positions and weights of one bilinear
    resize of the whole canvas (align_corners=False). Equal to the one-canvas result up to
    float rounding; refused, with the sizes, when not even one window's band fits the budget."""
    k = model.num_clusters
    height, width = view.resized_shape(*image.shape[:2])
    out_h, out_w = image.shape[:2]
    dim = 2 if width >= height else 1  # the long axis of (K, H, W)
    long_c, short_c = (width, height) if dim == 2 else (height, width)
    long_o, short_o = (out_w, out_h) if dim == 2 else (out_h, out_w)
    windows = view.windows(height, width)
    window_len = max((r - l) if dim == 2 else (b - t) for t, b, l, r in windows)
    # values per canvas position of the long axis while a band is finished: the band, its resize,
    # and the two gathered neighbours of each output position
    per_position = short_c + short_o * (1 + 2 * max(1.0, long_o / long_c))
    band = int(budget // (k * per_position)) - 1
    bound = f"the bound of {budget:,} logit values ({budget * 4 / 2**20:,.0f} MiB, $NES_MAX_CANVAS_VALUES)"
    where = f"a {out_h}x{out_w} image under this sliding view is averaged on a {height}x{width} canvas of {k} logits"
    if k * out_h * out_w > budget:
        raise InputError(f"{where}: its logits at the image's size exceed {bound}; use a resize view")
    if band < window_len:
        raise InputError(
            f"{where}: not even bands of one window ({window_len} positions) fit {bound}; "
            "crop the image or use a resize view"
        )
    resized = view.resize(image, (height, width))
    # where each output position of the long axis samples the canvas (as F.interpolate does)
    x = ((torch.arange(long_o, dtype=torch.float64) + 0.5) * (long_c / long_o) - 0.5).clamp_min(0)
    lower = x.floor().long().clamp_max(long_c - 1)
    upper = (lower + 1).clamp_max(long_c - 1)
    frac = (x - lower).float().to(device)
    out = torch.empty(k, out_h, out_w, device=device)
    for c0 in range(0, long_c, band):
        c1 = min(c0 + band, long_c)
        end = min(c1 + 1, long_c)  # one more position: the upper neighbour of the band's last sample
        rows = ((lower >= c0) & (lower < c1)).nonzero().flatten()
        if not len(rows):
            continue
        shape = (k, short_c, end - c0) if dim == 2 else (k, end - c0, short_c)
        canvas = torch.zeros(shape, device=device)
        count = torch.zeros((1, *shape[1:]), device=device)
        inside = [w for w in windows if _extent(w, dim)[0] < end and _extent(w, dim)[1] > c0]
        for window, logits in _window_logits(model, backbone, resized, inside, device, window_batch):
            lo, hi = _extent(window, dim)
            a, z = max(lo, c0), min(hi, end)
            part = logits.narrow(dim, a - lo, z - a)
            t, b, l, r = window
            target = (
                (slice(None), slice(t, b), slice(a - c0, z - c0))
                if dim == 2
                else (slice(None), slice(a - c0, z - c0), slice(l, r))
            )
            canvas[target] += part
            count[target] += 1
        canvas /= count
        size = (short_o, end - c0) if dim == 2 else (end - c0, short_o)
        canvas = F.interpolate(canvas[None], size=size, mode="bilinear", align_corners=False)[0]
        f = frac[rows.to(device)].view((1, 1, -1) if dim == 2 else (1, -1, 1))
        below = canvas.index_select(dim, (lower[rows] - c0).to(device))
        above = canvas.index_select(dim, (upper[rows] - c0).to(device))
        out.index_copy_(dim, rows.to(device), below * (1 - f) + above * f)
    return out


def _extent(window: tuple[int, int, int, int], dim: int) -> tuple[int, int]:
    """A window's (start, end) on axis `dim` of (K, H, W)."""
    t, b, l, r = window
    return (l, r) if dim == 2 else (t, b)


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
    conf_crf = np.zeros((k, c), dtype=np.int64) if crf else None
    crf_pool = None
    if crf:
        from .crf import CRFPool

        crf_pool = CRFPool(crf_workers or torch.get_num_threads())
    kept: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
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
        conf += M.confusion_matrix(clusters, label, k, c, dataset.ignore_index)
        if crf_pool is not None:
            for lab, refined in crf_pool.submit(label, logits.softmax(0).cpu().numpy(), np.ascontiguousarray(image)):
                conf_crf += M.confusion_matrix(refined, lab, k, c, dataset.ignore_index)
        if image_idx in samples:
            kept.append((image_idx, image, label, clusters))
        bar.update(1)
    if crf_pool is not None:
        for lab, refined in crf_pool.finish():
            conf_crf += M.confusion_matrix(refined, lab, k, c, dataset.ignore_index)
    bar.close()
    if conf.sum() == 0:
        raise InputError(
            f"{dataset.name}/{dataset.split}: no pixel has a class label to score (every label pixel is ignored or "
            "void); check the labels and the protocol's label set"
        )
    result = summarise(conf, dataset.class_names)
    result.update(num_images=len(dataset), seconds=round(time.time() - started, 2), confusion=conf.tolist())
    if conf_crf is not None:
        result["crf"] = summarise(conf_crf, dataset.class_names)
    if overlay_dir is not None and kept:
        write_overlays(kept, np.array(result["mapping"]), dataset, overlay_dir)
    return result


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


def backbone_for(model: RunModel, weights_dir: str | Path | None = None) -> Backbone:
    return Backbone(backbone_spec_for(model, weights_dir))


def backbone_spec_for(model: RunModel, weights_dir: str | Path | None = None) -> BackboneSpec:
    """The run's backbone settings. Converted weights go to `weights_dir` (default:
    $NES_WEIGHTS_DIR, else `weights`), never to a folder the model file names: a model.pt does
    not choose where anything is written."""
    local = str(weights_dir or os.environ.get("NES_WEIGHTS_DIR", "weights"))
    return BackboneSpec.from_config({**model.spec.backbone_spec, "weights_dir": local})


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
