"""Each bad input stops with one clear message naming the file or key; nothing cached is lost."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.cache import FeatureCache
from pipeline.datasets import load_dataset
from pipeline.errors import InputError
from pipeline.features import extract_split
from pipeline.views import View

REPO = Path(__file__).resolve().parents[1]


def make_camvid_copy(src: Path, dst: Path, n: int = 4) -> Path:
    """A small CamVid-layout dataset in a temporary folder (images copied from the real set)."""
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True)
        (dst / f"{split}annot").mkdir()
        lines = (src / f"{split}.txt").read_text().splitlines()[:n]
        for line in lines:
            img, lab = (Path(*Path(p).parts[-2:]) for p in line.split())
            shutil.copy(src / img, dst / img)
            shutil.copy(src / lab, dst / lab)
        (dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return dst


def test_corrupt_image_is_named_and_cached_items_survive(tmp_path, camvid_root, lite0):
    root = make_camvid_copy(camvid_root, tmp_path / "camvid")
    ds = load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(root)}, "val")
    bad = ds.samples[3].image_path
    bad.write_bytes(b"this is not a png")
    out = tmp_path / "val.zarr"
    with pytest.raises(InputError, match=bad.name):
        extract_split(ds, lite0, out, View("resize", (360, 480)), batch_size=2)
    # the first batch (2 images) is kept; after fixing the file, extraction resumes from there
    shutil.copy(camvid_root / "val" / bad.name, bad)
    import zarr

    assert zarr.open_group(str(out / "shard-0-of-1"), mode="r").attrs["n_done"] == 2
    extract_split(ds, lite0, out, View("resize", (360, 480)), batch_size=2)
    assert len(FeatureCache(out)) == 4


def test_label_size_mismatch_is_named(tmp_path, camvid_root):
    root = make_camvid_copy(camvid_root, tmp_path / "camvid", n=1)
    ds = load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(root)}, "val")
    label_path = ds.samples[0].label_path
    Image.open(label_path).resize((240, 180), Image.NEAREST).save(label_path)
    with pytest.raises(InputError, match=f"{label_path.name}.*240x180.*480x360"):
        ds.load_label(0, expected_hw=ds.load_image(0).shape[:2])


def test_missing_dataset_root_says_where_to_put_data(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does_not_exist"):
        load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(tmp_path / "does_not_exist")}, "val")
    monkeypatch.chdir(tmp_path)  # no data/camvid and no ../shared here
    with pytest.raises(InputError, match=r"Put the data in data/camvid/"):
        load_dataset({"name": "camvid", "adapter": "camvid", "data_root": "auto"}, "val")


def test_unknown_split_is_refused(camvid_root):
    with pytest.raises(InputError, match="unknown split 'tset'"):
        load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(camvid_root)}, "tset")


def run_snakemake(*args, cwd=REPO):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("override, key", [("train", "K"), ("train", "alpha"), ("extract", "views")])
def test_config_value_out_of_range_names_the_key(tmp_path, override, key):
    bad = {"K": 1, "alpha": -0.5, "views": 0}[key]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"{override}:\n  {key}: {bad}\n")
    result = run_snakemake("-n", "--configfile", str(cfg))
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "ValidationError" in text and f"'{key}'" in text and "minimum" in text, text[-2000:]


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--run", str(tmp_path / "nope")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "model.pt" in result.stderr


def test_download_fails_clearly_without_internet(tmp_path):
    from pipeline.datasets.download import download_camvid

    with pytest.raises(InputError, match=r"place the data in .*camvid/ by hand"):
        download_camvid(tmp_path / "camvid", url="http://127.0.0.1:9/camvid.zip", timeout=5)
    assert not (tmp_path / "camvid").exists()
