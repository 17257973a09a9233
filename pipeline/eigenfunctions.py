"""psi, the eigenfunction network, and the NeuralEF objective (method.md sections 3-4).

Reads top to bottom like the paper: linear attention -> pre-norm block -> psi (two blocks, final
LayerNorm = `hidden`, orthogonal head to K outputs) -> training-time output (Gumbel-softmax, column
L2 normalisation; or, beyond the paper, NeuralEF's plain eigenfunctions) -> the objective.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .orthogonal import orthogonal


class LinearAttention(nn.Module):
    """Efficient attention (Shen et al.): softmax(q) over features, softmax(k) over tokens, q (k^T v).

    q is scaled by dim_head^-1/2 after its softmax, as the linear-attention reference the authors
    build on does (scaling before would flatten the softmax 8x at dim_head 64)."""

    def __init__(self, dim: int, heads: int = 18, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, dim)
        b, t, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
        q = q.softmax(dim=-1) * self.scale
        k = k.softmax(dim=-2)
        context = k.transpose(-2, -1) @ v  # (B, H, d, d)
        out = (q @ context).transpose(1, 2).reshape(b, t, -1)
        return self.to_out(out)


class Block(nn.Module):
    """Pre-norm transformer block: x += Attn(LN(x)); x += MLP(LN(x)). No positional encoding."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_ratio: float = 0.5):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), LinearAttention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Psi(nn.Module):
    """Maps each image's token sequence (B, T, D) to `hidden` (B, T, D) and K eigenfunction logits."""

    def __init__(
        self,
        input_dim: int,
        num_eigenfunctions: int,
        depth: int = 2,
        heads: int = 18,
        dim_head: int = 64,
        mlp_ratio: float = 0.5,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(Block(input_dim, heads, dim_head, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(input_dim)
        head = nn.Linear(input_dim, num_eigenfunctions)
        nn.init.zeros_(head.bias)
        self.head = orthogonal(head)  # orthonormal rows (columns when K > D)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head runs in float32 even under bf16 autocast (`train.precision: bfloat16`): logits
        rounded to bf16's 3 digits blur eigenvalue gaps of a few 1e-3, and a trailing
        eigenfunction is then lost (tests/test_eigenfunctions.py); the head is a small share of
        psi's FLOPs."""
        hidden = self.hidden(x)
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float())


def training_output(logits: torch.Tensor, tau: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft one-hot assignments: Gumbel-softmax over K, then column L2 normalisation over all N
    tokens of the batch, Psi = y / max(||y_col||, 1) (no running statistics). `weights` (N,),
    optional: each token's row is scaled by its weight before the normalisation
    (`volume_weights`)."""
    y = F.gumbel_softmax(logits, tau=tau, hard=False, dim=-1)
    if weights is not None:
        y = y * weights.unsqueeze(1)
    return y / y.norm(dim=0, keepdim=True).clamp_min(1.0)


def eigenfunction_output(logits: torch.Tensor) -> torch.Tensor:
    """NeuralEF's plain outputs (Deng et al. 2022): each column scaled to unit L2 norm over the
    batch's N tokens, so R's diagonal holds Rayleigh quotients of G. With `deflation` in the
    objective psi learns G's top-K eigenfunctions in order; clusters come from K-means on its
    row-normalised outputs, the exact methods' read-out. Beyond the paper (`train.output:
    eigenfunctions`)."""
    return logits / logits.norm(dim=0, keepdim=True).clamp_min(1e-12)


def volume_weights(degree: torch.Tensor | None) -> torch.Tensor:
    """sqrt(d / mean(d)) for the feature graph's degrees d: with these row weights a hard
    partition S gives Psi = D^1/2 S (S^T D S)^-1/2, so trace(Psi^T D^-1/2 A D^-1/2 Psi) is the
    partition's normalised association sum_c cut(C_c, C_c) / vol(C_c) (Shi & Malik), the
    discrete problem whose relaxation the Ng-Jordan-Weiss embedding of the exact spectral methods
    solves. Without them the one-hot columns have unit norm and the trace is a ratio
    association of G, sum_c 1_c^T G 1_c / |C_c|. Beyond the paper (`train.normalised_cut`)."""
    if degree is None:
        raise ValueError("normalised_cut needs the feature graph's degrees; this kernel was built without them")
    return (degree / degree.mean().clamp_min(1e-12)).sqrt()


def centre_per_image(psi: torch.Tensor, tokens_per_image: int) -> torch.Tensor:
    """Psi minus each image's mean over its tokens (rows laid out image by image): P Psi with P the
    projection off the per-image constant functions, so the objective learns the top
    eigenfunctions of P G P. A batch kernel whose feature graph stays mostly inside images leads
    its spectrum with image indicators, which differ from batch to batch; this removes them.
    Beyond the paper (`train.image_centred`)."""
    n, k = psi.shape
    per_image = psi.reshape(n // tokens_per_image, tokens_per_image, k)
    return (per_image - per_image.mean(dim=1, keepdim=True)).reshape(n, k)


def inference_logits(psi: Psi, x: torch.Tensor, tau_min: float) -> torch.Tensor:
    """At test time Gumbel and normalisation are removed: logits = head(hidden) / tau_min."""
    return psi(x) / tau_min


class Objective(NamedTuple):
    loss: torch.Tensor
    trace: torch.Tensor  # trace(R) / K
    penalty: torch.Tensor  # sum_{i<j} R^_ij^2 / K (before beta)


def neuralef_objective(psi: torch.Tensor, kernel, beta: float, t: float = 0.01, deflation: bool = False) -> Objective:
    """NeuralEF with stop-gradient on the left factor of R^ (method.md section 4).

    psi: (N, K) outputs after normalisation; kernel: anything with `kernel @ (N, K)`: a dense or
    sparse (N, N) tensor, or a graph.BatchKernel. Psi is scaled by sqrt(t) before R and R^.
    `deflation` divides each R^_ij^2 by sg(R^_ii), NeuralEF's own penalty for plain eigenfunctions
    (`eigenfunction_output`): psi_j then maximises its Rayleigh quotient on G minus
    beta * sum_{i<j} lambda_i u_i u_i^T, whatever t is (the paper's penalty is t times weaker
    than its trace, which one-hot columns do not need). Quotients below 0.01 count as 0.01, so
    a function whose quotient is near zero early in training does not blow the penalty up.
    """
    k = psi.shape[1]
    scaled = psi * math.sqrt(t)
    g_psi = kernel @ scaled
    r = scaled.T @ g_psi
    r_hat = scaled.detach().T @ g_psi
    trace = torch.diagonal(r).sum() / k
    off_diagonal = torch.triu(r_hat, diagonal=1).pow(2)
    if deflation:
        off_diagonal = off_diagonal / torch.diagonal(r_hat).detach().clamp_min(0.01 * t).unsqueeze(1)
    penalty = off_diagonal.sum() / k
    return Objective(-trace + beta * penalty, trace.detach(), penalty.detach())


def neuralef_loss(psi: torch.Tensor, kernel, beta: float, t: float = 0.01, deflation: bool = False) -> torch.Tensor:
    """-trace(R)/K + beta * sum_{i<j} R^_ij^2 / K; see `neuralef_objective`."""
    return neuralef_objective(psi, kernel, beta, t, deflation).loss
