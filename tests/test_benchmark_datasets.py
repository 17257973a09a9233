"""The benchmark adapters on fixtures in their real layouts: class mappings, protocol geometry,
sliding windows, clear errors for a wrong root."""

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import (
    run_spec,
    tiny_vit_backbone,
    train_settings,
    write_ade20k,
    write_cityscapes,
    write_image_folder,
    write_pascal,
    write_tiny_vit,
)
from pipeline.datasets import load_dataset
from pipeline.errors import InputError
from pipeline.models import RunModel, build_psi
from pipeline.predict import image_logits
from pipeline.views import View


def spec(adapter, root):
    return {"name": adapter, "adapter": adapter, "data_root": str(root)}


def raw_label(ds, i):
    return np.asarray(Image.open(ds.samples[i].label_path))


def test_pascal_context_background_ignored_in_a_kept_in_b(tmp_path):
    root = write_pascal(tmp_path / "pascal")
    a = load_dataset(spec("pascal", root), "val", "context59")
    b = load_dataset(spec("pascal", root), "val", "context60")
    assert (len(a), a.num_classes, b.num_classes) == (3, 59, 60)
    assert a.class_names[0] == "aeroplane" and b.class_names[0] == "background" and b.class_names[15] == "cat"
    raw = raw_label(a, 0)
    la, lb = a.load_label(0), b.load_label(0)
    assert set(np.unique(raw)) == {0, 15, 37, 48}
    np.testing.assert_array_equal(la[raw == 0], 255)
    np.testing.assert_array_equal(la[raw == 15], 14)
    np.testing.assert_array_equal(lb, raw)
    assert load_dataset(spec("pascal", root), "train").samples[0].image_path.suffix == ".jpg"


def test_cityscapes_27_and_19_from_label_ids(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    c27 = load_dataset(spec("cityscapes", root), "val", "27")
    c19 = load_dataset(spec("cityscapes", root), "val", "19")
    assert (c27.num_classes, c19.num_classes) == (27, 19) and [s.id for s in c27.samples] == [
        "aachen_000000_000019",
        "aachen_000002_000019",
        "bochum_000001_000019",
    ]
    raw = raw_label(c27, 0)
    l27, l19 = c27.load_label(0), c19.load_label(0)
    assert set(np.unique(raw)) == {6, 7, 24, 26}
    for raw_id, id27, id19 in ((6, 255, 255), (7, 0, 0), (24, 17, 11), (26, 19, 13)):
        np.testing.assert_array_equal(l27[raw == raw_id], id27)
        np.testing.assert_array_equal(l19[raw == raw_id], id19)
    assert c27.class_names[19] == "car" and c19.class_names[13] == "car"


def test_ade20k_zero_ignored_rest_minus_one(tmp_path):
    root = write_ade20k(tmp_path / "ade")
    ds = load_dataset(spec("ade20k", root), "val")
    assert ds.num_classes == 150 and len(ds) == 3 and ds.class_names[149] == "flag"
    raw, label = raw_label(ds, 0), ds.load_label(0)
    for raw_id, train_id in ((0, 255), (1, 0), (3, 2), (150, 149)):
        np.testing.assert_array_equal(label[raw == raw_id], train_id)
    assert len(load_dataset(spec("ade20k", root), "train")) == 4


def test_image_folder_for_zero_shot(tmp_path):
    ds = load_dataset(spec("folder", write_image_folder(tmp_path / "imagenet")), "train")
    assert len(ds) == 4 and not ds.has_labels


@pytest.mark.parametrize(
    "adapter, expected",
    [("pascal", "VOCdevkit/VOC2010"), ("cityscapes", "leftImg8bit/{split}"), ("ade20k", "ADEChallengeData2016/images")],
)
def test_wrong_root_names_the_expected_layout(tmp_path, adapter, expected):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=expected.replace("{", r"\{").replace("}", r"\}")) as err:
        load_dataset(spec(adapter, tmp_path / "empty"), "val")
    assert str(tmp_path / "empty") in str(err.value)


def test_protocol_a_crops_image_and_label_alike():
    view = View.from_config({"mode": "centre_crop", "short_side": 50, "crop": 50, "interpolation": "nearest"})
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255
    label = np.zeros((100, 200), np.int64)
    label[:, 100:] = 7
    img, lab = view.scored(image, label)
    assert img.shape == (50, 50, 3) and lab.shape == (50, 50)
    # the crop keeps columns 50..150 of the original: left half dark / class 0, right half bright / 7
    assert (lab[:, :25] == 0).all() and (lab[:, 25:] == 7).all()
    assert (img[:, :25] == 0).all() and (img[:, 25:] == 255).all()


def test_sliding_windows_are_placed_as_mmsegmentation():
    view = View.from_config({"mode": "sliding", "short_side": 520, "crop": 480, "stride": 320})
    assert view.windows(520, 700) == [(0, 480, 0, 480), (0, 480, 220, 700), (40, 520, 0, 480), (40, 520, 220, 700)]
    assert view.windows(300, 400) == [(0, 300, 0, 400)]  # smaller than a window: one window, the image
    assert (
        len(View.from_config({"mode": "sliding", "short_side": 1024, "crop": 768, "stride": 512}).windows(1024, 2048))
        == 2 * 4
    )


@pytest.fixture(scope="module")
def tiny_vit_model(tmp_path_factory):
    path = write_tiny_vit(tmp_path_factory.mktemp("w") / "tiny.pth")
    backbone = tiny_vit_backbone(path)
    torch.manual_seed(0)
    train = train_settings(K=6, depth=1)
    model = RunModel(
        run_spec("nes", train=train), psi=build_psi(backbone.input_dim, train).eval(), input_dim=backbone.input_dim
    )
    return backbone, model


def test_sliding_window_covering_the_image_equals_whole_image_prediction(tiny_vit_model):
    backbone, model = tiny_vit_model
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    sliding = View.from_config({"mode": "sliding", "short_side": 80, "crop": 160, "stride": 100})
    whole = View.from_config({"mode": "resize", "size": [80, 120]})
    a = image_logits(model, backbone, [image], sliding, torch.device("cpu"))[0]
    b = image_logits(model, backbone, [image], whole, torch.device("cpu"))[0]
    assert a.shape == b.shape == (6, 60, 90)
    torch.testing.assert_close(a, b)


def test_overlapping_windows_average_their_logits(tiny_vit_model):
    """Where two windows overlap the prediction is the mean of the two windows' logits."""
    backbone, model = tiny_vit_model
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    view = View.from_config({"mode": "sliding", "short_side": 64, "crop": 64, "stride": 32})
    assert view.windows(64, 96) == [(0, 64, 0, 64), (0, 64, 32, 96)]
    out = image_logits(model, backbone, [image], view, torch.device("cpu"))[0]
    left = image_logits(model, backbone, [image[:, :64]], View("resize", (64, 64)), torch.device("cpu"))[0]
    right = image_logits(model, backbone, [image[:, 32:]], View("resize", (64, 64)), torch.device("cpu"))[0]
    torch.testing.assert_close(out[:, :, :32], left[:, :, :32])
    torch.testing.assert_close(out[:, :, 32:64], (left[:, :, 32:] + right[:, :, :32]) / 2)
    torch.testing.assert_close(out[:, :, 64:], right[:, :, 32:])
