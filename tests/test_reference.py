"""The exact spectral reference as stages: a cached split with planted segments -> dataset graph ->
eigenvectors -> spectral run (K-means on the embedding) -> per-item logits that recover the
segments; the transductive run refuses new features; psi's alignment is measured on the same tokens."""

import dataclasses

import numpy as np
import pytest
import torch

from fixtures import run_spec, train_settings
from pipeline import metrics as M
from pipeline.cache import CacheLayout, CacheWriter, FeatureCache, shard_path
from pipeline.errors import InputError
from pipeline.formats import read_eigen_reference, write_eigen_reference, write_nystrom
from pipeline.graph.dataset import build_dataset_graph
from pipeline.models import RunModel, build_psi
from pipeline.reference import eigen_reference, fit_spectral, nystrom_reference, run_alignment
from pipeline.spec import EigenRef, KMeansSettings, Method, NystromRef

H = W = 8
PIXEL_KNN = ((10, 2.0), (5, 0.1))


def planted_split(path, centres, rng, n=6):
    """n images of three planted regions (class features far apart, colours per class) in a cache."""
    truth = np.zeros((n, H, W), np.int64)
    truth[:, :, 3:6] = 1
    truth[:, 5:, :] = 2
    truth[1::2] = (truth[1::2] + 1) % 3  # the classes sit in other places in every other image
    high = centres[truth] + rng.standard_normal((n, H, W, 24))
    ys, xs = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    colours = np.eye(3)[truth]
    pixels = np.concatenate(
        [colours, np.broadcast_to(xs[..., None], (n, H, W, 1)), np.broadcast_to(ys[..., None], (n, H, W, 1))], -1
    )
    inputs = np.concatenate([high, rng.standard_normal((n, H, W, 8))], -1)
    writer = CacheWriter(
        shard_path(path, 0, 1),
        CacheLayout(n, (H, W), 24, 32),
        {"grid": [H, W], "ids": [f"im{i}" for i in range(n)], "input_size": [H * 16, W * 16]},
    )
    writer.write(0, {"high": high, "input": inputs, "pixels": pixels}, np.full((n, 2), H * 16))
    writer.finish(np.arange(n), np.zeros(n))
    return FeatureCache(path), truth, high


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A val split and a train split (other noise) of the same three planted classes, each with
    its dataset graph and exact top-3 eigenpairs."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((3, 24)) * 3
    out = {"root": root}
    for split in ("val", "train"):
        cache, truth, high = planted_split(root / f"{split}.zarr", centres, rng)
        build_dataset_graph(high.reshape(-1, 24), root / f"{split}-graph.zarr", k=20)
        values, vectors, attrs = eigen_reference(cache, root / f"{split}-graph.zarr", 3, 0.3, PIXEL_KNN)
        write_eigen_reference(root / f"{split}-eigen.npz", values, vectors, attrs)
        out[split] = {
            "cache": cache,
            "truth": truth,
            "manifest": str(root / f"{split}.json"),
            "graph": root / f"{split}-graph.zarr",
            "eigen": root / f"{split}-eigen.npz",
        }
    return {**out, **out["val"]}


def eigen_ref(split):
    return EigenRef(
        path=str(split["eigen"]),
        graph=str(split["graph"].with_suffix(".json")),
        features=split["manifest"],
        K=3,
        alpha=0.3,
        pixel_knn=PIXEL_KNN,
    )


def spectral_spec(planted, seed=0):
    return run_spec(
        "spectral",
        run=f"spectral-test-K3-s{seed}",
        seed=seed,
        features=planted["manifest"],
        K=3,
        alpha=0.3,
        eigen=eigen_ref(planted),
        kmeans=KMeansSettings(niter=30, max_points=100000),
    )


def test_eigen_reference_is_written_and_read_back(planted):
    values, vectors, attrs = read_eigen_reference(planted["eigen"])
    assert vectors.shape == (6 * H * W, 3) and values.shape == (3,) and (np.diff(values) <= 1e-9).all()
    assert attrs["tokens"] == 6 * H * W and attrs["pixel_knn"] == [[10, 2.0], [5, 0.1]]
    assert attrs["eigsh"]["wall_s"] >= 0 and attrs["eigsh"]["peak_rss_mb"] > 0
    with pytest.raises(InputError, match="eigenvectors rule"):
        read_eigen_reference(planted["root"] / "missing.npz")


def test_spectral_run_recovers_planted_segments_by_item(planted, tmp_path):
    model = fit_spectral(spectral_spec(planted))
    torch.save(model.checkpoint(), tmp_path / "model.pt")
    model = RunModel.load(tmp_path / "model.pt")  # what evaluation reads
    assert model.transductive and model.num_clusters == 3
    clusters = model.item_logits(torch.arange(6), (H, W)).argmax(1).numpy()
    conf = M.confusion_matrix(clusters.ravel(), planted["truth"].ravel(), 3, 3, 255)
    assert M.scores(conf, M.hungarian(conf))["miou"] > 0.98
    # items come back in the order asked for
    np.testing.assert_array_equal(model.item_logits(torch.tensor([4, 1]), (H, W)).argmax(1).numpy(), clusters[[4, 1]])
    with pytest.raises(InputError, match="transductive"):
        model.token_logits(torch.zeros(1, H, W, 24), torch.zeros(1, H, W, 32))


def test_alignment_of_any_run_measures_its_partition_on_the_split(planted):
    """Every run gets capture / one-hot alignment / perplexity of its clusters on the split's G;
    psi also gets its logit diagnostics. Spectral clustering of planted segments captures nearly
    all of the top-3 spectrum, an untrained psi much less."""
    spectral = fit_spectral(spectral_spec(planted))
    exact = run_alignment(spectral, planted["cache"], planted["graph"], planted["eigen"])
    assert exact["tokens"] == 6 * H * W and exact["K"] == 3 and "logits" not in exact
    assert exact["partition"]["capture"] > 0.95 and exact["partition"]["onehot_cos"] > 0.95
    assert exact["partition"]["clusters"] == 3 and 2.5 < exact["partition"]["perplexity"] <= 3
    torch.manual_seed(0)
    train = train_settings(K=3, depth=1)
    model = RunModel(run_spec("nes", train=train), build_psi(32, train).eval(), input_dim=32)
    result = run_alignment(model, planted["cache"], planted["graph"], planted["eigen"])
    assert 0 < result["partition"]["capture"] < exact["partition"]["capture"]
    for kind in ("logits", "softmax", "random_input"):
        scores = result[kind]
        assert 0 <= scores["matched_abs_cos"] <= 1 and 0 <= scores["principal_cos"] <= 1
        assert 0 < scores["eigenvalue_capture"] <= 1 + 1e-9


def test_spectral_inductive_labels_a_new_split_through_the_nystrom_extension(planted, tmp_path):
    """Eigenvectors of the train split's graph, extended to val tokens over their nearest train
    tokens (and val's own pixel graph), clustered by centres fitted on train: the planted
    segments of val come back although no val token was in the eigenproblem."""
    train = planted["train"]
    spec = NystromRef(
        path=str(tmp_path / "nystrom.npz"), eigen=eigen_ref(train), features=planted["manifest"], k=20, graph={}
    )
    extension, attrs = nystrom_reference(spec)
    assert extension.shape == (6 * H * W, 3) and attrs["train_tokens"] == 6 * H * W and attrs["cost"]["wall_s"] >= 0
    write_nystrom(spec.path, extension, attrs)
    run = dataclasses.replace(
        spectral_spec(planted),
        run="spectral_inductive-test",
        method=Method.SPECTRAL_INDUCTIVE,
        eigen=spec.eigen,
        nystrom=spec,
    )
    model = fit_spectral(run)
    assert model.item_lookup and not model.transductive
    clusters = model.item_logits(torch.arange(6), (H, W)).argmax(1).numpy()
    conf = M.confusion_matrix(clusters.ravel(), planted["truth"].ravel(), 3, 3, 255)
    assert M.scores(conf, M.hungarian(conf))["miou"] > 0.95
    with pytest.raises(InputError, match="cannot segment other images"):
        model.token_logits(torch.zeros(1, H, W, 24), torch.zeros(1, H, W, 32))
