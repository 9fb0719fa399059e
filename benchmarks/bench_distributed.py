"""Claim: data-parallel training over MPI scales tokens/s with the number of CPU ranks on config S
(one thread per rank, batch 8 per rank), and the gradient all-reduce is a small share of a step.

Runs `mpirun -np N` on this script for each N in --ranks (default 1 2), every rank with
OMP_NUM_THREADS=1 (and the BLAS thread variables at 1). Each step is timed in three parts on
every rank: compute (forward + backward), wait (a barrier: load imbalance between ranks) and
all-reduce (one MPI_Allreduce of the flat gradient buffer, 4 bytes x parameters), then clip +
AdamW. Reported: median over the timed steps of rank 0, global tokens/s = N x B x T / step.
Weak scaling: the global batch grows with N. On a shared machine the numbers are noisy; the
script prints the machine load next to them. The NCCL path is not measured here (needs GPUs).

    python benchmarks/bench_distributed.py [--backend numpy] [--steps 3] [--ranks 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(os.path.dirname(HERE), "python")
try:  # an installed kernelgpt, or the checkout's python/ (dev build)
    import kernelgpt  # noqa: F401
except ImportError:
    sys.path.insert(0, PYDIR)

ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def worker(args) -> None:
    from kernelgpt.backends import get_backend
    from kernelgpt.distributed import MPICommunicator, rank_slice
    from kernelgpt.model import GPT, GPTConfig
    comm = MPICommunicator(timeout=600)
    be = get_backend(args.backend)
    cfg = GPTConfig.preset(args.config)
    B, T = args.batch, cfg.block_size
    model = GPT(cfg, backend=be, seed=0)
    comm.broadcast_(model.params)
    m, v = be.zeros(model.params.shape), be.zeros(model.params.shape)
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg.vocab_size, 1 << 20, dtype=np.int32)
    nd, rows = model.n_decay, []
    with comm.fail_fast():
        for step in range(args.warmup + args.steps):
            starts = rng.integers(0, len(data) - T - 1, comm.world_size * B)
            mine = starts[rank_slice(len(starts), comm.rank, comm.world_size)]
            x = np.stack([data[s:s + T] for s in mine])
            y = np.stack([data[s + 1:s + T + 1] for s in mine])
            t0 = time.perf_counter()
            model.zero_grad()
            model.forward(x, y, return_logits=False)
            model.backward()
            t1 = time.perf_counter()
            comm.barrier()
            t2 = time.perf_counter()
            comm.allreduce_mean_(model.grads)
            t3 = time.perf_counter()
            norm = float(np.sqrt(be.global_norm_sq(model.grads)))
            if norm > 1.0:
                be.scale_(model.grads, 1.0 / (norm + 1e-6))
            for sl, wd in ((slice(0, nd), 0.1), (slice(nd, None), 0.0)):
                be.adamw_update(model.params[sl], model.grads[sl], m[sl], v[sl], lr=1e-4,
                                beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=wd, step=step + 1)
            t4 = time.perf_counter()
            if step >= args.warmup:
                rows.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0))
    if comm.rank == 0:
        med = np.median(np.array(rows), axis=0)
        print("RESULT " + json.dumps({
            "ranks": comm.world_size, "compute_s": med[0], "wait_s": med[1],
            "allreduce_s": med[2], "update_s": med[3], "step_s": med[4],
            "tokens_per_s": comm.world_size * B * T / med[4],
            "allreduce_mb": model.grads.nbytes / 1e6, "params": model.num_params()}), flush=True)


def launch(n: int, args) -> dict:
    env = dict(os.environ, **ONE_THREAD, OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none")
    cmd = ["mpirun", "-np", str(n), sys.executable, os.path.abspath(__file__), "--worker",
           "--backend", args.backend, "--config", args.config, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"mpirun -np {n} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--config", default="s")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if shutil.which("mpirun") is None:
        raise SystemExit("mpirun not found (apt install openmpi-bin libopenmpi-dev)")
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.2f} (shared machine: timings are noisy)")
    print(f"backend {args.backend}, config {args.config}, batch {args.batch}/rank, one thread per "
          f"rank, {args.steps} timed steps after {args.warmup} warm-up, medians of rank 0")
    res = [launch(n, args) for n in args.ranks]
    print(f"{'ranks':>5} {'tokens/s':>9} {'step s':>7} {'compute':>8} {'wait':>6} "
          f"{'allreduce':>9} {'share':>6}")
    for r in res:
        print(f"{r['ranks']:>5} {r['tokens_per_s']:>9.0f} {r['step_s']:>7.2f} "
              f"{r['compute_s']:>8.2f} {r['wait_s']:>6.3f} {r['allreduce_s']:>9.3f} "
              f"{r['allreduce_s'] / r['step_s']:>6.1%}")
    print(f"all-reduce payload {res[0]['allreduce_mb']:.1f} MB ({res[0]['params']:,} float32); "
          f"load average now {os.getloadavg()[0]:.2f}")
    if len(res) >= 2:
        speedup = res[-1]["tokens_per_s"] / res[0]["tokens_per_s"]
        share = res[-1]["allreduce_s"] / res[-1]["step_s"]
        print(f"claim: {res[-1]['ranks']} ranks give {speedup:.2f}x the tokens/s of "
              f"{res[0]['ranks']} (all-reduce {share:.1%} of the step): "
              f"{'held' if speedup > 1 and share < 0.2 else 'did not hold'} on this run")


if __name__ == "__main__":
    main()
