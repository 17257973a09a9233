"""MSRC-21 (MSRC v2 photographs, Malisiewicz and Efros' cleaned labels): `{split}/*.png`,
`labels/{stem}.png` with class ids 0..20 and 255 for void, `classes.txt`.

Any split laid out the same way (a folder of images beside `labels/`) is read by its name, so a
held-out split elsewhere is evaluated with `nes evaluate --data-root DIR --split NAME`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import IMAGE_SUFFIXES, Dataset, Sample, lookup_table

CLASS_NAMES = [
    "building",
    "grass",
    "tree",
    "cow",
    "sheep",
    "sky",
    "aeroplane",
    "water",
    "face",
    "car",
    "bicycle",
    "flower",
    "sign",
    "bird",
    "book",
    "chair",
    "road",
    "cat",
    "dog",
    "body",
    "boat",
]
IGNORE_INDEX = 255
LAYOUT = "msrc root with {split}/ of images, labels/ of PNGs with the same stems (ids 0..20, 255 void) and classes.txt"


def load_msrc(root: Path, split: str) -> Dataset:
    root = Path(root)
    image_dir, label_dir = root / split, root / "labels"
    if not image_dir.is_dir():
        raise InputError(f"msrc: no split folder {image_dir}/; expected an {LAYOUT}")
    _check_classes(root / "classes.txt")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"msrc: split {split!r} under {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    samples = [
        Sample(p.stem, p, (label_dir / f"{p.stem}.png") if (label_dir / f"{p.stem}.png").is_file() else None)
        for p in images
    ]
    table = lookup_table({i: i for i in range(len(CLASS_NAMES))}, IGNORE_INDEX)
    return Dataset("msrc", split, samples, CLASS_NAMES, IGNORE_INDEX, table)


def _check_classes(path: Path) -> None:
    """A `classes.txt` that names other classes means other ids: refuse rather than misname them."""
    if not path.is_file():
        return
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if names != CLASS_NAMES:
        raise InputError(
            f"{path}: expected the 21 MSRC-21 classes in id order ({', '.join(CLASS_NAMES)}); got {', '.join(names)}"
        )
