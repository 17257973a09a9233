"""ADE20K as in the SceneParsing challenge: `ADEChallengeData2016/{images,annotations}/
{training,validation}`. 150 classes; 0 (other) is ignored, the rest minus 1."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Dataset, Sample, lookup_table

NAMES = [
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
]
IGNORE_INDEX = 255
SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
LAYOUT = (
    "ADEChallengeData2016/images/{training,validation}/*.jpg and "
    "ADEChallengeData2016/annotations/{training,validation}/*.png"
)


def load_ade20k(root: Path, split: str) -> Dataset:
    if split not in SPLITS:
        raise InputError(f"ade20k: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    image_dir = base / "images" / SPLITS[split]
    if not image_dir.is_dir():
        raise InputError(f"ade20k: {image_dir} not found; expected {LAYOUT} under {root}")
    images = sorted(image_dir.glob("*.jpg"))
    if not images:
        raise InputError(f"ade20k: no .jpg images in {image_dir}")
    label_dir = base / "annotations" / SPLITS[split]
    samples = [
        Sample(p.stem, p, (label_dir / f"{p.stem}.png") if (label_dir / f"{p.stem}.png").exists() else None)
        for p in images
    ]
    table = lookup_table({raw: raw - 1 for raw in range(1, 151)}, IGNORE_INDEX, void=(0,))
    return Dataset("ade20k", split, samples, NAMES, IGNORE_INDEX, table)
