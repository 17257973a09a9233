"""What every dataset adapter gives: samples with an id, an image path and an optional label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
    # maps raw label values to train ids (ignore -> ignore_index); None = identity
    label_map: np.ndarray | None = None

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
        if self.label_map is None:
            return raw.astype(np.int64)
        return self.label_map[raw].astype(np.int64)


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8, or a clear error naming the file."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # writable: the CRF needs a real buffer
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


def read_label(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise InputError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read label ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: label must be a single-channel image of class ids, got shape {arr.shape}")
    return arr


def lookup_table(mapping: dict[int, int], ignore_index: int, size: int = 256) -> np.ndarray:
    """Dense raw-value -> train-id table; values not in `mapping` become ignore_index."""
    table = np.full(size, ignore_index, dtype=np.int64)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table
