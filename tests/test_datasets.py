"""Dataset adapters: CamVid's and MSRC-21's layouts and class mappings; a plain image folder."""

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from pipeline.datasets import load_dataset
from pipeline.errors import InputError


def test_camvid_splits_classes_and_void(camvid_root):
    train = load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(camvid_root)}, "train")
    val = load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(camvid_root)}, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.num_classes == 11 and train.class_names[0] == "sky" and train.class_names[10] == "bicyclist"
    image = val.load_image(0)
    label = val.load_label(0, expected_hw=image.shape[:2])
    raw = np.asarray(Image.open(val.samples[0].label_path))
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(label[raw == 11], val.ignore_index)  # void -> ignore
    np.testing.assert_array_equal(label[raw < 11], raw[raw < 11])


def test_image_folder_without_labels(tmp_path):
    for i, size in enumerate([(40, 30), (64, 48)]):
        Image.fromarray(np.full((size[1], size[0], 3), 40 * i, np.uint8)).save(tmp_path / f"img{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset({"name": "mine", "adapter": "folder", "data_root": str(tmp_path)}, "train")
    assert [s.id for s in ds.samples] == ["img0", "img1"]
    assert not ds.has_labels and ds.load_image(1).shape == (48, 64, 3)


def test_msrc_splits_classes_and_void(msrc_root, monkeypatch):
    monkeypatch.chdir(REPO)  # data_root: auto looks in data/msrc, then ../shared/datasets/msrc
    spec = {"name": "msrc", "adapter": "msrc", "data_root": "auto"}
    train, val = load_dataset(spec, "train"), load_dataset(spec, "val")
    assert (len(train), len(val)) == (357, 118) and val.has_labels
    assert not {s.id for s in train.samples} & {s.id for s in val.samples}
    assert train.num_classes == 21 and train.class_names[0] == "building" and train.class_names[20] == "boat"
    image = val.load_image(0)
    label = val.load_label(0, expected_hw=image.shape[:2])
    raw = np.asarray(Image.open(val.samples[0].label_path))
    np.testing.assert_array_equal(label, raw)  # ids 0..20 and 255 (void) as stored
    assert 255 in raw and set(np.unique(label)) <= set(range(21)) | {255}


def test_msrc_layout_elsewhere_is_read_by_split_name(msrc_root, tmp_path):
    """A split laid out like MSRC's (images beside labels/) is found by its folder name; a
    classes.txt naming other classes is refused rather than misread."""
    (tmp_path / "heldout").mkdir()
    (tmp_path / "labels").mkdir()
    source = load_dataset({"name": "msrc", "adapter": "msrc", "data_root": str(msrc_root)}, "val").samples[:2]
    for s in source:
        (tmp_path / "heldout" / s.image_path.name).write_bytes(s.image_path.read_bytes())
        (tmp_path / "labels" / s.label_path.name).write_bytes(s.label_path.read_bytes())
    ds = load_dataset({"name": "msrc", "adapter": "msrc", "data_root": str(tmp_path)}, "heldout")
    assert [s.id for s in ds.samples] == [s.id for s in source] and ds.has_labels
    (tmp_path / "classes.txt").write_text("sky\nroad\n")
    with pytest.raises(InputError, match=r"classes\.txt: expected the 21 MSRC-21 classes"):
        load_dataset({"name": "msrc", "adapter": "msrc", "data_root": str(tmp_path)}, "heldout")
    with pytest.raises(InputError, match="no split folder"):
        load_dataset({"name": "msrc", "adapter": "msrc", "data_root": str(tmp_path)}, "test")
