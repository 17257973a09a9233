"""Process-level plumbing shared by every stage: device, seeding, threads, logging, progress, cost
measurement and FAISS GPU resources."""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

import numpy as np

from .errors import InputError


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise InputError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device: {name} asked for, but torch sees no CUDA GPU here (use auto or cpu)")
    return torch.device(name)


def native_bfloat16(device: torch.device, cpu_flags: str | None = None) -> bool:
    """Whether `device` multiplies bfloat16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo; elsewhere, or unreadable: no). Where bf16 is
    emulated, autocast is slower than float32."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = _cpu_info() if cpu_flags is None else cpu_flags
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


@functools.cache
def _cpu_info() -> str:
    """/proc/cpuinfo, read once per process (every inference batch asks); "" where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def seed_everything(seed: int) -> torch.Generator:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped records on stderr (which `nes --log` points at the job's log file)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler()],
        force=True,
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports missing CPU variants at INFO


class _LineStream:
    """tqdm's output for a log file: each refresh on its own timestamped line instead of `\r`-joined
    updates on one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "\n").strip()
        if text:
            self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.splitlines()[-1].strip()}\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **kwargs):
    """tqdm on a terminal; in a log (stderr not a terminal) one timestamped line every 30 s at most
    (`NES_PROGRESS_SECONDS` to change), and a last line when it ends."""
    import sys

    from tqdm import tqdm

    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    interval = float(os.environ.get("NES_PROGRESS_SECONDS", 30))
    return tqdm(
        iterable,
        file=_LineStream(sys.stderr),
        mininterval=interval,
        maxinterval=max(interval, 60),
        ascii=True,
        **kwargs,
    )


def set_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise InputError(f"--threads: expected a positive number of threads, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Wall time and peak memory of a stage, filled in when the block ends: `wall_s`, `peak_rss_mb`
    (the process's peak resident memory so far, imports and data included: what a job asks a
    scheduler for) and `peak_gpu_mb` on CUDA."""
    stats: dict[str, float] = {}
    started = time.time()
    cuda = _cuda_in_use()
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        yield stats
    finally:
        stats["wall_s"] = round(time.time() - started, 2)
        stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
        if cuda:
            import torch

            stats["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _cuda_in_use() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def faiss_gpus() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


_FAISS_GPU_RESOURCES = None


def faiss_gpu_resources() -> Any:
    """One set of FAISS GPU resources (scratch memory, streams) per process, made on first use."""
    global _FAISS_GPU_RESOURCES
    if _FAISS_GPU_RESOURCES is None:
        import faiss

        _FAISS_GPU_RESOURCES = faiss.StandardGpuResources()
    return _FAISS_GPU_RESOURCES
