"""psi's orthogonal head: torch's orthogonal parametrisation (Householder map, trivialisation),
with its product of reflectors formed in the compact WY form.

torch.linalg.householder_product's backward applies the K reflectors one by one (a few thousand
small products per step at K 128): on 2 CPU cores that was a quarter of psi's training step. The
WY form, Q = I - V T V^T with T^-1 = striu(V^T V) + diag(1 / tau) (Schreiber & Van Loan 1989;
Joffrain et al. 2006), is the same matrix from three products and one triangular solve, whose
backward autograd forms in the same few operations. Parameters, buffers, initialisation and
state-dict keys are torch's own, so models saved before load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _OrthMaps, _Orthogonal


def householder_product(a: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """torch.linalg.householder_product(a, tau) for a tall (n, k) `a` (n >= k): the first k columns
    of H_1 ... H_k, H_i = I - tau_i v_i v_i^T, v_i = e_i + a[:, i] below the diagonal. Always in
    float32 or wider (autocast would round the reflectors to bf16 and lose orthogonality)."""
    n, k = a.shape[-2:]
    with torch.autocast(a.device.type, enabled=False):
        dtype = torch.promote_types(a.dtype, torch.float32)
        eye = torch.eye(n, k, dtype=dtype, device=a.device)
        v = a.to(dtype).tril(-1) + eye
        t_inv = (v.mT @ v).triu(1) + torch.diag_embed(1 / tau.to(dtype))
        # Q = E - V T V[:k]^T, with T V[:k]^T from the upper-triangular T^-1 by one solve
        w = torch.linalg.solve_triangular(t_inv, v[..., :k, :].mT, upper=True)
        return eye - v @ w


class WYOrthogonal(_Orthogonal):
    """torch's `_Orthogonal` with the Householder product formed by `householder_product`."""

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.orthogonal_map != _OrthMaps.householder:
            return super().forward(X)
        n, k = X.size(-2), X.size(-1)
        transposed = n < k
        if transposed:
            X = X.mT
        A = X.tril(diagonal=-1)
        tau = 2.0 / (1.0 + (A * A).sum(dim=-2))
        Q = householder_product(A, tau)
        Q = Q * X.diagonal(dim1=-2, dim2=-1).int().unsqueeze(-2)
        if hasattr(self, "base"):
            Q = self.base @ Q
        return Q.mT if transposed else Q


def orthogonal(module: nn.Linear) -> nn.Linear:
    """As torch.nn.utils.parametrizations.orthogonal(module) for a real weight (its default
    Householder map for a non-square weight, with trivialisation), forming Q in the WY form."""
    weight = module.weight
    n, k = weight.shape[-2:]
    orth_map = _OrthMaps.householder if n != k else _OrthMaps.matrix_exp
    parametrize.register_parametrization(module, "weight", WYOrthogonal(weight, orth_map), unsafe=True)
    return module
