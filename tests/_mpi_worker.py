"""Per-rank program for tests/test_distributed.py, started as `mpirun -np N python _mpi_worker.py
MODE ...` (or as a plain process for the one-rank baselines). Not collected by pytest.

Modes:
  step   K optimizer steps of a tiny GPT on synthetic tokens through distributed_train_step; the
         global batch of each step is drawn from one generator seeded alike on every rank and
         rank r takes rows [r*B, (r+1)*B), so N ranks with batch B see what 1 rank with N*B sees.
         Writes OUT/rank{r}.npz (losses, params).
  train  Trainer(..., comm=comm).fit() on a TokenDataset of the same tokens (--out: run folder,
         --resume: continue it); writes OUT/result{r}.npz (losses, params, step).
  fail   rank 1 raises before the first all-reduce that rank 0 is already waiting in.
  hang   rank 1 sleeps; rank 0's watchdog (--timeout) must end the job.
  die    rank 1 ends abruptly (os._exit(3), no exception, no MPI_Finalize): mpirun ends the job.
  nccl   one-GPU check of NCCLCommunicator: the NCCL all-reduce and broadcast calls driven with
         world_size 1 (sum over one rank, then /1: must give the input back bit for bit).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
try:  # the test passes the parent's kernelgpt on PYTHONPATH; by hand, fall back to python/
    import kernelgpt  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from kernelgpt.distributed import (MPICommunicator, SingleProcess,  # noqa: E402
                                   distributed_train_step, rank_slice)
from kernelgpt.model import GPT, GPTConfig  # noqa: E402

TINY = dict(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=24)


class _AdamW:
    """Just enough AdamW (the backend's fused update over the decayed and the plain region)."""

    def __init__(self, model, lr=3e-3, wd=0.1):
        self.model, self.lr, self.wd, self.t = model, lr, wd, 0
        be = model.backend
        self.m, self.v = be.zeros(model.params.shape), be.zeros(model.params.shape)

    def step(self, lr=None):
        self.t += 1
        be, p, g, nd = self.model.backend, self.model.params, self.model.grads, self.model.n_decay
        for sl, wd in ((slice(0, nd), self.wd), (slice(nd, None), 0.0)):
            be.adamw_update(p[sl], g[sl], self.m[sl], self.v[sl], lr=lr or self.lr, beta1=0.9,
                            beta2=0.95, eps=1e-8, weight_decay=wd, step=self.t)


def tokens(n=4000, vocab=TINY["vocab_size"]):
    # Text-like: a noisy repeating pattern, so the loss actually moves in a few steps.
    rng = np.random.default_rng(7)
    base = np.tile(np.arange(vocab, dtype=np.int32), n // vocab + 1)[:n]
    noise = rng.integers(0, vocab, n, dtype=np.int32)
    return np.where(rng.random(n) < 0.2, noise, base).astype(np.int32)


def run_steps(args, comm):
    from kernelgpt.backends import get_backend
    be = get_backend(args.backend)
    model = GPT(GPTConfig(**TINY), backend=be, seed=args.seed + comm.rank * args.desync)
    comm.broadcast_(model.params)  # identical start on every rank, whatever the seed did
    opt = _AdamW(model)
    data, T = tokens(), TINY["block_size"]
    rng = np.random.default_rng(1234)  # same stream on every rank: the global batch
    losses, gb = [], comm.world_size * args.batch
    for _ in range(args.steps):
        starts = rng.integers(0, len(data) - T - 1, size=(args.accum, gb))
        mine = starts[:, rank_slice(gb, comm.rank, comm.world_size)]
        micro = []
        for row in mine:
            x = np.stack([data[s:s + T] for s in row])
            y = np.stack([data[s + 1:s + T + 1] for s in row])
            micro.append((x, y))
        loss, _ = distributed_train_step(model, opt, micro, comm, grad_clip=1.0)
        losses.append(loss)
    np.savez(os.path.join(args.out, f"rank{comm.rank}.npz"), losses=np.array(losses),
             params=be.to_numpy(model.params))


def run_nccl():
    import cupy as cp
    from cupy.cuda import nccl
    from kernelgpt.distributed import NCCLCommunicator
    comm = NCCLCommunicator(timeout=60)
    rng = np.random.default_rng(0)
    host = rng.standard_normal(1_000_003).astype(np.float32)
    a = cp.asarray(host)
    comm._nccl_allreduce_mean(a)
    assert np.array_equal(cp.asnumpy(a), host), "NCCL all-reduce over one rank changed the data"
    comm._nccl_bcast(a, 0)
    assert np.array_equal(cp.asnumpy(a), host), "NCCL broadcast from rank 0 changed the data"
    comm.allreduce_mean_(a)       # world_size 1: the public call is the identity
    comm.broadcast_(a)
    comm.barrier()
    try:
        comm.allreduce_mean_(a[::2])
    except TypeError:
        pass
    else:
        raise AssertionError("a strided cupy array was accepted")
    loss = np.array([1.5])
    comm.allreduce_mean_(loss)    # host arrays go through MPI (or nowhere with one rank)
    assert loss[0] == 1.5
    print(f"NCCL OK: version {nccl.get_version()}, world {comm.world_size}, "
          f"device {cp.cuda.Device().id}, {comm!r}", flush=True)
    comm.close()


def run_trainer(args, comm):
    from kernelgpt.data import TokenDataset
    from kernelgpt.train import TrainConfig, Trainer
    data = TokenDataset(tokens(), TINY["vocab_size"], val_fraction=0.1, seed=3)
    if args.resume:
        tr = Trainer.resume(args.run, data=data, backend=args.backend, comm=comm,
                            max_steps=args.steps)
    else:
        cfg = TrainConfig(batch_size=args.batch, grad_accum=args.accum, max_steps=args.steps,
                          lr=3e-3, warmup_steps=2, eval_every=2, eval_batches=2,
                          save_every=args.save_every, seed=0)
        model = GPT(GPTConfig(**TINY), backend=args.backend,
                    seed=args.seed + comm.rank * args.desync)
        tr = Trainer(model, data, cfg, out_dir=args.run, comm=comm)
    summary = tr.fit()
    np.savez(os.path.join(args.out, f"result{comm.rank}.npz"), losses=np.array(summary["losses"]),
             params=tr.model.backend.to_numpy(tr.model.params), step=summary["step"],
             val_loss=np.nan if summary["val_loss"] is None else summary["val_loss"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["step", "train", "fail", "hang", "die", "nccl"])
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--desync", type=int, default=1, help="seed offset per rank (0: same seed)")
    ap.add_argument("--out", default=".")
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--single", action="store_true", help="no MPI at all (SingleProcess)")
    ap.add_argument("--run", default=None, help="train: the run folder (None: write nothing)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--save-every", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "nccl":
        return run_nccl()
    comm = SingleProcess() if args.single else MPICommunicator(timeout=args.timeout)
    with comm.fail_fast():
        if args.mode == "step":
            run_steps(args, comm)
        elif args.mode == "train":
            run_trainer(args, comm)
        elif args.mode == "fail":
            if comm.rank == 1:
                time.sleep(0.5)  # rank 0 is inside the all-reduce by now
                raise ValueError("injected failure for the test")
            comm.allreduce_mean_(np.ones(8, np.float32))
        elif args.mode == "die":
            if comm.rank == 1:
                time.sleep(0.5)
                os._exit(3)
            comm.allreduce_mean_(np.ones(8, np.float32))
        elif args.mode == "hang":
            if comm.rank == 1:
                time.sleep(120)
            comm.allreduce_mean_(np.ones(8, np.float32))
    comm.barrier()


if __name__ == "__main__":
    main()
