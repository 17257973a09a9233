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


def test_ids_that_would_escape_the_dataset_are_refused_naming_file_and_line(tmp_path):
    """A split list naming `../../x` would read (and write overlays) outside the dataset: refused
    with the list file and line, in every adapter that reads ids from a list."""
    from fixtures import write_pascal

    root = write_pascal(tmp_path / "pascal", n_train=2, n_val=2)
    listing = root / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext" / "val.txt"
    listing.write_text("2008_val000\n\n../../../outside\n")
    with pytest.raises(InputError, match=r"val\.txt:3: image id '\.\./\.\./\.\./outside' is not a plain file name"):
        load_dataset({"name": "pascal", "adapter": "pascal", "data_root": str(root)}, "val")
    camvid = tmp_path / "camvid"
    (camvid / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(camvid / "val" / "a.png")
    (camvid / "val.txt").write_text("/x/val/a.png /x/valannot/a.png\n/x/../b.png /x/valannot/b.png\n")
    with pytest.raises(InputError, match=r"val\.txt: '/x/\.\./b\.png .*outside the dataset"):
        load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(camvid)}, "val")


def test_two_files_with_one_id_are_refused_and_symlinked_files_are_not(tmp_path):
    """x.png and x.jpg would share one id, one cache item and one label: refused naming both.
    Images that are symlinks to shared storage stay allowed (the check is on paths, not targets)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("x.png", "x.jpg", "y.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    with pytest.raises(InputError, match=r"x\.jpg and .*x\.png have the same id 'x'"):
        load_dataset({"name": "mine", "adapter": "folder", "data_root": str(folder)}, "all")
    (folder / "x.jpg").unlink()
    elsewhere = tmp_path / "storage"
    elsewhere.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(elsewhere / "z.png")
    (folder / "z.png").symlink_to(elsewhere / "z.png")
    ds = load_dataset({"name": "mine", "adapter": "folder", "data_root": str(folder)}, "all")
    assert [s.id for s in ds.samples] == ["x", "y", "z"]


def test_images_and_labels_are_read_as_displayed(tmp_path):
    """A phone photo stored sideways with an EXIF orientation (6: rotate 90 degrees clockwise) is
    read upright, everywhere images are read, and its label with it."""
    from PIL import ImageOps

    from pipeline.datasets import read_label, read_rgb

    stored = np.zeros((4, 8, 3), np.uint8)
    stored[0, :, 0] = 255  # the stored top row is red
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.png", exif=exif)
    label = np.zeros((4, 8), np.uint8)
    label[0] = 3
    Image.fromarray(label).save(tmp_path / "photo_label.png", exif=exif)
    upright = read_rgb(tmp_path / "photo.png")
    assert upright.shape == (8, 4, 3) and (upright[:, -1, 0] == 255).all()  # top row -> right column
    np.testing.assert_array_equal(upright, np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "photo.png"))))
    assert (
        read_label(tmp_path / "photo_label.png").shape == (8, 4)
        and (read_label(tmp_path / "photo_label.png")[:, -1] == 3).all()
    )
