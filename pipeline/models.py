"""What a run directory holds and how any method turns cached tokens into cluster logits.

`model.pt` is a plain dict (loads with torch.load(weights_only=True)):
  method     kmeans | kmeans_transductive | nes | nes_star | spectral | spectral_inductive
  config     the run spec (RunSpec.to_dict(): the params JSON the run was fit with)
  input_dim  psi's input dimension (nes, nes_star)
  psi        psi's state dict (nes, nes_star)
  centres    (K, D) k-means centres (kmeans: on normalised high-level features of the training
             split, kmeans_transductive: of the evaluated split; nes_star: on normalised `hidden`;
             nes with `train.output: eigenfunctions`: on psi's row-normalised outputs;
             spectral: on the row-normalised top-K eigenvectors of the evaluated split,
             spectral_inductive: of the training split)
  embedding  (N, K) float16, spectral methods only: the row-normalised eigenvectors of every token
             of the evaluated split (token id = item * h * w + position): exact (spectral) or
             extended from the training split's by the Nystrom formula (spectral_inductive)
  fit        wall time and peak memory of fitting (and of the graph it used), for the tables
Every run is an embedding of tokens and a read-out (spec.Embedding, spec.ReadOut: backbone
features, psi's outputs, psi's hidden features or stored eigenvectors; argmax of psi's outputs
over tau_min, or the nearest K-means centre, fitted through the same embedding by fit.py). Every
method so yields per-token logits whose argmax is its cluster, and evaluation and segmentation
treat them alike (bilinear upsampling of logits, then argmax). `spectral` is transductive: its
logits come by item of its own split (`item_logits`), never from new features; so do those of
`spectral_inductive`, whose extension to the evaluated split is computed once by rule `nystrom`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .clustering import centre_logits
from .eigenfunctions import Psi
from .errors import InputError
from .runtime import native_bfloat16
from .spec import Embedding, Method, ReadOut, RunSpec, TrainSettings

log = logging.getLogger(__name__)


class TokenScorer(Protocol):
    """What turns a view's tokens into K maps per token (evaluate.image_logits draws either): a
    run's cluster logits (RunModel) or psi's raw outputs (PsiOutputs)."""

    @property
    def num_clusters(self) -> int: ...

    def token_logits(self, high: torch.Tensor, inp: torch.Tensor) -> torch.Tensor: ...


def forward_precision(cfg: TrainSettings, device: torch.device, quiet: bool = False) -> torch.autocast:
    """psi's forward in float32, or under bfloat16 autocast (`train.precision`; `auto`: bfloat16
    where the device multiplies it in hardware, float32 where it would be emulated and slower)."""
    bf16 = cfg.precision == "bfloat16" or (cfg.precision == "auto" and native_bfloat16(device))
    if not quiet:
        log.info("psi's forward in %s (train.precision: %s)", "bfloat16 autocast" if bf16 else "float32", cfg.precision)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def build_psi(input_dim: int, train: TrainSettings) -> Psi:
    return Psi(
        input_dim, train.K, depth=train.depth, heads=train.heads, dim_head=train.dim_head, mlp_ratio=train.mlp_ratio
    )


class RunModel(nn.Module):
    """A fitted run: its spec, and psi, centres or a stored embedding as its method needs."""

    centres: torch.Tensor  # buffers (empty where the method has none)
    embedding: torch.Tensor

    def __init__(
        self,
        spec: RunSpec,
        psi: Psi | None = None,
        centres: torch.Tensor | None = None,
        input_dim: int | None = None,
        embedding: torch.Tensor | None = None,
        fit: dict[str, Any] | None = None,
        final_dim: int | None = None,
    ):
        super().__init__()
        self.spec, self.psi, self.input_dim = spec, psi, input_dim
        self.final_dim = final_dim  # channels of the last layer of psi's input (Embedding.FINAL_TOKENS)
        self.fit = fit or {}
        self.register_buffer("centres", centres if centres is not None else torch.empty(0))
        self.register_buffer("embedding", embedding if embedding is not None else torch.empty(0))

    @property
    def method(self) -> Method:
        return self.spec.method

    @property
    def transductive(self) -> bool:
        """Fit on the split it scores (spectral, kmeans_transductive): a control, not a method."""
        return self.method.traits.transductive

    @property
    def item_lookup(self) -> bool:
        """Labels come from a stored embedding of the evaluated split's tokens, by item."""
        return self.method.traits.item_lookup

    @property
    def lookup_features(self) -> str:
        """The features manifest of the split whose tokens the stored embedding covers."""
        return self.spec.lookup_features

    @property
    def logits_are_psi_outputs(self) -> bool:
        """Its logits are psi's outputs over tau_min (eigenfunction maps need no second pass)."""
        return self.spec.read_out is ReadOut.ARGMAX

    @property
    def num_clusters(self) -> int:
        return self.spec.K

    def check_labels_new_images(self) -> None:
        """Runs whose labels come from a stored embedding of one split cannot label other images."""
        if self.item_lookup:
            raise InputError(
                f"{self.spec.run}: a {self.method} run labels only the tokens of the split its embedding "
                f"covers ({self.lookup_features}; transductive eigenvectors of that split, or their Nystrom "
                "extension to it); it cannot segment other images"
            )

    @torch.no_grad()
    def embed(self, high: torch.Tensor | None, inp: torch.Tensor | None) -> torch.Tensor:
        """Tokens -> their embedding (B, h * w, D): high (B, h, w, C_high) for the backbone's,
        inp (B, h, w, C_in) for psi's; stored embeddings are read by item (`item_logits`)."""
        embedding = self.spec.embedding
        if embedding is Embedding.STORED:
            self.check_labels_new_images()
        if embedding is Embedding.BACKBONE and high is not None:
            return high.flatten(1, 2)
        if embedding is Embedding.PSI_INPUT and inp is not None:
            return inp.flatten(1, 2)
        if embedding is Embedding.FINAL_TOKENS and inp is not None and self.final_dim:
            return inp.flatten(1, 2)[..., -self.final_dim :]
        if self.psi is None or inp is None:
            raise InputError(f"{self.spec.run}: a {embedding} embedding needs psi and its input tokens")
        return self.psi_forward(inp.flatten(1, 2), hidden=embedding is not Embedding.PSI_OUTPUTS)

    @torch.no_grad()
    def psi_forward(self, tokens: torch.Tensor, hidden: bool = False) -> torch.Tensor:
        """psi's outputs (or its hidden features) of (B, n, C_in) tokens, in float32, computed in
        the precision psi was trained with (`train.precision`): every inference path uses this."""
        if self.psi is None:
            raise InputError(f"{self.spec.run}: a {self.method} run has no psi")
        with forward_precision(self.spec.psi, tokens.device, quiet=True):
            out = self.psi.hidden(tokens) if hidden else self.psi(tokens)
        return out.float()

    def read_out(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N, D) embedded tokens -> (N, K) logits whose argmax is each token's cluster."""
        if self.spec.read_out is ReadOut.ARGMAX:
            return vectors / self.spec.psi.tau_min  # test time: no Gumbel noise, no normalisation
        return centre_logits(F.normalize(vectors, dim=-1), self.centres)

    @torch.no_grad()
    def token_logits(self, high: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """high (B, h, w, C_high), inp (B, h, w, C_in) -> logits (B, K, h, w)."""
        b, h, w, _ = high.shape
        logits = self.read_out(self.embed(high, inp).flatten(0, 1))
        return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def clustered_points(self, cached: dict[str, np.ndarray]) -> np.ndarray:
        """Cached tokens as K-means sees them: their embedding, row-normalised, (N, D)."""
        tensors = {name: torch.from_numpy(cached[name]) if name in cached else None for name in ("high", "input")}
        return F.normalize(self.embed(tensors["high"], tensors["input"]).flatten(0, 1), dim=-1).numpy()

    @torch.no_grad()
    def item_logits(self, items: torch.Tensor | list[int], grid: tuple[int, int]) -> torch.Tensor:
        """spectral methods: logits (B, K, h, w) of cached items of the evaluated split."""
        h, w = grid
        if self.embedding.shape[0] % (h * w):
            raise InputError(f"{self.spec.run}: {self.embedding.shape[0]} fitted tokens are not whole {h}x{w} items")
        tokens = (torch.as_tensor(items)[:, None] * h * w + torch.arange(h * w)).reshape(-1).to(self.embedding.device)
        logits = centre_logits(self.embedding[tokens].float(), self.centres)
        return logits.reshape(-1, h, w, logits.shape[-1]).permute(0, 3, 1, 2)

    def checkpoint(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": str(self.method),
            "config": self.spec.to_dict(),
            "input_dim": self.input_dim,
            "fit": self.fit,
        }
        if self.final_dim is not None:
            out["final_dim"] = self.final_dim
        if self.psi is not None:
            out["psi"] = self.psi.state_dict()
        for name in ("centres", "embedding"):
            if getattr(self, name).numel():
                out[name] = getattr(self, name).cpu()
        return out

    @classmethod
    def load(cls, run: Path, map_location: str | torch.device = "cpu") -> RunModel:
        path = Path(run)
        path = path / "model.pt" if path.is_dir() else path
        if not path.is_file():
            patterns = ("*/model.pt", "runs/*/model.pt", "*/runs/*/model.pt")  # a dataset's or results folder
            below = sorted(p for pattern in patterns for p in Path(run).glob(pattern)) if Path(run).is_dir() else []
            hint = f" ({run} is a folder of runs: give one, e.g. {below[0].parent})" if below else ""
            raise InputError(f"{path}: no model.pt; expected a run directory produced by the workflow{hint}")
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # truncated, empty, not a torch file, or objects beyond plain data
            if "Weights only load failed" in str(exc):
                raise InputError(
                    f"{path}: holds objects other than tensors and plain data; refused (unpickling them could "
                    "run code). A model.pt of this project holds only tensors, numbers and strings"
                ) from None
            raise InputError(
                f"{path}: not a readable model.pt ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                "rerun the run's fit (snakemake deletes and rebuilds it)"
            ) from None
        missing = [k for k in ("method", "config") if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise InputError(f"{path}: not a model.pt of this project (missing {', '.join(missing)})")
        spec = RunSpec.from_dict(ckpt["config"], f"{path}: config")
        if str(spec.method) != ckpt["method"]:
            raise InputError(f"{path}: a {ckpt['method']!r} model whose config is a {spec.method} run")
        final_dim = ckpt.get("final_dim")
        if spec.embedding is Embedding.FINAL_TOKENS and not (isinstance(final_dim, int) and final_dim > 0):
            raise InputError(f"{path}: a {spec.method} model without the width of the final layer (final_dim)")
        return cls(spec, *_checked_tensors(path, spec, ckpt), fit=ckpt.get("fit"), final_dim=final_dim)


def _checked_tensors(
    path: Path, spec: RunSpec, ckpt: dict[str, Any]
) -> tuple[Psi | None, torch.Tensor | None, int | None, torch.Tensor | None]:
    """psi, centres, input_dim and embedding of a model.pt, each checked against its config: a
    file whose tensors disagree with its settings is refused naming the file and what differs."""
    psi = None
    input_dim = ckpt.get("input_dim")
    if spec.method.traits.uses_psi:
        if "psi" not in ckpt or not isinstance(input_dim, int) or input_dim < 1:
            raise InputError(f"{path}: a {spec.method} model without psi's weights or input dimension")
        psi = build_psi(input_dim, spec.psi)
        try:
            psi.load_state_dict(ckpt["psi"])
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()
            raise InputError(
                f"{path}: psi's weights do not match its config (K={spec.K}, depth={spec.psi.depth}, "
                f"heads={spec.psi.heads}, dim_head={spec.psi.dim_head}, input {input_dim}): "
                f"{first[1].strip() if len(first) > 1 else first[0] if first else exc}"
            ) from None
        psi.eval()
    centres, embedding = ckpt.get("centres"), ckpt.get("embedding")
    needs_centres = spec.read_out is ReadOut.CENTRES
    if needs_centres and (not isinstance(centres, torch.Tensor) or centres.ndim != 2):
        raise InputError(f"{path}: a {spec.method} model without a (K, D) tensor of centres")
    if centres is not None and centres.shape[0] != spec.K:
        raise InputError(f"{path}: {centres.shape[0]} centres, its config says K={spec.K}")
    if spec.method.traits.item_lookup and (
        not isinstance(embedding, torch.Tensor) or embedding.ndim != 2 or embedding.shape[1] != spec.K
    ):
        raise InputError(f"{path}: a {spec.method} model needs its (tokens, K={spec.K}) embedding")
    tensors = {
        **{f"psi.{k}": v for k, v in (ckpt.get("psi") or {}).items()},
        "centres": centres,
        "embedding": embedding,
    }
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(
                f"{path}: {name} holds NaN or infinite values (a diverged fit or a damaged file); refit the run"
            )
    return psi, centres, input_dim, embedding


class PsiOutputs:
    """The first n of psi's outputs per token (the learned eigenfunctions, before any Gumbel-softmax
    or read-out) in the place of a run's logits, for maps: a one-hot nes run's logits are all K
    of them over tau_min, but nes_star and runs of plain eigenfunctions (`train.output:
    eigenfunctions`) score K-means centres, so their maps come from psi itself."""

    def __init__(self, model: RunModel, n: int):
        if model.psi is None:
            raise InputError(f"{model.spec.run}: a {model.method} run has no psi; eigenfunction maps need a nes run")
        self.model, self.num_clusters = model, max(1, min(n, model.spec.K))

    @torch.no_grad()
    def token_logits(self, high: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """inp (B, h, w, C_in) -> psi's first n outputs (B, n, h, w); `high` is not used."""
        b, h, w, _ = inp.shape
        outputs = self.model.psi_forward(inp.reshape(b, h * w, -1))[..., : self.num_clusters]
        return outputs.reshape(b, h, w, -1).permute(0, 3, 1, 2)
