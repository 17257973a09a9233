"""The factored batch kernel equals the kernel built the straightforward dense way."""

import numpy as np
import pytest
import scipy.linalg
import torch

from pipeline.graph.batch import BatchKernel, build_kernel, feature_graph, knn_cosine, pixel_graph


def dense_reference(high, pixels, k, alpha, pixel_knn):
    """method.md section 2 written plainly with dense N x N matrices and Python loops."""
    b, hw, c = high.shape
    n = b * hw
    f = torch.nn.functional.normalize(high.reshape(n, c).double(), dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-np.inf)
    a = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        top = sim[i].topk(k).indices
        a[i, top] = sim[i, top].clamp_min(0)
    a = (a + a.T) / 2
    d = a.sum(1)
    g_feat = a / torch.sqrt(d[:, None] * d[None, :])
    g_pix = torch.zeros(n, n, dtype=torch.float64)
    for img in range(b):
        ap = torch.zeros(hw, hw, dtype=torch.bool)
        for kk, w in pixel_knn:
            v = torch.cat([pixels[img, :, :3], w * pixels[img, :, 3:]], 1).double()
            dist = torch.cdist(v, v)
            dist.fill_diagonal_(np.inf)
            one = torch.zeros(hw, hw, dtype=torch.bool)
            for i in range(hw):
                one[i, dist[i].topk(kk, largest=False).indices] = True
            ap |= one | one.T
        ap = ap.double()
        dp = ap.sum(1)
        s = slice(img * hw, (img + 1) * hw)
        g_pix[s, s] = ap / torch.sqrt(dp[:, None] * dp[None, :])
    return g_feat + alpha * g_pix


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_kernel_matches_dense_reference(alpha):
    gen = torch.Generator().manual_seed(0)
    b, h, w, c, k = 3, 4, 5, 16, 7
    high = torch.randn(b, h * w, c, generator=gen)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    pos = torch.stack([xs, ys], -1).reshape(1, h * w, 2).expand(b, -1, -1)
    pixels = torch.cat([torch.rand(b, h * w, 3, generator=gen), pos], -1)
    pixel_knn = ((4, 2.0), (3, 0.1))
    kernel = build_kernel(high, pixels, k=k, alpha=alpha, pixel_knn=pixel_knn)
    expected = dense_reference(high, pixels, k, alpha, pixel_knn)
    torch.testing.assert_close(kernel.to_dense().double(), expected, atol=1e-5, rtol=1e-5)
    # D_f: the feature graph's degrees before normalisation, the row sums of (A + A^T) / 2
    f = torch.nn.functional.normalize(high.reshape(b * h * w, c).double(), dim=1)
    sim = (f @ f.T).fill_diagonal_(-np.inf)
    a = torch.zeros_like(sim).scatter_(1, sim.topk(k, dim=1).indices, sim.topk(k, dim=1).values.clamp_min(0))
    assert kernel.feature_degree is not None
    torch.testing.assert_close(kernel.feature_degree.double(), ((a + a.T) / 2).sum(1), atol=1e-5, rtol=1e-5)
    x = torch.randn(b * h * w, 6, generator=gen)
    torch.testing.assert_close((kernel @ x).double(), expected @ x.double(), atol=1e-4, rtol=1e-4)


def test_knn_excludes_self_even_with_duplicates():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    vals, idx = knn_cosine(feats, 2)
    for row in range(4):
        assert row not in idx[row].tolist()
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    torch.testing.assert_close(vals[0, 0], torch.tensor(1.0))


def test_bfloat16_search_finds_the_float32_neighbours_but_for_near_ties():
    """`train.search_precision: bfloat16`: the products in bf16 (accumulated in float32) change a
    similarity by about 1e-3, so only neighbours that close to the k-th one may swap, and the
    kernel built from them has the float32 kernel's top eigenvectors."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 64, generator=gen)
    feats = centres[torch.randint(0, 6, (600,), generator=gen)] + 0.8 * torch.randn(600, 64, generator=gen)
    k = 32
    v32, i32 = knn_cosine(feats, k)
    v16, i16 = knn_cosine(feats, k, "bfloat16")
    assert not (i16 == torch.arange(600)[:, None]).any()  # still no self-loops
    x = torch.nn.functional.normalize(feats, dim=1)
    torch.testing.assert_close(v16, (x[:, None] * x[i16]).sum(-1), atol=1e-2, rtol=0)  # values of those pairs
    kth = v32[:, -1:]
    for row in range(600):
        missed = set(i32[row].tolist()) - set(i16[row].tolist())
        # a float32 neighbour missed by bf16 lies within rounding of the k-th similarity
        assert all(float(x[row] @ x[j]) - float(kth[row]) < 1e-2 for j in missed)
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(i32, i16)])
    assert overlap > 0.95
    # what psi learns, the top eigenvectors (here the 6 clusters), is the same
    e32, v32 = torch.linalg.eigh(feature_graph(feats, k).to_dense().double())
    e16, v16 = torch.linalg.eigh(feature_graph(feats, k, "bfloat16").to_dense().double())
    torch.testing.assert_close(e16[-8:], e32[-8:], atol=5e-3, rtol=0)
    assert torch.linalg.svdvals(v32[:, -6:].T @ v16[:, -6:]).min() > 0.999
    with pytest.raises(ValueError, match="expected float32 or bfloat16"):
        knn_cosine(feats, k, "float16")


def test_feature_graph_is_symmetric_and_normalised_by_hand():
    # three tokens: 0 and 1 similar (cos 0.8), 2 orthogonal to 0 and cos 0.6 with 1; k = 1
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    g = feature_graph(feats, 1).to_dense()
    # kNN (k=1): 0->1 (0.8), 1->0 (0.8), 2->1 (0.6); A sym = [[0,.8,0],[.8,0,.3],[0,.3,0]]
    a = torch.tensor([[0, 0.8, 0], [0.8, 0, 0.3], [0, 0.3, 0]])
    d = a.sum(1)
    torch.testing.assert_close(g, a / torch.sqrt(d[:, None] * d[None, :]))


def test_pixel_graph_has_only_in_image_edges_and_no_self_loops():
    pixels = torch.rand(2, 12, 5)
    g = pixel_graph(pixels)
    assert g.shape == (2, 12, 12)
    assert torch.all(torch.diagonal(g, dim1=1, dim2=2) == 0)
    torch.testing.assert_close(g, g.transpose(1, 2))


def test_pixel_graph_matches_its_definition_built_by_hand():
    """method.md section 2: per image, binary k-NN graphs on [r, g, b, w*x, w*y] (k 10 at w 2, k 5
    at w 0.1), each OR-symmetrised, OR-ed, no self-loops, D^-1/2 A D^-1/2; the batch's sparse
    kernel holds these blocks on its diagonal and nothing else."""
    from pipeline.graph.batch import pixel_kernel

    pixels = torch.rand(3, 40, 5, generator=torch.Generator().manual_seed(0))
    expected = np.zeros((3, 40, 40))
    for image, p in enumerate(pixels.double().numpy()):
        adjacency = np.zeros((40, 40), dtype=bool)
        for k, weight in ((10, 2.0), (5, 0.1)):
            vec = np.concatenate([p[:, :3], weight * p[:, 3:]], axis=1)
            dist = np.linalg.norm(vec[:, None] - vec[None], axis=-1) + np.diag(np.full(40, np.inf))
            one = np.zeros((40, 40), dtype=bool)
            np.put_along_axis(one, np.argsort(dist, axis=1)[:, :k], True, axis=1)
            adjacency |= one | one.T
        d = adjacency.sum(1)
        expected[image] = adjacency / np.sqrt(d[:, None] * d[None, :])
    np.testing.assert_allclose(pixel_graph(pixels).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(pixel_kernel(pixels).to_dense().numpy(), scipy.linalg.block_diag(*expected), rtol=1e-6)


def test_kernel_gradient_equals_dense_gradient():
    gen = torch.Generator().manual_seed(1)
    high, pixels = torch.randn(2, 12, 8, generator=gen), torch.rand(2, 12, 5, generator=gen)
    kernel = build_kernel(high, pixels, k=5, alpha=0.3)
    dense = kernel.to_dense()
    x = torch.randn(24, 3, generator=gen, requires_grad=True)
    w = torch.randn(24, 3, generator=gen)
    grad_sparse = torch.autograd.grad(((kernel @ x) * w).sum(), x)[0]
    grad_dense = torch.autograd.grad(((dense @ x) * w).sum(), x)[0]
    torch.testing.assert_close(grad_sparse, grad_dense, atol=1e-5, rtol=1e-5)


def test_same_image_share_by_hand():
    """Two images of two tokens: weight 1 + 1 inside image 0, 2 inside image 1, 0.5 + 0.5 across."""
    dense = torch.tensor([[0, 1, 0.5, 0], [1, 0, 0, 0], [0.5, 0, 0, 2], [0, 0, 2, 0]])
    kernel = BatchKernel(dense.to_sparse_csr(), None, 0.0)
    assert kernel.same_image_share(2) == pytest.approx(6 / 7)
    assert kernel.same_image_share(1) == pytest.approx(0.0)  # every token its own image: no edge inside one
