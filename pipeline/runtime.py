"""Process-level plumbing shared by every stage: device, seeding, logging, atomic writes."""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import torch

import numpy as np


def resolve_device(name: str = "auto") -> "torch.device":
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> "torch.Generator":
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
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
    return tqdm(iterable, file=_LineStream(sys.stderr), mininterval=interval, maxinterval=max(interval, 60),
                ascii=True, **kwargs)


def set_threads(threads: int | None) -> None:
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


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary file and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain))
    tmp.replace(path)


def save_torch_atomic(obj: Any, path: Path) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _plain(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
