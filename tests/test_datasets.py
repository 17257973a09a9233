"""Dataset adapters: CamVid's layout and class mapping; a plain image folder."""

import numpy as np
from PIL import Image

from pipeline.datasets import load_dataset


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
