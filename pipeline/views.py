"""How an image (and its label) is prepared for the network and scored: method.md sections 5-6.

- `resize`: the whole image resized to a fixed (H, W) (e.g. CamVid at its native 360 x 480);
  predictions are resized back to the original size and scored there.
- `centre_crop` (protocol A): short side resized to `short_side`, centre crop of `crop` x `crop`;
  the label goes through the same geometry (nearest) and is scored at the crop.
- `sliding` (protocol B): short side resized to `short_side`, windows of `crop` at `stride` as
  mmsegmentation's slide inference, overlapping logits averaged, resized to the original size
  and scored there.

Training views use `resize` or `centre_crop` (the plain cached view); augmented views rescale
the same geometry by a random factor and crop at random (features.augmented_view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

MODES = ("resize", "centre_crop", "sliding")


@dataclass(frozen=True)
class View:
    mode: str
    size: tuple[int, int] | None = None  # resize: (H, W)
    short_side: int | None = None
    crop: int | None = None
    stride: int | None = None  # sliding only
    interpolation: str = "bilinear"  # image resampling: bilinear, or nearest (Cityscapes in protocol A)
    labels: str | None = None  # the dataset's label set scored under this view (e.g. context59)
    crf: bool = False  # also score with dense-CRF post-processing

    @classmethod
    def from_config(cls, cfg: dict[str, Any], where: str = "view") -> View:
        from .configcheck import check_view

        check_view(cfg, where)
        mode = cfg.get("mode")
        if mode not in MODES:
            raise InputError(f"{where}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        need = {
            "resize": ("size",),
            "centre_crop": ("short_side", "crop"),
            "sliding": ("short_side", "crop", "stride"),
        }[mode]
        missing = [k for k in need if cfg.get(k) is None]
        if missing:
            raise InputError(f"{where}: mode {mode} needs {', '.join(missing)}")
        if mode == "centre_crop" and cfg["short_side"] < cfg["crop"]:
            raise InputError(f"{where}: short_side {cfg['short_side']} is smaller than crop {cfg['crop']}")
        if cfg.get("interpolation", "bilinear") not in ("bilinear", "nearest"):
            raise InputError(f"{where}.interpolation: expected bilinear or nearest, got {cfg['interpolation']!r}")
        size = (int(cfg["size"][0]), int(cfg["size"][1])) if cfg.get("size") is not None else None
        known: dict[str, Any] = {
            k: cfg[k]
            for k in ("short_side", "crop", "stride", "interpolation", "labels", "crf")
            if cfg.get(k) is not None
        }
        return cls(mode=mode, size=size, **known)

    @property
    def input_size(self) -> tuple[int, int]:
        """The network's input size (a window's size for `sliding`)."""
        return self._given("size") if self.mode == "resize" else (self._given("crop"), self._given("crop"))

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.mode == "resize":
            return self._given("size")
        scale = self._given("short_side") / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def resize(self, image: np.ndarray, shape: tuple[int, int] | None = None) -> torch.Tensor:
        """HxWx3 uint8 -> (3, H', W') uint8 at `shape` (default: this view's resized shape)."""
        shape = shape or self.resized_shape(*image.shape[:2])
        return resize_image(image, shape, self.interpolation)

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The network input of `resize` and `centre_crop` views: (3, h, w) uint8."""
        if self.mode == "sliding":
            raise ValueError("a sliding view has no single network input; use windows()")
        t = self.resize(image)
        return centre_crop(t, self._given("crop")) if self.mode == "centre_crop" else t

    def scored(self, image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Image (H, W, 3) and label at the geometry where predictions are scored."""
        if self.mode != "centre_crop":
            return image, label
        img = self.prepare(image).permute(1, 2, 0).numpy()
        if label is None:
            return img, None
        lab = torch.from_numpy(label.astype(np.int64))[None, None].float()
        lab = F.interpolate(lab, size=self.resized_shape(*label.shape), mode="nearest")[0].long()
        return img, centre_crop(lab, self._given("crop"))[0].numpy()

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, bottom, left, right) of each sliding window over an image of this size, placed as
        mmsegmentation's slide_inference does (the last window shifted back to fit)."""
        rows = _starts(height, self._given("crop"), self._given("stride"))
        cols = _starts(width, self._given("crop"), self._given("stride"))
        return [(t, b, l, r) for t, b in rows for l, r in cols]

    def _given(self, name: str) -> Any:
        """A geometry field this view's mode requires (from_config checked it is set)."""
        value = getattr(self, name)
        if value is None:
            raise InputError(f"a {self.mode} view has no {name}")
        return value


def _starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    n = max(length - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + crop, length)
        out.append((max(end - crop, 0), end))
    return out


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """HxWx3 uint8 -> (3, H', W') uint8 tensor; bilinear is antialiased when shrinking."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if interpolation == "nearest":
        return F.interpolate(t[None], size=tuple(size), mode="nearest")[0]
    out = F.interpolate(t[None].float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def centre_crop(t: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    top, left = max((h - crop) // 2, 0), max((w - crop) // 2, 0)
    return t[..., top : top + crop, left : left + crop]
