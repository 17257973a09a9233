"""CamVid, SegNet's 11-class 480x360 version: `{split}/`, `{split}annot/`, `{split}.txt`."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Dataset, Sample, is_plain_name, lookup_table

CLASS_NAMES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
VOID = 11
IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")
LAYOUT = (
    "camvid root with train/, trainannot/, val/, valannot/ (and optionally test/, testannot/) of "
    "PNGs, and train.txt / val.txt"
)


def load_camvid(root: Path, split: str) -> Dataset:
    root = Path(root)
    if split not in SPLITS:
        raise InputError(f"camvid: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise InputError(f"camvid: data root {root} does not exist; expected a {LAYOUT}")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        samples = [
            _sample_from_line(root, line, list_file) for line in list_file.read_text().splitlines() if line.strip()
        ]
    else:
        image_dir, label_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir():
            raise InputError(f"camvid: neither {list_file} nor {image_dir}/ exists; expected a {LAYOUT}")
        samples = [
            Sample(p.stem, p, (label_dir / p.name) if (label_dir / p.name).exists() else None)
            for p in sorted(image_dir.glob("*.png"))
        ]
    if not samples:
        raise InputError(f"camvid: split {split!r} under {root} holds no images")
    table = lookup_table({i: i for i in range(len(CLASS_NAMES))}, IGNORE_INDEX, void=(VOID,))
    return Dataset("camvid", split, samples, CLASS_NAMES, IGNORE_INDEX, table)


def _sample_from_line(root: Path, line: str, list_file: Path) -> Sample:
    parts = line.split()
    if len(parts) not in (1, 2):
        raise InputError(f"{list_file}: expected 'image_path label_path' per line, got {line!r}")
    # SegNet's lists carry absolute paths of the authors' machine: keep the last two components
    kept = [Path(p).parts[-2:] for p in parts]
    if not all(is_plain_name(c) for components in kept for c in components):
        raise InputError(f"{list_file}: {line!r} names a file outside the dataset (a '..' component); refused")
    image = root / Path(*kept[0])
    label = root / Path(*kept[1]) if len(parts) == 2 else None
    return Sample(image.stem, image, label)
