"""Claim: on one GPU, a kernelgpt training step on the cuda backend is at least as fast as the
same GPT in PyTorch eager fp32 (aim 1.5x), and our flash-style attention forward+backward is
within 1.5x of torch's scaled_dot_product_attention at the same shapes and precision (fp32).

Run on a GPU machine: ``python3 benchmarks/bench_cuda.py [--json out.json] [--steps N]``.
Configs S, M and GPT-2 small (docs/ARCHITECTURE.md); TF32 off on both sides unless --tf32. Timing: CUDA
events around whole steps (each ends with the loss read back, as a training loop logging the loss
would), warm-up first, median of N. FLOPs per step by the formula of docs/ARCHITECTURE.md
(kernelgpt.model.train_flops_per_step). Every benchmark is guarded: one failing prints its error
and the rest still run. The last lines are a table and whether each claim held.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback

import numpy as np

CONFIGS = [("S", "s", 8, 256), ("M", "m", 4, 512), ("GPT-2", "gpt2", 8, 1024)]


def log(*a):
    print(*a, flush=True)


def median_time_ms(fn, warmup, reps, sync_event_mod):
    """Median wall time of fn() in ms measured with CUDA events (sync_event_mod: cupy or torch)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if sync_event_mod == "cupy":
            import cupy
            s, e = cupy.cuda.Event(), cupy.cuda.Event()
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(cupy.cuda.get_elapsed_time(s, e))
        else:
            import torch
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
    return statistics.median(times), times


# ------------------------------------------------------------------ ours
def bench_ours_step(preset, B, T, steps, tf32):
    from kernelgpt.backends import cuda_backend
    from kernelgpt.model import GPT, GPTConfig
    from kernelgpt.optim import AdamW, clip_grad_norm
    cuda_backend.set_tf32(tf32)
    cfg = GPTConfig.preset(preset)
    model = GPT(cfg, backend="cuda", seed=0)
    opt = AdamW(model, lr=3e-4)
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)
    x = model.backend.asarray(data[:, :-1])
    y = model.backend.asarray(data[:, 1:])
    losses = []

    def step():
        model.zero_grad()
        _, loss = model.forward(x, y, return_logits=False)
        model.backward()
        clip_grad_norm(model, 1.0)
        opt.step()
        losses.append(loss)

    ms, all_ms = median_time_ms(step, 2, steps, "cupy")
    cuda_backend.set_tf32(False)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite loss on cuda: {losses}")
    return ms, all_ms, losses[0]


def bench_numpy_step(preset, B, T):
    from kernelgpt.model import GPT, GPTConfig
    from kernelgpt.optim import AdamW
    cfg = GPTConfig.preset(preset)
    model = GPT(cfg, backend="numpy", seed=0)
    opt = AdamW(model, lr=3e-4)
    data = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T + 1)).astype(np.int32)
    times = []
    for i in range(2):
        t0 = time.perf_counter()
        model.zero_grad()
        model.forward(data[:, :-1], data[:, 1:], return_logits=False)
        model.backward()
        opt.step()
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------ torch
def torch_gpt(cfg):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg.n_embd
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            nh = cfg.n_head
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.h = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.n_embd)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.t()  # tied lm_head
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    return GPT2()


def bench_torch_step(preset, B, T, steps, tf32):
    import torch
    from kernelgpt.model import GPTConfig
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    cfg = GPTConfig.preset(preset)
    torch.manual_seed(0)
    model = torch_gpt(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(0, cfg.vocab_size, (B, T + 1), device="cuda")
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    ms, all_ms = median_time_ms(step, 2, steps, "torch")
    del model, opt
    torch.cuda.empty_cache()
    return ms, all_ms


# ------------------------------------------------------------------ attention
def attn_flops(B, NH, T, HS):
    fwd = 2 * B * NH * T * T * HS          # two causal matmuls: 2 * 2 * B*NH*T*T*HS / 2
    return fwd * 3.5                        # backward = 2.5x forward (5 matmuls vs 2)


def bench_ours_attention(B, T, NH, HS, reps):
    import cupy
    from kernelgpt.backends import cuda_backend as cb
    C = NH * HS
    rng = np.random.default_rng(0)
    qkv = cb.asarray(rng.standard_normal((B, T, 3 * C)).astype(np.float32))
    out, lse = cb.empty((B, T, C)), cb.empty((B, NH, T))
    dout = cb.asarray(rng.standard_normal((B, T, C)).astype(np.float32))
    dqkv = cb.empty((B, T, 3 * C))

    def fb():
        cb.attention_forward(out, lse, qkv, NH)
        cb.attention_backward(dqkv, dout, qkv, out, lse, NH)

    ms, _ = median_time_ms(fb, 3, reps, "cupy")
    fms, _ = median_time_ms(lambda: cb.attention_forward(out, lse, qkv, NH), 3, reps, "cupy")
    del qkv, out, lse, dout, dqkv
    cupy.get_default_memory_pool().free_all_blocks()
    return ms, fms


def bench_torch_attention(B, T, NH, HS, reps):
    import torch
    import torch.nn.functional as F
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, NH, T, HS, device="cuda", generator=g, requires_grad=True)
               for _ in range(3))
    dout = torch.randn(B, NH, T, HS, device="cuda", generator=g)

    def fb():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), dout)

    ms, _ = median_time_ms(fb, 3, reps, "torch")
    with torch.no_grad():
        fms, _ = median_time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                3, reps, "torch")
    return ms, fms


# ------------------------------------------------------------------ main
def guarded(results, key, fn, *a):
    try:
        t0 = time.perf_counter()
        r = fn(*a)
        log(f"  {key}: {r}  ({time.perf_counter() - t0:.1f}s)")
        results[key] = r
        return r
    except Exception as e:  # one failing benchmark must not stop the others
        log(f"  {key}: FAILED {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stdout)
        results[key] = {"error": f"{type(e).__name__}: {e}"}
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tf32", action="store_true", help="TF32 GEMMs on both sides (labelled)")
    ap.add_argument("--no-numpy", action="store_true")
    ap.add_argument("--configs", default="S,M,GPT-2", help="comma-separated subset of S,M,GPT-2")
    args = ap.parse_args(argv)
    from kernelgpt.model import GPTConfig, train_flops_per_step
    info = {"tf32": args.tf32}
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception as e:
        info["device"] = f"unknown ({e})"
    try:
        import torch
        info["torch"] = torch.__version__
    except Exception:
        info["torch"] = None
    log(f"device: {info['device']}  torch {info['torch']}  TF32 {'on' if args.tf32 else 'off'}")
    res = {}
    rows = []
    configs = [c for c in CONFIGS if c[0] in args.configs.split(",")]
    for label, preset, B, T in configs:
        cfg = GPTConfig.preset(preset)
        flops = train_flops_per_step(cfg, B, T)
        log(f"[train step] {label}: B={B} T={T} ({flops / 1e12:.2f} TFLOP/step)")
        ours = guarded(res, f"ours_step_{label}", bench_ours_step, preset, B, T, args.steps,
                       args.tf32)
        theirs = guarded(res, f"torch_step_{label}", bench_torch_step, preset, B, T, args.steps,
                         args.tf32)
        row = {"config": label, "B": B, "T": T, "flops": flops}
        if ours:
            row.update(ours_ms=ours[0], ours_tok_s=B * T / ours[0] * 1e3,
                       ours_tflops=flops / ours[0] / 1e9)
        if theirs:
            row.update(torch_ms=theirs[0], torch_tok_s=B * T / theirs[0] * 1e3,
                       torch_tflops=flops / theirs[0] / 1e9)
        if ours and theirs:
            row["speedup_vs_torch"] = theirs[0] / ours[0]
        rows.append(row)
    att_rows = []
    for label, preset, B, T in configs:
        cfg = GPTConfig.preset(preset)
        NH, HS = cfg.n_head, cfg.n_embd // cfg.n_head
        log(f"[attention fwd+bwd] {label}: B={B} NH={NH} T={T} HS={HS}")
        ours = guarded(res, f"ours_attn_{label}", bench_ours_attention, B, T, NH, HS, 10)
        theirs = guarded(res, f"torch_attn_{label}", bench_torch_attention, B, T, NH, HS, 10)
        f = attn_flops(B, NH, T, HS)
        row = {"config": label, "B": B, "NH": NH, "T": T, "HS": HS}
        if ours:
            row.update(ours_ms=ours[0], ours_fwd_ms=ours[1], ours_tflops=f / ours[0] / 1e9)
        if theirs:
            row.update(torch_ms=theirs[0], torch_fwd_ms=theirs[1], torch_tflops=f / theirs[0] / 1e9)
        if ours and theirs:
            row["ratio_ours_over_torch"] = ours[0] / theirs[0]
        att_rows.append(row)

    out = {"info": info, "train_step": rows, "attention": att_rows, "raw": res}
    if args.json:  # written now too, in case the slow NumPy baseline below runs out of time
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    if not args.no_numpy:  # the NumPy path, only where it is not absurdly slow (S)
        for row, (label, preset, B, T) in zip(rows, configs):
            if preset == "s":
                log(f"[train step, numpy backend] {label}")
                npms = guarded(res, f"numpy_step_{label}", bench_numpy_step, preset, B, T)
                if npms:
                    row["numpy_ms"] = npms
    log("")
    log(f"=== training step ({info['device']}, fp32, TF32 {'on' if args.tf32 else 'off'}) ===")
    log(f"{'config':8} {'ours ms':>9} {'tok/s':>10} {'TFLOP/s':>8} | {'torch ms':>9} {'tok/s':>10} "
        f"{'TFLOP/s':>8} | {'speedup':>7} {'numpy ms':>9}")
    for r in rows:
        log(f"{r['config']:8} {r.get('ours_ms', float('nan')):9.1f} "
            f"{r.get('ours_tok_s', float('nan')):10.0f} {r.get('ours_tflops', float('nan')):8.2f} | "
            f"{r.get('torch_ms', float('nan')):9.1f} {r.get('torch_tok_s', float('nan')):10.0f} "
            f"{r.get('torch_tflops', float('nan')):8.2f} | "
            f"{r.get('speedup_vs_torch', float('nan')):7.2f} {r.get('numpy_ms', float('nan')):9.0f}")
    log("=== attention forward+backward (fp32, causal) ===")
    log(f"{'config':8} {'ours ms':>9} {'fwd ms':>8} {'TFLOP/s':>8} | {'sdpa ms':>9} {'fwd ms':>8} "
        f"{'TFLOP/s':>8} | {'ours/sdpa':>9}")
    for r in att_rows:
        log(f"{r['config']:8} {r.get('ours_ms', float('nan')):9.2f} "
            f"{r.get('ours_fwd_ms', float('nan')):8.2f} {r.get('ours_tflops', float('nan')):8.2f} | "
            f"{r.get('torch_ms', float('nan')):9.2f} {r.get('torch_fwd_ms', float('nan')):8.2f} "
            f"{r.get('torch_tflops', float('nan')):8.2f} | "
            f"{r.get('ratio_ours_over_torch', float('nan')):9.2f}")
    step_ok = [r["speedup_vs_torch"] >= 1.0 for r in rows if "speedup_vs_torch" in r]
    att_ok = [r["ratio_ours_over_torch"] <= 1.5 for r in att_rows if "ratio_ours_over_torch" in r]
    verdict = lambda ok: "no data" if not ok else ("held" if all(ok) else "NOT held")  # noqa: E731
    log(f"claim 'step >= torch eager fp32': {verdict(step_ok)} "
        f"({sum(step_ok)}/{len(step_ok)} configs)")
    log(f"claim 'attention within 1.5x of sdpa': {verdict(att_ok)} "
        f"({sum(att_ok)}/{len(att_ok)} configs)")
    out = {"info": info, "train_step": rows, "attention": att_rows, "raw": res}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
