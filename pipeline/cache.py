"""The feature cache: one Zarr (format 3) store per dataset, backbone, split and view, made of
shards `shard-{i}-of-{n}` (one extraction job each, a contiguous range of images; n = 1 unless
the config splits extraction), joined by the reader.

Arrays of each shard, chunked one item (an image or an augmented view of it) per chunk, Blosc-zstd float16:
  high        (n, h, w, C_high)  kernel features
  input       (n, h, w, C_in)    psi's input (multi-layer concatenation)
  pixels      (n, h, w, 5)       [r, g, b, x, y] on the token grid, colours in [0, 1]
  image_index (n,) int32         which image an item came from (views share it)
  view        (n,) int16         0 = the plain image, > 0 = augmented views
  image_size  (n, 2) int32       original (height, width) of the item's image
Group attributes hold the split's image ids, the shard's image range, the grid, the backbone and
its normalisation, the extraction fingerprint, `n_done` (items written so far, for resuming) and
`complete`. Item indices are global (image * views + view), so shards never renumber anything.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .errors import InputError

ARRAYS = ("high", "input", "pixels")
SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)$")


def shard_path(root: Path, index: int, count: int) -> Path:
    return Path(root) / f"shard-{index}-of-{count}"


def remove_stale_shards(root: Path, count: int) -> None:
    """Shards written under another shard count would be read as part of this cache: drop them."""
    for path in Path(root).glob("shard-*-of-*"):
        m = SHARD_NAME.match(path.name)
        if m and int(m.group(2)) != count:
            shutil.rmtree(path, ignore_errors=True)


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
            zarr.create_array(store=self.group.store, name="image_index", shape=(n,), chunks=(max(n, 1),), dtype="int32")
            zarr.create_array(store=self.group.store, name="view", shape=(n,), chunks=(max(n, 1),), dtype="int16")
            zarr.create_array(store=self.group.store, name="image_size", shape=(n, 2), chunks=(max(n, 1), 2), dtype="int32")
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
    """Read side over all shards of a cache; refuses a cache with a missing or unfinished shard."""

    def __init__(self, path: Path):
        self.path = Path(path)
        found = sorted((p for p in self.path.glob("shard-*-of-*") if SHARD_NAME.match(p.name)),
                       key=lambda p: int(SHARD_NAME.match(p.name).group(1)))  # type: ignore[union-attr]
        if not found:
            raise InputError(f"{self.path}: no feature cache here; run the extract_features rule first")
        counts = {int(SHARD_NAME.match(p.name).group(2)) for p in found}  # type: ignore[union-attr]
        if len(counts) != 1 or len(found) != counts.pop():
            raise InputError(f"{self.path}: shards {', '.join(p.name for p in found)} do not form one complete set; rerun extraction")
        self.shards = []
        for p in found:
            if not (p / "zarr.json").exists():
                raise InputError(f"{p}: not a Zarr group; delete {self.path} and rerun extraction")
            try:
                group = zarr.open_group(str(p), mode="r")
            except (ValueError, KeyError, OSError) as exc:  # json.JSONDecodeError is a ValueError
                raise InputError(f"{p}/zarr.json: unreadable ({exc.__class__.__name__}: {exc}); delete {self.path} and its .json "
                                 "manifest, then rerun extraction") from None
            if not group.attrs.get("complete"):
                raise InputError(f"{p}: feature cache is incomplete (extraction was interrupted); rerun extraction to resume it")
            missing = [a for a in (*ARRAYS, "image_index", "view", "image_size") if a not in group]
            if missing:
                raise InputError(f"{p}: cache lacks {', '.join(missing)} (written by an older version?); delete {self.path} and its .json manifest, then rerun extraction")
            self.shards.append(group)
        self.attrs = dict(self.shards[0].attrs)
        self.image_index = np.concatenate([g["image_index"][:] for g in self.shards])
        self.view = np.concatenate([g["view"][:] for g in self.shards])
        self.image_size = np.concatenate([g["image_size"][:] for g in self.shards])
        self.offsets = np.cumsum([0] + [g["view"].shape[0] for g in self.shards])

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.attrs["grid"])  # type: ignore[return-value]

    @property
    def ids(self) -> list[str]:
        return list(self.attrs["ids"])

    def dim(self, name: str) -> int:
        return int(self.shards[0][name].shape[-1])

    def read(self, items: np.ndarray | list[int], names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
        """float32 arrays (len(items), h, w, C) for the given item indices (any order)."""
        items = np.asarray(items, dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, items, side="right") - 1
        out = {}
        for name in names:
            restored = None
            for s in np.unique(shard_of):
                where = np.flatnonzero(shard_of == s)
                local = items[where] - self.offsets[s]
                order = np.argsort(local)
                data = self.shards[s][name].get_orthogonal_selection((local[order],))
                if restored is None:
                    restored = np.empty((len(items), *data.shape[1:]), dtype=np.float32)
                restored[where[order]] = data
            if not np.isfinite(restored).all():
                bad = items[~np.isfinite(restored).reshape(len(items), -1).all(1)]
                raise InputError(f"{self.path}: non-finite {name} values in item(s) {', '.join(map(str, bad[:10]))}; "
                                 "the cache is corrupt: delete it and its .json manifest and rerun extraction")
            out[name] = restored
        return out

    def plain_items(self) -> np.ndarray:
        """Item indices of the un-augmented view of every image, in image order."""
        return np.flatnonzero(self.view == 0)
