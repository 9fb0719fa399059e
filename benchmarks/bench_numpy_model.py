"""Claim: the pure-NumPy backend trains the XS, S and M reference configs at the tokens/s and
GFLOP/s printed here, and samples with its KV cache at the printed tokens/s: these are the
baselines the native and CUDA backends are measured against.

Usage:  PYTHONPATH=python python3 benchmarks/bench_numpy_model.py [--configs xs,s,m] [--rounds N]
        (or `pytest benchmarks/bench_numpy_model.py` for the pytest-benchmark XS step.)
A training step is forward (fused classifier) + backward + AdamW (two backend.adamw_update calls:
matrices with weight decay, vectors without). FLOPs use the formula of docs/ARCHITECTURE.md
(kernelgpt.model.train_flops_per_step). Medians over a few rounds after one warm-up.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_time  # noqa: E402

from kernelgpt.model import GPT, GPTConfig, train_flops_per_step  # noqa: E402
from kernelgpt.train import PRESET_BATCH_SIZE  # noqa: E402

ROUNDS = {"xs": 5, "s": 3, "m": 2}        # the M step takes tens of seconds in NumPy
SAMPLE_TOKENS = {"xs": 48, "s": 96}


def make_step(name: str, seed: int = 0):
    """(model, step function, B, T) for one preset on the NumPy backend."""
    cfg = GPTConfig.preset(name)
    B, T = PRESET_BATCH_SIZE[name], cfg.block_size
    model = GPT(cfg, backend="numpy", seed=seed)
    be = model.backend
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    tgt = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    m, v = be.zeros(model.params.shape), be.zeros(model.params.shape)
    nd = model.n_decay
    state = {"step": 0}

    def step():
        model.zero_grad()
        model.forward(idx, tgt, return_logits=False)
        model.backward()
        state["step"] += 1
        for sl, wd in ((slice(0, nd), 0.1), (slice(nd, None), 0.0)):
            be.adamw_update(model.params[sl], model.grads[sl], m[sl], v[sl], lr=1e-4, beta1=0.9,
                            beta2=0.95, eps=1e-8, weight_decay=wd, step=state["step"])
    return model, step, B, T


def bench_train(name: str, rounds: int) -> dict:
    model, step, B, T = make_step(name)
    med, times = median_time(step, rounds, warmup=1)
    flops = train_flops_per_step(model.config, B, T)
    return dict(config=name, B=B, T=T, params=model.num_params(), step_s=med,
                tokens_per_s=B * T / med, gflops=flops / med / 1e9, times=times)


def bench_sample(name: str, rounds: int) -> dict:
    cfg = GPTConfig.preset(name)
    model = GPT(cfg, backend="numpy", seed=0)
    n = SAMPLE_TOKENS[name]
    prompt = np.array([1, 2, 3, 4], np.int32)  # prompt + n stays within block_size: no sliding
    med, _ = median_time(lambda: model.generate(prompt, n, temperature=0.8, top_k=50, seed=0),
                         rounds, warmup=1)
    return dict(config=name, new_tokens=n, s=med, tokens_per_s=n / med)


def test_bench_numpy_train_step_xs(benchmark):
    """pytest-benchmark entry: one XS training step on the NumPy backend."""
    _, step, _, _ = make_step("xs")
    step()
    benchmark(step)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="xs,s,m")
    ap.add_argument("--rounds", type=int, default=None, help="override the per-config rounds")
    ap.add_argument("--no-sample", action="store_true")
    args = ap.parse_args(argv)
    names = [c.strip().lower() for c in args.configs.split(",") if c.strip()]
    print(f"machine: {machine()}")
    print("NumPy training step (forward + backward + AdamW), median:")
    for name in names:
        r = bench_train(name, args.rounds or ROUNDS[name])
        print(f"  {name.upper():>2}  B={r['B']} T={r['T']} params={r['params'] / 1e6:.2f}M  "
              f"step {r['step_s'] * 1e3:9.1f} ms  {r['tokens_per_s']:9.0f} tok/s  "
              f"{r['gflops']:6.1f} GFLOP/s  (rounds: "
              f"{', '.join(f'{t:.3f}' for t in r['times'])} s)")
    if not args.no_sample:
        print("NumPy sampling with the KV cache, batch 1, median:")
        for name in [n for n in names if n in SAMPLE_TOKENS]:
            r = bench_sample(name, args.rounds or 3)
            print(f"  {name.upper():>2}  {r['new_tokens']} new tokens in {r['s']:.3f} s  "
                  f"{r['tokens_per_s']:8.1f} tok/s")
    print("claim: baseline figures recorded (no comparison in this script).")


if __name__ == "__main__":
    main()
