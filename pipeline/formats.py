"""The files stages hand each other, each with its writer and its reader, written atomically.

- manifests: `{name}.json` beside the Zarr store `{name}.zarr` it describes (feature caches,
  dataset-wide graphs): `store_of` is the one place that rule is spelled;
- JSON records (manifests, metrics, alignments, mappings): `write_json` / `read_json`;
- the exact eigenvector reference (`*-eigen-*.npz`): values (K,), vectors (N, K) float32 and
  JSON attributes;
- the Nystrom extension (`*-nystrom-*.npz`): the (M, K) embedding and JSON attributes (its
  spec and cost);
- torch files (model.pt, checkpoints): `save_torch`.
Every writer goes through `atomic_path`: a temporary name of its own in the same folder, renamed
over the target only once complete and removed if writing fails, so no reader (nor a second
writer) ever sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


def store_of(manifest: str | Path) -> Path:
    """The Zarr store a manifest describes: `{name}.json` -> `{name}.zarr`."""
    return Path(manifest).with_suffix(".zarr")


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` (unique to this writer; `suffix` for writers that insist on
    an extension, e.g. `.npz`), renamed to `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Valid JSON always: NaN and infinities (which JSON has no word for) are written as null."""
    write_text(path, json.dumps(_finite(obj), indent=2, default=_plain, allow_nan=False))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.floating):
        return _finite(float(obj))
    return obj


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """The parsed file, or an InputError naming it and where it breaks."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); expected {what}") from None


def save_torch(obj: Any, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_eigen_reference(path: str | Path, values: np.ndarray, vectors: np.ndarray, attrs: dict[str, Any]) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez(
            tmp, values=values, vectors=vectors.astype(np.float32), attrs=np.array(json.dumps(attrs, default=_plain))
        )


def read_eigen_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(values (K,), vectors (N, K), attributes) of an exact eigenvector reference."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no eigenvector reference; run the eigenvectors rule first")
    with np.load(path) as f:
        return f["values"], f["vectors"], json.loads(str(f["attrs"]))


def write_nystrom(path: str | Path, embedding: np.ndarray, attrs: dict[str, Any]) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, embedding=embedding, attrs=np.array(json.dumps(attrs, default=_plain)))


def read_nystrom(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(the (M, K) extended eigenvectors, attributes with the spec and cost) of a Nystrom file."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no Nystrom extension; run the nystrom rule first")
    with np.load(path) as f:
        return f["embedding"], json.loads(str(f["attrs"]))


def zarr_array(group: Any, name: str) -> Any:
    """`group[name]` as a Zarr array, or an InputError naming the store and the missing array."""
    import zarr

    node = group.get(name)
    if not isinstance(node, zarr.Array):
        raise InputError(f"{group.store_path}: no array {name!r} (an incomplete or foreign store); rebuild it")
    return node


def read_array(group: Any, name: str, dtype: Any = None) -> np.ndarray:
    """All of `group[name]` as a NumPy array (of `dtype` when given)."""
    data = np.asarray(zarr_array(group, name)[:])
    return data if dtype is None else data.astype(dtype)


def _plain(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)
