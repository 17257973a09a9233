"""What every dataset adapter gives: samples with an id, an image path and an optional label."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
UNKNOWN = -1  # in a label lookup table: a raw value that is neither a class nor a declared void value
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    id: str
    image_path: Path
    label_path: Path | None = None


@dataclass
class Dataset:
    """A list of samples plus what is needed to score them."""

    name: str
    split: str
    samples: list[Sample]
    class_names: list[str]
    ignore_index: int = 255
    # maps raw label values to train ids (void values -> ignore_index, anything else UNKNOWN);
    # None = identity (values 0..C-1 and ignore_index)
    label_map: np.ndarray | None = None
    # label ids that are neither classes nor void: "error" (refuse, naming the file) or "ignore"
    unknown_labels: str = "error"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        return bool(self.samples) and all(s.label_path is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> np.ndarray:
        return read_rgb(self.samples[index].image_path)

    def load_label(self, index: int, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
        """Label as int64 train ids, ignore pixels = ignore_index; checks its size against the image."""
        sample = self.samples[index]
        if sample.label_path is None:
            raise InputError(f"{sample.image_path}: this dataset has no labels")
        raw = read_label(sample.label_path)
        if expected_hw is not None and raw.shape != tuple(expected_hw):
            raise InputError(
                f"{sample.label_path}: label is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
                f"{sample.image_path.name} is {expected_hw[1]}x{expected_hw[0]}; expected equal sizes"
            )
        values = raw.astype(np.int64)
        if self.label_map is None:
            ids = values
            unknown = (values < 0) | ((values >= self.num_classes) & (values != self.ignore_index))
        else:
            inside = (values >= 0) & (values < len(self.label_map))
            ids = np.full(values.shape, UNKNOWN, dtype=np.int64)
            ids[inside] = self.label_map[values[inside]]
            unknown = ids == UNKNOWN
        if unknown.any():
            bad = np.unique(values[unknown])
            shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
            if self.unknown_labels != "ignore":
                raise InputError(
                    f"{sample.label_path}: label ids {shown} ({int(unknown.sum())} pixels) are neither classes of "
                    f"{self.name} nor its void values; set datasets.{self.name}.unknown_labels: ignore to score "
                    "them as ignored"
                )
            log.warning(
                "%s: %d pixels with unknown label ids %s scored as ignored",
                sample.label_path,
                int(unknown.sum()),
                shown,
            )
            ids = np.where(unknown, self.ignore_index, ids)
        return ids


def is_plain_name(text: str) -> bool:
    """An image id or path component that names one entry of one folder: no separators, not `..`."""
    return bool(text) and text not in (".", "..") and not any(c in text for c in "/\\\0")


def list_file_ids(list_file: Path) -> list[str]:
    """The ids of a split list (one per line), each a plain name: an id such as `../../x` would
    read (and name outputs) outside the dataset, so it is refused naming the file and line."""
    ids = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if not is_plain_name(image_id):
            raise InputError(
                f"{list_file}:{number}: image id {image_id!r} is not a plain file name (no '/', '\\' or '..'); "
                "it would read outside the dataset"
            )
        ids.append(image_id)
    return ids


def check_samples(dataset: Dataset, roots: list[Path]) -> None:
    """Every sample's id is a plain name used once, and its files lie under `roots` (the data
    root and any configured label folder): ids name cache items and output files."""
    allowed = [_lexical(r) for r in roots]  # lexical: symlinked files (shared storage) stay allowed
    seen: dict[str, Path] = {}
    for sample in dataset.samples:
        if not is_plain_name(sample.id):
            raise InputError(f"{sample.image_path}: image id {sample.id!r} is not a plain file name")
        if sample.id in seen:
            raise InputError(
                f"{dataset.name}/{dataset.split}: {seen[sample.id]} and {sample.image_path} have the same id "
                f"{sample.id!r} (one stem, two files); rename or remove one"
            )
        seen[sample.id] = sample.image_path
        for path in (sample.image_path, sample.label_path):
            if path is not None and not any(_lexical(path).is_relative_to(root) for root in allowed):
                raise InputError(f"{path}: outside the dataset's folders ({', '.join(map(str, roots))}); refused")


def _lexical(path: Path | str) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 as every viewer shows the image (its EXIF orientation applied: phone photos
    are stored sideways), or a clear error naming the file. 16-bit greyscale images are scaled to
    8 bits (PIL's RGB conversion would clip them to white)."""
    try:
        with Image.open(path) as stored:
            im = ImageOps.exif_transpose(stored)
            if im.mode.startswith("I;16") or im.mode == "I":
                wide = np.asarray(im).astype(np.float64)
                depth = 65535.0 if im.mode.startswith("I;16") or wide.max() > 255 else 255.0
                grey = np.clip(np.round(wide / depth * 255.0), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=2)
            return np.array(im.convert("RGB"))  # writable: the CRF needs a real buffer
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


def read_label(path: Path) -> np.ndarray:
    """Class ids as displayed (EXIF orientation applied, as for the image it labels)."""
    try:
        with Image.open(path) as stored:
            arr = np.asarray(ImageOps.exif_transpose(stored))
    except FileNotFoundError:
        raise InputError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read label ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: label must be a single-channel image of class ids, got shape {arr.shape}")
    return arr


def lookup_table(mapping: dict[int, int], ignore_index: int, void: tuple[int, ...] = (), size: int = 256) -> np.ndarray:
    """Dense raw-value -> train-id table: `mapping`'s values, `void` values and the ignore value
    itself -> ignore_index, anything else UNKNOWN (refused when a label holds it)."""
    table = np.full(size, UNKNOWN, dtype=np.int64)
    table[[*list(void), ignore_index]] = ignore_index
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table
