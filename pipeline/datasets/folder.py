"""A directory of images (optionally a parallel directory of label PNGs with the same stems)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import IMAGE_SUFFIXES, Dataset, Sample


def load_folder(
    root: Path, split: str, label_dir: Path | None = None, class_names: list[str] | None = None, ignore_index: int = 255
) -> Dataset:
    """Images under `root/split` when the root is split into folders of images (the label folder
    aside); every split is `root` itself when it is one flat folder of images. A split missing
    from a split root is refused: a misspelt split must not fall back to the whole folder."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"folder dataset: data root {root} does not exist; expected a directory of images")
    labels = Path(label_dir).resolve() if label_dir else None
    splits = sorted(d.name for d in root.iterdir() if d.is_dir() and d.resolve() != labels and _images(d))
    if splits and not (root / split).is_dir():
        raise InputError(
            f"folder dataset {root}: no folder for split {split!r} (it is split into {', '.join(splits)}); "
            "check train_split / eval_split"
        )
    image_dir = root / split if splits else root
    images = sorted(_images(image_dir))
    if not images:
        raise InputError(f"folder dataset: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    samples = []
    for p in images:
        label = (Path(label_dir) / f"{p.stem}.png") if label_dir else None
        samples.append(Sample(p.stem, p, label if label and label.exists() else None))
    return Dataset("folder", split, samples, list(class_names or []), ignore_index, None)


def _images(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
