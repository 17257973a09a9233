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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .evaluate import backbone_for, image_logits, resample_rows
from .formats import write_json
from .models import PsiOutputs, RunModel
from .runtime import resolve_device
from .views import View

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
