"""Pascal Context (VOC2010 + the Context annotations, mmsegmentation's layout).

Label PNGs hold 0 = background and 1..59 = the 59 most frequent Context classes. Protocol A
scores the 59 classes (label - 1, background ignored); protocol B the 60 with background.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Dataset, Sample, list_file_ids, lookup_table

NAMES_60 = [
    "background",
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
]
IGNORE_INDEX = 255
LABEL_SETS = ("context59", "context60")
LAYOUT = (
    "VOCdevkit/VOC2010/ with JPEGImages/*.jpg, SegmentationClassContext/*.png and "
    "ImageSets/SegmentationContext/{train,val}.txt"
)


def voc2010_dir(root: Path) -> Path:
    """The data root may be the folder holding VOCdevkit/, VOCdevkit/ itself or VOC2010/."""
    for cand in (root / "VOCdevkit" / "VOC2010", root / "VOC2010", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise InputError(f"pascal: no VOC2010/JPEGImages under {root}; expected {LAYOUT}")


def load_pascal_context(root: Path, split: str, labels: str = "context59") -> Dataset:
    if labels not in LABEL_SETS:
        raise InputError(f"pascal: unknown label set {labels!r}; expected one of {', '.join(LABEL_SETS)}")
    base = voc2010_dir(Path(root))
    list_file = base / "ImageSets" / "SegmentationContext" / f"{split}.txt"
    if not list_file.is_file():
        raise InputError(f"pascal: split list {list_file} not found; expected {LAYOUT}")
    ids = list_file_ids(list_file)
    if not ids:
        raise InputError(f"pascal: {list_file} lists no images")
    samples = [Sample(i, base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClassContext" / f"{i}.png") for i in ids]
    if labels == "context59":
        table = lookup_table({raw: raw - 1 for raw in range(1, 60)}, IGNORE_INDEX, void=(0,))
        names = NAMES_60[1:]
    else:
        table = lookup_table({raw: raw for raw in range(60)}, IGNORE_INDEX)
        names = NAMES_60
    return Dataset("pascal", split, samples, names, IGNORE_INDEX, table)
