"""Claim: every non-GEMM native CPU op is faster than its NumPy reference twin on config S's
shapes (B=8, T=256, C=384, NH=6, V=8192), with attention computed block by block in both passes.

Run with pytest-benchmark (native and numpy side by side, grouped per op):
    PYTHONPATH=python python3 -m pytest benchmarks/bench_native_ops.py --benchmark-group-by=param:op
or as a script (native ops all timed before the numpy ones) printing median ms and the native/numpy speed-up per op:
    PYTHONPATH=python python3 benchmarks/bench_native_ops.py [--rounds 5]
Threads: OMP_NUM_THREADS (numpy uses OpenBLAS's own threads for its matmuls). The machine is
shared: read the ratios (same run), not the absolute figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_time  # noqa: E402

from kernelgpt.backends import numpy_backend, native_backend  # noqa: E402

B, T, C, NH, V = 8, 256, 384, 6, 8192
N = B * T
HS = C // NH


def make_cases(seed=0):
    """op name -> (setup -> callable(backend)). Inputs are float32 and shared by both backends."""
    r = np.random.default_rng(seed)
    g = lambda *s: np.ascontiguousarray(r.standard_normal(s), np.float32)  # noqa: E731
    idx = r.integers(0, V, (B, T)).astype(np.int32)
    tg = r.integers(0, V, N).astype(np.int32)
    wte, wpe = g(V, C), g(T, C)
    x, w, b = g(N, C), g(C), g(C)
    mean, rstd = np.empty(N, np.float32), np.empty(N, np.float32)
    qkv = g(B, T, 3 * C)
    att, lse = np.empty((B, T, C), np.float32), np.empty((B, NH, T), np.float32)
    native_backend.attention_forward(att, lse, qkv, NH)
    native_backend.layernorm_forward(np.empty((N, C), np.float32), mean, rstd, x, w, b)
    h = g(N, 4 * C)
    kc, vc = g(1, NH, T, HS), g(1, NH, T, HS)
    logits = g(N // 4, V)
    probs = np.empty_like(logits)
    native_backend.crossentropy_forward(np.empty(N // 4, np.float32), probs, logits, tg[:N // 4])
    flat = g(10_000_000)
    p, m, v = g(10_000_000), g(10_000_000), np.abs(g(10_000_000))
    o2 = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    eo, dwte, dwpe, dout = o2(B, T, C), o2(V, C), o2(T, C), g(B, T, C)
    lo, lm, lr_, ldx, ldw, ldb = o2(N, C), o2(N), o2(N), o2(N, C), o2(C), o2(C)
    ao, al, adq, dec = o2(B, T, C), o2(B, NH, T), o2(B, T, 3 * C), o2(1, C)
    go, gd, ro = o2(N, 4 * C), o2(N, 4 * C), o2(N, C)
    cl, cp, cd = o2(N // 4), o2(N // 4, V), o2(N // 4, V)
    q1 = np.ascontiguousarray(kc[0, :, -1].reshape(1, C))
    return {
        "embedding_forward": lambda be: be.embedding_forward(eo, idx, wte, wpe),
        "embedding_backward": lambda be: be.embedding_backward(dwte, dwpe, dout, idx),
        "layernorm_forward": lambda be: be.layernorm_forward(lo, lm, lr_, x, w, b),
        "layernorm_backward": lambda be: be.layernorm_backward(ldx, ldw, ldb, x, x, w, mean, rstd),
        "attention_forward": lambda be: be.attention_forward(ao, al, qkv, NH),
        "attention_backward": lambda be: be.attention_backward(adq, att, qkv, att, lse, NH),
        "attention_decode": lambda be: be.attention_decode(dec, q1, kc, vc, T),
        "gelu_forward": lambda be: be.gelu_forward(go, h),
        "gelu_backward": lambda be: be.gelu_backward(gd, h, h),
        "add": lambda be: be.add(ro, x, x),
        "crossentropy_forward": lambda be: be.crossentropy_forward(cl, cp, logits, tg[:N // 4]),
        "crossentropy_backward": lambda be: be.crossentropy_backward(cd, probs, tg[:N // 4], 1e-3),
        "global_norm_sq": lambda be: be.global_norm_sq(flat),
        "scale_": lambda be: be.scale_(flat, 1.0),
        "adamw_update": lambda be: be.adamw_update(p, flat, m, v, lr=1e-9, beta1=0.9, beta2=0.95,
                                                   eps=1e-8, weight_decay=0.0, step=10),
    }


_CASES = None


def _cases():
    global _CASES
    if _CASES is None:
        _CASES = make_cases()
    return _CASES


OPS = [
    "embedding_forward", "embedding_backward", "layernorm_forward", "layernorm_backward",
    "attention_forward", "attention_backward", "attention_decode", "gelu_forward", "gelu_backward",
    "add", "crossentropy_forward", "crossentropy_backward",
    "global_norm_sq", "scale_", "adamw_update"]


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("op", OPS)
def test_bench_op(benchmark, op, backend):
    be = native_backend if backend == "native" else numpy_backend
    fn = _cases()[op]
    benchmark.pedantic(fn, args=(be,), rounds=5 if backend == "native" else 3, warmup_rounds=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(machine())
    print(f"config S shapes: B={B} T={T} C={C} NH={NH} V={V}; native threads "
          f"{native_backend.get_num_threads()}")
    cases = _cases()
    # All native ops first, then all numpy ops, with a pause between: OpenBLAS's worker threads
    # keep spinning after a numpy call and would steal the cores from our OpenMP threads.
    tn = {op: median_time(lambda: cases[op](native_backend), args.rounds)[0] for op in OPS}
    time.sleep(0.5)
    tr = {op: median_time(lambda: cases[op](numpy_backend), max(2, args.rounds // 2))[0]
          for op in OPS}
    slower = [op for op in OPS if tn[op] >= tr[op]]
    print(f"{'op':24s} {'native ms':>10s} {'numpy ms':>10s} {'speed-up':>9s}")
    for op in OPS:
        print(f"{op:24s} {tn[op] * 1e3:10.2f} {tr[op] * 1e3:10.2f} {tr[op] / tn[op]:8.1f}x")
    print("claim held: every native op faster than numpy" if not slower
          else f"claim NOT held for: {', '.join(slower)}")


if __name__ == "__main__":
    main()
