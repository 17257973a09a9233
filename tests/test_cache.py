"""Feature cache: round trip, resume after an interruption, refusing incomplete caches."""

import numpy as np
import pytest
import torch

import pipeline.features as features
from pipeline.cache import FeatureCache
from pipeline.errors import InputError
from pipeline.features import extract_split, pixel_vectors
from pipeline.views import View

NATIVE = View("resize", (360, 480))


def test_round_trip_matches_direct_encoding(tmp_path, camvid_val, lite0):
    manifest = extract_split(camvid_val, lite0, tmp_path / "val.zarr", NATIVE, batch_size=4)
    cache = FeatureCache(tmp_path / "val.zarr")
    assert manifest["items"] == len(cache) == len(camvid_val)
    assert cache.grid == (23, 30) and cache.ids == [s.id for s in camvid_val.samples]
    assert (cache.image_size == [360, 480]).all() and cache.image_size.shape == (len(camvid_val), 2)
    direct = features.encode_crops(lite0, [NATIVE.prepare(camvid_val.load_image(2))], torch.device("cpu"))
    got = cache.read([2])
    for name in ("high", "input", "pixels"):
        np.testing.assert_allclose(got[name][0], direct[name][0].numpy(), rtol=1e-2, atol=1e-2)  # float16 storage
    pix = got["pixels"][0]
    assert pix[..., :3].min() >= 0 and pix[..., :3].max() <= 1
    np.testing.assert_allclose(pix[0, :, 3], np.linspace(0, 1, 30), atol=1e-3)  # x over columns
    np.testing.assert_allclose(pix[:, 0, 4], np.linspace(0, 1, 23), atol=1e-3)  # y over rows


def test_resume_after_interruption_equals_uninterrupted(tmp_path, camvid_val, lite0, monkeypatch):
    reference = tmp_path / "ref.zarr"
    extract_split(camvid_val, lite0, reference, NATIVE, views=2, batch_size=4, seed=3)

    calls = {"n": 0}
    real_encode = features.encode

    def dying_encode(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_encode(*args, **kwargs)

    out = tmp_path / "resumed.zarr"
    monkeypatch.setattr(features, "encode", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        extract_split(camvid_val, lite0, out, NATIVE, views=2, batch_size=4, seed=3)
    with pytest.raises(InputError, match="incomplete"):
        FeatureCache(out)

    done_batches = []
    monkeypatch.setattr(features, "encode", lambda *a, **k: done_batches.append(1) or real_encode(*a, **k))
    extract_split(camvid_val, lite0, out, NATIVE, views=2, batch_size=4, seed=3)
    assert len(done_batches) == 2  # 12 items in batches of 4: the first batch was not redone
    a, b = FeatureCache(reference), FeatureCache(out)
    np.testing.assert_array_equal(a.image_index, b.image_index)
    np.testing.assert_array_equal(a.view, b.view)
    np.testing.assert_array_equal(a.image_size, b.image_size)
    for name in ("high", "input", "pixels"):
        np.testing.assert_array_equal(
            a.read(np.arange(len(a)), (name,))[name], b.read(np.arange(len(b)), (name,))[name]
        )


def test_augmented_views_differ_from_plain_view(tmp_path, camvid_val, lite0):
    extract_split(camvid_val, lite0, tmp_path / "aug.zarr", NATIVE, views=2, batch_size=6, seed=0)
    cache = FeatureCache(tmp_path / "aug.zarr")
    np.testing.assert_array_equal(cache.view[:4], [0, 1, 0, 1])
    np.testing.assert_array_equal(cache.plain_items(), np.arange(0, 12, 2))
    data = cache.read([0, 1])
    assert np.abs(data["high"][0] - data["high"][1]).mean() > 1e-3


def test_pixel_colours_undo_any_normalisation():
    image = torch.full((1, 3, 32, 32), 0.25)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pix = pixel_vectors((image - mean) / std, mean, std, (4, 4))
    torch.testing.assert_close(pix[:, :3], torch.full((1, 3, 4, 4), 0.25))


def test_sharded_extraction_equals_one_job(tmp_path):
    """Shards (one job each) read back as one cache identical to a single-job extraction,
    augmented views included; a changed shard count drops the stale shards."""
    from fixtures import tiny_vit_backbone, write_pascal
    from pipeline.datasets import load_dataset

    root = write_pascal(tmp_path / "pascal", n_train=5)
    ds = load_dataset({"name": "pascal", "adapter": "pascal", "data_root": str(root)}, "train")
    backbone = tiny_vit_backbone(tmp_path / "vit.pth")
    view = View.from_config({"mode": "centre_crop", "short_side": 72, "crop": 64})
    extract_split(ds, backbone, tmp_path / "one.zarr", view, views=2, batch_size=3, seed=1)
    for shard in range(3):
        extract_split(ds, backbone, tmp_path / "sharded.zarr", view, views=2, batch_size=3, seed=1, shard=(shard, 3))
    one, sharded = FeatureCache(tmp_path / "one.zarr"), FeatureCache(tmp_path / "sharded.zarr")
    assert len(sharded.shards) == 3 and len(sharded) == len(one) == 10
    np.testing.assert_array_equal(one.image_index, sharded.image_index)
    np.testing.assert_array_equal(one.view, sharded.view)
    items = np.array([9, 0, 4, 5, 3])  # any order, across shards
    a, b = one.read(items), sharded.read(items)
    for name in ("high", "input", "pixels"):
        np.testing.assert_array_equal(a[name], b[name])
    assert one.ids == sharded.ids and one.grid == (4, 4)
    # evaluation refuses a cache of another view instead of scoring misaligned predictions
    from pipeline.evaluate import cached_predictions

    with pytest.raises(InputError, match="cached for view"):
        next(cached_predictions(None, one, ds, View("resize", (64, 64)), 16, 4, torch.device("cpu")))
    # a shard missing: refused by name; re-sharding refuses to touch the old shards, or with
    # `overwrite` (what the workflow passes) removes them
    with pytest.raises(InputError, match="shard-0-of-3, shard-1-of-3, shard-2-of-3, written with another shard count"):
        extract_split(ds, backbone, tmp_path / "sharded.zarr", view, views=2, batch_size=3, seed=1, shard=(0, 2))
    assert len(FeatureCache(tmp_path / "sharded.zarr").shards) == 3
    extract_split(
        ds, backbone, tmp_path / "sharded.zarr", view, views=2, batch_size=3, seed=1, shard=(0, 2), overwrite=True
    )
    with pytest.raises(InputError, match="do not form one complete set"):
        FeatureCache(tmp_path / "sharded.zarr")
    assert sorted(p.name for p in (tmp_path / "sharded.zarr").iterdir() if p.is_dir()) == ["shard-0-of-2"]


def _tiny_split(tmp_path):
    from fixtures import tiny_vit_backbone, write_pascal
    from pipeline.datasets import load_dataset

    root = write_pascal(tmp_path / "pascal", n_train=3)
    ds = load_dataset({"name": "pascal", "adapter": "pascal", "data_root": str(root)}, "train")
    backbone = tiny_vit_backbone(tmp_path / "vit.pth")
    return ds, backbone, View.from_config({"mode": "centre_crop", "short_side": 72, "crop": 64})


def _snapshot(root):
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_a_cache_of_other_settings_is_refused_and_left_as_it_was(tmp_path):
    """Another seed, or the same settings under another torch thread count (which changes the
    features' last bits), never resumes into or silently replaces a cache: refused naming what
    differs; `overwrite` replaces it."""
    ds, backbone, view = _tiny_split(tmp_path)
    out = tmp_path / "train.zarr"
    extract_split(ds, backbone, out, view, views=2, seed=1)
    before = _snapshot(out)
    assert (out / "shard-0-of-1" / "extracted.json").exists()
    with pytest.raises(
        InputError, match=r"train.zarr/shard-0-of-1: holds features extracted with other settings \(seed: 1 -> 2\)"
    ):
        extract_split(ds, backbone, out, view, views=2, seed=2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        with pytest.raises(InputError, match=rf"threads: {threads} -> {threads + 1}"):
            extract_split(ds, backbone, out, view, views=2, seed=1)
    finally:
        torch.set_num_threads(threads)
    assert _snapshot(out) == before
    extract_split(ds, backbone, out, view, views=2, seed=2, overwrite=True)
    assert FeatureCache(out).attrs["seed"] == 2


def test_a_second_writer_is_refused_while_the_first_holds_the_shard(tmp_path):
    from filelock import FileLock

    ds, backbone, view = _tiny_split(tmp_path)
    out = tmp_path / "train.zarr"
    extract_split(ds, backbone, out, view)
    before = _snapshot(out)
    refused = r"shard-0-of-1: another extraction is writing this shard \(lock .*\.shard-0-of-1\.lock\)"
    with (
        FileLock(out / ".shard-0-of-1.lock"),
        pytest.raises(InputError, match=refused),
    ):  # what a running extraction holds
        extract_split(ds, backbone, out, view, seed=5, overwrite=True)
    assert _snapshot(out) == before
    extract_split(ds, backbone, out, view)  # once released, the same settings find the cache complete
    assert _snapshot(out) == before


def test_a_directory_that_is_not_a_cache_is_never_removed(tmp_path):
    ds, backbone, view = _tiny_split(tmp_path)
    shard = tmp_path / "train.zarr" / "shard-0-of-1"
    shard.mkdir(parents=True)
    (shard / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="exists and is not a feature cache; not removing it"):
        extract_split(ds, backbone, tmp_path / "train.zarr", view)
    assert (shard / "notes.txt").read_text() == "mine"


def test_corrupt_or_missing_chunks_are_detected_naming_cache_and_item(tmp_path):
    """Flipped bytes in a chunk would decode to other finite features and a deleted chunk reads
    back as zeros: the checksum of every chunk and a completeness check on opening catch both."""
    ds, backbone, view = _tiny_split(tmp_path)
    out = tmp_path / "train.zarr"
    extract_split(ds, backbone, out, view)
    chunk = next(p for p in (out / "shard-0-of-1" / "high" / "c" / "1").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    cache = FeatureCache(out)
    cache.read([0, 2])  # other items are fine
    with pytest.raises(InputError, match=r"train\.zarr: high of item\(s\) 1 fail their checksum"):
        cache.read([0, 1])
    chunk.unlink()
    with pytest.raises(InputError, match=r"shard-0-of-1/high: 1 of 3 items are missing \(deleted chunks\)"):
        FeatureCache(out)


def test_a_file_size_limit_during_extraction_is_named_with_the_cache(tmp_path, camvid_spec, lite0_spec):
    """A real limit (`ulimit -f`): the shard that cannot be written is named with the cause, in one
    line, and what was written is a resumable store, never a complete-looking cache."""
    import json
    import resource
    import subprocess
    import sys

    from pipeline.spec import ExtractSpec

    spec = ExtractSpec(
        source={**camvid_spec, "max_images": 2},
        backbone_spec=lite0_spec,
        split="val",
        view={"mode": "resize", "size": [180, 240]},
        views=1,
        scale=(0.5, 2.0),
        flip=False,
        seed=0,
        batch_size=2,
        device="cpu",
    )
    (tmp_path / "spec.json").write_text(spec.to_json())

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    cache = tmp_path / "val.zarr"
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "extract",
        "--spec",
        str(tmp_path / "spec.json"),
        "--cache",
        str(cache),
    ]
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=limited)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {cache / 'shard-0-of-1'}: file larger than the file-size limit (ulimit -f) (nes extract); "
        "free space or raise the limit, then rerun (complete work is kept)"
    ]
    assert not (cache / "shard-0-of-1" / "extracted.json").exists()
    assert json.loads((cache / "shard-0-of-1" / "zarr.json").read_text())["attributes"]["complete"] is False
