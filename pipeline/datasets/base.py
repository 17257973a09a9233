"""What every dataset adapter gives: samples with an id, an image path and an optional label."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
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

    def check_labelled(self) -> None:
        """Refuse, naming the first image without one, a split that cannot be scored: evaluation
        calls this, and so does planning, before anything is extracted or trained."""
        if self.has_labels:
            return
        unlabelled = [s for s in self.samples if s.label_path is None]
        if len(unlabelled) < len(self.samples):  # some have labels: name the first that does not
            missing = f"no label for {unlabelled[0].image_path} (and {len(unlabelled) - 1} more)"
            raise InputError(f"{self.name}/{self.split}: {missing}; every image needs one to evaluate")
        raise InputError(f"{self.name}/{self.split}: no labels, nothing to evaluate against (use `nes segment`)")

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
    are stored sideways), or a clear error naming the file. Greyscale of 16 bits is scaled to 8
    (PIL's RGB conversion would clip it to white) and floating-point greyscale in [0, 1] to
    [0, 255] (it would read as black); a file of several pages or frames is refused rather than
    read as its first."""
    with _opened(path, "image") as im:
        if im.mode == "F":
            values = _float_values(path, np.asarray(im, dtype=np.float64), "image")
            low, high = (values.min(), values.max()) if values.size else (0.0, 0.0)
            if low < 0 or high > 255:
                raise InputError(
                    f"{path}: a floating-point image with values from {low:g} to {high:g}; expected [0, 1] or [0, 255]"
                )
            grey = np.round(values * (255.0 if high <= 1 else 1.0)).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        if im.mode.startswith("I;16") or im.mode == "I":
            wide = np.asarray(im).astype(np.float64)
            depth = 65535.0 if im.mode.startswith("I;16") or wide.max() > 255 else 255.0
            grey = np.clip(np.round(wide / depth * 255.0), 0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.array(im.convert("RGB"))  # writable: the CRF needs a real buffer


def read_label(path: Path) -> np.ndarray:
    """Class ids as displayed (EXIF orientation applied, as for the image it labels): an integer
    map. A floating-point map is accepted only where every value is a whole number (2.7 is not
    a class); a file of several pages is refused."""
    with _opened(path, "label") as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise InputError(f"{path}: label must be a single-channel image of class ids, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        values = _float_values(path, arr.astype(np.float64), "label")
        fractional = values[values != np.round(values)]
        if fractional.size or (values.size and values.min() < 0):
            shown = fractional[0] if fractional.size else values.min()
            raise InputError(f"{path}: labels must be whole, non-negative class ids; this map holds {shown:g}")
        return values.astype(np.int64)
    return arr.astype(np.int64) if arr.dtype == bool else arr


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Image.Image]:
    """The file's one image, decoded, with its EXIF orientation applied, or an error naming the
    file: unreadable, or several pages or frames (the first is not taken silently)."""
    try:
        stored = Image.open(path)
    except FileNotFoundError:
        raise InputError(f"{path}: {what} file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    with stored:
        pages = getattr(stored, "n_frames", 1)
        if pages > 1:
            raise InputError(f"{path}: holds {pages} pages or frames; save the one to use as a file of its own")
        try:
            image = ImageOps.exif_transpose(stored)
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
        yield image


def _float_values(path: Path, values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise InputError(f"{path}: a floating-point {what} holding NaN or infinite values")
    return values


def lookup_table(mapping: dict[int, int], ignore_index: int, void: tuple[int, ...] = (), size: int = 256) -> np.ndarray:
    """Dense raw-value -> train-id table: `mapping`'s values, `void` values and the ignore value
    itself -> ignore_index, anything else UNKNOWN (refused when a label holds it)."""
    table = np.full(size, UNKNOWN, dtype=np.int64)
    table[[*list(void), ignore_index]] = ignore_index
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table
