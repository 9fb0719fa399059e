"""Shared helpers for the benchmark scripts: median wall time over rounds after a warm-up, and a
one-line description of the machine (printed by every benchmark next to its numbers).
The training-FLOP formula lives in :func:`kernelgpt.model.train_flops_per_step` (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, List, Tuple

import numpy as np


def median_time(fn: Callable[[], object], rounds: int, warmup: int = 1) -> Tuple[float, List[float]]:
    """Run fn ``warmup`` times untimed, then ``rounds`` times; return (median seconds, all times)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine() -> str:
    """CPU model, logical cores, OMP_NUM_THREADS, Python and NumPy versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, Python {platform.python_version()}, "
            f"NumPy {np.__version__}")
