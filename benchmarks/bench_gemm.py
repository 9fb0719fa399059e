"""Claim: our GEMM reaches at least 90% of numpy's matmul (OpenBLAS) on the model's own training
GEMM shapes with 2 threads, and the fused classifier beats the unfused NumPy lm_head + softmax +
cross-entropy path at config S.

For configs XS, S and M, each linear layer (qkv 3C, attn proj C, fc 4C, fc proj C<-4C, lm_head V)
has three training GEMMs: forward out = x @ w.T, dx = dout @ w, dw += dout.T @ x. Each is timed
with our kernels (kernelgpt._native) and with numpy in the same process, in alternating blocks, and reported
as GFLOP/s (2*N*C*OC / median seconds) and ratio ours/numpy, for 1 and 2 threads.

Every thread count runs in its own subprocess with OMP_NUM_THREADS / OPENBLAS_NUM_THREADS set and
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (they may be set on this machine and slow OpenBLAS
down), so numpy runs at full speed; the OpenBLAS kernel that ran is printed (threadpoolctl).
The machine is shared: timings are noisy, so read the ratios (measured side by side), not the
absolute figures, and rerun before trusting a single one.

Usage: python benchmarks/bench_gemm.py [--threads 1,2] [--configs XS,S,M] [--repeats 7]
       [--no-classifier] [--kernel auto|avx512|avx2_fma|portable] [--coretype Haswell]
(--kernel avx2_fma --coretype Haswell compares the AVX2 micro-kernel with OpenBLAS's AVX2 one.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CONFIGS = {  # name: (N = B*T rows, C, V)
    "XS": (512, 128, 512),
    "S": (2048, 384, 8192),
    "M": (2048, 768, 8192),
}


def layer_shapes(C, V):
    """(layer name, C_in, OC) of every distinct linear layer of the model."""
    return [("qkv", C, 3 * C), ("attn_proj", C, C), ("fc", C, 4 * C), ("fc_proj", 4 * C, C),
            ("lm_head", C, V)]


# ----------------------------------------------------------------------------- worker
def _median_pair(f_ours, f_np, repeats, rounds=2):
    """Time the two callables in alternating blocks (order flipped each round) and return both
    medians (s). Each block starts with a pause and a warm-up call: both libraries' worker threads
    spin for a while after a call, and on 2 cores the other library's spinners would steal the
    CPUs, so the blocks are kept apart instead of interleaving single calls."""
    t_o, t_n = [], []
    per = max(1, -(-repeats // rounds))
    for r in range(rounds):
        pair = [(f_ours, t_o), (f_np, t_n)]
        for f, acc in (pair if r % 2 == 0 else pair[::-1]):
            time.sleep(0.1)
            t_end = time.perf_counter() + 0.05  # warm up >= 50 ms: buffers, pools, idle vCPUs
            f()
            while time.perf_counter() < t_end:
                f()
            for _ in range(per):
                t = time.perf_counter()
                f()
                acc.append(time.perf_counter() - t)
    return statistics.median(t_o), statistics.median(t_n)


def worker(args):
    import numpy as np

    from kernelgpt import _native as nat

    nt = args.threads_one
    nat.set_num_threads(nt)
    nat._set_gemm_kernel(args.kernel)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(nt)
        blas = [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                f"threads={i.get('num_threads')}" for i in threadpoolctl.threadpool_info()
                if i.get("user_api") == "blas"]
    except ImportError:
        blas = [f"threadpoolctl not installed; OPENBLAS_NUM_THREADS={nt}"]
    rng = np.random.default_rng(0)
    rows = []
    for cfg in args.configs.split(","):
        N, C, V = CONFIGS[cfg]
        for name, cin, oc in layer_shapes(C, V):
            x = rng.standard_normal((N, cin), dtype=np.float32)
            w = rng.standard_normal((oc, cin), dtype=np.float32)
            b = rng.standard_normal(oc, dtype=np.float32)
            dout = rng.standard_normal((N, oc), dtype=np.float32)
            out = np.empty((N, oc), np.float32)
            dx = np.empty((N, cin), np.float32)
            dw = np.zeros((oc, cin), np.float32)
            np_out, np_dx, np_dw = out.copy(), dx.copy(), dw.copy()
            flops = 2.0 * N * cin * oc

            def np_fwd():
                np.matmul(x, w.T, out=np_out)
                np.add(np_out, b, out=np_out)

            def np_dw_acc():
                np_dw[...] += dout.T @ x

            cases = [
                ("fwd", lambda: nat.matmul_forward(out, x, w, b), np_fwd),
                ("dx", lambda: nat.gemm(dx, dout, w), lambda: np.matmul(dout, w, out=np_dx)),
                ("dw", lambda: nat.gemm(dw, dout, x, trans_a=True, beta=1.0), np_dw_acc),
            ]
            for kind, f_o, f_n in cases:
                to, tn = _median_pair(f_o, f_n, args.repeats)
                rows.append(dict(cfg=cfg, layer=name, kind=kind, shape=[N, cin, oc],
                                 ours=flops / to / 1e9, numpy=flops / tn / 1e9))
    cls = None
    if args.classifier:
        cls = classifier_bench(np, nat, rng, args.repeats)
    print(json.dumps(dict(threads=nt, kernel=nat.gemm_kernel_name(), blas=blas, rows=rows,
                          classifier=cls)))


def classifier_bench(np, nat, rng, repeats):
    """Fused classifier vs the unfused float32 NumPy path at config S (forward + backward)."""
    N, C, V = CONFIGS["S"]
    x = rng.standard_normal((N, C), dtype=np.float32)
    wte = (rng.standard_normal((V, C), dtype=np.float32) * 0.05).astype(np.float32)
    t = rng.integers(0, V, N).astype(np.int32)
    scale = 1.0 / N
    losses, dx, dwte = np.empty(N, np.float32), np.empty((N, C), np.float32), np.zeros((V, C), np.float32)
    np_dwte = np.zeros((V, C), np.float32)
    rows = np.arange(N)

    def unfused():
        logits = x @ wte.T
        m = logits.max(1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(1, keepdims=True)
        out = np.log(s[:, 0]) + m[:, 0] - logits[rows, t]
        e /= s
        e[rows, t] -= 1
        e *= np.float32(scale)
        ndx = e @ wte
        np_dwte[...] += e.T @ x
        return out, ndx

    to, tn = _median_pair(lambda: nat.classifier_forward_backward(losses, dx, dwte, x, wte, t, scale),
                          unfused, max(3, repeats // 2))
    flops = 3 * 2.0 * N * C * V
    return dict(shape=[N, C, V], ours_ms=to * 1e3, numpy_ms=tn * 1e3,
                ours_gflops=flops / to / 1e9, numpy_gflops=flops / tn / 1e9)


# ----------------------------------------------------------------------------- driver
def run_threads(nt, args):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if args.coretype:  # e.g. Haswell: an AVX2-only OpenBLAS, to compare with --kernel avx2_fma
        env["OPENBLAS_CORETYPE"] = args.coretype
    env.update(OMP_NUM_THREADS=str(nt), OPENBLAS_NUM_THREADS=str(nt))
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(here, "..", "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads-one", str(nt),
           "--configs", args.configs, "--repeats", str(args.repeats), "--kernel", args.kernel]
    if not args.classifier:
        cmd.append("--no-classifier")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"worker for {nt} thread(s) failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--configs", default="XS,S,M")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--kernel", default="auto")
    ap.add_argument("--coretype", default="", help="OPENBLAS_CORETYPE for numpy (default: unset)")
    ap.add_argument("--no-classifier", dest="classifier", action="store_false")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads-one", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}; timings are medians of {args.repeats}, "
          "ours and numpy in alternating blocks in one process (shared machine: noisy)")
    two_thread_ratios = []
    for nt in (int(s) for s in args.threads.split(",")):
        r = run_threads(nt, args)
        print(f"\n== {nt} thread(s); our kernel: {r['kernel']}; numpy BLAS: {'; '.join(r['blas'])}")
        print(f"{'cfg':3} {'layer':9} {'gemm':4} {'N x C_in x OC':>18} {'ours GF/s':>10} "
              f"{'numpy GF/s':>10} {'ratio':>6}")
        for row in r["rows"]:
            ratio = row["ours"] / row["numpy"]
            if nt == 2:
                two_thread_ratios.append(ratio)
            print(f"{row['cfg']:3} {row['layer']:9} {row['kind']:4} {'x'.join(map(str, row['shape'])):>18} "
                  f"{row['ours']:10.1f} {row['numpy']:10.1f} {ratio:6.2f}")
        c = r["classifier"]
        if c:
            print(f"classifier fused vs unfused numpy at S {tuple(c['shape'])}: "
                  f"{c['ours_ms']:.1f} ms ({c['ours_gflops']:.0f} GF/s) vs {c['numpy_ms']:.1f} ms "
                  f"({c['numpy_gflops']:.0f} GF/s): {c['numpy_ms'] / c['ours_ms']:.2f}x")
    if two_thread_ratios:
        geo = statistics.geometric_mean(two_thread_ratios)
        held = sum(r >= 0.9 for r in two_thread_ratios)
        print(f"\n2 threads: geometric-mean ratio ours/numpy {geo:.2f}; {held}/{len(two_thread_ratios)} "
              f"shapes at >= 0.90. Claim (>= 90% of OpenBLAS): "
              f"{'HELD' if geo >= 0.9 else 'NOT HELD'} on the geometric mean.")


if __name__ == "__main__":
    main()
