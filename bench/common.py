"""Timing and peak-memory helpers for the benchmarks (same process, ratios against a reference)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
import time
from contextlib import contextmanager

import psutil


@contextmanager
def measure(results: dict, name: str, interval: float = 0.002):
    """Wall time and peak RSS growth above the starting RSS, sampled by a thread."""
    gc.collect()
    with contextlib.suppress(OSError):  # hand freed heap back to the OS: the RSS growth we see is this block's own
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    proc = psutil.Process()
    start_rss = proc.memory_info().rss
    peak = [start_rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        results[name] = {"seconds": elapsed, "peak_mb": (peak[0] - start_rss) / 2**20}
