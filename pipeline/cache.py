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
A complete shard also holds `extracted.json` (its manifest): the file the workflow tracks, so a
deleted cache is re-extracted instead of trusted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from filelock import FileLock, Timeout
from zarr.codecs import BloscCodec, Crc32cCodec

from .errors import InputError
from .formats import ResumableStore, naming_resource_errors, read_array, store_of, write_json, zarr_array

ARRAYS = ("high", "input", "pixels")
SHARD_NAME = re.compile(r"^shard-(\d+)-of-(\d+)$")
MARKER = "extracted.json"
log = logging.getLogger(__name__)


def shard_number(path: Path) -> tuple[int, int]:
    """(index, count) of a shard folder `shard-{index}-of-{count}`."""
    match = SHARD_NAME.match(Path(path).name)
    if match is None:
        raise InputError(f"{path}: not a shard folder (expected shard-<i>-of-<n>)")
    return int(match.group(1)), int(match.group(2))


def shard_path(root: Path, index: int, count: int) -> Path:
    return Path(root) / f"shard-{index}-of-{count}"


@contextmanager
def shard_lock(path: Path) -> Iterator[None]:
    """Hold `.{shard}.lock` beside the shard while it is written: a second writer is refused at
    once, naming the lock, instead of interleaving with the first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.parent / f".{path.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise InputError(
            f"{path}: another extraction is writing this shard (lock {lock.lock_file}); "
            "wait for it to finish or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def remove_stale_shards(root: Path, count: int, overwrite: bool = False) -> None:
    """Shards written under another shard count would be read as part of this cache: drop them
    (only with `overwrite`: otherwise refuse, naming them)."""
    stale = [
        p
        for p in sorted(Path(root).glob("shard-*-of-*"))
        if (m := SHARD_NAME.match(p.name)) and int(m.group(2)) != count
    ]
    if stale and not overwrite:
        raise InputError(
            f"{root}: holds {', '.join(p.name for p in stale)}, written with another shard count; "
            "pass --overwrite to replace them (the workflow does) or choose another --cache"
        )
    for path in stale:
        log.info("%s: removing a shard of another shard count", path)
        shutil.rmtree(path, ignore_errors=True)


def compressors(checksums: bool = True) -> list[Any]:
    """Blosc-zstd, then a CRC32C of every chunk: a flipped byte is an error when the chunk is
    read, not a different but finite feature (bench/extraction.py measures the cost)."""
    return [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), *([Crc32cCodec()] if checksums else [])]


@dataclass
class CacheLayout:
    n_items: int
    grid: tuple[int, int]
    high_dim: int
    input_dim: int


class CacheWriter:
    """One shard's store, resumable (formats.ResumableStore): reopening an incomplete shard with
    the same fingerprint continues after the last complete batch. A shard of other settings (the
    fingerprint holds every extraction setting, the torch thread count and the device, which
    change the features' last bits) is refused, naming what differs, unless `overwrite`."""

    def __init__(self, path: Path, layout: CacheLayout, attrs: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)

        def create(group: Any) -> None:
            h, w = layout.grid
            n = layout.n_items
            for name, dim in (("high", layout.high_dim), ("input", layout.input_dim), ("pixels", 5)):
                group.create_array(
                    name, shape=(n, h, w, dim), chunks=(1, h, w, dim), dtype="float16", compressors=compressors()
                )
            group.create_array("image_index", shape=(n,), chunks=(max(n, 1),), dtype="int32")
            group.create_array("view", shape=(n,), chunks=(max(n, 1),), dtype="int16")
            group.create_array("image_size", shape=(n, 2), chunks=(max(n, 1), 2), dtype="int32")

        self.store = ResumableStore(
            self.path,
            attrs,
            create,
            what="feature cache",
            replace=overwrite,
            contents="features extracted",
            refusal="pass --overwrite to replace them (the workflow does) or choose another --cache",
            leftovers=(MARKER,),
        )
        self.group = self.store.group
        self.n_done = self.store.n_done

    @property
    def complete(self) -> bool:
        return self.store.complete

    def write(self, start: int, arrays: dict[str, np.ndarray], image_sizes: np.ndarray) -> None:
        """Write items [start, start + len) and only then advance `n_done`."""
        count = len(arrays["high"])
        with naming_resource_errors(self.path):
            for name in ARRAYS:
                zarr_array(self.group, name)[start : start + count] = arrays[name].astype(np.float16)
            zarr_array(self.group, "image_size")[start : start + count] = image_sizes.astype(np.int32)
        self.n_done = start + count
        self.store.advance(self.n_done)

    def finish(self, image_index: np.ndarray, views: np.ndarray) -> None:
        zarr_array(self.group, "image_index")[:] = image_index.astype(np.int32)
        zarr_array(self.group, "view")[:] = views.astype(np.int16)
        self.store.finish()

    def mark(self, manifest: dict[str, Any]) -> None:
        """Write the shard's marker (its manifest) once the shard is complete."""
        write_json(self.path / MARKER, manifest)


class FeatureCache:
    """Read side over all shards of a cache; refuses a cache with a missing or unfinished shard."""

    def __init__(self, path: Path):
        self.path = Path(path)
        numbered = sorted((shard_number(p), p) for p in self.path.glob("shard-*-of-*") if SHARD_NAME.match(p.name))
        found = [p for _, p in numbered]
        if not found:
            raise InputError(f"{self.path}: no feature cache here; run the extract_features rule first")
        counts = {count for (_, count), _ in numbered}
        if len(counts) != 1 or len(found) != counts.pop():
            raise InputError(
                f"{self.path}: shards {', '.join(p.name for p in found)} do not form one complete set; rerun extraction"
            )
        self.shards = []
        for p in found:
            if not (p / "zarr.json").exists():
                raise InputError(f"{p}: not a Zarr group; delete {self.path} and rerun extraction")
            try:
                group = zarr.open_group(str(p), mode="r")
            except (ValueError, KeyError, OSError) as exc:  # json.JSONDecodeError is a ValueError
                raise InputError(
                    f"{p}/zarr.json: unreadable ({exc.__class__.__name__}: {exc}); delete {self.path} and its .json "
                    "manifest, then rerun extraction"
                ) from None
            if not group.attrs.get("complete"):
                raise InputError(
                    f"{p}: feature cache is incomplete (extraction was interrupted); rerun extraction to resume it"
                )
            missing = [a for a in (*ARRAYS, "image_index", "view", "image_size") if a not in group]
            if missing:
                raise InputError(
                    f"{p}: cache lacks {', '.join(missing)} (written by an older version?); delete "
                    f"{self.path} and its .json manifest, then rerun extraction"
                )
            for name in ARRAYS:  # a deleted chunk would read back as zeros
                array = zarr_array(group, name)
                absent = array.shape[0] - array.nchunks_initialized
                if absent:
                    raise InputError(
                        f"{p}/{name}: {absent} of {array.shape[0]} items are missing (deleted chunks); delete "
                        f"{self.path} and its .json manifest, then rerun extraction"
                    )
            self.shards.append(group)
        self.attrs: dict[str, Any] = dict(self.shards[0].attrs)
        self.image_index = np.concatenate([read_array(g, "image_index") for g in self.shards])
        self.view = np.concatenate([read_array(g, "view") for g in self.shards])
        self.image_size = np.concatenate([read_array(g, "image_size") for g in self.shards])
        self.offsets = np.cumsum([0, *(zarr_array(g, "view").shape[0] for g in self.shards)])

    def __len__(self) -> int:
        return len(self.image_index)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.attrs["grid"]
        return int(h), int(w)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.attrs["ids"]]

    def dim(self, name: str) -> int:
        return int(zarr_array(self.shards[0], name).shape[-1])

    def read(
        self, items: np.ndarray | list[int], names: tuple[str, ...] = ARRAYS, dtype: type = np.float32
    ) -> dict[str, np.ndarray]:
        """Arrays (len(items), h, w, C) for the given item indices (any order), float32 or, as
        stored and without a conversion, float16."""
        items = np.asarray(items, dtype=np.int64)
        shard_of = np.searchsorted(self.offsets, items, side="right") - 1
        out = {}
        for name in names:
            restored = np.empty((len(items), *zarr_array(self.shards[0], name).shape[1:]), dtype=dtype)
            for s in np.unique(shard_of):
                where = np.flatnonzero(shard_of == s)
                local = items[where] - self.offsets[s]
                order = np.argsort(local)
                array = zarr_array(self.shards[s], name)
                try:
                    restored[where[order]] = array.get_orthogonal_selection((local[order],))
                except ValueError as exc:
                    if "checksum" not in str(exc):
                        raise
                    corrupt = [int(i) for i, j in zip(items[where], local) if not _chunk_ok(array, int(j))]
                    raise InputError(
                        f"{self.path}: {name} of item(s) {', '.join(map(str, corrupt[:10]))} fail their checksum "
                        "(the cache is corrupt); delete it and its .json manifest and rerun extraction"
                    ) from None
            if not np.isfinite(restored).all():
                bad = items[~np.isfinite(restored).reshape(len(items), -1).all(1)]
                raise InputError(
                    f"{self.path}: non-finite {name} values in item(s) {', '.join(map(str, bad[:10]))}; "
                    "the cache is corrupt: delete it and its .json manifest and rerun extraction"
                )
            out[name] = restored
        return out

    def tokens(self, name: str = "high") -> np.ndarray:
        """Every token of the cache as one (N, C) array (N = items x h x w, in item order)."""
        values = self.read(np.arange(len(self)), (name,))[name]
        return values.reshape(-1, values.shape[-1])

    def plain_items(self) -> np.ndarray:
        """Item indices of the un-augmented view of every image, in image order."""
        return np.flatnonzero(self.view == 0)


def _chunk_ok(array: Any, index: int) -> bool:
    try:
        array[index]
    except ValueError:
        return False
    return True


def cache_for(manifest: str | Path) -> FeatureCache:
    """The Zarr cache that sits beside a features manifest (`{split}.json` -> `{split}.zarr`)."""
    return FeatureCache(store_of(manifest))


def gather(manifest: str | Path, shard_manifests: list[str]) -> dict[str, Any]:
    """`nes gather`: check that the shards form one complete cache with unique image ids, then
    write the cache's manifest (what later stages read)."""
    out = Path(manifest)
    cache = cache_for(out)
    shards = [json.loads(Path(p).read_text()) for p in shard_manifests]
    if sorted(tuple(s["shard"]) for s in shards) != [(i, len(cache.shards)) for i in range(len(cache.shards))]:
        raise InputError(
            f"{out}: shard manifests {', '.join(shard_manifests)} do not match the cache's {len(cache.shards)} shards"
        )
    repeated = sorted({i for i in cache.ids if cache.ids.count(i) > 1})
    if repeated:
        raise InputError(f"{cache.path}: image id(s) {', '.join(repeated[:5])} occur twice; ids must name one image")
    summary = {
        "path": str(cache.path),
        "items": len(cache),
        "images": len(cache.ids),
        "shards": len(cache.shards),
        "grid": list(cache.grid),
        "high_dim": cache.dim("high"),
        "input_dim": cache.dim("input"),
    }
    write_json(out, summary)
    return summary
