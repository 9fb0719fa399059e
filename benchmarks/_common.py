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


def decode_step_bytes(cfg, matrix_bytes: float) -> float:
    """Bytes of weights one batch-1 decoding step of ``cfg`` (a kernelgpt GPTConfig) reads when
    its matrices (the blocks' and the lm_head) take ``matrix_bytes`` bytes per weight (fp32 4,
    bf16 2, our int8 1 + 4/32, GGUF's Q8_0 1 + 2/32) and everything else is fp32: the norms and
    biases, and one row of each embedding table (KV-cache reads are not counted)."""
    from kernelgpt.model import GPT
    C, L, V, H = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.hidden
    FW = 2 * H if cfg.mlp == "swiglu" else H
    mats = L * (cfg.qkv_width * C + C * C + FW * C + C * H) + V * C
    P = GPT(cfg, backend="numpy", seed=0).num_params()
    tables = (0 if cfg.tie_embeddings else V * C) + \
        (cfg.block_size * C if cfg.pos_emb == "learned" else 0)
    rest = max(P - mats - tables, 0) + C + (C if cfg.pos_emb == "learned" else 0)
    return mats * matrix_bytes + rest * 4.0
