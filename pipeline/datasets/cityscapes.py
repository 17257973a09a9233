"""Cityscapes fine annotations: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` and
`gtFine/{split}/{city}/*_gtFine_labelIds.png`.

Two label sets from the same labelId PNGs, mapped here (no cityscapesScripts needed):
`27` (protocol A, as STEGO): labelId - 7, values below 0 ignored; `19` (protocol B): the
official train ids.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Dataset, Sample, lookup_table

NAMES_27 = [
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
]
# labelId -> train id, from cityscapesScripts' labels.py
TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
NAMES_19 = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
IGNORE_INDEX = 255
LABEL_SETS = ("27", "19")
LAYOUT = "leftImg8bit/{split}/{city}/*_leftImg8bit.png and gtFine/{split}/{city}/*_gtFine_labelIds.png"


def load_cityscapes(root: Path, split: str, labels: str = "27") -> Dataset:
    labels = str(labels)
    if labels not in LABEL_SETS:
        raise InputError(f"cityscapes: unknown label set {labels!r}; expected one of {', '.join(LABEL_SETS)}")
    root = Path(root)
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise InputError(f"cityscapes: {image_dir} not found; expected {LAYOUT} under {root}")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise InputError(f"cityscapes: no */*_leftImg8bit.png under {image_dir}; expected {LAYOUT}")
    samples = []
    for path in images:
        stem = path.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / path.parent.name / f"{stem}_gtFine_labelIds.png"
        samples.append(Sample(stem, path, label if label.exists() else None))
    if labels == "27":
        table = lookup_table({raw: raw - 7 for raw in range(7, 34)}, IGNORE_INDEX, void=tuple(range(7)))
        names = NAMES_27
    else:
        table = lookup_table(TRAIN_IDS, IGNORE_INDEX, void=tuple(v for v in range(34) if v not in TRAIN_IDS))
        names = NAMES_19
    return Dataset("cityscapes", split, samples, names, IGNORE_INDEX, table)
