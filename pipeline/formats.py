"""The files stages hand each other, each with its writer and its reader, written atomically.

- manifests: `{name}.json` beside the Zarr store `{name}.zarr` it describes (feature caches,
  dataset-wide graphs): `store_of` is the one place that rule is spelled;
- JSON records (manifests, metrics, alignments, mappings): `write_json` / `read_json`;
- the exact eigenvector reference (`*-eigen-*.npz`): values (K,), vectors (N, K) float32 and
  JSON attributes;
- the Nystrom extension (`*-nystrom-*.npz`): the (M, K) embedding and JSON attributes (its
  spec and cost);
- torch files (model.pt, checkpoints): `save_torch`;
- Zarr stores written in resumable steps (feature cache shards, dataset-wide graphs):
  `ResumableStore`.
Every writer goes through `atomic_path`: a temporary name of its own in the same folder, renamed
over the target only once complete and removed if writing fails, so no reader (nor a second
writer) ever sees half a file.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)


def store_of(manifest: str | Path) -> Path:
    """The Zarr store a manifest describes: `{name}.json` -> `{name}.zarr`."""
    return Path(manifest).with_suffix(".zarr")


# what a full disk, a quota or a file-size limit (`ulimit -f`) is called in messages
RESOURCE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file larger than the file-size limit (ulimit -f)",
}


@contextmanager
def naming_resource_errors(path: str | Path) -> Iterator[None]:
    """Re-raise a write that ran out of disk, quota or file-size limit as an OSError naming
    `path` and the cause (the OSError of a failed write names no file; torch's zip writer says
    only "unexpected pos"), so that the one-line message says what could not be written."""
    try:
        yield
    except OSError as exc:
        if exc.errno in RESOURCE_ERRORS:
            raise OSError(exc.errno, RESOURCE_ERRORS[exc.errno], str(path)) from None
        raise
    except RuntimeError as exc:
        if "unexpected pos" not in str(exc) and "file write failed" not in str(exc):
            raise
        cause = _short_write_cause(Path(path))
        raise OSError(cause, RESOURCE_ERRORS.get(cause, "the write was cut short"), str(path)) from None


def _short_write_cause(path: Path) -> int:
    """Why a write came up short, as far as can be told afterwards."""
    import resource

    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return errno.EFBIG
    folder = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    return errno.ENOSPC if shutil.disk_usage(folder).free < 2**20 else errno.EIO


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` (unique to this writer; `suffix` for writers that insist on
    an extension, e.g. `.npz`), renamed to `path` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        with naming_resource_errors(path):
            try:
                yield tmp
                tmp.replace(path)
            except OSError as exc:  # name the file asked for, not its temporary twin
                if exc.filename is None or str(tmp) not in str(exc.filename) or exc.errno in RESOURCE_ERRORS:
                    raise
                raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def whole_folder(target: str | Path, owned: Collection[str] = ()) -> Iterator[Path]:
    """A folder that holds one complete result or the previous one, never a mix: the caller
    fills a fresh temporary sibling, which replaces `target` only once the block ends without
    error (on failure it is removed and `target` is untouched). What `target` held beside the
    caller's result (another stage's files, the user's) is carried over by hard links, except
    the entries named in `owned`, which only the caller's result may hold. Two writers of one
    target take turns at the swap (a lock beside it): the last one's folder stays. Between the
    two renames of the swap, for an instant, `target` is absent."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: exists and is not a folder; choose another output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fresh = target.with_name(f".{target.name}.{stamp}.partial")
    fresh.mkdir()
    try:
        with naming_resource_errors(target):
            yield fresh
        with folder_lock(target):
            if target.is_dir():
                for entry in target.iterdir():
                    if entry.name not in owned and not (fresh / entry.name).exists():
                        _link(entry, fresh / entry.name)
                old = target.with_name(f".{target.name}.{stamp}.old")
                target.rename(old)
                fresh.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                fresh.rename(target)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def folder_lock(folder: str | Path) -> Any:
    """The lock `whole_folder` holds while it swaps `folder`: hold it to write a file into a folder
    that another stage may be replacing (the lock file sits beside the folder)."""
    from filelock import FileLock

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(folder.with_name(f".{folder.name}.lock"))


def _link(source: Path, twin: Path) -> None:
    """`source` (a file or a folder) at `twin` by hard links, copied where links fail."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir():
        shutil.copytree(source, twin, copy_function=link)
    else:
        link(str(source), str(twin))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, fields: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with a header, atomically (a log rewritten as training goes stays whole)."""
    import csv
    import io

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """A matplotlib figure as PNG, atomically."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=dpi)


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


class ResumableStore:
    """A Zarr group filled front to back in resumable steps: the protocol of feature caches and
    dataset-wide graphs. Its attributes say what it holds: `fingerprint` (every setting its
    content depends on, as canonical JSON), `n_done` (leading items written, advanced only
    after they are) and `complete`; `kind` marks the stores of a kind that carries one.

    Opening resumes a group of the same fingerprint; a group of other settings is replaced when
    `replace`, else refused naming what differs (resuming must never mix two settings); anything
    else at the path (a user's folder, another kind of store) is never removed. `create` makes
    the arrays of a new group; `leftovers` are file names a replaced store may leave behind."""

    def __init__(
        self,
        path: str | Path,
        settings: dict[str, Any],
        create: Callable[[Any], None],
        *,
        what: str,
        kind: str | None = None,
        replace: bool = False,
        contents: str = "content made",
        refusal: str = "",
        leftovers: tuple[str, ...] = (),
    ):
        import zarr

        self.path = Path(path)
        fingerprint = json.dumps(settings, sort_keys=True, default=str)
        group = self._ours(what, kind, leftovers)
        if group is not None and group.attrs.get("fingerprint") != fingerprint:
            differences = _differences(json.loads(group.attrs.get("fingerprint") or "{}"), json.loads(fingerprint))
            if not replace:
                raise InputError(f"{self.path}: holds {contents} with other settings ({differences}); {refusal}")
            log.info("%s: replacing %s with other settings (%s)", self.path, contents, differences)
            group = None
        if group is None:
            shutil.rmtree(self.path, ignore_errors=True)
            group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            create(group)
            marker = {"kind": kind} if kind else {}
            group.attrs.update({**marker, **settings, "fingerprint": fingerprint, "n_done": 0, "complete": False})
        self.group = group

    def _ours(self, what: str, kind: str | None, leftovers: tuple[str, ...]) -> Any:
        """The existing group at the path (None when there is none), or a refusal to touch what is
        there: a folder that is not a Zarr group of this kind (`what`, in messages)."""
        import zarr

        if not (self.path / "zarr.json").exists():
            if self.path.exists() and any(p.name not in leftovers for p in self.path.iterdir()):
                raise InputError(f"{self.path}: exists and is not a {what}; not removing it (choose another output)")
            return None
        try:
            group = zarr.open_group(str(self.path), mode="r+")
        except (ValueError, KeyError, OSError) as exc:
            raise InputError(
                f"{self.path}/zarr.json: unreadable ({exc.__class__.__name__}: {exc}); delete {self.path} and rerun"
            ) from None
        if kind and group.attrs.get("kind") != kind:
            raise InputError(
                f"{self.path}: exists and is not a {what} (no {kind!r} marker in zarr.json); not removing it "
                "(choose another output or remove it yourself)"
            )
        return group

    @property
    def n_done(self) -> int:
        return int(self.group.attrs["n_done"])

    def advance(self, n_done: int) -> None:
        """Record that the first `n_done` items are written (call only once they are)."""
        self.group.attrs["n_done"] = n_done

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete"))

    def finish(self) -> None:
        self.group.attrs["complete"] = True


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return "; ".join(
        f"{k}: {json.dumps(old.get(k), default=str)[:60]} -> {json.dumps(new.get(k), default=str)[:60]}"
        for k in keys[:5]
    )


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
