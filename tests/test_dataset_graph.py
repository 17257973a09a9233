"""Training on the dataset-wide graph: batch kernels are the global normalised graph restricted to
the batch, and neighbour-aware batches hold the pairs that random batches miss."""

import copy

import numpy as np
import pytest
import torch

from pipeline.graph.dataset import (
    DatasetGraph,
    build_dataset_graph,
    degree_normalise,
    feature_adjacency,
    neighbour_schedule,
)

HW = 16


def grouped_items(n_items=40, groups=10, d=24, seed=0):
    """Items whose tokens come from one of `groups` latent groups: neighbours sit in the same group."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, d)) * 3
    group_of = np.arange(n_items) % groups
    feats = centres[group_of].repeat(HW, 0) + rng.standard_normal((n_items * HW, d))
    return feats.astype(np.float32), group_of


@pytest.fixture
def graph(tmp_path):
    feats, group_of = grouped_items()
    build_dataset_graph(feats, tmp_path / "g.zarr", k=8)
    return DatasetGraph(tmp_path / "g.zarr", HW), feats, group_of


def test_batch_kernel_is_the_global_graph_restricted_to_the_batch(graph):
    g, _, _ = graph
    global_g = degree_normalise(feature_adjacency(g.similarities, g.indices)).toarray()
    items = np.array([7, 2, 30])
    tokens = (items[:, None] * HW + np.arange(HW)).ravel()
    torch.testing.assert_close(
        g.feature_kernel(items).to_dense(),
        torch.from_numpy(global_g[np.ix_(tokens, tokens)]).float(),
        atol=2e-3,
        rtol=2e-3,
    )  # similarities stored as float16


def test_missing_neighbours_of_an_approximate_search_carry_no_weight(graph):
    """An approximate index may return fewer than k neighbours (index -1): they must not wrap
    around to the last token or the last item."""
    g, _, _ = graph
    g = copy.copy(g)
    g.indices = g.indices.copy()
    g.indices[:, -3:] = -1
    g.similarities = np.where(g.indices < 0, 0, g.similarities)
    g.degrees = np.asarray(feature_adjacency(g.similarities, g.indices).sum(1)).ravel().astype(np.float32)
    last = g.n_items - 1
    items = np.array([last, 0, 5])
    tokens = (items[:, None] * HW + np.arange(HW)).ravel()
    global_g = degree_normalise(feature_adjacency(g.similarities, g.indices)).toarray()
    torch.testing.assert_close(
        g.feature_kernel(items).to_dense(),
        torch.from_numpy(global_g[np.ix_(tokens, tokens)]).float(),
        atol=2e-3,
        rtol=2e-3,
    )
    assert all((g.neighbour_items(i, 8) >= 0).all() for i in range(g.n_items))


def test_neighbour_batches_fill_the_kernel_random_batches_do_not(graph):
    """Every row of a neighbour-aware batch links to another image of the batch (stated: >= 90 %),
    against about a quarter for random batches of the same size."""
    g, _, group_of = graph
    batch = 4
    schedule = neighbour_schedule(g, batch, epochs=2, generator=torch.Generator().manual_seed(0))
    anchors = -(-batch // 2)
    assert len(schedule) == 2 * -(-40 // anchors) and all(len(set(items)) == batch for _, items in schedule)
    for epoch in (0, 1):  # every image is an anchor once per epoch
        firsts = [int(i) for e, items in schedule if e == epoch for i in items[:anchors]]
        assert sorted(firsts) == list(range(40))

    def filled(items):
        """Fraction of the batch kernel's rows with an entry linking to another image."""
        k = g.feature_kernel(items).to_dense()
        own = torch.block_diag(*[torch.ones(HW, HW)] * len(items)).bool()
        return float((k.masked_fill(own, 0) > 0).any(1).float().mean())

    rng = np.random.default_rng(0)
    neighbour = np.mean([filled(items) for _, items in schedule])
    random = np.mean([filled(rng.choice(40, batch, replace=False)) for _ in range(len(schedule))])
    assert neighbour >= 0.9 and random < 0.6, (neighbour, random)
    # the filling items are the anchors' group mates
    _, items = schedule[0]
    assert len(set(group_of[items])) <= 2


def test_training_on_the_dataset_graph(tmp_path):
    from fixtures import run_spec, tiny_vit_backbone, write_pascal
    from pipeline.cache import FeatureCache
    from pipeline.datasets import load_dataset
    from pipeline.features import extract_split
    from pipeline.train import train_psi
    from pipeline.views import View

    ds = load_dataset(
        {"name": "pascal", "adapter": "pascal", "data_root": str(write_pascal(tmp_path / "p", n_train=6))}, "train"
    )
    backbone = tiny_vit_backbone(tmp_path / "vit.pth")
    extract_split(ds, backbone, tmp_path / "train.zarr", View("resize", (64, 64)), views=2)
    cache = FeatureCache(tmp_path / "train.zarr")
    high = cache.read(np.arange(len(cache)), ("high",))["high"]
    build_dataset_graph(high.reshape(-1, high.shape[-1]), tmp_path / "graph.zarr", k=16)
    spec = run_spec(
        "nes",
        run="nes-graph",
        train={"batch_size": 4, "depth": 1, "graph": "dataset"},
        graph=str(tmp_path / "graph.json"),
    )
    model = train_psi(cache, spec, tmp_path / "run", torch.device("cpu"))
    log = np.genfromtxt(tmp_path / "run" / "train_log.csv", delimiter=",", names=True)
    assert len(log) == 2 * (12 // 2) and np.isfinite(log["loss"]).all() and (log["trace"] > 0).all()  # 2 anchors a step
    assert model.psi is not None
    # normalised_cut weights the rows by the dataset-wide degrees of each batch's tokens: same
    # batches and seed, another objective, other weights
    weighted = run_spec(
        "nes",
        run="nes-graph-ncut",
        train={"batch_size": 4, "depth": 1, "graph": "dataset", "normalised_cut": True},
        graph=str(tmp_path / "graph.json"),
    )
    other = train_psi(cache, weighted, tmp_path / "ncut", torch.device("cpu"))
    assert other.psi is not None
    ncut_log = np.genfromtxt(tmp_path / "ncut" / "train_log.csv", delimiter=",", names=True)
    assert np.isfinite(ncut_log["loss"]).all() and not np.allclose(ncut_log["trace"], log["trace"])
