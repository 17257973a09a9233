"""Segment new images with a trained run: no eigendecomposition, no cache, nothing written.

    seg = Segmenter.from_run("results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0")
    labels = seg.predict(image)          # (H, W): class ids if the run has a mapping, else cluster ids
    logits = seg.predict_logits(image)   # (K, H, W) at the image's size

Memory stays bounded for images of any size: `predict` and `nes segment` keep the logits at the
view's resolution (which the view bounds) and resize them to the image in bands of rows, taking
the arg-max band by band, so no (K, H, W) array exists once K x H x W exceeds `max_elements`;
eigenfunction maps of such images are drawn at a reduced size.

Images of any size go through the run's view: its training view, with a centre-crop training view
turned into sliding windows of the same crop (protocol B's scheme), so nothing is cut off. The
cluster -> class mapping comes from an evaluation of the run (its metrics.json) or a JSON file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .formats import whole_folder, write_json
from .models import PsiOutputs, RunModel
from .predict import backbone_for, image_logits, resample_rows
from .runtime import resolve_device
from .views import View

log = logging.getLogger(__name__)

UNMATCHED = 255  # label PNG value of pixels whose cluster has no class


def default_view(model: RunModel) -> dict[str, Any]:
    """The run's training view; a centre crop becomes sliding windows (stride 2/3 of the crop)."""
    view = dict(model.spec.train_view)
    if view["mode"] == "centre_crop":
        view.update(mode="sliding", stride=max(1, int(view["crop"]) * 2 // 3))
    return view


@dataclass
class ClassMapping:
    """Cluster -> class id (-1: unmatched), with the class names, from one evaluation."""

    mapping: np.ndarray
    class_names: list[str]
    source: str = ""

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], source: str = "") -> ClassMapping:
        return cls(np.asarray(metrics["mapping"], dtype=np.int64), list(metrics["per_class_iou"]), source)

    @classmethod
    def load(cls, path: Path) -> ClassMapping:
        """A mapping JSON written by `nes evaluate --mapping-out`, or an evaluation's metrics.json."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot read a cluster -> class mapping ({exc})") from None
        if isinstance(data, dict) and "mapping" in data and ("class_names" in data or "per_class_iou" in data):
            names = data.get("class_names", list(data.get("per_class_iou") or []))
            mapping = data["mapping"]
            if (
                not isinstance(mapping, list)
                or not all(isinstance(i, int) and -1 <= i < len(names) for i in mapping)
                or not isinstance(names, list)
                or not all(isinstance(n, str) for n in names)
            ):
                raise InputError(
                    f"{path}: 'mapping' must list a class id (0..{len(names) - 1}, or -1) per cluster and "
                    "'class_names' the classes' names"
                )
            return cls(np.asarray(mapping, dtype=np.int64), list(names), str(path))
        raise InputError(f"{path}: expected 'mapping' and 'class_names' (or an evaluation's metrics.json)")

    def save(self, path: Path) -> None:
        write_json(
            Path(path), {"mapping": self.mapping.tolist(), "class_names": self.class_names, "source": self.source}
        )

    def apply(self, clusters: np.ndarray) -> np.ndarray:
        """Cluster ids -> class ids, unmatched clusters -> UNMATCHED."""
        table = np.where(self.mapping >= 0, self.mapping, UNMATCHED)
        return table[clusters]


def check_image(image: Any) -> None:
    """What the segmenter takes: an HxWx3 uint8 RGB array (as datasets.read_rgb returns); a float
    image in [0, 1] would be read as near-black and segmented into garbage."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"expected an HxWx3 uint8 RGB image (values 0-255), got a {got}")
    if not image.shape[0] or not image.shape[1]:
        raise InputError(f"expected an HxWx3 uint8 RGB image, got an empty one ({image.shape[0]}x{image.shape[1]})")


def run_mapping(run_dir: Path) -> ClassMapping | None:
    """The mapping of the run's first evaluation (sorted by name), if it has been evaluated."""
    for metrics in sorted(Path(run_dir).glob("*/metrics.json")):
        return ClassMapping.from_metrics(json.loads(metrics.read_text()), str(metrics))
    return None


class Segmenter:
    """A trained run (backbone + psi or centres) that maps images to cluster or class maps."""

    def __init__(
        self,
        model: RunModel,
        view: View,
        mapping: ClassMapping | None = None,
        device: torch.device | None = None,
        batch_size: int = 4,
        max_elements: int = 2**27,
        weights_dir: str | Path | None = None,
    ):
        model.check_labels_new_images()
        self.max_elements = max_elements  # resized logit values held at once (2^27 floats = 512 MB)
        self.device = device or torch.device("cpu")
        self.model = model.to(self.device)
        self.backbone = backbone_for(model, weights_dir).to(self.device)
        self.view, self.mapping, self.batch_size = view, mapping, batch_size
        if mapping is not None and len(mapping.mapping) != model.num_clusters:
            raise InputError(
                f"{mapping.source}: maps {len(mapping.mapping)} clusters, the run has {model.num_clusters}"
            )

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        device: str = "auto",
        view: dict[str, Any] | None = None,
        mapping: str | Path | None = "auto",
        batch_size: int = 4,
        weights_dir: str | Path | None = None,
    ) -> Segmenter:
        """`mapping`: "auto" (the run's evaluation, if any), None (cluster ids), or a JSON file."""
        model = RunModel.load(Path(run))
        if mapping == "auto":
            resolved = run_mapping(Path(run) if Path(run).is_dir() else Path(run).parent)
        else:
            resolved = ClassMapping.load(Path(mapping)) if mapping else None
        view_ = View.from_config(view or default_view(model), "view")
        return cls(model, view_, resolved, resolve_device(device), batch_size, weights_dir=weights_dir)

    @property
    def num_clusters(self) -> int:
        return self.model.num_clusters

    def predict_logits(self, images: np.ndarray | list[np.ndarray]) -> Any:
        """(K, H, W) float logits per HxWx3 uint8 image, at the image's own size (a list for a
        list of images)."""
        single = isinstance(images, np.ndarray)
        batch: list[np.ndarray] = [images] if isinstance(images, np.ndarray) else list(images)
        for image in batch:
            check_image(image)
        out: list[torch.Tensor] = []
        for start in range(0, len(batch), self.batch_size):
            out += [
                t.cpu()
                for t in image_logits(
                    self.model, self.backbone, batch[start : start + self.batch_size], self.view, self.device
                )
            ]
        return out[0] if single else out

    def predict(self, images: np.ndarray | list[np.ndarray]) -> Any:
        """(H, W) class ids (UNMATCHED where a cluster has no class) when there is a mapping,
        cluster ids otherwise (a list for a list of images); memory bounded by `max_elements`
        whatever the image size."""
        batch: list[np.ndarray] = [images] if isinstance(images, np.ndarray) else list(images)
        maps = [self.labels(image)[0] for image in batch]
        return maps[0] if isinstance(images, np.ndarray) else maps

    def labels(self, image: np.ndarray, eigenfunctions: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels at the image's size and, when asked, its first n eigenfunction maps
        (`eigenfunctions`), without holding (K, H, W) logits of a large image. A one-hot nes run's
        maps are its logits x tau_min, so they cost no second pass; other runs' come from psi."""
        check_image(image)
        height, width = image.shape[:2]
        n = eigenfunctions
        from_logits = bool(n) and self.model.logits_are_psi_outputs  # no second pass for these
        maps = self.eigenfunctions(image, n) if n and not from_logits else None
        if self.num_clusters * height * width <= self.max_elements:
            logits = self.predict_logits(image)
            if from_logits:
                maps = (logits[:n] * self.model.spec.psi.tau_min).numpy()
            return self.labels_from_logits(logits), maps
        low = image_logits(self.model, self.backbone, [image], self.view, self.device, at_view=True)[0].cpu()
        if from_logits:
            maps = self._maps_at_image_size(low[:n] * self.model.spec.psi.tau_min, height, width)
        clusters = resample_rows(low, (height, width), lambda band: band.argmax(0), self.max_elements).numpy()
        return (self.mapping.apply(clusters) if self.mapping is not None else clusters), maps

    def labels_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """Arg-max cluster per pixel, through the mapping when there is one."""
        clusters = logits.argmax(0).numpy()
        return self.mapping.apply(clusters) if self.mapping is not None else clusters

    def eigenfunctions(self, image: np.ndarray, n: int) -> np.ndarray:
        """The first n of psi's outputs (the learned eigenfunctions: before the Gumbel-softmax of a
        one-hot run, before the K-means read-out of a run of plain eigenfunctions) as (n, H, W)
        maps at the image's size, or smaller where n x H x W exceeds `max_elements`, for any run
        with a psi (nes, nes_star)."""
        check_image(image)
        outputs = PsiOutputs(self.model, n)
        low = image_logits(outputs, self.backbone, [image], self.view, self.device, at_view=True)[0].cpu()
        return self._maps_at_image_size(low, *image.shape[:2])

    def _maps_at_image_size(self, low: torch.Tensor, height: int, width: int) -> np.ndarray:
        """(n, h, w) maps at the view's resolution -> the image's size, or smaller where n x H x W
        exceeds `max_elements`."""
        scale = min(1.0, (self.max_elements / (low.shape[0] * height * width)) ** 0.5)
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
        return resample_rows(low, size, lambda band: band, self.max_elements).numpy()


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


def segment_files(
    seg: Segmenter, images: list[Path], out: Path, eigenfunctions: int = 0, data: list[str] | None = None
) -> dict[str, Any]:
    """Label PNG, overlay with a legend (and the first `eigenfunctions` maps) per image in `out`;
    an unreadable image is skipped and named. With `data` (the split's data indexes, as the
    workflow passes them) the summary is also written as summary.json with their digests."""
    from .visualise import palette

    if eigenfunctions and not seg.model.method.traits.learns_psi:
        raise InputError(f"--eigenfunctions: this is a {seg.model.method} run; eigenfunction maps need a nes run")
    if seg.mapping is not None:
        names, colours = seg.mapping.class_names, palette(len(seg.mapping.class_names))
        log.info("class ids from %s", seg.mapping.source)
    else:
        names, colours = [f"cluster {k}" for k in range(seg.num_clusters)], palette(seg.num_clusters)
    if not images:
        raise InputError("no images found to segment")
    planned = segment_outputs(images, out, bool(eigenfunctions))  # checked against the final folder
    with whole_folder(out, owned=("summary.json",)) as folder:
        summary = _segment_into(seg, planned, folder, out, eigenfunctions, names, colours)
        log.info("segmented %d image(s), skipped %d", summary["segmented"], summary["skipped"])
        if data:
            from .dataindex import digests

            write_json(folder / "summary.json", {**summary, "data": digests(data)})
    return summary


def _segment_into(
    seg: Segmenter,
    planned: dict[Path, dict[str, Path]],
    folder: Path,
    out: Path,
    eigenfunctions: int,
    names: list[str],
    colours: np.ndarray,
) -> dict[str, Any]:
    """Each image's files into `folder` (the fresh copy of `out`), named as `planned`."""
    from .datasets import read_rgb
    from .runtime import progress
    from .visualise import blend, colourise, save_heatmaps, save_labels, with_legend

    images, failed = list(planned), []
    for path in progress(images, desc="segment", unit="img"):
        try:
            image = read_rgb(path)
            labels, maps = seg.labels(image, eigenfunctions)
        except InputError as exc:
            log.error("skipped %s: %s", path, exc)
            failed.append(str(path))
            continue
        files = {kind: folder / file.name for kind, file in planned[path].items()}
        save_labels(labels, files["labels"])
        present = [i for i in np.unique(labels) if i != UNMATCHED]
        overlay = with_legend(
            blend(image, colourise(np.where(labels == UNMATCHED, -1, labels), colours)), present, names, colours
        )
        Image.fromarray(overlay).save(files["overlay"])
        if maps is not None:
            save_heatmaps(maps, [f"eigenfunction {i + 1}" for i in range(len(maps))], files["eigenfunctions"])
    return {
        "segmented": len(images) - len(failed),
        "skipped": len(failed),
        "failed": failed,
        "out": str(out),
        "labels": "classes" if seg.mapping is not None else "clusters",
    }
