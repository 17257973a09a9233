"""Where training batches come from: the Zarr cache read one batch ahead in a thread, or the whole
cache held in (device) memory and gathered there. The same items give the same values either way
(the cache stores float16; both hand out float32), so the choice never changes a result, only
where the time goes: on a GPU the streamed read of the next batch bounded the step.

`resident="auto"` keeps the cache in memory when its float16 size is at most half of what the
device has free (GPU memory, or the host's available RAM for the CPU); "on" / "off" force it
(`nes fit --resident`, or NES_RESIDENT).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .cache import ARRAYS, FeatureCache
from .errors import InputError

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


def cache_bytes(cache: FeatureCache) -> int:
    """The cache's arrays at float16, as resident memory would hold them."""
    h, w = cache.grid
    return len(cache) * h * w * sum(cache.dim(name) for name in ARRAYS) * 2


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not a POSIX system that says
        return 0


def keep_resident(cache: FeatureCache, device: torch.device, resident: str) -> bool:
    if resident not in ("auto", "on", "off"):
        raise InputError(f"--resident: expected auto, on or off, got {resident!r}")
    if resident != "auto":
        return resident == "on"
    return cache_bytes(cache) <= free_bytes(device) // 2


def batches(
    cache: FeatureCache, schedule: list[np.ndarray], device: torch.device, resident: str = "auto"
) -> Iterator[Batch]:
    """The batches of `schedule` (lists of cache items) in order, as float32 tensors on `device`."""
    if keep_resident(cache, device, resident):
        yield from _resident(cache, schedule, device)
    else:
        yield from _streamed(cache, schedule, device)


def _resident(cache: FeatureCache, schedule: list[np.ndarray], device: torch.device) -> Iterator[Batch]:
    log.info("training data resident on %s: %.0f MB (float16)", device, cache_bytes(cache) / 2**20)
    block = 64
    held = {
        name: torch.cat(
            [
                torch.from_numpy(cache.read(np.arange(s, min(s + block, len(cache))), (name,), np.float16)[name])
                for s in range(0, len(cache), block)
            ]
        ).to(device)
        for name in ARRAYS
    }
    for items in schedule:
        index = torch.as_tensor(items, device=device)
        yield {name: values.index_select(0, index).float() for name, values in held.items()}


def _streamed(cache: FeatureCache, schedule: list[np.ndarray], device: torch.device) -> Iterator[Batch]:
    """The next batch is read and decompressed in a thread while this one trains; for a GPU it is
    also copied into pinned (page-locked) host memory there, so the copy to the device runs
    asynchronously."""
    pinned = device.type == "cuda"

    def read(items: np.ndarray) -> dict[str, torch.Tensor]:
        arrays = {name: torch.from_numpy(values) for name, values in cache.read(items).items()}
        return {name: t.pin_memory() for name, t in arrays.items()} if pinned else arrays

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending: Future | None = reader.submit(read, schedule[0]) if schedule else None
        for step in range(len(schedule)):
            assert pending is not None
            arrays = pending.result()
            pending = reader.submit(read, schedule[step + 1]) if step + 1 < len(schedule) else None
            yield {name: values.to(device, non_blocking=pinned) for name, values in arrays.items()}
