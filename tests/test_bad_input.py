"""Each bad input stops with one clear message naming the file or key; nothing cached is lost."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  K: 1\n", "train.K: 1 is less than the minimum of 2"),
        ("train:\n  alpha: 1.5\n", "train.alpha: 1.5 is greater than the maximum of 1"),
        ("extract:\n  views: 0\n", "extract.views: 0 is less than the minimum of 1"),
        (
            "datasets:\n  camvid:\n    extract: {views: 0}\n",
            "datasets.camvid.extract.views: 0 is less than the minimum of 1",
        ),
        (
            "tables:\n  pascal:\n    table9:\n      train: {bta: 0.1}\n",
            "tables.pascal.table9.train: Additional properties are not allowed ('bta'",
        ),
        ("trian:\n  K: 64\n", "(top level): Additional properties are not allowed ('trian'"),
        ("train:\n  pixel_knn: [[a, 2]]\n", "train.pixel_knn[0][0]: 'a' is not of type 'integer'"),
        (
            "tables:\n  camvid:\n    table1: {train: {K: 0}}\n",
            "tables.camvid.table1.train.K: 0 is less than the minimum of 2",
        ),
        (
            "tables:\n  camvid:\n    table1: {sweep: {beta: [-1]}}\n",
            "tables.camvid.table1.sweep {'beta': -1} -> train.beta: -1 is less than the minimum",
        ),
        ("tables:\n  camvid:\n    table1: {sweep: {KK: [64]}}\n", "tables.camvid.table1.sweep: 'KK' is not one of"),
        ("train:\n  alpha: .nan\n", "train.alpha: nan is not a finite number"),
        (
            "tables:\n  camvid:\n    table1: {train: {tau_min: .inf}}\n",
            "tables.camvid.table1.train.tau_min: inf is not a finite number",
        ),
        (
            "tables:\n  camvid:\n    table1: {sweep: {t: [.nan]}}\n",
            "tables.camvid.table1.sweep.t[0]: nan is not a finite",
        ),
        (
            "datasets:\n  ..: {adapter: camvid, train_split: train, eval_split: val, train_view: {mode: resize}}\n",
            "datasets: '..' does not match",
        ),
    ],
)
def test_config_errors_name_the_full_key_path_before_any_job(text, message):
    """Every value of the configuration, wherever training or extraction settings appear (and
    every sweep value merged into a run), is checked while planning, naming the key path: the
    override merged into config/config.yaml as `--configfile` does, then what the Snakefile runs."""
    import yaml
    from snakemake.utils import update_config

    from pipeline.configcheck import check_config
    from pipeline.plan import all_runs

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load(text))
    with pytest.raises(InputError) as caught:
        check_config(config)
        all_runs(config)
    assert message in str(caught.value)


def test_nested_values_given_with_snakemakes_config_option_are_pointed_to_a_config_file():
    """`--config train='{K: 64}'` reaches the workflow with K as the string '64' (Snakemake reads
    nested values with YAML's BaseLoader): the error says so and what to do instead."""
    import yaml
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    from pipeline.configcheck import check_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, parse_config(["train={K: 64}"]))
    with pytest.raises(
        InputError, match=r"train\.K: '64' is not of type 'integer' \(given with --config\?.*--configfile"
    ):
        check_config(config)


def test_check_config_names_the_file_and_line_of_a_yaml_syntax_error(tmp_path):
    """Snakemake's own message for a broken --configfile names neither file nor line; `nes
    check-config` does, then checks keys and every run as the workflow would."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  K: 64\n lr: [1\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  bta: 1\n")
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  K: 64\n")

    def check(*files):
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "check-config", *map(str, files)],
            capture_output=True,
            text=True,
            cwd=REPO,
        )

    result = check(good, broken)
    assert result.returncode == 2 and result.stderr.strip().startswith(f"error: {broken}:3:2: YAML syntax error"), (
        result.stderr
    )
    result = check(typo)
    assert result.returncode == 2 and "train: Additional properties are not allowed ('bta'" in result.stderr
    result = check(good)
    assert result.returncode == 0 and result.stdout.startswith("ok: config/config.yaml, ")


@pytest.mark.workflow  # runs Snakemake
def test_snakemake_stops_on_a_bad_override_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("tables:\n  camvid:\n    table1: {sweep: {K: [0, 64]}}\n")
    result = run_snakemake("-n", "--configfile", str(cfg))
    assert result.returncode != 0
    assert (
        "tables.camvid.table1.sweep {'K': 0} -> train.K: 0 is less than the minimum of 2"
        in result.stdout + result.stderr
    )


def test_cli_reports_bad_input_in_one_line(tmp_path):
    def nes(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)

    result = nes("evaluate", "--run", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "model.pt" in result.stderr
    result = nes("table", "--out", str(tmp_path / "t.csv"), str(tmp_path / "missing" / "metrics.json"))
    missing = tmp_path / "missing" / "metrics.json"
    expected = f"error: {missing}: no such file (a metrics.json or alignment.json of an evaluated run)"
    assert result.returncode == 2 and result.stderr.strip() == expected
    result = nes("graph", "--features", str(tmp_path / "f.json"), "--spec", "{k: 8", "--out", str(tmp_path / "g.json"))
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --spec: not valid JSON")
    assert "Traceback" not in result.stderr
    version = nes("--version")
    assert version.returncode == 0 and version.stdout.startswith("nes ")
    for command in (
        "extract",
        "gather",
        "graph",
        "eigen",
        "nystrom",
        "align",
        "fit",
        "evaluate",
        "table",
        "download",
        "segment",
        "check-config",
    ):
        text = nes(command, "--help").stdout
        assert "example:" in text and "  nes " + command in text, command
        options = re.findall(r"^  (--[\w-]+)[^\n]*$", text, flags=re.M)
        for option in options:  # every option says what it does (argparse prints help beside or below it)
            block = text.split(option, 1)[1].split("\n  -", 1)[0]
            assert len(block.strip()) > len(option) or "help" in option, (command, option)


def test_download_fails_clearly_without_internet(tmp_path):
    from pipeline.datasets.download import download_camvid

    with pytest.raises(InputError, match=r"place the data in .*camvid/ by hand"):
        download_camvid(tmp_path / "camvid", url="http://127.0.0.1:9/camvid.zip", timeout=5)
    assert not (tmp_path / "camvid").exists()


def test_non_finite_features_are_refused_when_written_and_when_read(tmp_path, camvid_root, lite0, monkeypatch):
    """A backbone giving NaN stops extraction naming the image; a NaN that reaches a cache anyway
    stops every reader naming the cache and the item, instead of skewing the scores."""
    import numpy as np
    import zarr

    import pipeline.features as features

    root = make_camvid_copy(camvid_root, tmp_path / "camvid")
    ds = load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(root)}, "val")
    real = features.encode

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out["high"][1, 2, 3, 0] = float("nan")
        return out

    monkeypatch.setattr(features, "encode", poisoned)
    with pytest.raises(InputError, match=ds.samples[1].image_path.name):
        extract_split(ds, lite0, tmp_path / "bad.zarr", View("resize", (180, 240)), batch_size=4)
    monkeypatch.setattr(features, "encode", real)
    extract_split(ds, lite0, tmp_path / "val.zarr", View("resize", (180, 240)), batch_size=4)
    shard = zarr.open_group(str(next((tmp_path / "val.zarr").glob("shard-*"))), mode="r+")
    values = shard["input"][2]
    values[0, 0, 0] = np.inf
    shard["input"][2] = values
    cache = FeatureCache(tmp_path / "val.zarr")
    assert cache.read([0, 1], ("input",))["input"].shape[0] == 2  # clean items still read
    with pytest.raises(InputError, match=r"val.zarr: non-finite input values in item\(s\) 2"):
        cache.read([1, 2, 3], ("input",))


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    import numpy as np

    from pipeline.datasets.base import read_rgb

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 10), int(0.2 * 65535), dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = read_rgb(path)
    assert rgb.shape == (8, 10, 3) and rgb.dtype == np.uint8 and abs(rgb.mean() / 255 - 0.2) < 0.01


def test_label_ids_outside_the_classes_are_named_or_ignored_on_request(tmp_path, camvid_root, caplog):
    """CamVid's classes are 0-10 and 11 is void: a 40 (8-bit) or a 300 (16-bit) is refused naming
    the file and the ids; `unknown_labels: ignore` scores them as ignored and says how many."""
    import numpy as np

    root = make_camvid_copy(camvid_root, tmp_path / "camvid")
    spec = {"name": "camvid", "adapter": "camvid", "data_root": str(root)}
    ds = load_dataset(spec, "val")
    label = np.array(Image.open(ds.samples[0].label_path))
    label[:5, :7] = 40
    Image.fromarray(label).save(ds.samples[0].label_path)
    wide = label.astype(np.uint16)
    wide[:2, :2] = 300
    Image.fromarray(wide).save(ds.samples[1].label_path)
    for index, ids in ((0, "40"), (1, "40, 300")):
        with pytest.raises(
            InputError, match=rf"{ds.samples[index].label_path.name}: label ids {ids} .*unknown_labels: ignore"
        ):
            ds.load_label(index)
    assert set(np.unique(ds.load_label(2))) <= set(range(11)) | {255}  # void 11 -> ignore, no complaint
    lenient = load_dataset({**spec, "unknown_labels": "ignore"}, "val")
    with caplog.at_level("WARNING"):
        ids = lenient.load_label(0)
    assert (ids[:5, :7] == 255).all() and "35 pixels with unknown label ids 40" in caplog.text


def test_broken_model_and_cache_metadata_are_named(tmp_path, camvid_root, lite0):
    """A truncated, empty or foreign model.pt and a truncated zarr.json stop with one message
    naming the file, not a traceback."""
    import torch

    from pipeline.models import RunModel

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"method": "kmeans", "config": {}, "centres": torch.zeros(2, 3)}, run / "model.pt")
    data = (run / "model.pt").read_bytes()
    for content, expected in ((data[: len(data) // 2], "not a readable model.pt"), (b"", "not a readable model.pt")):
        (run / "model.pt").write_bytes(content)
        with pytest.raises(InputError, match=rf"{run / 'model.pt'}: {expected}"):
            RunModel.load(run)
    torch.save({"weights": torch.zeros(3)}, run / "model.pt")
    with pytest.raises(InputError, match=r"not a model\.pt of this project"):
        RunModel.load(run)

    root = make_camvid_copy(camvid_root, tmp_path / "camvid", n=2)
    ds = load_dataset({"name": "camvid", "adapter": "camvid", "data_root": str(root)}, "val")
    extract_split(ds, lite0, tmp_path / "val.zarr", View("resize", (90, 120)), batch_size=2)
    meta = next((tmp_path / "val.zarr").glob("shard-*")) / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(InputError, match=r"zarr\.json: unreadable"):
        FeatureCache(tmp_path / "val.zarr")


def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    import numpy as np

    from pipeline.datasets.base import read_rgb

    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x 100: PIL's bomb error
    with pytest.raises(InputError, match=r"bomb\.png: cannot read image .*DecompressionBomb"):
        read_rgb(path)


@pytest.mark.workflow  # runs Snakemake
def test_dry_run_finds_a_missing_dataset_naming_its_layout(tmp_path):
    """Planning a Pascal Context table without the data fails at once, naming where the data was
    looked for, instead of when an extraction job starts."""
    result = run_snakemake("-n", f"{tmp_path}/pascal/table1.csv", "--config", f"results={tmp_path}")
    assert result.returncode != 0
    assert "dataset 'pascal': no data found (looked in data/pascal_context" in result.stdout + result.stderr


@pytest.mark.workflow  # runs Snakemake
def test_a_failed_job_names_its_culprit_on_the_console(tmp_path, camvid_root):
    """The error line of a failed job's log is repeated where Snakemake reports the failure, so
    the console names the corrupt image, not only the log file to open."""
    import yaml
    from test_workflow import tiny_config

    root = make_camvid_copy(camvid_root, tmp_path / "camvid", n=2)
    bad = sorted((root / "val").iterdir())[1]
    bad.write_bytes(b"this is not a png")
    cfg = tiny_config(tmp_path / "results", root)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    target = tmp_path / "results" / "camvid" / "features" / "lite0" / "native" / "val.json"
    result = run_snakemake(str(target), "--cores", "1", "--configfile", str(tmp_path / "config.yaml"))
    assert result.returncode != 0
    console = result.stdout + result.stderr
    assert f"error: {bad}: cannot read image" in console, console[-3000:]
    assert not target.exists()


def test_nes_log_keeps_the_traceback_and_prints_one_line(tmp_path):
    """`nes --log` (how every rule calls it): an unexpected error leaves its traceback in the log
    and only its one-line reason on the console; bad input prints the `error:` line in both."""
    log = tmp_path / "logs" / "job.log"
    code = (
        "import pipeline.cli as cli\n"
        "def boom(args):\n    raise RuntimeError('disk on fire\\nsecond line')\n"
        "cli.cmd_table = boom\n"
        f"cli.main(['--log', {str(log)!r}, 'table', '--out', 'x.csv'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip() == "RuntimeError: disk on fire", result.stderr
    assert "Traceback" in log.read_text() and "second line" in log.read_text()
    missing = tmp_path / "none.json"
    args = ["--log", str(log), "fit", "--spec", str(missing), "--run", "r"]
    code = f"import pipeline.cli as cli\ncli.main({args!r})\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().startswith(f"error: {missing}: no such file")
    assert log.read_text().strip() == result.stderr.strip() and not (tmp_path / "r").exists()


def test_segment_never_overwrites_an_input_or_its_own_outputs(tmp_path):
    """Outputs are named by stem: two inputs with one stem, or an output landing on an input
    (--out being the input folder, which holds `y_overlay.png`), are refused before any write."""
    from pipeline.segmenter import segment_outputs

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    with pytest.raises(InputError, match=r"share the name 'x': their outputs would overwrite each other"):
        segment_outputs([a / "x.png", b / "x.jpg", a / "y.png"], tmp_path / "out", eigenfunctions=False)
    with pytest.raises(InputError, match=r"y_overlay\.png: is one of the images to segment"):
        segment_outputs([a / "y.png", a / "y_overlay.png"], a, eigenfunctions=False)
    planned = segment_outputs([a / "y.png", b / "z.png"], a, eigenfunctions=True)
    assert planned[b / "z.png"] == {k: a / f"z_{k}.png" for k in ("labels", "overlay", "eigenfunctions")}


def test_an_evaluation_with_no_scored_pixel_is_an_error_not_nan(tmp_path):
    """Labels that are all ignore (or void) leave nothing to score: refused by name instead of a
    metrics.json of NaN scores that a table would average as another seed."""
    import numpy as np
    import torch

    from fixtures import run_spec
    from pipeline.datasets import load_dataset
    from pipeline.evaluate import evaluate
    from pipeline.models import RunModel
    from pipeline.views import View

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / f"{name}.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(labels / f"{name}.png")
    spec = {"name": "mine", "adapter": "folder", "data_root": str(images), "label_dir": str(labels)}
    dataset = load_dataset({**spec, "class_names": ["sky", "road"]}, "all")
    model = RunModel(run_spec("kmeans", K=2), centres=torch.eye(2))
    predictions = ((i, torch.zeros(2, 8, 8)) for i in range(len(dataset)))
    with pytest.raises(InputError, match=r"mine/all: no pixel has a class label to score"):
        evaluate(model, dataset, predictions, View("resize", (8, 8)), n_overlays=0)


def test_fit_refuses_a_folder_it_did_not_make_and_a_second_writer(tmp_path):
    """`nes fit --run` on a folder holding someone else's config.yaml or files leaves them as
    they are; while a fit holds a run folder's lock, a second one is refused at once."""
    from filelock import FileLock

    from fixtures import run_spec
    from pipeline.fit import LOCK, fit_run

    spec = run_spec("kmeans", run="kmeans-test-K6-s0", features=str(tmp_path / "none.json"))
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("name: my project\n")
    with pytest.raises(InputError, match=r"config\.yaml: belongs to 'not a run config', not run kmeans-test-K6-s0"):
        fit_run(spec, foreign)
    assert (foreign / "config.yaml").read_text() == "name: my project\n"
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"mine")
    with pytest.raises(InputError, match=r"photos: holds files but no config\.yaml of a run"):
        fit_run(spec, photos)
    assert sorted(p.name for p in photos.iterdir()) == ["a.jpg"]
    run = tmp_path / "run"
    run.mkdir()
    with FileLock(run / LOCK), pytest.raises(InputError, match=r"another fit is writing this run folder"):
        fit_run(spec, run)
    with pytest.raises(InputError, match=r"no feature cache here"):  # ours and free: it gets as far as the cache
        fit_run(spec, run)


def test_a_cache_of_another_backbone_is_not_scored_with_a_run(tmp_path):
    """`nes evaluate --features` with a cache of another backbone (same dimensions) would score
    silently, other dimensions would crash inside psi: both refused naming what differs."""
    from types import SimpleNamespace

    import torch

    from fixtures import run_spec, train_settings
    from pipeline.evaluate import check_cache_for_run
    from pipeline.models import RunModel, build_psi

    lite0 = {"kind": "cnn", "model": "tf_efficientnet_lite0", "stride": 16, "weights": "efficientnet-lite0-pypi"}
    train = train_settings(K=6, depth=1)
    model = RunModel(run_spec("nes", train=train, backbone_spec=lite0), build_psi(32, train), input_dim=32)

    def cache(backbone, input_dim=32):
        dims = {"input": input_dim, "high": 24}
        return SimpleNamespace(path=tmp_path / "val.zarr", attrs={"backbone": backbone}, dim=dims.__getitem__)

    check_cache_for_run(model, cache({**lite0, "weights_dir": "/elsewhere"}))  # same backbone, other folder
    with pytest.raises(InputError, match=r"another backbone than run .*model: 'vit_small_patch14_dinov2' \(cache\)"):
        check_cache_for_run(model, cache({**lite0, "model": "vit_small_patch14_dinov2"}))
    with pytest.raises(InputError, match=r"psi's input has 40 channels, run .* expects 32"):
        check_cache_for_run(model, cache(lite0, input_dim=40))
    kmeans = RunModel(run_spec("kmeans", K=2, backbone_spec=lite0), centres=torch.zeros(2, 16))
    with pytest.raises(InputError, match=r"24-channel features \(backbone\), run .*centres have 16"):
        check_cache_for_run(kmeans, cache(lite0))
    # K-means on the last layer of psi's input: its centres' width is that layer's
    tokens = RunModel(run_spec("kmeans_tokens", K=2, backbone_spec=lite0), centres=torch.zeros(2, 16), final_dim=16)
    check_cache_for_run(tokens, cache(lite0))
    tokens.final_dim = 20
    with pytest.raises(InputError, match=r"20-channel features \(final_tokens\), run .*centres have 16"):
        check_cache_for_run(tokens, cache(lite0))


def test_inputs_are_checked_at_the_door(tmp_path):
    """Counts below their minimum, a YAML key given twice, a mapping file of the wrong shape, a
    float image, a table over images without labels: each a one-line error naming what and where."""
    import numpy as np
    import yaml

    from pipeline.cli_args import build_parser
    from pipeline.configcheck import load_yaml
    from pipeline.plan import table_config
    from pipeline.segmenter import ClassMapping, check_image

    for args in (["--batch-size", "0"], ["--overlays", "-1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["evaluate", "--run", "r", *args])
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "segment", "--run", "r", "--out", "o", "--eigenfunctions", "-3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--eigenfunctions: expected an integer >= 0, got -3" in result.stderr
    (tmp_path / "twice.yaml").write_text("train:\n  K: 64\n  epochs: 3\n  K: 128\n")
    with pytest.raises(InputError, match=r"twice\.yaml:4:3: YAML syntax error: key 'K' is given twice"):
        load_yaml(tmp_path / "twice.yaml")
    (tmp_path / "mapping.json").write_text('{"mapping": [0, 7], "class_names": ["sky", "road"]}')
    with pytest.raises(InputError, match=r"mapping\.json: 'mapping' must list a class id \(0\.\.1, or -1\)"):
        ClassMapping.load(tmp_path / "mapping.json")
    with pytest.raises(
        InputError, match=r"expected an HxWx3 uint8 RGB image .*got a float32 array of shape \(4, 4, 3\)"
    ):
        check_image(np.zeros((4, 4, 3), np.float32))
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["datasets"]["photos"] = {
        "adapter": "folder",
        "data_root": str(tmp_path),
        "train_split": "all",
        "eval_split": "all",
        "train_view": {"mode": "resize", "size": [64, 64]},
        "protocols": {"native": {"mode": "resize", "size": [64, 64]}},
    }
    config["tables"]["photos"] = {"t": {"backbones": ["lite0"]}}
    with pytest.raises(InputError, match=r"tables\.photos\.t: dataset photos is a folder of images without label_dir"):
        table_config(config, "photos", "t")


def test_folders_given_to_segment_name_the_files_they_skip(tmp_path, caplog):
    import logging

    from pipeline.segmenter import expand_inputs

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    with caplog.at_level(logging.INFO, logger="pipeline.segmenter"):
        assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.png"]
    assert "skipped 1 file(s) that are not images: notes.txt" in caplog.text


@pytest.mark.workflow  # runs Snakemake
def test_a_second_workflow_on_one_results_folder_is_refused_before_any_job(tmp_path, camvid_root):
    """Snakemake locks per working directory; two runs from two folders on one `results:` would
    rerun (and on failure delete) each other's outputs. A real run takes results/.workflow.lock
    before its first job; dry runs do not."""
    from filelock import FileLock

    results = tmp_path / "results"
    results.mkdir()
    config = tmp_path / "config.yaml"
    camvid = {"data_root": str(camvid_root)}
    config.write_text(json.dumps({"results": str(results), "datasets": {"camvid": camvid}}))  # JSON is YAML
    target = str(results / "camvid" / "features" / "lite0" / "native" / "val.json")
    command = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", str(config)]
    with FileLock(results / ".workflow.lock"):
        dry = subprocess.run([*command, "-n"], capture_output=True, text=True, cwd=REPO)
        real = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert real.returncode != 0 and "another snakemake run is writing this results folder" in real.stderr
    assert not (results / "camvid" / "features").exists()


def test_sliding_windows_beyond_the_memory_bound_are_built_in_bands(tmp_path, monkeypatch):
    """An extreme aspect ratio blows up the resized canvas (4 x 400 at short side 96: 96 x 9600):
    above the bound the canvas is built in bands of its long axis, with the same logits as one
    canvas; a bound too small for even one window's band is refused with its sizes."""
    import numpy as np
    import torch

    from fixtures import run_spec, tiny_vit_backbone, train_settings
    from pipeline.models import RunModel, build_psi
    from pipeline.predict import _banded_sliding_logits, sliding_logits
    from pipeline.views import View

    backbone = tiny_vit_backbone(tmp_path / "vit.pth")
    train = train_settings(K=6, depth=1)
    model = RunModel(
        run_spec("nes", train=train), build_psi(backbone.input_dim, train).eval(), input_dim=backbone.input_dim
    )
    view = View.from_config({"mode": "sliding", "short_side": 96, "crop": 64, "stride": 32})
    cpu = torch.device("cpu")
    rng = np.random.default_rng(0)
    for shape in ((4, 400, 3), (400, 4, 3)):  # wide and tall: bands along either axis
        image = rng.integers(0, 255, shape, dtype=np.uint8)
        whole = sliding_logits(model, backbone, image, view, cpu)  # one 96 x 9600 canvas: 5.5 M values
        monkeypatch.setenv("NES_MAX_CANVAS_VALUES", str(10**6))
        banded = sliding_logits(model, backbone, image, view, cpu)
        monkeypatch.delenv("NES_MAX_CANVAS_VALUES")
        assert banded.shape == whole.shape == (6, *shape[:2])
        torch.testing.assert_close(banded, whole, atol=1e-5, rtol=1e-5)
    # ordinary images forced into bands: the same logits, up- and down-sampled
    for shape in ((48, 64, 3), (200, 150, 3)):
        image = rng.integers(0, 255, shape, dtype=np.uint8)
        whole = sliding_logits(model, backbone, image, view, cpu)
        banded = _banded_sliding_logits(model, backbone, image, view, cpu, 8, budget=3 * 10**5)
        torch.testing.assert_close(banded, whole, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("NES_MAX_CANVAS_VALUES", str(10**4))
    with pytest.raises(InputError, match=r"a 4x400 image .* on a 96x9600 canvas of 6 logits: not even bands"):
        sliding_logits(model, backbone, np.zeros((4, 400, 3), np.uint8), view, cpu)
    with pytest.raises(InputError, match=r"its logits at the image's size exceed the bound of 10,000"):
        sliding_logits(model, backbone, np.zeros((40, 400, 3), np.uint8), view, cpu)


def test_a_model_with_non_finite_weights_is_refused_naming_the_file_and_tensor(tmp_path):
    """A diverged or damaged model.pt would load and score everything as one cluster (mIoU 0.03,
    an all-zero segmentation, exit 0): every reader refuses it instead, naming what is wrong."""
    import torch

    from pipeline.models import RunModel

    ckpt = torch.load(REPO / "tests" / "data" / "model_nes_v0.pt", weights_only=True)
    name = next(k for k, v in ckpt["psi"].items() if v.is_floating_point())
    ckpt["psi"][name] = torch.full_like(ckpt["psi"][name], float("nan"))
    torch.save(ckpt, tmp_path / "model.pt")
    with pytest.raises(InputError, match=rf"model.pt: psi.{re.escape(name)} holds NaN or infinite values"):
        RunModel.load(tmp_path)
    RunModel.load(REPO / "tests" / "data" / "model_nes_v0.pt")  # the intact file still loads


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--view", '{"mode": "sliding", "short_side": 96, "crop": 64, "stride": 0}'], "view.stride: 0 is less than"),
        (["--view", '{"mode": "resize", "size": [30000, 30000]}'], "view.size[0]: 30000 is greater than the maximum"),
        (["--view", '{"mode": "resize", "size": [0, 64]}'], "view.size[0]: 0 is less than the minimum of 16"),
        (["--view", '{"mode": "resize", "size": [64, 64], "crff": true}'], "Additional properties are not allowed"),
        (["--device", "gpu"], "device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--device", "mps"], "device: expected auto, cpu, cuda or cuda:N, got 'mps'"),
        (["--threads", "-1"], "--threads: expected a positive number of threads, got -1"),
    ],
)
def test_command_line_settings_get_the_checks_config_values_get(tmp_path, capsys, options, message):
    """`--view`, `--device` and `--threads` used to bypass the schema (a stride of 0 or a size of
    0 gave tracebacks, a negative stride NaN logits, a misspelt key was ignored, 30000 x 30000 tried
    to allocate 10.8 GB): each is refused in one line naming the option, before any work."""
    import shutil

    from PIL import Image

    from pipeline.cli import main

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPO / "tests" / "data" / "model_nes_v0.pt", run / "model.pt")
    Image.new("RGB", (64, 48)).save(tmp_path / "img.png")
    before, args = (options, []) if options[0] == "--threads" else ([], options)
    with pytest.raises(SystemExit) as exit_code:
        main([*before, "segment", "--run", str(run), "--out", str(tmp_path / "out"), str(tmp_path / "img.png"), *args])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("error:") and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  K: 64\n  K: 32\n", "c.yaml:3:3: YAML syntax error: key 'K' is given twice in one mapping"),
        ('results: ""\n', "results: '' should be non-empty"),
        ("results: -x\n", "results: '-x' does not match"),
    ],
)
@pytest.mark.workflow  # runs Snakemake
def test_the_workflow_and_check_config_refuse_the_same_files(tmp_path, text, message):
    """One reader for both: a key given twice (Snakemake's reader alone would keep the last),
    an empty results folder or one that reads as an option are refused alike, naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    checked = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(path)], capture_output=True, text=True, cwd=REPO
    )
    planned = run_snakemake("-n", f"{tmp_path}/camvid/table1.csv", "--configfile", str(path))
    assert checked.returncode == 2 and message in checked.stderr, checked.stderr
    assert planned.returncode != 0 and message in planned.stdout + planned.stderr


@pytest.mark.workflow  # runs Snakemake
def test_the_workflow_and_check_config_both_accept_yaml_merge_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        f"results: {tmp_path}/results\ndatasets:\n  msrc:\n    train: &base {{K: 64}}\n  camvid:\n    train:\n"
        "      <<: *base\n      epochs: 2\n"
    )
    checked = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(path)], capture_output=True, text=True, cwd=REPO
    )
    planned = run_snakemake("-n", f"{tmp_path}/results/camvid/table1.csv", "--configfile", str(path))
    assert checked.returncode == 0, checked.stderr
    assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
    assert "runs/nes-lite0-K64-a0.3-b0.32-s0" in planned.stdout  # K from the merged mapping


def nes_command(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_no_output_replaces_an_input_or_finished_work(tmp_path):
    """Refused before any work, naming both roles: an evaluation's mapping written over the
    run's own metrics.json, two outputs on one file, a table whose Markdown twin is an input."""
    run = tmp_path / "run"
    (run / "camvid-native").mkdir(parents=True)
    finished = run / "camvid-native" / "metrics.json"
    finished.write_text('{"miou": 0.5}')
    result = nes_command("evaluate", "--run", run, "--mapping-out", finished)
    assert result.returncode == 2
    assert f"--mapping-out {finished}: is also a finished evaluation of the run" in result.stderr
    assert finished.read_text() == '{"miou": 0.5}'
    same = tmp_path / "same.json"
    result = nes_command("evaluate", "--run", run, "--out", same, "--mapping-out", same)
    assert result.returncode == 2 and f"--mapping-out {same}: is also --out" in result.stderr
    metrics = tmp_path / "t.md"
    metrics.write_text('{"run": "x"}')
    result = nes_command("table", "--out", tmp_path / "t.csv", metrics)
    assert result.returncode == 2 and f"its Markdown twin {metrics}: is also a metrics file" in result.stderr
    assert metrics.read_text() == '{"run": "x"}'


def test_a_table_path_must_end_in_csv_and_its_input_list_must_have_its_shape(tmp_path):
    metrics = tmp_path / "m.json"
    metrics.write_text('{"run": "x"}')
    result = nes_command("table", "--out", tmp_path / "t.md", metrics)
    assert result.returncode == 2 and "a table's path ends in .csv (t.md is written beside it)" in result.stderr
    listed = tmp_path / "inputs.json"
    listed.write_text(json.dumps([str(metrics)]))
    result = nes_command("table", "--out", tmp_path / "t.csv", "--inputs", listed)
    assert (
        result.returncode == 2 and f'{listed}: expected {{"metrics": [paths], "alignments": [paths]}}' in result.stderr
    )
    assert result.stderr.count("\n") == 1


def test_images_are_read_as_the_photo_they_show_or_refused_by_name(tmp_path):
    """A float greyscale TIFF in [0, 1] is the photo an 8-bit file of it is (not black); float
    labels must be whole class ids; a file of several pages is refused, not read as its first."""
    from PIL import Image

    from pipeline.datasets import read_label, read_rgb

    grey = np.random.default_rng(0).integers(0, 256, (20, 30)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.float32) / 255.0).save(tmp_path / "unit.tif")
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "bytes.tif")
    for name in ("unit.tif", "bytes.tif"):
        np.testing.assert_array_equal(read_rgb(tmp_path / name), read_rgb(tmp_path / "grey.png"))
    Image.fromarray(np.full((4, 4), 300.0, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(InputError, match=r"hdr.tif: a floating-point image with values from 300 to 300"):
        read_rgb(tmp_path / "hdr.tif")
    Image.fromarray(np.full((4, 4), 2.0, np.float32)).save(tmp_path / "whole.tif")
    assert read_label(tmp_path / "whole.tif").tolist() == [[2] * 4] * 4
    Image.fromarray(np.full((4, 4), 2.7, np.float32)).save(tmp_path / "fraction.tif")
    with pytest.raises(
        InputError, match=r"fraction.tif: labels must be whole, non-negative class ids; this map holds 2.7"
    ):
        read_label(tmp_path / "fraction.tif")
    pages = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255)]
    pages[0].save(tmp_path / "two.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match=r"two.tif: holds 2 pages or frames"):
        read_rgb(tmp_path / "two.tif")


def test_api_and_command_line_edges_are_named(tmp_path):
    """An empty image to the Python API, and a results folder given where a run is expected."""
    from pipeline.segmenter import check_image

    with pytest.raises(InputError, match=r"got an empty one \(0x5\)"):
        check_image(np.zeros((0, 5, 3), np.uint8))
    run = tmp_path / "results" / "camvid" / "runs" / "nes-x-s0"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"")
    result = nes_command("evaluate", "--run", tmp_path / "results")
    assert result.returncode == 2
    assert f"({tmp_path / 'results'} is a folder of runs: give one, e.g. {run})" in result.stderr


def test_a_misspelt_split_of_a_folder_dataset_is_refused_not_read_as_the_whole_folder(tmp_path):
    from pipeline.datasets.folder import load_folder

    image = np.zeros((8, 8, 3), np.uint8)
    for split in ("train", "val"):
        (tmp_path / "split" / split).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "split" / split / f"{split}0.png")
    Image.fromarray(image).save(tmp_path / "split" / "stray.png")
    assert [s.id for s in load_folder(tmp_path / "split", "val").samples] == ["val0"]
    with pytest.raises(InputError, match=r"no folder for split 'vall' \(it is split into train, val\)"):
        load_folder(tmp_path / "split", "vall")
    # one flat folder (its label folder aside) is every split
    (tmp_path / "flat" / "labels").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "flat" / "a.png")
    Image.fromarray(image[..., 0]).save(tmp_path / "flat" / "labels" / "a.png")
    flat = load_folder(tmp_path / "flat", "anything", label_dir=tmp_path / "flat" / "labels", class_names=["x"])
    assert [s.id for s in flat.samples] == ["a"] and flat.has_labels


@pytest.mark.workflow  # runs Snakemake
def test_missing_labels_of_an_evaluated_folder_are_found_while_planning(tmp_path, camvid_root):
    """A table over a folder dataset with labels for some images only stops at the dry run,
    naming the first image without one, before anything is extracted or trained."""
    import yaml

    root, labels = tmp_path / "mine", tmp_path / "mine_labels"
    root.mkdir()
    labels.mkdir()
    for i, path in enumerate(sorted((camvid_root / "val").glob("*.png"))[:3]):
        (root / path.name).write_bytes(path.read_bytes())
        if i:  # the first image has no label
            Image.fromarray(np.zeros((360, 480), np.uint8)).save(labels / path.name)
    config = {
        "results": str(tmp_path / "results"),
        "datasets": {
            "mine": {
                "adapter": "folder",
                "data_root": str(root),
                "label_dir": str(labels),
                "class_names": ["a", "b"],
                "train_split": "all",
                "eval_split": "all",
                "train_view": {"mode": "resize", "size": [180, 240]},
                "protocols": {"native": {"mode": "resize", "size": [180, 240]}},
            }
        },
        "tables": {"mine": {"t": {"backbones": ["lite0"], "methods": ["kmeans"], "seeds": [0]}}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake("-n", f"{tmp_path}/results/mine/t.csv", "--configfile", str(tmp_path / "c.yaml"))
    first = sorted(root.iterdir())[0]
    assert result.returncode != 0
    assert f"mine/all: no label for {first} (and 0 more); every image needs one" in result.stdout + result.stderr
    assert not (tmp_path / "results" / "mine" / "features").exists()


def test_paths_that_cannot_be_written_are_named_in_one_line(tmp_path):
    """An output folder that is a file, an output in a folder that cannot hold it, a download
    over a folder of one's own: one line naming the path, no traceback, nothing replaced."""
    metrics = tmp_path / "m.json"
    metrics.write_text('{"run": "x"}')
    result = nes_command("table", "--out", "/proc/no/t.csv", metrics)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: /proc/no")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = nes_command("download", "camvid", "--dest", mine)
    assert result.returncode == 2 and f"{mine}: exists and does not hold CamVid; not replacing it" in result.stderr
    assert (mine / "notes.txt").read_text() == "mine"


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    from pipeline.formats import whole_folder

    (tmp_path / "out").write_text("a file")
    with pytest.raises(InputError, match="out: exists and is not a folder"), whole_folder(tmp_path / "out"):
        pass
    assert (tmp_path / "out").read_text() == "a file"
