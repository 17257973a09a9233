"""Dataset adapters by name, and where to find a dataset's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .ade20k import load_ade20k
from .base import Dataset, Sample, check_samples, read_label, read_rgb
from .camvid import load_camvid
from .cityscapes import load_cityscapes
from .folder import load_folder
from .msrc import load_msrc
from .pascal import load_pascal_context

ADAPTERS = ("camvid", "msrc", "pascal", "cityscapes", "ade20k", "folder")
# where `data_root: auto` looks, by adapter, first hit wins (relative to the working directory)
AUTO_ROOTS = {
    "camvid": ["data/camvid", "../shared/datasets/camvid"],
    "msrc": ["data/msrc", "../shared/datasets/msrc"],
    "pascal": ["data/pascal_context", "data/VOCdevkit"],
    "cityscapes": ["data/cityscapes"],
    "ade20k": ["data/ade20k", "data/ADEChallengeData2016"],
}

__all__ = ["ADAPTERS", "Dataset", "Sample", "load_dataset", "read_label", "read_rgb", "resolve_data_root"]


def resolve_data_root(name: str, data_root: str | None, adapter: str | None = None) -> Path:
    """`auto` tries the usual places and otherwise says exactly where to put the data."""
    if data_root and data_root != "auto":
        return Path(data_root)
    candidates = AUTO_ROOTS.get(adapter or name, [f"data/{name}"])
    for cand in candidates:
        if Path(cand).is_dir():
            return Path(cand)
    raise InputError(
        f"dataset {name!r}: no data found (looked in {', '.join(candidates)}). Put the data in "
        f"{candidates[0]}/ or set datasets.{name}.data_root in the config"
        + (
            " (run `snakemake download_camvid` where the internet is reachable)"
            if (adapter or name) == "camvid"
            else ""
        )
    )


def load_dataset(spec: dict[str, Any], split: str, labels: str | None = None) -> Dataset:
    """`spec` is one entry of the config's `datasets:` (adapter, data_root, ...); `labels` picks
    the label set where a dataset has several (Pascal Context 59/60, Cityscapes 27/19)."""
    adapter = spec.get("adapter", "camvid")
    root = resolve_data_root(spec.get("name", adapter), spec.get("data_root", "auto"), adapter)
    if adapter == "camvid":
        ds = load_camvid(root, split)
    elif adapter == "msrc":
        ds = load_msrc(root, split)
    elif adapter == "pascal":
        ds = load_pascal_context(root, split, labels or "context59")
    elif adapter == "cityscapes":
        ds = load_cityscapes(root, split, labels or "27")
    elif adapter == "ade20k":
        ds = load_ade20k(root, split)
    elif adapter == "folder":
        ds = load_folder(root, split, spec.get("label_dir"), spec.get("class_names"))
    else:
        raise InputError(f"datasets.*.adapter: unknown adapter {adapter!r}; expected one of {', '.join(ADAPTERS)}")
    ds.name = spec.get("name", ds.name)
    ds.unknown_labels = spec.get("unknown_labels", "error")
    check_samples(ds, [root, *([Path(spec["label_dir"])] if spec.get("label_dir") else [])])
    limit = spec.get("max_images")
    if limit:
        ds.samples = ds.samples[: int(limit)]
    return ds
