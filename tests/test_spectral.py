"""The exact spectral reference: dataset-wide k-NN (exact and approximate) against brute force,
the graph by hand, eigenvectors against a dense eigensolver, planted clusters recovered."""

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline import metrics as M
from pipeline.clustering import fit_kmeans
from pipeline.graph.dataset import (
    dataset_knn,
    degree_normalise,
    feature_adjacency,
    normalised_graph,
    recall_at_k,
    symmetric_degrees,
)
from pipeline.graph.spectral import eigen_alignment, eigenvalue_capture, spectral_embedding, top_eigenvectors


def clustered(n=4000, d=32, centres=20, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    labels = rng.integers(0, centres, n)
    return (c[labels] + spread * rng.standard_normal((n, d))).astype(np.float32), labels


def test_exact_search_equals_brute_force():
    x, _ = clustered(n=700, d=16)
    sims, idx = dataset_knn(x, k=9, block=256)  # several query blocks
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = xn @ xn.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :9]
    np.testing.assert_allclose(sims, np.take_along_axis(full, expected, 1), atol=1e-5)
    assert (idx != np.arange(700)[:, None]).all()
    assert (np.sort(idx, 1) == np.sort(expected, 1)).mean() > 0.999  # ties may swap order


def test_symmetrised_graph_and_degrees_by_hand():
    # 3 tokens, k = 1: 0 -> 1 (0.8), 1 -> 0 (0.8), 2 -> 1 (0.5); a negative cosine is clamped
    sims = np.array([[0.8], [0.8], [0.5]], np.float32)
    idx = np.array([[1], [0], [1]])
    a = feature_adjacency(sims, idx).toarray()
    np.testing.assert_allclose(a, [[0, 0.8, 0], [0.8, 0, 0.25], [0, 0.25, 0]])
    g = degree_normalise(sp.csr_matrix(a)).toarray()
    deg = np.array([0.8, 1.05, 0.25])
    np.testing.assert_allclose(g, a / np.sqrt(np.outer(deg, deg)), rtol=1e-6)
    assert feature_adjacency(np.array([[-0.3], [0.2]], np.float32), np.array([[1], [0]])).toarray()[
        0, 1
    ] == pytest.approx(0.1)
    np.testing.assert_allclose(symmetric_degrees(sims, idx), deg, rtol=1e-6)
    padded = np.array([[1, -1], [0, 2], [1, -1]])  # -1: fewer than k found
    np.testing.assert_allclose(
        symmetric_degrees(np.array([[0.8, 9], [0.8, 0.1], [0.5, 9]], np.float32), padded),
        np.asarray(feature_adjacency(np.array([[0.8, 9], [0.8, 0.1], [0.5, 9]], np.float32), padded).sum(1)).ravel(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_index_recall_on_clustered_data(index):
    x, _ = clustered(n=20000, d=64, centres=50)
    _, exact = dataset_knn(x, k=16)
    _, approx = dataset_knn(x, k=16, index=index)
    assert recall_at_k(approx, exact) >= 0.9


def test_top_eigenvectors_match_a_dense_solver():
    x, _ = clustered(n=600, d=8, centres=5, spread=0.6)
    sims, idx = dataset_knn(x, k=10)
    g = degree_normalise(feature_adjacency(sims, idx))
    values, vectors = top_eigenvectors(g, 6)
    dense_values, dense_vectors = np.linalg.eigh(g.toarray())
    np.testing.assert_allclose(values, dense_values[::-1][:6], atol=1e-8)
    assert values[0] == pytest.approx(1.0)  # the normalised graph's top eigenvalue
    cos = np.abs(np.sum(vectors * dense_vectors[:, ::-1][:, :6], axis=0))
    assert (cos > 1 - 1e-6).all()


def test_spectral_clustering_recovers_planted_segments():
    """Four images whose tokens come from three planted classes with distinct features: the exact
    spectral embedding + K-means recovers them (mIoU near 1)."""
    rng = np.random.default_rng(1)
    h = w = 8
    centres = rng.standard_normal((3, 24)) * 3
    truth = np.zeros((4, h, w), np.int64)
    truth[:, :, 3:6] = 1
    truth[:, 5:, :] = 2
    high = centres[truth] + rng.standard_normal((4, h, w, 24))
    ys, xs = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    colours = np.stack([truth == 0, truth == 1, truth == 2], -1).astype(np.float32)
    pixels = np.concatenate(
        [colours, np.broadcast_to(xs[..., None], (4, h, w, 1)), np.broadcast_to(ys[..., None], (4, h, w, 1))], -1
    )
    g = normalised_graph(high.reshape(4, h * w, 24), pixels.reshape(4, h * w, 5).astype(np.float32), k=20, alpha=0.3)
    _, vectors = top_eigenvectors(g, 3)
    emb = spectral_embedding(vectors)
    centres_k = fit_kmeans(emb, 3, seed=0, niter=50)
    clusters = ((emb[:, None, :] - centres_k[None]) ** 2).sum(-1).argmin(1)
    conf = M.confusion_matrix(clusters, truth.ravel(), 3, 3, 255)
    assert M.scores(conf, M.hungarian(conf))["miou"] > 0.98


def test_alignment_is_one_for_the_eigenvectors_and_low_for_noise():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((500, 6)))
    same = eigen_alignment(q * rng.uniform(0.5, 2, 6), q)  # scaled columns: still the same functions
    assert same["matched_abs_cos"] == pytest.approx(1) and same["principal_cos"] == pytest.approx(1)
    mixed = eigen_alignment(q @ np.linalg.qr(rng.standard_normal((6, 6)))[0], q)  # same subspace, other basis
    assert mixed["principal_cos"] == pytest.approx(1) and mixed["matched_abs_cos"] < 0.9
    noise = eigen_alignment(rng.standard_normal((500, 6)), q)
    assert noise["principal_cos"] < 0.3


def test_dataset_graph_in_zarr_resumes_and_reports_recall(tmp_path, monkeypatch):
    import zarr

    import pipeline.graph.dataset as spectral

    x, _ = clustered(n=1500, d=16)
    attrs = spectral.build_dataset_graph(x, tmp_path / "exact.zarr", k=8, block=400)
    g = zarr.open_group(str(tmp_path / "exact.zarr"), mode="r")
    sims, idx = dataset_knn(x, k=8)
    assert attrs["index"] == "exact" and attrs["complete"] and "recall_at_k" not in attrs
    assert (np.sort(g["indices"][:], 1) == np.sort(idx, 1)).mean() > 0.999
    np.testing.assert_allclose(g["similarities"][:].astype(np.float32), sims, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(g["degrees"][:], np.asarray(feature_adjacency(sims, idx).sum(1)).ravel(), rtol=2e-3)

    # interrupted after two blocks: a rerun continues from there and ends with the same graph
    real, calls = spectral.search_block, {"n": 0}

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(spectral, "search_block", dying)
    with pytest.raises(KeyboardInterrupt):
        spectral.build_dataset_graph(x, tmp_path / "resumed.zarr", k=8, block=400)
    assert zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r").attrs["n_done"] == 800
    searched = []
    monkeypatch.setattr(spectral, "search_block", lambda *a: searched.append(a[2]) or real(*a))
    spectral.build_dataset_graph(x, tmp_path / "resumed.zarr", k=8, block=400)
    assert searched == [800, 1200]
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "resumed.zarr"), mode="r")["indices"][:], g["indices"][:]
    )

    # above the exact limit the approximate index is used and its recall is recorded
    monkeypatch.setattr(spectral, "search_block", real)
    approx = spectral.build_dataset_graph(x, tmp_path / "ivf.zarr", k=8, exact_max_tokens=1000, recall_sample=200)
    assert approx["index"] == "ivf" and 0.9 <= approx["recall_at_k"] <= 1.0

    # one probed list of many misses neighbours; the target recall widens the search until it is met
    narrow = spectral.build_dataset_graph(
        x,
        tmp_path / "narrow.zarr",
        k=8,
        exact_max_tokens=1000,
        recall_sample=200,
        target_recall=None,
        nlist=64,
        nprobe=1,
    )
    tuned = spectral.build_dataset_graph(
        x,
        tmp_path / "tuned.zarr",
        k=8,
        exact_max_tokens=1000,
        recall_sample=200,
        target_recall=0.99,
        nlist=64,
        nprobe=1,
    )
    assert narrow["recall_at_k"] < 0.9 and "search_breadth" not in narrow
    assert tuned["search_breadth"]["nprobe"] > 1 and tuned["search_breadth"]["tuning_recall"] >= 0.99
    assert tuned["recall_at_k"] >= 0.97  # measured on other tokens than the ones it was tuned on


def test_graph_command_on_a_cached_split(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    import zarr

    from fixtures import tiny_vit_backbone, write_pascal
    from pipeline.datasets import load_dataset
    from pipeline.features import extract_split
    from pipeline.views import View

    ds = load_dataset(
        {"name": "pascal", "adapter": "pascal", "data_root": str(write_pascal(tmp_path / "pascal"))}, "val"
    )
    backbone = tiny_vit_backbone(tmp_path / "vit.pth")
    extract_split(ds, backbone, tmp_path / "features" / "val.zarr", View("resize", (48, 64)))
    (tmp_path / "features" / "val.json").write_text("{}")
    out = tmp_path / "graphs" / "val.json"

    def graph(out):
        features, spec = str(tmp_path / "features" / "val.json"), json.dumps({"k": 8, "block": 10})
        command = [sys.executable, "-m", "pipeline", "graph", "--features", features, "--spec", spec, "--out", str(out)]
        return subprocess.run(command, capture_output=True, text=True)

    result = graph(out)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads(out.read_text())
    assert (
        manifest["tokens"] == 3 * 3 * 4 and manifest["k"] == 8 and manifest["complete"] and manifest["index"] == "exact"
    )
    group = zarr.open_group(str(out.with_suffix(".zarr")), mode="r")
    assert group["indices"].shape == (36, 8) and (group["degrees"][:] > 0).all()
    # an output that is the command's input, or a store it did not make (here: a copy of the
    # feature cache), is never replaced
    shutil.copytree(tmp_path / "features" / "val.zarr", tmp_path / "features" / "copy.zarr")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "features").rglob("*"))
    for name, refusal in (("val.json", "is also --features"), ("copy.json", "is not a dataset graph")):
        result = graph(tmp_path / "features" / name)
        assert result.returncode == 2 and refusal in result.stderr and result.stderr.count("\n") <= 2, result.stderr
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "features").rglob("*")) == before


def test_eigenvalue_capture_is_one_for_the_top_eigenspace_only():
    x, _ = clustered(n=600, d=8, centres=5, spread=0.6)
    sims, idx = dataset_knn(x, k=10)
    g = degree_normalise(feature_adjacency(sims, idx))
    values, vectors = top_eigenvectors(g, 6)
    rng = np.random.default_rng(0)
    assert eigenvalue_capture(vectors @ rng.standard_normal((6, 6)), g, values) == pytest.approx(
        1, abs=1e-8
    )  # any basis
    dense_values, dense_vectors = np.linalg.eigh(g.toarray())
    lower = dense_vectors[:, -12:-6]  # the next six eigenvectors: exactly their eigenvalues' share
    assert eigenvalue_capture(lower, g, values) == pytest.approx(dense_values[-12:-6].sum() / values.sum(), rel=1e-6)
    assert eigenvalue_capture(rng.standard_normal((600, 6)), g, values) < 0.5


def test_nystrom_extension_of_the_graphs_own_tokens_is_exact():
    """For the graph's own tokens, with their own rows of the normalised feature graph and their
    own pixel graph, f = (1/lambda)(G_feat u + alpha G_pix f) is solved by u itself."""
    import torch

    from pipeline.graph.batch import pixel_graph
    from pipeline.graph.spectral import nystrom_extension

    rng = np.random.default_rng(0)
    b, hw = 3, 25
    feats = rng.standard_normal((b * hw, 16)) + np.repeat(rng.standard_normal((5, 16)) * 2, b * hw // 5, axis=0)
    sims, idx = dataset_knn(feats, 12)
    g_feat = degree_normalise(feature_adjacency(sims, idx))
    pixels = torch.from_numpy(rng.random((b, hw, 5))).float()
    blocks = pixel_graph(pixels).numpy().astype(np.float64)
    g = (g_feat + 0.3 * sp.block_diag(list(blocks))).tocsr()
    values, vectors = top_eigenvectors(g, 6)
    np.testing.assert_allclose(nystrom_extension(g_feat, vectors, values, blocks, 0.3), vectors, atol=1e-4)
    # without the pixel part in G the feature rows alone reproduce the eigenvectors
    values, vectors = top_eigenvectors(g_feat, 6)
    np.testing.assert_allclose(nystrom_extension(g_feat, vectors, values), vectors, atol=1e-5)


def test_partition_capture_by_hand():
    """Two clusters {0, 1} and {2}: association = (G00 + G11 + 2 G01) / 2 + G22, over the top-2
    eigenvalue sum; never above 1 (Ky Fan)."""
    from pipeline.graph.spectral import partition_measures

    g = np.array([[0.0, 0.5, 0.1], [0.5, 0.0, 0.2], [0.1, 0.2, 0.0]])
    values = np.sort(np.linalg.eigvalsh(g))[::-1][:2]
    out = partition_measures(np.array([0, 0, 1]), sp.csr_matrix(g), values)
    assert out["capture"] == pytest.approx((0 + 0 + 2 * 0.5) / 2 / values.sum())
    assert out["clusters"] == 2 and out["perplexity"] == pytest.approx(
        np.exp(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))
    )
    rng = np.random.default_rng(1)
    a = rng.random((30, 30))
    a = sp.csr_matrix(np.triu(a, 1) + np.triu(a, 1).T)
    top = np.sort(np.linalg.eigvalsh(a.toarray()))[::-1][:4]
    for _ in range(5):
        assert partition_measures(rng.integers(0, 4, 30), a, top)["capture"] <= 1 + 1e-9
