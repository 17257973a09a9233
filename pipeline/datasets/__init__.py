"""Dataset adapters by name, and where to find a dataset's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Dataset, Sample, read_label, read_rgb
from .camvid import load_camvid
from .folder import load_folder

# where `data_root: auto` looks, first hit wins (relative to the working directory)
AUTO_ROOTS = {"camvid": ["data/camvid", "../shared/datasets/camvid"]}

__all__ = ["Dataset", "Sample", "load_dataset", "resolve_data_root", "read_rgb", "read_label"]


def resolve_data_root(name: str, data_root: str | None) -> Path:
    """`auto` tries the usual places and otherwise says exactly where to put the data."""
    if data_root and data_root != "auto":
        return Path(data_root)
    candidates = AUTO_ROOTS.get(name, [f"data/{name}"])
    for cand in candidates:
        if Path(cand).is_dir():
            return Path(cand)
    raise InputError(
        f"dataset {name!r}: no data found (looked in {', '.join(candidates)}). Put the data in "
        f"{candidates[0]}/ or set datasets.{name}.data_root in the config"
        + (" (run `snakemake download_camvid` where the internet is reachable)" if name == "camvid" else "")
    )


def load_dataset(spec: dict[str, Any], split: str) -> Dataset:
    """`spec` is one entry of the config's `datasets:` (adapter, data_root, ...)."""
    adapter = spec.get("adapter", "camvid")
    root = resolve_data_root(spec.get("name", adapter), spec.get("data_root", "auto"))
    if adapter == "camvid":
        ds = load_camvid(root, split)
    elif adapter == "folder":
        ds = load_folder(root, split, spec.get("label_dir"), spec.get("class_names"))
    else:
        raise InputError(f"datasets.*.adapter: unknown adapter {adapter!r}; expected camvid or folder")
    limit = spec.get("max_images")
    if limit:
        ds.samples = ds.samples[: int(limit)]
    return ds
