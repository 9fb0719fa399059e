"""Where the native training step's time goes: every backend op of the model (each `*_forward`,
`*_backward`, `adamw_update`, `global_norm_sq`, `scale_` of kernelgpt.backends.native_backend) is
wrapped with a timer, one warm-up step runs, then the median of 5 steps is printed with each op's
share. Python and numpy work between ops (zero_grad, loss readout) is the difference between the
step and the timed ops.

Usage: PYTHONPATH=python python benchmarks/profile_native_step.py [xs|s|m] [threads]
"""
from __future__ import annotations

import collections
import statistics
import sys
import time

import numpy as np

from kernelgpt.backends import native_backend as nb
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.train import PRESET_BATCH_SIZE
from kernelgpt.optim import AdamW


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "s"
    nb.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    total = collections.defaultdict(float)
    calls = collections.Counter()
    names = [k for k in dir(nb) if k.endswith(("_forward", "_backward", "_update"))
             or k in ("global_norm_sq", "scale_")]
    for k in names:
        f = getattr(nb, k)

        def timed(*a, _f=f, _k=k, **kw):
            t = time.perf_counter()
            r = _f(*a, **kw)
            total[_k] += time.perf_counter() - t
            calls[_k] += 1
            return r
        setattr(nb, k, timed)
    cfg = GPTConfig.preset(name)
    B = PRESET_BATCH_SIZE[name]
    model = GPT(cfg, backend="native", seed=0)
    opt = AdamW(model, lr=1e-4, weight_decay=0.1)
    idx = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, cfg.block_size)).astype(np.int32)

    def step():
        model.zero_grad()
        model.forward(idx, idx, return_logits=False)
        model.backward()
        opt.step()
    step()
    total.clear()
    calls.clear()
    rounds, times = 5, []
    for _ in range(rounds):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"{name} step median {med * 1e3:.1f} ms; timed ops {sum(total.values()) / rounds * 1e3:.1f}"
          f" ms/step")
    for k, v in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"  {k:22s} {v / rounds * 1e3:8.2f} ms {calls[k] // rounds:4d} calls "
              f"{v / rounds / med * 100:5.1f}%")


if __name__ == "__main__":
    main()
