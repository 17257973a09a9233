"""The training loop: seeded runs repeat exactly; schedules hit their end points."""

import dataclasses

import numpy as np
import pytest
import torch

from fixtures import run_spec
from pipeline.cache import FeatureCache
from pipeline.errors import InputError
from pipeline.features import extract_split
from pipeline.train import cosine, train_psi
from pipeline.views import View


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, camvid_val, lite0):
    path = tmp_path_factory.mktemp("cache") / "val.zarr"
    extract_split(camvid_val, lite0, path, View("resize", (180, 240)), batch_size=6)
    return FeatureCache(path)


def spec(seed, **train):
    return run_spec("nes", run=f"nes-test-s{seed}", seed=seed, train=train)


def test_same_seed_same_model_other_seed_other_model(tiny_cache, tmp_path):
    runs = [train_psi(tiny_cache, spec(s), tmp_path / f"r{i}", torch.device("cpu")) for i, s in enumerate([0, 0, 1])]
    a, b, c = (r.psi.state_dict() for r in runs)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    log = np.genfromtxt(tmp_path / "r0" / "train_log.csv", delimiter=",", names=True)
    assert len(log) == 4 and log["epoch"].tolist() == [0, 0, 1, 1]
    # diagnostics: the share of feature-graph weight inside images, the clusters in use (1 to K = 6)
    assert np.all((log["same_image"] > 0) & (log["same_image"] <= 1)) and np.all(
        (log["usage"] >= 1) & (log["usage"] <= 6)
    )


def test_cosine_schedule_end_points():
    assert cosine(0, 100, 1.0, 0.3) == pytest.approx(1.0)
    assert cosine(50, 100, 1.0, 0.3) == pytest.approx(0.65)
    assert cosine(100, 100, 1.0, 0.3) == pytest.approx(0.3)


def test_an_epoch_visits_every_image_once_in_one_of_its_views():
    from pipeline.train import epoch_schedule

    image_index = np.repeat(np.arange(10), 3)  # 10 images x 3 cached views, items 3i..3i+2
    schedule = epoch_schedule(image_index, batch=4, epochs=5, generator=torch.Generator().manual_seed(0))
    assert len(schedule) == 5 * 2 and [e for e, _ in schedule[:3]] == [0, 0, 1]
    views_seen = set()
    for epoch in range(5):
        items = np.concatenate([b for e, b in schedule if e == epoch])
        assert len(np.unique(image_index[items])) == len(items) == 8  # no image twice in an epoch
        views_seen |= set(items % 3)
    assert views_seen == {0, 1, 2}
    one_view = epoch_schedule(np.arange(7), batch=3, epochs=1, generator=torch.Generator().manual_seed(0))
    items = np.concatenate([b for _, b in one_view])
    assert len(one_view) == 2 and len(set(items)) == 6 and set(items) <= set(range(7))


def test_capture_monitor_logs_psi_against_spectral_clustering(tiny_cache, tmp_path):
    """With `monitor`, training writes capture_log.csv and capture.png: psi's capture of the batch
    and of a held-out kernel next to exact spectral clustering's, each in (0, 1], and the monitor
    does not change what is trained (same weights as without it)."""
    import csv

    cfg = dataclasses.replace(spec(0, monitor=2), heldout=str(tiny_cache.path.with_suffix(".json")))
    monitored = train_psi(tiny_cache, cfg, tmp_path / "m", torch.device("cpu"))
    rows = list(csv.DictReader((tmp_path / "m" / "capture_log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [0, 3] and (tmp_path / "m" / "capture.png").stat().st_size > 5000
    for row in rows:
        for key in ("batch_psi", "batch_spectral", "heldout_psi", "heldout_spectral"):
            assert 0 < float(row[key]) <= 1 + 1e-9, (key, row)
        # spectral clustering is what the relaxation optimises: an early psi captures less
        assert float(row["heldout_spectral"]) > float(rows[0]["heldout_psi"])
    plain = train_psi(tiny_cache, spec(0), tmp_path / "p", torch.device("cpu"))
    for key, value in plain.psi.state_dict().items():
        torch.testing.assert_close(monitored.psi.state_dict()[key], value, rtol=0, atol=0)


def test_interrupted_training_resumes_to_the_uninterrupted_weights(tiny_cache, tmp_path, monkeypatch):
    """A training killed after its first epoch (here: an exception in step 3 of 4) restarts from
    the checkpoint of that epoch and ends with exactly the weights and log of an uninterrupted run;
    a checkpoint of other settings is ignored."""
    import pipeline.train as train

    reference = train_psi(tiny_cache, spec(0), tmp_path / "ref", torch.device("cpu"))
    real, calls = train.neuralef_objective, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "neuralef_objective", dying)
    with pytest.raises(KeyboardInterrupt):
        train_psi(tiny_cache, spec(0), tmp_path / "run", torch.device("cpu"))
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    partial = np.genfromtxt(tmp_path / "run" / "train_log.csv", delimiter=",", names=True)
    assert partial["step"].tolist() == [0, 1]  # the log is written as training goes
    monkeypatch.setattr(train, "neuralef_objective", real)
    calls["n"] = 0
    counted = []
    monkeypatch.setattr(train, "neuralef_objective", lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed = train_psi(tiny_cache, spec(0), tmp_path / "run", torch.device("cpu"))
    assert len(counted) == 2  # only the second epoch was trained again
    for key, value in reference.psi.state_dict().items():
        torch.testing.assert_close(resumed.psi.state_dict()[key], value, rtol=0, atol=0)
    ref_log = np.genfromtxt(tmp_path / "ref" / "train_log.csv", delimiter=",", names=True)
    log = np.genfromtxt(tmp_path / "run" / "train_log.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(log["loss"], ref_log["loss"])
    # other settings: the checkpoint is not used
    other = spec(0, lr=2e-3)
    counted.clear()
    train_psi(tiny_cache, other, tmp_path / "run", torch.device("cpu"))
    assert len(counted) == 4


def test_bfloat16_training_runs_psi_under_autocast_and_stays_close(tiny_cache, tmp_path):
    """`train.precision: bfloat16`: the same batches and Gumbel draws, psi's forward under
    autocast; the loss curve stays close to float32's and the weights stay float32."""
    import numpy as np

    fp32 = train_psi(tiny_cache, spec(0), tmp_path / "fp32", torch.device("cpu"))
    bf16 = train_psi(tiny_cache, spec(0, precision="bfloat16"), tmp_path / "bf16", torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in bf16.psi.parameters())
    a = np.genfromtxt(tmp_path / "fp32" / "train_log.csv", delimiter=",", names=True)
    b = np.genfromtxt(tmp_path / "bf16" / "train_log.csv", delimiter=",", names=True)
    assert np.isfinite(b["loss"]).all() and np.abs(a["loss"] - b["loss"]).max() < 0.1 * np.abs(a["loss"]).max()
    assert not all(torch.equal(p, q) for p, q in zip(fp32.psi.parameters(), bf16.psi.parameters()))


def test_auto_precision_is_bfloat16_exactly_where_the_device_has_it(tiny_cache, tmp_path, monkeypatch):
    """`train.precision: auto` trains psi as `bfloat16` does where the device multiplies bf16 in
    hardware and as `float32` does elsewhere: the same weights, bit for bit."""
    import pipeline.models as models

    runs = {
        name: train_psi(tiny_cache, spec(0, precision=name), tmp_path / name, torch.device("cpu"))
        for name in ("float32", "bfloat16")
    }
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(models, "native_bfloat16", lambda device, native=native: native)
        auto = train_psi(tiny_cache, spec(0, precision="auto"), tmp_path / f"auto{native}", torch.device("cpu"))
        for p, q in zip(auto.psi.parameters(), runs[expected].psi.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_native_bfloat16_reads_the_cpu_flags():
    from pipeline.runtime import native_bfloat16

    cpu = torch.device("cpu")
    assert native_bfloat16(cpu, "flags\t\t: fpu avx512f avx512_bf16 avx512_vnni")
    assert native_bfloat16(cpu, "flags\t\t: fpu amx_bf16 amx_tile")
    assert not native_bfloat16(cpu, "flags\t\t: fpu avx512f avx512bw avx512_vnni")
    assert not native_bfloat16(torch.device("meta"))


def test_resident_and_streamed_batches_train_the_same_weights(tiny_cache, tmp_path):
    """Holding the cache in memory changes where batches come from, never a result: the same
    weights and log, bit for bit, as streaming it from Zarr one batch ahead."""
    import numpy as np

    from pipeline.batches import cache_bytes, keep_resident

    streamed = train_psi(tiny_cache, spec(0), tmp_path / "s", torch.device("cpu"), resident="off")
    resident = train_psi(tiny_cache, spec(0), tmp_path / "r", torch.device("cpu"), resident="on")
    for p, q in zip(streamed.psi.parameters(), resident.psi.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a = np.genfromtxt(tmp_path / "s" / "train_log.csv", delimiter=",", names=True)
    b = np.genfromtxt(tmp_path / "r" / "train_log.csv", delimiter=",", names=True)
    np.testing.assert_array_equal(a["loss"], b["loss"])
    assert cache_bytes(tiny_cache) > 0 and keep_resident(tiny_cache, torch.device("cpu"), "auto")  # a tiny cache fits


def test_plain_eigenfunctions_are_read_out_by_kmeans_and_survive_a_reload(tiny_cache, tmp_path):
    """`train.output: eigenfunctions`: psi trains without the Gumbel-softmax (no clusters to count
    in the log), and its clusters are K-means centres on its row-normalised outputs, fitted on the
    training tokens: a token's cluster is the nearest centre, not its argmax; model.pt keeps them."""
    import csv

    import torch.nn.functional as F

    from pipeline.fit import fitted_centres
    from pipeline.formats import save_torch
    from pipeline.models import RunModel
    from pipeline.spec import KMeansSettings

    eigen = dataclasses.replace(
        spec(0, output="eigenfunctions", monitor=2),
        kmeans=KMeansSettings(niter=10, max_points=2000),
        heldout=str(tiny_cache.path.with_suffix(".json")),
    )
    assert eigen.psi.beta == 1.0  # NeuralEF's deflation weight unless beta is given
    trained = train_psi(tiny_cache, eigen, tmp_path / "e", torch.device("cpu"))
    log = np.genfromtxt(tmp_path / "e" / "train_log.csv", delimiter=",", names=True)
    assert np.isfinite(log["loss"]).all() and np.isnan(log["usage"]).all()
    # the monitor reads psi's eigenfunctions out as spectral clustering reads G's exact ones
    for row in csv.DictReader((tmp_path / "e" / "capture_log.csv").read_text().splitlines()):
        assert all(0 < float(row[key]) <= 1 + 1e-9 for key in ("batch_psi", "heldout_psi")), row
    centres = fitted_centres(tiny_cache, trained).centres
    assert centres.shape == (eigen.K, eigen.K)
    model = RunModel(eigen, trained.psi, centres, input_dim=trained.input_dim)
    save_torch(model.checkpoint(), tmp_path / "e" / "model.pt")
    loaded = RunModel.load(tmp_path / "e")
    assert loaded.spec.read_out == "centres" and loaded.num_clusters == eigen.K
    data = tiny_cache.read(np.arange(2), ("high", "input"))
    high, inp = torch.from_numpy(data["high"]), torch.from_numpy(data["input"])
    clusters = loaded.token_logits(high, inp).argmax(1).reshape(-1)
    outputs = F.normalize(loaded.psi(inp.flatten(1, 2)).reshape(-1, eigen.K), dim=1)
    nearest = torch.cdist(outputs, centres).argmin(1)
    assert torch.equal(clusters, nearest) and not torch.equal(clusters, outputs.argmax(1))
    # a model.pt of such a run without its centres is refused
    broken = model.checkpoint()
    del broken["centres"]
    save_torch(broken, tmp_path / "b" / "model.pt")
    with pytest.raises(Exception, match="centres"):
        RunModel.load(tmp_path / "b")


def test_training_stops_at_the_first_non_finite_loss_and_keeps_no_checkpoint(tiny_cache, tmp_path, monkeypatch):
    """A loss that turns NaN in the second epoch stops training at that step, naming the step and
    the settings that can cause it; the first epoch's checkpoint, which a rerun would resume from
    straight back into the divergence, is removed."""
    import pipeline.train as train

    real, calls = train.neuralef_objective, {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out._replace(loss=out.loss * float("nan")) if calls["n"] == 3 else out

    monkeypatch.setattr(train, "neuralef_objective", diverging)
    with pytest.raises(InputError, match=r"nes-test-s0: training diverged at step 2 \(loss nan\).*train.lr"):
        train_psi(tiny_cache, spec(0), tmp_path / "run", torch.device("cpu"))
    assert calls["n"] == 3 and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_file_size_limit_during_training_is_named_with_the_path(tiny_cache, tmp_path):
    """A real limit (`ulimit -f`, which a full disk behaves like): the checkpoint that does not
    fit is named with its path and the cause, in one line, instead of torch's "unexpected pos"."""
    import dataclasses
    import resource
    import subprocess
    import sys

    run = dataclasses.replace(spec(0), features=str(tiny_cache.path.with_suffix(".json")))
    (tmp_path / "spec.json").write_text(run.to_json())
    limit = 16 * 1024  # the run's config.yaml and log fit, psi's checkpoint does not

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = ["fit", "--spec", str(tmp_path / "spec.json"), "--run", str(tmp_path / "run")]
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", *command], capture_output=True, text=True, preexec_fn=limited
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {tmp_path / 'run' / 'checkpoint.pt'}: file larger than the file-size limit (ulimit -f) (nes fit); "
        "free space or raise the limit, then rerun (complete work is kept)"
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "model.pt").exists()


def test_kmeans_baselines_cluster_the_features_they_are_named_by(tiny_cache, tmp_path):
    """The baseline rows of the verdict: K-means on the kernel's features (`high`), on the last
    layer of psi's input (a CNN's deepest input stage here, a ViT's final-block tokens) and on
    psi's whole input; each model keeps what it needs and labels tokens by its nearest centre."""
    import dataclasses

    from pipeline.evaluate import check_cache_for_run
    from pipeline.fit import fit_run
    from pipeline.models import RunModel
    from pipeline.spec import KMeansSettings

    data = tiny_cache.read(np.arange(2), ("high", "input"))
    high, inp = torch.from_numpy(data["high"]), torch.from_numpy(data["input"])
    widths = {}
    for method in ("kmeans", "kmeans_tokens", "kmeans_input"):
        spec = dataclasses.replace(
            run_spec(method, run=f"{method}-test-s0", K=6),
            features=str(tiny_cache.path.with_suffix(".json")),
            backbone_spec={
                "model": "tf_efficientnet_lite0",
                "kind": "cnn",
                "stride": 16,
                "weights": "random",
                "kernel_stages": [3, 4],
                "input_stages": [2, 3, 4],
            },
            kmeans=KMeansSettings(niter=5, max_points=2000),
        )
        fit_run(spec, tmp_path / method)
        model = RunModel.load(tmp_path / method)
        widths[method] = model.centres.shape[1]
        vectors = model.embed(high, inp).flatten(0, 1)
        nearest = torch.cdist(torch.nn.functional.normalize(vectors, dim=-1), model.centres).argmin(1)
        assert torch.equal(model.token_logits(high, inp).argmax(1).reshape(-1), nearest)
        check_cache_for_run(model, tiny_cache)  # evaluation from the cache accepts each of them
    assert widths == {"kmeans": tiny_cache.dim("high"), "kmeans_tokens": 320, "kmeans_input": tiny_cache.dim("input")}
