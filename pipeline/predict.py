"""Inference geometry: a run's token logits brought to the pixels of an image under a view.

One forward pass for `resize` and `centre_crop` views; sliding windows (protocol B) averaged on a
canvas, built in bands when the canvas would exceed a memory bound. Token logits are upsampled
bilinearly to the padded input, cropped to the input and resized to the scoring geometry of the
view (views.py: the original size for `resize` and `sliding`, the centre crop for
`centre_crop`). Used by evaluation (scores) and by the Segmenter (label maps), so both see the
same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import Backbone, BackboneSpec
from .errors import InputError
from .features import encode_crops
from .models import RunModel, TokenScorer
from .views import View


def logits_to_image(
    logits: torch.Tensor, stride: int, input_size: tuple[int, int], out_size: tuple[int, int]
) -> torch.Tensor:
    """(K, h, w) token logits -> (K, H, W): upsampled to the padded input, cropped to `input_size`,
    resized to `out_size`."""
    _k, h, w = logits.shape
    # a genuinely channels-last (1, K, h, w) tensor takes torch's vectorised CPU path and makes
    # the argmax over K contiguous: about 6x faster than a view of a permuted batch (whose odd
    # batch stride falls back to a slow generic kernel)
    x = logits.permute(1, 2, 0).contiguous()[None].permute(0, 3, 1, 2)
    up = F.interpolate(x, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(out_size):
        up = F.interpolate(up, size=tuple(out_size), mode="bilinear", align_corners=False)
    return up[0]


def scored_size(view: View, image_hw: tuple[int, int]) -> tuple[int, int]:
    return view.input_size if view.mode == "centre_crop" else (int(image_hw[0]), int(image_hw[1]))


def image_logits(
    model: TokenScorer,
    backbone: Backbone,
    images: list[np.ndarray],
    view: View,
    device: torch.device,
    window_batch: int = 8,
    at_view: bool = False,
) -> list[torch.Tensor]:
    """Logits at the scoring geometry for images of any size, from a live backbone: one forward
    pass for `resize` / `centre_crop` views; sliding windows (protocol B) otherwise. `at_view`:
    stop at the view's own resolution (its input size, or the resized canvas of the windows),
    whose size the view bounds, and leave the last resize to the caller (`resample_rows`)."""
    stride = backbone.spec.stride
    if view.mode != "sliding":
        feats = encode_crops(backbone, [view.prepare(im) for im in images], device, view.input_size)
        logits = model.token_logits(feats["high"], feats["input"]).float()
        return [
            logits_to_image(
                logits[j], stride, view.input_size, view.input_size if at_view else scored_size(view, im.shape[:2])
            )
            for j, im in enumerate(images)
        ]
    return [sliding_logits(model, backbone, im, view, device, window_batch, resize=not at_view) for im in images]


def resample_rows(logits: torch.Tensor, out_hw: tuple[int, int], reduce, max_elements: int = 2**27) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as F.interpolate) of (K, h, w) logits to `out_hw`, in
    bands of output rows so that at most `max_elements` resized values exist at once; `reduce`
    maps each (K, rows, W) band to what is kept (e.g. its argmax over K)."""
    k = logits.shape[0]
    height, width = out_hw
    rows = max(1, max_elements // max(1, k * width))
    gx = (torch.arange(width, dtype=torch.float32, device=logits.device) + 0.5) / width * 2 - 1
    bands = []
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        gy = (torch.arange(r0, r1, dtype=torch.float32, device=logits.device) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, rows, W, 2) as (x, y)
        band = F.grid_sample(logits[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        bands.append(reduce(band))
    return torch.cat(bands, dim=-2)


def max_canvas_values() -> int:
    """Logit values a sliding-window canvas may hold at once (default 2^27: 512 MiB in float32, the
    bound `Segmenter` keeps for resized logits); a larger canvas is built in bands."""
    return int(os.environ.get("NES_MAX_CANVAS_VALUES", 2**27))


def sliding_logits(
    model: TokenScorer,
    backbone: Backbone,
    image: np.ndarray,
    view: View,
    device: torch.device,
    window_batch: int = 8,
    resize: bool = True,
) -> torch.Tensor:
    """Protocol B: short side resized, windows of the crop size at the view's stride, logits of
    overlapping windows averaged, then (with `resize`) resized to the original image size.
    The averaged logits live at the resized image's size, which extreme aspect ratios blow up
    (10 x 10000 at short side 512: 512 x 512000): above `max_canvas_values()` the canvas is
    built in bands of its long axis, each resized to the image's size as it is finished
    (`_banded_sliding_logits`; the result is then at the image's size whatever `resize` says)."""
    height, width = view.resized_shape(*image.shape[:2])
    if model.num_clusters * height * width > max_canvas_values():
        return _banded_sliding_logits(model, backbone, image, view, device, window_batch, max_canvas_values())
    resized = view.resize(image, (height, width))
    canvas = torch.zeros(model.num_clusters, height, width, device=device)
    count = torch.zeros(1, height, width, device=device)
    for window, logits in _window_logits(model, backbone, resized, view.windows(height, width), device, window_batch):
        t, b, l, r = window
        canvas[:, t:b, l:r] += logits
        count[:, t:b, l:r] += 1
    canvas /= count
    if resize and (height, width) != tuple(image.shape[:2]):
        canvas = F.interpolate(canvas[None], size=tuple(image.shape[:2]), mode="bilinear", align_corners=False)[0]
    return canvas


def _window_logits(
    model: TokenScorer,
    backbone: Backbone,
    resized: torch.Tensor,
    windows: list[tuple[int, int, int, int]],
    device: torch.device,
    window_batch: int,
) -> Iterator[tuple[tuple[int, int, int, int], torch.Tensor]]:
    """(window, its (K, b - t, r - l) logits) for each window of a resized (3, H, W) image."""
    stride = backbone.spec.stride
    for start in range(0, len(windows), window_batch):
        group = windows[start : start + window_batch]
        feats = encode_crops(backbone, [resized[:, t:b, l:r] for t, b, l, r in group], device)
        logits = model.token_logits(feats["high"], feats["input"]).float()
        for j, (t, b, l, r) in enumerate(group):
            yield (t, b, l, r), logits_to_image(logits[j], stride, (b - t, r - l), (b - t, r - l))


def _banded_sliding_logits(
    model: TokenScorer,
    backbone: Backbone,
    image: np.ndarray,
    view: View,
    device: torch.device,
    window_batch: int,
    budget: int,
) -> torch.Tensor:
    """`sliding_logits` at the image's size with the canvas built band by band along its long
    axis, so that about `budget` canvas values exist at once: each band averages the windows that
    overlap it (a window across two bands is computed for both), is resized on its short axis,
    then interpolated on its long axis at exactly the positions and weights of one bilinear
    resize of the whole canvas (align_corners=False). Equal to the one-canvas result up to
    float rounding; refused, with the sizes, when not even one window's band fits the budget."""
    k = model.num_clusters
    height, width = view.resized_shape(*image.shape[:2])
    out_h, out_w = image.shape[:2]
    dim = 2 if width >= height else 1  # the long axis of (K, H, W)
    long_c, short_c = (width, height) if dim == 2 else (height, width)
    long_o, short_o = (out_w, out_h) if dim == 2 else (out_h, out_w)
    windows = view.windows(height, width)
    window_len = max((r - l) if dim == 2 else (b - t) for t, b, l, r in windows)
    # values per canvas position of the long axis while a band is finished: the band, its resize,
    # and the two gathered neighbours of each output position
    per_position = short_c + short_o * (1 + 2 * max(1.0, long_o / long_c))
    band = int(budget // (k * per_position)) - 1
    bound = f"the bound of {budget:,} logit values ({budget * 4 / 2**20:,.0f} MiB, $NES_MAX_CANVAS_VALUES)"
    where = f"a {out_h}x{out_w} image under this sliding view is averaged on a {height}x{width} canvas of {k} logits"
    if k * out_h * out_w > budget:
        raise InputError(f"{where}: its logits at the image's size exceed {bound}; use a resize view")
    if band < window_len:
        raise InputError(
            f"{where}: not even bands of one window ({window_len} positions) fit {bound}; "
            "crop the image or use a resize view"
        )
    resized = view.resize(image, (height, width))
    # where each output position of the long axis samples the canvas (as F.interpolate does)
    x = ((torch.arange(long_o, dtype=torch.float64) + 0.5) * (long_c / long_o) - 0.5).clamp_min(0)
    lower = x.floor().long().clamp_max(long_c - 1)
    upper = (lower + 1).clamp_max(long_c - 1)
    frac = (x - lower).float().to(device)
    out = torch.empty(k, out_h, out_w, device=device)
    for c0 in range(0, long_c, band):
        c1 = min(c0 + band, long_c)
        end = min(c1 + 1, long_c)  # one more position: the upper neighbour of the band's last sample
        rows = ((lower >= c0) & (lower < c1)).nonzero().flatten()
        if not len(rows):
            continue
        shape = (k, short_c, end - c0) if dim == 2 else (k, end - c0, short_c)
        canvas = torch.zeros(shape, device=device)
        count = torch.zeros((1, *shape[1:]), device=device)
        inside = [w for w in windows if _extent(w, dim)[0] < end and _extent(w, dim)[1] > c0]
        for window, logits in _window_logits(model, backbone, resized, inside, device, window_batch):
            lo, hi = _extent(window, dim)
            a, z = max(lo, c0), min(hi, end)
            part = logits.narrow(dim, a - lo, z - a)
            t, b, l, r = window
            target = (
                (slice(None), slice(t, b), slice(a - c0, z - c0))
                if dim == 2
                else (slice(None), slice(a - c0, z - c0), slice(l, r))
            )
            canvas[target] += part
            count[target] += 1
        canvas /= count
        size = (short_o, end - c0) if dim == 2 else (end - c0, short_o)
        canvas = F.interpolate(canvas[None], size=size, mode="bilinear", align_corners=False)[0]
        f = frac[rows.to(device)].view((1, 1, -1) if dim == 2 else (1, -1, 1))
        below = canvas.index_select(dim, (lower[rows] - c0).to(device))
        above = canvas.index_select(dim, (upper[rows] - c0).to(device))
        out.index_copy_(dim, rows.to(device), below * (1 - f) + above * f)
    return out


def _extent(window: tuple[int, int, int, int], dim: int) -> tuple[int, int]:
    """A window's (start, end) on axis `dim` of (K, H, W)."""
    t, b, l, r = window
    return (l, r) if dim == 2 else (t, b)


def backbone_for(model: RunModel, weights_dir: str | Path | None = None) -> Backbone:
    return Backbone(backbone_spec_for(model, weights_dir))


def backbone_spec_for(model: RunModel, weights_dir: str | Path | None = None) -> BackboneSpec:
    """The run's backbone settings. Converted weights go to `weights_dir` (default:
    $NES_WEIGHTS_DIR, else `weights`), never to a folder the model file names: a model.pt does
    not choose where anything is written."""
    local = str(weights_dir or os.environ.get("NES_WEIGHTS_DIR", "weights"))
    return BackboneSpec.from_config({**model.spec.backbone_spec, "weights_dir": local})
