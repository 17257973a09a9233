"""The feature cache: one Zarr (format 3) group per dataset split and backbone.

Arrays, chunked one item (an image or an augmented view of it) per chunk, Blosc-zstd float16:
  high        (n, h, w, C_high)  kernel features
  input       (n, h, w, C_in)    psi's input (multi-layer concatenation)
  pixels      (n, h, w, 5)       [r, g, b, x, y] on the token grid, colours in [0, 1]
  image_index (n,) int32         which image an item came from (views share it)
  view        (n,) int16         0 = the plain image, > 0 = augmented views
  image_size  (n, 2) int32       original (height, width) of the item's image
Group attributes hold the image ids and sizes, the grid, the backbone and its normalisation, the
extraction fingerprint, `n_done` (items written so far, for resuming) and `complete`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .errors import InputError

ARRAYS = ("high", "input", "pixels")


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


@dataclass
class CacheLayout:
    n_items: int
    grid: tuple[int, int]
    high_dim: int
    input_dim: int


class CacheWriter:
    """Resumable writer: reopening an incomplete cache with the same fingerprint continues after
    the last complete batch; a different fingerprint starts afresh."""

    def __init__(self, path: Path, layout: CacheLayout, attrs: dict[str, Any]):
        self.path = Path(path)
        fingerprint = json.dumps(attrs, sort_keys=True, default=str)
        existing = self._open_existing(fingerprint)
        if existing is not None:
            self.group = existing
        else:
            if self.path.exists():
                shutil.rmtree(self.path)
            self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            h, w = layout.grid
            n = layout.n_items
            for name, dim in (("high", layout.high_dim), ("input", layout.input_dim), ("pixels", 5)):
                zarr.create_array(store=self.group.store, name=name, shape=(n, h, w, dim),
                                  chunks=(1, h, w, dim), dtype="float16", compressors=_compressor())
            zarr.create_array(store=self.group.store, name="image_index", shape=(n,), chunks=(n,), dtype="int32")
            zarr.create_array(store=self.group.store, name="view", shape=(n,), chunks=(n,), dtype="int16")
            zarr.create_array(store=self.group.store, name="image_size", shape=(n, 2), chunks=(n, 2), dtype="int32")
            self.group.attrs.update({**attrs, "fingerprint": fingerprint, "n_done": 0, "complete": False})
        self.n_done = int(self.group.attrs["n_done"])

    def _open_existing(self, fingerprint: str):
        if not (self.path / "zarr.json").exists():
            return None
        group = zarr.open_group(str(self.path), mode="r+")
        if group.attrs.get("fingerprint") != fingerprint:
            return None
        return group

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete"))

    def write(self, start: int, arrays: dict[str, np.ndarray], image_sizes: np.ndarray) -> None:
        """Write items [start, start + len) and only then advance `n_done`."""
        count = len(arrays["high"])
        for name in ARRAYS:
            self.group[name][start:start + count] = arrays[name].astype(np.float16)
        self.group["image_size"][start:start + count] = image_sizes.astype(np.int32)
        self.n_done = start + count
        self.group.attrs["n_done"] = self.n_done

    def finish(self, image_index: np.ndarray, views: np.ndarray) -> None:
        self.group["image_index"][:] = image_index.astype(np.int32)
        self.group["view"][:] = views.astype(np.int16)
        self.group.attrs["complete"] = True


class FeatureCache:
    """Read side; refuses a cache that was never finished."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise InputError(f"{self.path}: no feature cache here; run the extract_features rule first")
        self.group = zarr.open_group(str(self.path), mode="r")
        if not self.group.attrs.get("complete"):
            raise InputError(f"{self.path}: feature cache is incomplete (extraction was interrupted); rerun extraction to resume it")
        self.attrs = dict(self.group.attrs)
        missing = [a for a in (*ARRAYS, "image_index", "view", "image_size") if a not in self.group]
        if missing:
            raise InputError(f"{self.path}: cache lacks {', '.join(missing)} (written by an older version?); delete it and its .json manifest, then rerun extraction")
        self.image_index = self.group["image_index"][:]
        self.view = self.group["view"][:]
        self.image_size = self.group["image_size"][:]

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.attrs["grid"])  # type: ignore[return-value]

    @property
    def ids(self) -> list[str]:
        return list(self.attrs["ids"])

    def dim(self, name: str) -> int:
        return int(self.group[name].shape[-1])

    def read(self, items: np.ndarray | list[int], names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
        """float32 arrays (len(items), h, w, C) for the given item indices (any order)."""
        items = np.asarray(items)
        order = np.argsort(items)
        out = {}
        for name in names:
            data = self.group[name].get_orthogonal_selection((items[order],))
            restored = np.empty_like(data)
            restored[order] = data
            out[name] = restored.astype(np.float32)
        return out

    def plain_items(self) -> np.ndarray:
        """Item indices of the un-augmented view of every image, in image order."""
        return np.flatnonzero(self.view == 0)
