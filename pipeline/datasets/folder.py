"""A directory of images (optionally a parallel directory of label PNGs with the same stems)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import IMAGE_SUFFIXES, Dataset, Sample


def load_folder(
    root: Path, split: str, label_dir: Path | None = None, class_names: list[str] | None = None, ignore_index: int = 255
) -> Dataset:
    """Images under `root/split` if that folder exists, else under `root` itself."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"folder dataset: data root {root} does not exist; expected a directory of images")
    image_dir = root / split if (root / split).is_dir() else root
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    samples = []
    for p in images:
        label = (Path(label_dir) / f"{p.stem}.png") if label_dir else None
        samples.append(Sample(p.stem, p, label if label and label.exists() else None))
    return Dataset("folder", split, samples, list(class_names or []), ignore_index, None)
