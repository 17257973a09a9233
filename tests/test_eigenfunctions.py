"""NeuralEF objective and psi: recovery of known eigenfunctions, stop-gradient, shapes."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse.linalg import eigsh
from scipy.spatial import cKDTree

from pipeline.eigenfunctions import (
    Psi,
    eigenfunction_output,
    inference_logits,
    neuralef_loss,
    neuralef_objective,
    training_output,
)


def knn_kernel(points, k=30, sigma=0.3):
    """Degree-normalised Gaussian k-NN graph: a kernel whose eigenvectors eigsh gives exactly."""
    n = len(points)
    dist, idx = cKDTree(points).query(points, k + 1)
    a = sp.coo_matrix(
        (np.exp(-(dist[:, 1:].ravel() ** 2) / (2 * sigma**2)), (np.repeat(np.arange(n), k), idx[:, 1:].ravel())),
        shape=(n, n),
    ).tocsr()
    a = (a + a.T) / 2
    d = sp.diags(np.asarray(a.sum(1)).ravel() ** -0.5)
    return (d @ a @ d).tocsr()


def strip_kernel(k: int = 5):
    """A kernel on a 2-D strip with well-separated top eigenvalues, its points, and its exact top k."""
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (400, 2)) * np.array([4.0, 0.3])  # a strip: well-separated top eigenvalues
    g = knn_kernel(points)
    k = 5
    values, vectors = eigsh(g, k=k + 1, which="LA")
    order = np.argsort(-values)
    values, vectors = values[order], vectors[:, order]
    assert np.all(np.diff(values[: k + 1]) < -2e-3), "test kernel must have separated eigenvalues"
    coo = g.tocoo()
    kernel = torch.sparse_coo_tensor(
        np.vstack([coo.row, coo.col]), coo.data, g.shape, dtype=torch.float32, check_invariants=True
    )
    return kernel, torch.tensor(points, dtype=torch.float32), vectors[:, :k]


def learned_eigenfunctions(precision="float32", t=1.0, deflation=False, k=5, steps=1500):
    """Unit-norm outputs of a small MLP trained by the objective; with their |cos| to the exact
    top-k eigenvectors, and the eigenvector each is matched to (Hungarian on |cos|)."""
    kernel, x, vectors = strip_kernel(k)
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(2, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh())
    head = torch.nn.Linear(128, k)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], 3e-3)
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            hidden = body(x)
        psi = eigenfunction_output(head(hidden.float()))  # the head in float32, as Psi.forward does
        loss = neuralef_loss(psi, kernel, beta=1.0, t=t, deflation=deflation)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cos = np.abs(psi.detach().numpy().T @ vectors)
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols], cols


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_neuralef_recovers_top_eigenvectors_of_known_kernel(precision):
    """With the network's forward in float32, or under bfloat16 autocast as `train.precision:
    bfloat16` runs psi: the body in bf16, the head, the normalisation and the objective in float32
    (with a bf16 head the fifth eigenfunction was lost on some CPUs: |cos| 0.15)."""
    matched, cols = learned_eigenfunctions(precision)
    assert matched.mean() >= 0.9, matched
    # the stop-gradient orders them: the i-th learned function is the i-th eigenvector
    assert np.all(cols == np.arange(len(cols)))


def test_deflation_recovers_eigenvectors_at_the_trainings_scale_t():
    """`train.output: eigenfunctions` trains at the project's t = 0.01, where the paper's penalty
    is 100x weaker than the trace (fine for one-hot columns, whose supports barely overlap):
    without deflation the plain outputs do not separate into the eigenvectors; NeuralEF's
    deflation (R^_ij^2 / sg(R^_ii), beta 1) recovers them in order, whatever t is."""
    matched, cols = learned_eigenfunctions(t=0.01, deflation=True)
    assert matched.mean() >= 0.9 and np.all(cols == np.arange(len(cols))), (matched, cols)
    weak, _ = learned_eigenfunctions(t=0.01, deflation=False)
    assert weak.mean() < 0.8, weak


def test_penalty_never_moves_the_first_eigenfunction():
    """sg on the left factor: the penalty's gradient reaches psi_j only through pairs i < j."""
    torch.manual_seed(0)
    n, k = 50, 4
    a = torch.rand(n, n)
    kernel = (a + a.T) / 2
    psi = torch.randn(n, k, requires_grad=True)
    with_penalty = torch.autograd.grad(neuralef_loss(psi, kernel, beta=5.0), psi)[0]
    without = torch.autograd.grad(neuralef_loss(psi, kernel, beta=0.0), psi)[0]
    diff = with_penalty - without
    torch.testing.assert_close(diff[:, 0], torch.zeros(n))
    assert diff[:, 1:].abs().sum() > 0


def test_objective_terms_and_sparse_dense_agree():
    torch.manual_seed(1)
    n, k = 30, 3
    a = torch.rand(n, n)
    dense = (a + a.T) / 2
    psi = torch.rand(n, k)
    t, beta = 0.01, 0.5
    r = t * psi.T @ dense @ psi
    expected = -torch.trace(r) / k + beta * torch.triu(r, 1).pow(2).sum() / k
    obj = neuralef_objective(psi, dense, beta, t)
    torch.testing.assert_close(obj.loss, expected)
    torch.testing.assert_close(neuralef_loss(psi, dense.to_sparse(), beta, t), expected)


def test_psi_shapes_parameter_count_and_outputs():
    psi = Psi(1152, 256)
    n_params = sum(p.numel() for p in psi.parameters())
    assert 13.3e6 < n_params < 13.9e6  # method.md: about 13.6 M for ViT-S input
    small = Psi(40, 8, heads=2, dim_head=8)
    x = torch.randn(3, 20, 40)
    logits = small(x)
    assert logits.shape == (3, 20, 8) and small.hidden(x).shape == (3, 20, 40)
    w = small.head.weight
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)  # orthonormal rows
    torch.testing.assert_close(small.head.bias, torch.zeros(8))
    y = training_output(logits.reshape(60, 8), tau=0.5)
    assert torch.all(y.norm(dim=0) <= 1 + 1e-5) and torch.all(y >= 0)
    torch.testing.assert_close(inference_logits(small, x, 0.3), logits / 0.3)


def test_psi_head_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    psi = Psi(40, 8, heads=2, dim_head=8)
    x = torch.randn(3, 20, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = psi(x)
        hidden = psi.hidden(x)
    assert logits.dtype == torch.float32
    # the head's product in float32 (autocast would run that Linear in bf16 and round its output)
    torch.testing.assert_close(logits, psi.head(hidden.float()), atol=1e-6, rtol=0)
    assert not torch.equal(logits, logits.bfloat16().float())


@pytest.mark.parametrize("k", [4, 64])
def test_orthogonal_head_when_k_exceeds_input(k):
    psi = Psi(16, k, heads=1, dim_head=8)
    w = psi.head.weight
    gram = w @ w.T if k <= 16 else w.T @ w
    torch.testing.assert_close(gram, torch.eye(min(k, 16)), atol=1e-5, rtol=0)


def test_linear_attention_scales_queries_after_their_softmax():
    """With softmax(q) * d^-1/2 over features and softmax(k) over tokens, every token's implied
    attention weights sum to d^-1/2: constant values v = 1 come out as d^-1/2 in every head (a
    scale before the softmax would give exactly 1)."""
    from pipeline.eigenfunctions import LinearAttention

    torch.manual_seed(0)
    attn = LinearAttention(dim=8, heads=2, dim_head=16)
    with torch.no_grad():
        w = attn.to_qkv.weight.view(3, 32, 8)
        w[2].zero_()
        w[2][:, 0] = 1.0  # v reads only feature 0, which is 1 for every token
        attn.to_out.weight.copy_(torch.eye(8, 32))
        attn.to_out.bias.zero_()
    x = torch.randn(3, 50, 8)
    x[..., 0] = 1.0
    out = attn(x)
    torch.testing.assert_close(out, torch.full_like(out, 16**-0.5))


def test_image_centring_is_the_objective_of_the_projected_kernel():
    """Centred outputs have zero mean in every image, and the objective on them is the objective
    of P G P on the raw outputs (P: projection off the per-image constants), so an image
    indicator earns nothing."""
    from pipeline.eigenfunctions import centre_per_image

    torch.manual_seed(0)
    images, tokens, k = 3, 5, 4
    n = images * tokens
    a = torch.rand(n, n)
    g = (a + a.T) / 2
    psi = torch.rand(n, k)
    centred = centre_per_image(psi, tokens)
    torch.testing.assert_close(centred.reshape(images, tokens, k).mean(1), torch.zeros(images, k), atol=1e-6, rtol=0)
    blocks = torch.block_diag(*[torch.full((tokens, tokens), 1 / tokens)] * images)
    p = torch.eye(n) - blocks
    ours = neuralef_objective(centred, g, beta=0.5)
    projected = neuralef_objective(psi, p @ g @ p, beta=0.5)
    torch.testing.assert_close(ours.loss, projected.loss)
    indicator = torch.zeros(n, 1)
    indicator[tokens : 2 * tokens] = 1
    assert neuralef_objective(centre_per_image(indicator, tokens), g, beta=0.5).trace.abs() < 1e-6


def test_volume_weights_make_the_trace_the_normalised_association_of_a_partition():
    """For one-hot assignments the weighted outputs give trace(Psi^T D^-1/2 A D^-1/2 Psi) =
    sum_c cut(C_c, C_c) / vol(C_c) (Shi & Malik's normalised association), computed here from A
    by hand; unweighted, the same trace is sum_c 1_c^T G 1_c / |C_c|."""
    from pipeline.eigenfunctions import volume_weights

    torch.manual_seed(0)
    n, k = 40, 3
    a = torch.rand(n, n, dtype=torch.float64) * (torch.rand(n, n) < 0.3)
    a = (a + a.T) / 2
    a.fill_diagonal_(0)
    d = a.sum(1)
    g = a / torch.sqrt(d[:, None] * d[None, :])
    labels = torch.randint(0, k, (n,))
    logits = torch.nn.functional.one_hot(labels, k).double() * 1e4  # a hard partition through the softmax
    psi = training_output(logits, tau=1.0, weights=volume_weights(d))
    by_hand = sum(a[labels == c][:, labels == c].sum() / d[labels == c].sum() for c in range(k))
    assert torch.allclose(torch.trace(psi.T @ g @ psi), by_hand)
    plain = training_output(logits, tau=1.0)
    ratio = sum(g[labels == c][:, labels == c].sum() / (labels == c).sum() for c in range(k))
    assert torch.allclose(torch.trace(plain.T @ g @ plain), ratio)
    assert not torch.allclose(by_hand, ratio)
    with pytest.raises(ValueError, match="degrees"):
        volume_weights(None)


def test_bfloat16_autocast_changes_loss_and_gradients_of_psi_by_little():
    """`train.precision: bfloat16`: psi's forward under autocast, the objective in float32. On a
    batch of 2 x 64 tokens the loss moves by under 1 % and the gradient keeps its direction
    (cosine > 0.99) against the float32 step."""
    from pipeline.eigenfunctions import Psi, training_output

    torch.manual_seed(0)
    psi = Psi(32, 8, depth=2, heads=2, dim_head=16)
    x = torch.randn(2, 64, 32)
    a = torch.rand(128, 128)
    kernel = ((a + a.T) / 2 > 0.9).float()

    def step(precision):
        psi.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            logits = psi(x).reshape(128, -1)
        torch.manual_seed(1)  # the same Gumbel draw
        loss = neuralef_objective(training_output(logits.float(), 0.5), kernel, 0.1, 0.01).loss
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in psi.parameters() if p.grad is not None])

    (loss32, grad32), (loss16, grad16) = step("float32"), step("bfloat16")
    assert abs(loss16 - loss32) < 0.01 * abs(loss32)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99
