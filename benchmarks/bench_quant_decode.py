"""Claim: decoding with weights in fewer bytes (generate(..., weights="bf16"|"int8"),
kernelgpt.quant) keeps the model's quality and is faster: on configs S and llama-S (2 threads,
same run, medians), int8 >= 2x our own fp32 tokens/s and bf16 >= 1.6x at batch 1, and batch 8
>= 4x the tokens/s of batch 1; the int8 and bf16 models' validation loss within 0.5% of fp32's
and their top-1 token agreeing with fp32's on >= 98% of positions.

Quality: a model trained here for --train-steps steps on the bytes of the Python standard
library's source (byte-level ids in the preset's vocabulary; the last 10% held out), or the model
of a run folder (--run, with its tokenizer and the stdlib text as held-out-like text). Every
logit comes from the cached decoding step (teacher forcing from position 0, batch 4, the fused
native decoder), so the three formats are measured by the same path: validation loss (mean
cross-entropy) per format, its change against fp32, and the share of positions whose argmax
equals fp32's.

Speed: tokens/s of the fused decoder's step (batch 1 and 8, every format) over --steps positions
after a --pos-token context, median of --rounds rounds interleaved across the formats and batch
sizes (so a burst of load on a shared machine hits them all alike), 2 threads
(OMP_NUM_THREADS), next to the bandwidth bound: the bytes of
weights one step reads in that format (the matrices in the format, the rest in fp32, one
embedding row; KV-cache reads not counted) at the read bandwidth measured in the same run
(_native.read_bandwidth_gbs, as bench_native_step.py), times the batch.
The machine may be shared: read the ratios (same run), and rerun before trusting a figure. The
last table gives the issue's ratios per config: int8/fp32 and bf16/fp32 at batch 1 (targets 2x
and 1.6x) and batch 8 / batch 1 per format (target 4x).

--amx-ab adds int8 with AMX forbidden (_native._set_ops_allow_amx(False): the VNNI path at
every batch) as a fourth format "int8-vnni", interleaved in the same rounds, and prints the A/B
table of the AMX int8 path (batch >= 2); --formats limits the formats timed (e.g. int8 for a
quick A/B; the ratio table then shows only what was timed).

--speed-only skips the training and the quality table (a seeded untrained model: the speed does
not depend on the weights' values); --clock cpu times each round by the calling thread's CPU time
(time.thread_time: with OMP_NUM_THREADS=1 the whole step; steadier than wall clock on a shared
machine), for A/B runs of two builds (PYTHONPATH=<old> then <new>, interleaved, medians).

Usage: OMP_NUM_THREADS=2 PYTHONPATH=python python3 benchmarks/bench_quant_decode.py
           [--configs s,llama-s] [--run RUN] [--train-steps 150] [--rounds 5] [--quick]
           [--speed-only] [--clock wall|cpu] [--formats fp32,bf16,int8] [--amx-ab]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import decode_step_bytes, machine  # noqa: E402

from kernelgpt.model import GPT, GPTConfig  # noqa: E402
from kernelgpt.optim import AdamW  # noqa: E402

FORMATS = ("fp32", "bf16", "int8")
BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 32}


def corpus_bytes(limit: int) -> np.ndarray:
    from kernelgpt.corpus import default_corpus_texts
    text = "\n".join(default_corpus_texts(max_bytes=limit))
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def train_model(cfg: GPTConfig, data: np.ndarray, steps: int, B: int, seed: int = 0) -> GPT:
    model = GPT(cfg, backend="native", seed=seed)
    opt = AdamW(model, lr=3e-3)
    rng = np.random.default_rng(seed)
    T = cfg.block_size
    t0 = time.perf_counter()
    for i in range(steps):
        starts = rng.integers(0, data.size - T - 1, B)
        x = np.stack([data[s:s + T] for s in starts])
        y = np.stack([data[s + 1:s + T + 1] for s in starts])
        model.zero_grad()
        _, loss = model.forward(x, y, return_logits=False)
        model.backward()
        opt.step(lr=3e-3 * min(1.0, (i + 1) / 20) * (1 - 0.9 * i / max(1, steps)))
        if (i + 1) % 50 == 0 or i + 1 == steps:
            print(f"  train step {i + 1}/{steps}: loss {float(loss):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model


def decode_logits(model: GPT, weights: str, seqs: np.ndarray, B: int = 4):
    """(loss per position (N, T-1), argmax (N, T-1)) of teacher-forced cached decoding steps."""
    N, T = seqs.shape
    losses, top1 = np.empty((N, T - 1)), np.empty((N, T - 1), np.int64)
    for r0 in range(0, N, B):
        rows = seqs[r0:r0 + B]
        kv = model.kv_cache(rows.shape[0], weights)
        for pos in range(T - 1):
            lg = np.asarray(model.decode_step(kv, rows[:, pos], pos), np.float64)
            m = lg.max(axis=1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(lg - m).sum(axis=1))
            losses[r0:r0 + len(rows), pos] = lse - lg[np.arange(len(rows)), rows[:, pos + 1]]
            top1[r0:r0 + len(rows), pos] = lg.argmax(axis=1)
    return losses, top1


def step_bytes(cfg: GPTConfig, fmt: str) -> float:
    """Bytes of weights one decoding step reads: the matrices in fmt, the rest in fp32 (one
    token-table row, one position row with learned positions)."""
    return decode_step_bytes(cfg, BYTES[fmt])


def time_decode(model: GPT, cases, pos0: int, steps: int, rounds: int, clock=time.perf_counter):
    """{(fmt, B): seconds per step (median of rounds)} and whether each ran fused; the rounds
    interleaved over the cases (the first round warms up)."""
    kvs = {}
    rng = np.random.default_rng(0)
    from kernelgpt import _native
    for f, B in cases:
        kv = model.kv_cache(B, f.split("-")[0])
        model.prefill(kv, rng.integers(0, 256, (B, pos0)).astype(np.int32))
        kvs[f, B] = kv
    times = {c: [] for c in cases}
    for r in range(rounds + 1):
        for (f, B), kv in kvs.items():
            tok = np.zeros(B, np.int32)
            if hasattr(_native, "_set_ops_allow_amx"):  # "int8-vnni": AMX forbidden
                _native._set_ops_allow_amx(not f.endswith("-vnni"))
            t0 = clock()
            for i in range(steps):
                model.decode_step(kv, tok, pos0 + i)
            if r:
                times[f, B].append(clock() - t0)
    if hasattr(_native, "_set_ops_allow_amx"):
        _native._set_ops_allow_amx(True)
    return {c: (statistics.median(ts) / steps, kvs[c].fused is not None)
            for c, ts in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="s,llama-s")
    ap.add_argument("--run", help="a run folder: measure its model's quality instead of training")
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--eval-seqs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--pos", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="a sanity run in seconds")
    ap.add_argument("--speed-only", action="store_true",
                    help="no training and no quality table: time a seeded untrained model")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the calling thread's CPU time (meant for OMP_NUM_THREADS=1)")
    ap.add_argument("--formats", default=",".join(FORMATS),
                    help="the formats timed (the quality table always has all three)")
    ap.add_argument("--amx-ab", action="store_true",
                    help="also time int8 with AMX forbidden (int8-vnni), same rounds")
    args = ap.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if any(f not in FORMATS for f in formats):
        ap.error(f"--formats: choose from {','.join(FORMATS)}")
    if args.amx_ab:
        formats.append("int8-vnni")
    if args.quick:  # (--rounds and --steps given with it are kept)
        rounds = args.rounds if "--rounds" in (argv or sys.argv) else 2
        steps = args.steps if "--steps" in (argv or sys.argv) else 6
        args.train_steps, args.eval_seqs, args.rounds, args.steps, args.pos = 4, 4, rounds, steps, 8
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    from kernelgpt import _native
    _native.set_num_threads(threads)
    print(f"machine: {machine()}")
    amx = getattr(_native, "ops_use_amx", lambda: False)()
    print(f"int8 path {_native.quant_paths()[0]}{' (+amx at batch >= 2)' if amx else ''}, "
          f"bf16 path {_native.quant_paths()[1]}, {threads} threads")
    if args.clock == "cpu" and threads != 1:
        print("note: --clock cpu counts the calling thread only: use OMP_NUM_THREADS=1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    data = corpus_bytes(2_000_000 if not args.quick else 200_000) if not args.speed_only else None
    split = int(data.size * 0.9) if data is not None else 0
    quality, speed = [], []
    for name in args.configs.split(","):
        if args.run:
            from kernelgpt.checkpoint import load_model
            model, tok, _ = load_model(args.run, backend="native")
            cfg = model.config
            ids = np.asarray(tok.encode(bytes(data[split:].astype(np.uint8)).decode(
                "utf-8", "replace")), np.int32)
            name = f"{args.run}"
        else:
            cfg = GPTConfig.preset(name)
            if args.quick:
                cfg = GPTConfig.from_dict(dict(cfg.to_dict(), block_size=64))
            if args.speed_only:
                model = GPT(cfg, backend="native", seed=0)
        if not args.speed_only:
            if not args.run:
                print(f"{name}: training {args.train_steps} steps (bytes of the stdlib source)",
                      flush=True)
                model = train_model(cfg, data[:split], args.train_steps, 8)
                ids = data[split:]
            T = min(cfg.block_size, 128 if not args.quick else 32)
            n = args.eval_seqs
            starts = np.linspace(0, ids.size - T - 1, n).astype(int)
            seqs = np.stack([ids[s:s + T] for s in starts]).astype(np.int32)
            res = {f: decode_logits(model, f, seqs) for f in FORMATS}
            l32 = res["fp32"][0].mean()
            for f in FORMATS:
                loss = res[f][0].mean()
                agree = float(np.mean(res[f][1] == res["fp32"][1]))
                quality.append((name, f, loss, 100 * (loss - l32) / l32, 100 * agree))
        gbs = statistics.median(_native.read_bandwidth_gbs(step_bytes(cfg, "fp32") / 1e6,
                                                           threads, 0.3) for _ in range(3))
        timed = time_decode(model, [(f, B) for f in formats for B in (1, 8)], args.pos,
                            args.steps, args.rounds, clock)
        for f in formats:
            for B in (1, 8):
                t, fused = timed[f, B]
                mb = step_bytes(cfg, f.split("-")[0]) / 1e6
                bound = B * gbs * 1e3 / mb
                speed.append((name, f, B, B / t, t * 1e3, mb, bound, fused))
        if args.run:
            break
    if quality:
        print(f"\nquality: teacher-forced decoding over {args.eval_seqs} held-out sequences")
        print(f"{'config':<10} {'weights':<6} {'val loss':>9} {'vs fp32':>9} {'top-1 = fp32':>13}")
        for name, f, loss, d, a in quality:
            print(f"{name:<10} {f:<6} {loss:9.4f} {d:+8.3f}% {a:12.2f}%")
    print(f"\nspeed: decoding steps at position {args.pos}, median of {args.rounds} rounds of "
          f"{args.steps} steps, {threads} threads, {args.clock} clock; bound = batch x read "
          f"bandwidth (measured per config, last {gbs:.1f} GB/s) / MB per step")
    print(f"{'config':<10} {'weights':<9} {'B':>2} {'tok/s':>9} {'ms/step':>8} {'MB/step':>8} "
          f"{'bound tok/s':>11} {'of bound':>8} {'vs fp32':>8} {'vs B=1':>7}")
    base = {(s[0], s[2]): s[3] for s in speed if s[1] == "fp32"}
    base = {k: base.get(k, float("nan")) for k in {(s[0], s[2]) for s in speed}}
    b1 = {(s[0], s[1]): s[3] for s in speed if s[2] == 1}
    for name, f, B, tps, ms, mb, bound, fused in speed:
        print(f"{name:<10} {f:<9} {B:>2} {tps:9.1f} {ms:8.2f} {mb:8.1f} {bound:11.1f} "
              f"{100 * tps / bound:7.0f}% {tps / base[(name, B)]:7.2f}x "
              f"{tps / b1[(name, f)]:6.2f}x" + ("" if fused else "  (op by op)"))
    print("\nratios (same run; targets: int8/fp32 >= 2, bf16/fp32 >= 1.6 at B=1, "
          "B=8/B=1 >= 4)")
    print(f"{'config':<10} {'int8/fp32':>9} {'bf16/fp32':>9} {'fp32 8/1':>9} {'bf16 8/1':>9} "
          f"{'int8 8/1':>9}")
    names = list(dict.fromkeys(s[0] for s in speed))
    tps = {(s[0], s[1], s[2]): s[3] for s in speed}
    nan = float("nan")
    for name in names:
        f32 = tps.get((name, "fp32", 1), nan)
        r = [tps.get((name, "int8", 1), nan) / f32, tps.get((name, "bf16", 1), nan) / f32]
        r += [tps.get((name, f, 8), nan) / tps.get((name, f, 1), nan) for f in FORMATS]
        print(f"{name:<10} " + " ".join(f"{v:8.2f}x" for v in r))
    if args.amx_ab:
        print("\nint8 AMX A/B (same rounds; int8 = AMX at batch 8, int8-vnni = AMX forbidden)")
        print(f"{'config':<10} {'B8 amx tok/s':>13} {'B8 vnni tok/s':>14} {'amx/vnni':>9} "
              f"{'8/1 amx':>8} {'8/1 vnni':>9}")
        for name in names:
            a8, v8 = tps[name, "int8", 8], tps[name, "int8-vnni", 8]
            print(f"{name:<10} {a8:13.1f} {v8:14.1f} {a8 / v8:8.2f}x "
                  f"{a8 / tps[name, 'int8', 1]:7.2f}x {v8 / tps[name, 'int8-vnni', 1]:8.2f}x")


if __name__ == "__main__":
    main()
