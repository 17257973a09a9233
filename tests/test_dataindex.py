"""The data index: content hashes of a split's files, rewritten only when the content changes."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.dataindex import describe_change, digests, index_record, tracked, update_index
from pipeline.datasets.folder import load_folder
from pipeline.errors import InputError


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images / f"{name}.png")
        Image.fromarray(rng.integers(0, 3, (8, 8), dtype=np.uint8)).save(labels / f"{name}.png")
    return images, labels


def test_an_unchanged_split_keeps_its_index_file_and_time(folder, tmp_path):
    images, labels = folder
    out = tmp_path / "index"
    path = update_index(load_folder(images, "x", labels), "images", out)
    before = path.stat().st_mtime_ns
    os.utime(images / "a.png", ns=(0, 10**18))  # touched: same content
    assert update_index(load_folder(images, "x", labels), "images", out).stat().st_mtime_ns == before
    assert json.loads(path.read_text())["files"].keys() == {"a", "b", "c"}


def test_content_changes_rewrite_the_index(folder, tmp_path):
    images, labels = folder
    out = tmp_path / "index"
    first = json.loads(update_index(load_folder(images, "x", labels), "labels", out).read_text())["files"]
    arr = np.asarray(Image.open(labels / "b.png")).copy()
    arr[0, 0] = (arr[0, 0] + 1) % 3
    Image.fromarray(arr).save(labels / "b.png")
    second = json.loads(update_index(load_folder(images, "x", labels), "labels", out).read_text())["files"]
    assert [k for k in first if first[k] != second[k]] == ["b"]
    assert describe_change(first, {**second, "d": "0"}) == "1 added, 1 changed"
    assert describe_change(first, {"a": first["a"]}) == "2 removed"


def test_hashes_come_from_the_stat_cache_only_when_size_and_time_match(folder):
    images, _ = folder
    dataset = load_folder(images, "x")
    cache: dict = {}
    record = index_record(dataset, "images", cache)
    key = str(images / "a.png")
    cache[key][2] = "stale"  # what a cached hash would say if trusted
    assert index_record(dataset, "images", cache)["files"]["a"] == "stale"
    os.utime(images / "a.png", ns=(0, 12345))
    assert index_record(dataset, "images", cache)["files"]["a"] == record["files"]["a"]


def test_outputs_from_before_data_tracking_are_not_tracked(tmp_path):
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    new.write_text(json.dumps({"data": {"images": "x"}}))
    old.write_text(json.dumps({"items": 3}))
    assert tracked([str(new), str(tmp_path / "missing.json")])
    assert not tracked([str(old)])


def test_digests_name_a_file_that_is_not_an_index(tmp_path, folder):
    images, _ = folder
    path = update_index(load_folder(images, "x"), "images", tmp_path)
    assert set(digests([str(path)])) == {"images"}
    other = tmp_path / "x.other.json"
    other.write_text("{}")
    with pytest.raises(InputError, match=r"x\.other\.json: not a data index"):
        digests([str(other)])
