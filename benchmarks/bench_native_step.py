"""Claim: the native backend's training step (forward + backward + AdamW) is at least 1.5x the
NumPy path on config S and 4x on XS, competitive with PyTorch eager on 2 threads, and its KV-cache
sampling on S (batch 1) beats NumPy's and PyTorch's tokens/s.

For configs XS, S and M (docs/ARCHITECTURE.md; batch 8, 8, 4, T = block size), and their
llama-style twins llama-xs, llama-s, llama-m (--configs s,llama-s: RMSNorm, rotary positions,
SwiGLU, grouped-query attention; the llama line then also prints its GFLOP/s per the GPT-2 twin's,
same run), one training step is timed on
the native backend, the NumPy backend and, when torch is importable, an equivalent model written in
PyTorch below (eager, CPU, torch.set_num_threads(threads)), each engine in its own subprocess (so
no two libraries' spinning thread pools fight over the cores), one after the other in the same
run; medians after a warm-up are reported with GFLOP/s from the formula of docs/ARCHITECTURE.md
(kernelgpt.model.train_flops_per_step) and as a share of the machine's measured FMA peak (the
widest ISA it has, same thread count). Sampling: 96 new tokens after a 4-token prompt, batch 1,
KV cache, on S. The machine is shared by other jobs: read the ratios (same run), not the
absolute figures, and rerun before trusting one.

Usage: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 PYTHONPATH=python python3 \\
           benchmarks/bench_native_step.py [--configs xs,s,m] [--rounds 3] [--no-torch] [--no-sample]
           [--no-train]   (sampling runs on S and llama-S)
(torch is a benchmark-only peer, never a dependency; e.g. pip install --target DIR torch and add
DIR to PYTHONPATH.)  `pytest benchmarks/bench_native_step.py` runs the XS step via pytest-benchmark.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median_time  # noqa: E402

from kernelgpt.bench import torch_gpt2, torch_sampler  # noqa: E402
from kernelgpt.model import GPT, GPTConfig, train_flops_per_step  # noqa: E402
from kernelgpt.train import PRESET_BATCH_SIZE  # noqa: E402
from kernelgpt.optim import AdamW  # noqa: E402

SAMPLE_NEW = 96


# ----------------------------------------------------------------------------- our engines
def kgpt_step(backend: str, cfg: GPTConfig, B: int, seed: int = 0):
    model = GPT(cfg, backend=backend, seed=seed)
    opt = AdamW(model, lr=1e-4, weight_decay=0.1)
    r = np.random.default_rng(seed)
    idx = r.integers(0, cfg.vocab_size, (B, cfg.block_size)).astype(np.int32)
    tgt = r.integers(0, cfg.vocab_size, (B, cfg.block_size)).astype(np.int32)

    def step():
        model.zero_grad()
        _, loss = model.forward(idx, tgt, return_logits=False)
        model.backward()
        opt.step()
        return loss
    return step


def kgpt_sampler(backend: str, cfg: GPTConfig):
    model = GPT(cfg, backend=backend, seed=0)
    prompt = np.array([1, 2, 3, 4], np.int32)
    return lambda: model.generate(prompt, SAMPLE_NEW, temperature=1.0, top_k=50, seed=0)


# ----------------------------------------------------------------------------- PyTorch peer
def torch_llama(cfg: GPTConfig):
    """The llama-style model of ``cfg`` in PyTorch eager: F.rms_norm, rotary positions (rotate
    half, as kernelgpt), a SwiGLU MLP (gate | up), grouped-query attention through
    scaled_dot_product_attention(enable_gqa=True); biases and tying as the config says."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    C, NH, NKV, HS = cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.head_size
    V, T, H, eps, bias = cfg.vocab_size, cfg.block_size, cfg.hidden, cfg.norm_eps, cfg.bias
    inv = cfg.rope_theta ** (-torch.arange(0, HS // 2, dtype=torch.float64) * 2.0 / HS)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    COS, SIN = ang.cos().float(), ang.sin().float()      # (T, HS/2)

    def rope(x, pos):                                     # x (B, heads, Tx, HS)
        c, s = COS[pos:pos + x.shape[2]], SIN[pos:pos + x.shape[2]]
        x1, x2 = x[..., :HS // 2], x[..., HS // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.Parameter(torch.ones(C)), nn.Parameter(torch.ones(C))
            self.c_attn = nn.Linear(C, (NH + 2 * NKV) * HS, bias=bias)
            self.c_proj = nn.Linear(C, C, bias=bias)
            self.c_fc, self.mlp_proj = nn.Linear(C, 2 * H, bias=bias), nn.Linear(H, C, bias=bias)

        def attn(self, x, cache=None, pos=0):
            Bx, Tx, _ = x.shape
            q, k, v = self.c_attn(x).split([NH * HS, NKV * HS, NKV * HS], dim=2)
            q = rope(q.view(Bx, Tx, NH, HS).transpose(1, 2), pos)
            k = rope(k.view(Bx, Tx, NKV, HS).transpose(1, 2), pos)
            v = v.view(Bx, Tx, NKV, HS).transpose(1, 2)
            if cache is not None:
                kc, vc = cache
                kc[:, :, pos:pos + Tx] = k
                vc[:, :, pos:pos + Tx] = v
                k, v = kc[:, :, :pos + Tx], vc[:, :, :pos + Tx]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=Tx > 1, enable_gqa=NKV != NH)
            return self.c_proj(y.transpose(1, 2).reshape(Bx, Tx, C))

        def forward(self, x, cache=None, pos=0):
            x = x + self.attn(F.rms_norm(x, (C,), self.ln_1, eps), cache, pos)
            a, b = self.c_fc(F.rms_norm(x, (C,), self.ln_2, eps)).chunk(2, dim=-1)
            return x + self.mlp_proj(F.silu(a) * b)

    class TorchLlama(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.h = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.Parameter(torch.ones(C))
            self.lm_head = None if cfg.tie_embeddings else nn.Linear(C, V, bias=False)

        def forward(self, idx, caches=None, pos=0):
            x = self.wte(idx)
            for i, blk in enumerate(self.h):
                x = blk(x, None if caches is None else caches[i], pos)
            x = F.rms_norm(x, (C,), self.ln_f, eps)
            return x @ self.wte.weight.T if self.lm_head is None else self.lm_head(x)

    return TorchLlama()


def torch_engines(cfg: GPTConfig, B: int, threads: int):
    """(train step, sampler) of the config's model in PyTorch eager (a GPT-2, or the llama-style
    model of :func:`torch_llama`), or None."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(threads)
    V, T = cfg.vocab_size, cfg.block_size
    if cfg.is_gpt2:
        model = torch_gpt2(cfg)  # kernelgpt bench's PyTorch GPT-2 (seeded there)
    else:
        torch.manual_seed(0)
        model = torch_llama(cfg)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(idx).view(-1, V), tgt.view(-1))
        loss.backward()
        opt.step()
        return loss.item()

    sample = torch_sampler(model, cfg, SAMPLE_NEW)
    return step, sample, torch.__version__


# ----------------------------------------------------------------------------- timing
def median_of(f, rounds: int) -> tuple:
    return median_time(f, rounds, warmup=1)  # one warm-up: buffers, caches, thread pools


def worker(engine: str, what: str, name: str, rounds: int, threads: int) -> dict:
    """Time one engine on one config in this process (the parent runs one worker per engine, so
    no two thread pools (OpenMP, OpenBLAS, torch's) spin against each other on the same cores)."""
    cfg = GPTConfig.preset(name)
    B = PRESET_BATCH_SIZE[name]
    if engine == "torch":
        tor = torch_engines(cfg, B, threads)
        if tor is None:
            return {"skipped": "torch not importable"}
        f = tor[0] if what == "train" else tor[1]
        label = f"torch {tor[2]}"
    else:
        if engine == "native":
            from kernelgpt.backends import native_backend
            native_backend.set_num_threads(threads)  # explicit: this is the benchmark's choice
        f = kgpt_step(engine, cfg, B) if what == "train" else kgpt_sampler(engine, cfg)
        label = engine
    med, times = median_of(f, rounds)
    return {"label": label, "median": med, "times": times}


def run_worker(engine, what, name, rounds, threads) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", engine, what, name,
                          str(rounds), str(threads)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {"skipped": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured_peak(threads: int) -> dict:
    """GFLOP/s of register-only FMA chains per ISA the CPU has, on `threads` threads (median of
    3 half-second runs), or {} without the native module or on a CPU without AVX2/FMA."""
    try:
        from kernelgpt import _native
    except ImportError:
        return {}
    out = {}
    for isa in ("avx512", "avx2_fma"):
        try:
            out[isa] = statistics.median(_native.fma_peak_gflops(isa, threads, 0.5)
                                         for _ in range(3))
        except ValueError:  # this CPU lacks the ISA
            continue
    return out


def decode_bound(cfg: GPTConfig, threads: int):
    """(MB of float32 weights a batch-1 decoding step must read (an untied token table counts
    one row, not the whole table), MB native reads with its bfloat16 lm_head filter (top-k and
    greedy: the lm_head at half size; the candidates' exact rows are not counted), measured GB/s
    streaming that many MB), or None without the native module."""
    try:
        from kernelgpt import _native
    except ImportError:
        return None
    n = GPT(cfg, backend="numpy", seed=0).num_params()
    if not cfg.tie_embeddings:  # the token table is read one row per token; the lm_head whole
        n -= cfg.vocab_size * cfg.n_embd
    mb = n * 4 / 1e6  # every weight a step reads (with a tied wte: the lm_head itself)
    mb_filtered = mb - cfg.vocab_size * cfg.n_embd * 2 / 1e6
    gbs = statistics.median(_native.read_bandwidth_gbs(mb, threads, 0.5) for _ in range(3))
    return mb, mb_filtered, gbs


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        e, what, name, rounds, threads = sys.argv[2:7]
        print(json.dumps(worker(e, what, name, int(rounds), int(threads))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="xs,s,m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--no-sample", dest="sample", action="store_false")
    ap.add_argument("--no-train", dest="train", action="store_false",
                    help="sampling only (S and llama-S)")
    args = ap.parse_args(argv)
    print(machine())
    print(f"threads per engine: {args.threads} (OMP/OPENBLAS/torch), one subprocess per engine")
    peak = measured_peak(args.threads)
    if peak:
        print(f"measured FMA peak, {args.threads} threads: " +
              ", ".join(f"{isa} {g:.0f} GFLOP/s" for isa, g in peak.items()) +
              " (register-only FMA chains, kernelgpt._native.fma_peak_gflops)")
    top = max(peak.values()) if peak else None
    engines = ["native", "numpy"] + (["torch"] if args.torch else [])
    held = []
    native_gflops: dict = {}
    for name in args.configs.split(","):
        cfg = GPTConfig.preset(name)
        B, T = PRESET_BATCH_SIZE[name], cfg.block_size
        rounds = args.rounds if not name.endswith("m") else max(2, args.rounds - 1)
        flops = train_flops_per_step(cfg, B, T)
        if args.train:
            res = {e: run_worker(e, "train", name, rounds, args.threads) for e in engines}
            print(f"\n== train step {name.upper()} (B={B}, T={T}, {flops / 1e9:.1f} GFLOP/step), "
                  f"median of {rounds}")
            nat = res["native"]["median"]
            for e, r in res.items():
                if "skipped" in r:
                    print(f"  {e:16s} skipped: {r['skipped']}")
                    continue
                s = r["median"]
                pct = f" ({flops / s / 1e9 / top * 100:4.1f}% of peak)" if top else ""
                print(f"  {r['label']:16s} {s * 1e3:9.1f} ms {B * T / s:9.0f} tok/s "
                      f"{flops / s / 1e9:6.1f} GFLOP/s{pct}   native speed-up {s / nat:5.2f}x")
            native_gflops[name] = flops / nat / 1e9
            if name.startswith("llama-") and name[6:] in native_gflops:  # same run, per FLOP
                base = name[6:]
                print(f"  native {name} per FLOP vs native {base}: "
                      f"{native_gflops[name] / native_gflops[base]:.2f}x the GFLOP/s")
            held.append((f"{name} native >= 1.5x numpy", res["numpy"]["median"] / nat >= 1.5))
            if "median" in res.get("torch", {}):
                held.append((f"{name} native faster than torch", res["torch"]["median"] > nat))
        if args.sample and name in ("s", "llama-s"):
            sm = {e: run_worker(e, "sample", name, args.rounds, args.threads) for e in engines}
            print(f"\n== sampling {name.upper()}, batch 1, KV cache, {SAMPLE_NEW} new tokens after "
                  f"a 4-token prompt, median of {args.rounds}")
            for e, r in sm.items():
                if "skipped" in r:
                    print(f"  {e:16s} skipped: {r['skipped']}")
                    continue
                print(f"  {r['label']:16s} {SAMPLE_NEW / r['median']:8.1f} tokens/s")
            bound = decode_bound(cfg, args.threads)
            if bound and "median" in sm.get("native", {}):
                mb, mb_f, gbs = bound
                nat_tps = SAMPLE_NEW / sm["native"]["median"]
                print(f"  bound: every fp32 weight, {mb:.1f} MB per token, at {gbs:.1f} GB/s "
                      f"(measured streaming read of that many MB, {args.threads} threads) -> at "
                      f"most {gbs * 1e3 / mb:.0f} tokens/s for an exact fp32 engine; native, "
                      f"whose top-k lm_head reads a bfloat16 table ({mb_f:.1f} MB per token), at "
                      f"most {gbs * 1e3 / mb_f:.0f} tokens/s: it reaches "
                      f"{nat_tps / (gbs * 1e3 / mb_f) * 100:.0f}% of its own bound, "
                      f"{nat_tps / (gbs * 1e3 / mb) * 100:.0f}% of the fp32 one")
            for e in ("numpy", "torch"):
                if "median" in sm.get(e, {}):
                    held.append((f"{name} sampling native > {e}",
                                 sm[e]["median"] > sm["native"]["median"]))
    print("\n" + "; ".join(f"{k}: {'held' if ok else 'NOT held'}" for k, ok in held))


def test_bench_native_train_step_xs(benchmark):
    cfg = GPTConfig.preset("xs")
    step = kgpt_step("native", cfg, PRESET_BATCH_SIZE["xs"])
    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert math.isfinite(loss)


if __name__ == "__main__":
    main()
