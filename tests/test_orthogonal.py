"""psi's orthogonal head in the WY form equals torch's Householder parametrisation."""

import pytest
import torch
from torch.nn.utils.parametrizations import orthogonal as torch_orthogonal

from pipeline.orthogonal import householder_product, orthogonal


@pytest.mark.parametrize("shape", [(472, 128), (64, 64), (30, 7)])
def test_wy_product_equals_torch_householder_product_and_its_gradient(shape):
    gen = torch.Generator().manual_seed(0)
    a = (0.3 * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()
    probe = torch.randn(*shape, generator=gen, dtype=torch.float64)

    def product(fn):
        low = a.tril(-1)
        return fn(low, 2.0 / (1.0 + (low * low).sum(-2)))

    ours, theirs = product(householder_product), product(torch.linalg.householder_product)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    (g_ours,) = torch.autograd.grad((ours * probe).sum(), a)
    (g_theirs,) = torch.autograd.grad((theirs * probe).sum(), a)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-12, rtol=0)


@pytest.mark.parametrize("out_features", [16, 96])  # orthonormal rows, and columns when K > D
def test_head_matches_torch_orthogonal_at_init_and_after_updates(out_features):
    torch.manual_seed(3)
    theirs = torch_orthogonal(torch.nn.Linear(48, out_features))
    torch.manual_seed(3)
    ours = orthogonal(torch.nn.Linear(48, out_features))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    torch.testing.assert_close(ours.weight, theirs.weight)
    with torch.no_grad():  # a training update moves the reflectors (torch's diagonal holds the signs)
        original = theirs.parametrizations.weight.original
        noise = 0.2 * torch.randn_like(original)
        noise.diagonal().zero_()
        original.add_(noise)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight, theirs.weight, atol=1e-6, rtol=0)
    w = ours.weight if out_features < 48 else ours.weight.T
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-5, rtol=0)


def test_reflectors_are_combined_in_float32_under_bfloat16_autocast():
    """Autocast would run the WY products in bf16 (torch's own product is not autocast and runs in
    float32): the product stays float32, so the head under autocast is torch's, as before."""
    torch.manual_seed(0)
    a = 0.1 * torch.randn(472, 128).tril(-1)
    tau = 2.0 / (1.0 + (a * a).sum(-2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = householder_product(a, tau)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.T @ q, torch.eye(128), atol=1e-5, rtol=0)
    torch.manual_seed(1)
    theirs = torch_orthogonal(torch.nn.Linear(472, 128))
    torch.manual_seed(1)
    ours = orthogonal(torch.nn.Linear(472, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ours.weight, theirs.weight)
