"""What a split's files hold, as the workflow sees it: the record that makes a data change rerun
the jobs that read the data.

A split's index is one small JSON file per part (`images`, `labels`) listing every sample id with
a hash of its file's content. It is written while the workflow is planned, and rewritten only when
the content changed, so its modification time moves exactly when the data does: an added,
removed, replaced or relabelled file reruns the jobs that take the index as input (extraction for
images; evaluation and segmentation for what they read live), while copying, moving or touching a
dataset reruns nothing. Hashes are cached by (path, size, modification time) in a hidden file
beside the index, so a plan re-reads only files that changed since the last one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from .datasets.base import Dataset
from .errors import InputError
from .formats import read_json, write_json, write_text

Part = Literal["images", "labels"]
PARTS: tuple[Part, ...] = ("images", "labels")
log = logging.getLogger(__name__)


def index_path(folder: str | Path, split: str, part: Part) -> Path:
    """Where the index of one part of one split lives (`{folder}/{split}.{part}.json`)."""
    return Path(folder) / f"{split}.{part}.json"


def _stat_cache_path(index: Path) -> Path:
    return index.with_name(f".{index.name}.stat-cache")


def _files(dataset: Dataset, part: Part) -> list[tuple[str, Path]]:
    if part == "images":
        return [(s.id, s.image_path) for s in dataset.samples]
    if not dataset.has_labels:
        return []
    return [(s.id, s.label_path) for s in dataset.samples if s.label_path is not None]


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def _read_stat_cache(path: Path) -> dict[str, list[Any]]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged hint only costs re-hashing
    return cache if isinstance(cache, dict) else {}


def index_record(dataset: Dataset, part: Part, stat_cache: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """The index of one part of a split: {id: content hash}. `stat_cache` (path -> [size,
    mtime_ns, hash]) is consulted and updated in place."""
    stat_cache = {} if stat_cache is None else stat_cache
    files: dict[str, str] = {}
    for sample_id, path in _files(dataset, part):
        try:
            st = path.stat()
        except OSError as exc:
            raise InputError(
                f"{path}: cannot read this {part[:-1]} of {dataset.name}/{dataset.split} ({exc.strerror})"
            ) from None
        key = str(path)
        hit = stat_cache.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[:2] == [st.st_size, st.st_mtime_ns]:
            digest = hit[2]
        else:
            digest = file_digest(path)
            stat_cache[key] = [st.st_size, st.st_mtime_ns, digest]
        files[sample_id] = digest
    return {"dataset": dataset.name, "split": dataset.split, "part": part, "files": dict(sorted(files.items()))}


def update_index(dataset: Dataset, part: Part, folder: str | Path) -> Path:
    """Write the index of one part of `dataset` under `folder` if its content changed (or it is
    missing); an unchanged index keeps its file, and so its modification time."""
    path = index_path(folder, dataset.split, part)
    stat_path = _stat_cache_path(path)
    stat_cache = _read_stat_cache(stat_path)
    known = len(stat_cache)
    record = index_record(dataset, part, stat_cache)
    text = json.dumps(record, indent=1) + "\n"
    old = path.read_text() if path.is_file() else None
    if old != text:
        if old is not None:
            log.info("%s: %s", path, describe_change(json.loads(old)["files"], record["files"]))
        write_text(path, text)
    if len(stat_cache) != known or old != text or not stat_path.is_file():
        write_json(stat_path, stat_cache)
    return path


def describe_change(old: dict[str, str], new: dict[str, str]) -> str:
    """'2 added, 1 removed, 3 changed': what differs between two indexes' files."""
    added = len(new.keys() - old.keys())
    removed = len(old.keys() - new.keys())
    changed = sum(1 for k in new.keys() & old.keys() if new[k] != old[k])
    return (
        ", ".join(f"{n} {word}" for n, word in ((added, "added"), (removed, "removed"), (changed, "changed")) if n)
        or "unchanged"
    )


def index_digest(path: str | Path) -> str:
    """A short hash of an index file: what an output records to say which data it was made from."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data index (written when the workflow is planned)")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def recorded_index(output: str | Path) -> bool | None:
    """Whether an existing JSON output records the data it was made from (key `data`): None when
    the output does not exist yet. Outputs written before data tracking existed (False) are not
    given the index as a new input, which would rerun all finished work once."""
    output = Path(output)
    if not output.is_file():
        return None
    try:
        return "data" in read_json(output)
    except InputError:
        return None  # unreadable: the job reruns anyway


def tracked(outputs: list[str]) -> bool:
    """Whether a job with these (JSON) outputs takes the data index as input: yes unless one of
    them exists and predates data tracking."""
    return all(recorded_index(o) is not False for o in outputs)


def digests(paths: list[str] | None) -> dict[str, str]:
    """{part: digest} of the index files a command was given: the `data` an output records."""
    out: dict[str, str] = {}
    for p in paths or []:
        part = Path(p).name.rsplit(".", 2)[-2]
        if part not in PARTS:
            raise InputError(f"{p}: not a data index (expected {{split}}.images.json or {{split}}.labels.json)")
        out[part] = index_digest(p)
    return out
