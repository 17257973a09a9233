"""What a run directory holds and how any method turns cached tokens into cluster logits.

`model.pt` is a plain dict (loads with torch.load(weights_only=True)):
  method     kmeans | nes | nes_star
  config     the resolved run spec (plain data)
  input_dim  psi's input dimension (nes, nes_star)
  psi        psi's state dict (nes, nes_star)
  centres    (K, D) k-means centres (kmeans: on normalised high-level features; nes_star: on
             normalised `hidden`)
Every method yields per-token logits whose argmax is its cluster, so evaluation and segmentation
treat them alike (bilinear upsampling of logits, then argmax).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .clustering import centre_logits
from .eigenfunctions import Psi
from .errors import InputError

METHODS = ("kmeans", "nes", "nes_star")


def build_psi(input_dim: int, train_cfg: dict[str, Any]) -> Psi:
    return Psi(input_dim, int(train_cfg["K"]), depth=int(train_cfg["depth"]), heads=int(train_cfg["heads"]),
               dim_head=int(train_cfg["dim_head"]), mlp_ratio=float(train_cfg["mlp_ratio"]))


class RunModel(nn.Module):
    def __init__(self, method: str, config: dict[str, Any], psi: Psi | None = None,
                 centres: torch.Tensor | None = None, input_dim: int | None = None):
        super().__init__()
        if method not in METHODS:
            raise InputError(f"model.pt: unknown method {method!r}; expected one of {METHODS}")
        self.method, self.config, self.psi, self.input_dim = method, config, psi, input_dim
        self.register_buffer("centres", centres if centres is not None else torch.empty(0))

    @property
    def num_clusters(self) -> int:
        return int(self.centres.shape[0]) if self.method != "nes" else int(self.config["train"]["K"])

    @torch.no_grad()
    def token_logits(self, high: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """high (B, h, w, C_high), inp (B, h, w, C_in) -> logits (B, K, h, w)."""
        b, h, w, _ = high.shape
        if self.method == "kmeans":
            logits = centre_logits(F.normalize(high.reshape(b * h * w, -1), dim=1), self.centres)
        else:
            tokens = inp.reshape(b, h * w, -1)
            if self.method == "nes":
                logits = self.psi(tokens) / float(self.config["train"]["tau_min"])
            else:
                hidden = F.normalize(self.psi.hidden(tokens), dim=-1)
                logits = centre_logits(hidden.reshape(b * h * w, -1), self.centres)
        return logits.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def checkpoint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "config": self.config, "input_dim": self.input_dim}
        if self.psi is not None:
            out["psi"] = self.psi.state_dict()
        if self.centres.numel():
            out["centres"] = self.centres.cpu()
        return out

    @classmethod
    def load(cls, run: Path, map_location: str | torch.device = "cpu") -> "RunModel":
        path = Path(run)
        path = path / "model.pt" if path.is_dir() else path
        if not path.is_file():
            raise InputError(f"{path}: no model.pt; expected a run directory produced by the workflow")
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        psi = None
        if "psi" in ckpt:
            psi = build_psi(int(ckpt["input_dim"]), ckpt["config"]["train"])
            psi.load_state_dict(ckpt["psi"])
            psi.eval()
        return cls(ckpt["method"], ckpt["config"], psi, ckpt.get("centres"), ckpt.get("input_dim"))
