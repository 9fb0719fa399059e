"""Claim: our GGUF exports (arch gpt2 and llama) run in llama.cpp and decode exactly as we do,
and our batch-1 sampling speed on 2 threads is measured against llama.cpp's on the same files.

For each config (default s and llama-s; --configs adds or replaces; --run DIR takes the model
and tokenizer of a training run instead of a random model) the model is exported as GGUF f32 and
q8_0 (kernelgpt's export_gguf, through the gguf package), with the run's tokenizer or, without
--run, a byte-level BPE trained here on the benchmark corpus (benchmarks/_bpe_corpus.py). Then:

(a) greedy parity: llama.cpp (llama-cpp-python, its greedy sampler) continues a 4-token prompt
    by 64 tokens on the f32 file; ours (native backend, temperature 0) must give the same 64
    tokens: PASS / FAIL per config (exit status 1 on any FAIL);
(b) speed: batch 1, a 4-token prompt, 96 new tokens, top-k 50, temperature 0.8 (top-p 1, min-p 0,
    no repetition penalty on both sides), 2 threads (n_threads = n_threads_batch = 2 for
    llama.cpp, kernelgpt.set_num_threads(2) for ours): the wall time of the whole generation
    call (prefill of the prompt + 96 sampled tokens), median of --rounds rounds after a warm-up,
    as tokens/s for llama.cpp f32, llama.cpp q8_0, ours fp32 and, when GPT.generate takes a
    ``weights=`` keyword, ours bf16 and int8; ratios to llama.cpp f32 and q8_0; and next to
    each figure its bandwidth bound: the bytes of weights one step reads in that engine's format
    (matrices in the format, the rest fp32; GGUF Q8_0 has an fp16 scale per 32 weights, ours an
    fp32 one) at the read bandwidth measured at the end of the same run.
llama.cpp runs with its defaults (KV cache f16, its CPU extra buffer types: AMX / repacked
weights where the CPU has them) except n_batch = n_ubatch = 1 (--ubatch): the prompt is fed one
token at a time. On the Xeon with AMX-INT8 this was written on, llama.cpp 0.3.36's AMX matmul
segfaults on any multi-token batch of a Q8_0 model (llama.cpp's own q8_0 quantization too, not
only ours), and the 96 decode steps are single-token batches anyway; --ubatch 8 restores the
default where that bug does not bite. A random model's weights are spread wider than the init
(+ N(0, 0.05)) so that greedy decoding is not one token repeated.
Every engine runs in its own subprocess (this script with --worker), one after the other in the
same run, so no two thread pools fight over the cores. The machine may be shared by other jobs:
read the ratios (same run) rather than the absolute figures.

Usage: OMP_NUM_THREADS=2 PYTHONPATH=python python3 benchmarks/bench_llamacpp.py \\
           [--configs s,llama-s] [--run DIR] [--rounds 5] [--threads 2] [--quick]
(--quick: 1 round, 16 new tokens, parity on 16 tokens: a sanity check, not a figure.)
Needs llama-cpp-python and gguf (benchmark-only peers, never dependencies).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import decode_step_bytes, machine  # noqa: E402

PROMPT = [1, 2, 3, 4]
GREEDY_NEW = 64
SAMPLE_NEW = 96
TOP_K, TEMPERATURE = 50, 0.8
# Bytes per matrix weight of each engine's file / format (GGUF Q8_0: an fp16 scale per 32
# weights; ours int8: an fp32 scale), for the bandwidth bound.
MATRIX_BYTES = {"llama.cpp-f32": 4.0, "llama.cpp-q8_0": 1.0 + 2.0 / 32, "ours-fp32": 4.0,
                "ours-bf16": 2.0, "ours-int8": 1.0 + 4.0 / 32}


# ----------------------------------------------------------------------------- workers
def _llama(path: str, n_ctx: int, threads: int, ubatch: int):
    from llama_cpp import Llama
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=ubatch, n_ubatch=ubatch,
                 n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)


def llama_tokens(llm, prompt, n: int, temperature: float, top_k: int) -> list:
    """n tokens from llama.cpp's own sampler chain (greedy at temperature 0), from a fresh
    context; the generator is not stopped at end-of-text."""
    llm.reset()
    out = []
    for t in llm.generate(list(prompt), top_k=top_k, top_p=1.0, min_p=0.0, typical_p=1.0,
                          temp=temperature, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def worker(engine: str, d: str, threads: int, rounds: int, n_new: int, n_greedy: int,
           ubatch: int) -> dict:
    """One engine: greedy tokens (llama.cpp only) and the sampling times."""
    meta = json.load(open(os.path.join(d, "meta.json")))
    n_ctx = meta["block_size"]
    if engine.startswith("llama.cpp"):
        llm = _llama(os.path.join(d, engine.split("-", 1)[1] + ".gguf"), n_ctx, threads, ubatch)
        greedy = llama_tokens(llm, PROMPT, n_greedy, 0.0, 1) if n_greedy else None
        run = lambda: llama_tokens(llm, PROMPT, n_new, TEMPERATURE, TOP_K)  # noqa: E731
    else:
        import kernelgpt
        from kernelgpt import GPT
        kernelgpt.set_num_threads(threads)
        model = GPT.load(os.path.join(d, "model.safetensors"), backend="native")
        kw = {} if engine == "ours-fp32" else {"weights": engine.split("-", 1)[1]}
        prompt = np.asarray(PROMPT, np.int32)
        greedy = None
        if n_greedy:
            greedy = [int(x) for x in np.asarray(
                model.generate(prompt, n_greedy, temperature=0.0, **kw))[0, len(PROMPT):]]
        run = lambda: model.generate(prompt, n_new, temperature=TEMPERATURE,  # noqa: E731
                                     top_k=TOP_K, seed=0, **kw)
    times = []
    for i in range(rounds + 1):                 # the first round is the warm-up
        t0 = time.perf_counter()
        run()
        if i:
            times.append(time.perf_counter() - t0)
    return {"greedy": greedy, "times": times}


def run_worker(engine: str, d: str, args, n_greedy: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--dir", d,
           "--threads", str(args.threads), "--rounds", str(args.rounds), "--new",
           str(args.new), "--greedy", str(n_greedy), "--ubatch", str(args.ubatch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"]
        sig = f"killed by signal {-p.returncode}: " if p.returncode < 0 else ""
        return {"error": sig + tail[0]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- setup
def _tokenizer(vocab: int):
    from kernelgpt import Tokenizer
    from _bpe_corpus import corpus_documents
    text = "".join(corpus_documents(300_000))
    return Tokenizer.train(text, vocab_size=min(vocab, 1024), special_tokens=["<|endoftext|>"])


def prepare(name: str, run_dir, d: str):
    """Export model + tokenizer of ``name`` (or of the run) into d; -> (config, tokenizer)."""
    from kernelgpt import GPT, GPTConfig
    if run_dir:
        from kernelgpt.checkpoint import load_model
        model, tok, _ = load_model(run_dir, backend="numpy")
        if tok is None:
            raise SystemExit(f"{run_dir}: the run has no tokenizer")
    else:
        model = GPT(GPTConfig.preset(name), backend="numpy", seed=0)
        # weights spread wider than the init, so that greedy decoding is not one token repeated
        rng = np.random.default_rng(1)
        model.load_state_dict({n: a + rng.standard_normal(a.shape).astype(np.float32) * 0.05
                               for n, a in model.state_dict().items()})
        tok = _tokenizer(model.config.vocab_size)
    model.save(os.path.join(d, "model.safetensors"))
    for dt in ("f32", "q8_0"):
        model.export_gguf(os.path.join(d, f"{dt}.gguf"), tok, dtype=dt)
    json.dump({"block_size": model.config.block_size}, open(os.path.join(d, "meta.json"), "w"))
    return model.config, tok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="s,llama-s")
    ap.add_argument("--run", default=None, help="a training run (its model and tokenizer)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=SAMPLE_NEW)
    ap.add_argument("--greedy", type=int, default=GREEDY_NEW)
    ap.add_argument("--ubatch", type=int, default=1,
                    help="llama.cpp's n_batch = n_ubatch (default 1: see the module doc)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.dir, args.threads, args.rounds, args.new,
                                args.greedy, args.ubatch)))
        return 0
    if args.quick:
        args.rounds, args.new, args.greedy = 1, 16, 16
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed (pip install llama-cpp-python)")
        return 2
    from kernelgpt import GPT
    engines = ["llama.cpp-f32", "llama.cpp-q8_0", "ours-fp32"]
    if "weights" in inspect.signature(GPT.generate).parameters:
        engines += ["ours-bf16", "ours-int8"]
    print(f"# {machine()}")
    print(f"# llama-cpp-python {llama_cpp.__version__}; n_ubatch {args.ubatch}; threads "
          f"{args.threads}; batch 1, prompt "
          f"{len(PROMPT)} tokens, {args.new} new, top-k {TOP_K}, temperature {TEMPERATURE}; "
          f"median of {args.rounds} rounds after a warm-up")
    names = [args.run] if args.run else [c for c in args.configs.split(",") if c]
    failed = False
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            cfg, _ = prepare(name, args.run, d)
            n_greedy = min(args.greedy, cfg.block_size - len(PROMPT))
            res = {}
            for e in engines:
                res[e] = run_worker(e, d, args, n_greedy if e in ("llama.cpp-f32", "ours-fp32")
                                    else 0)
        label = os.path.basename(os.path.normpath(name)) if args.run else name
        ref, ours = res["llama.cpp-f32"].get("greedy"), res["ours-fp32"].get("greedy")
        ok = ref is not None and ref == ours
        failed |= not ok
        first = next((i for i, (a, b) in enumerate(zip(ref or [], ours or [])) if a != b), None)
        detail = "" if ok else (f" (first difference at token {first})" if first is not None
                                else f" ({res['llama.cpp-f32'].get('error', 'no tokens')})")
        print(f"{label}: greedy parity, {n_greedy} tokens ({len(set(ours or []))} distinct), "
              f"llama.cpp f32 vs ours fp32: {'PASS' if ok else 'FAIL'}{detail}")
        tps = {}
        for e in engines:
            r = res[e]
            if "error" in r:
                print(f"{label}: {e}: error: {r['error']}")
                continue
            tps[e] = args.new / statistics.median(r["times"])
        rows.append((label, cfg, tps))
    # The read bandwidth of this machine now (after the engines ran, so none competes), for the
    # bound of each format: tokens/s if a step only streamed its weights once at that rate.
    from kernelgpt import _native
    gbs = statistics.median(_native.read_bandwidth_gbs(
        decode_step_bytes(rows[0][1], 4.0) / 1e6, args.threads, 0.3) for _ in range(3))
    print()
    print(f"# bound: weight bytes of one batch-1 step in the engine's format at the read "
          f"bandwidth measured now ({gbs:.1f} GB/s, {args.threads} threads); KV cache not counted")
    print(f"{'config':<10} {'engine':<15} {'tok/s':>9} {'bound tok/s':>12} {'of bound':>9} "
          f"{'x llama.cpp f32':>16} {'x llama.cpp q8_0':>17}")
    for label, cfg, tps in rows:
        f32, q8 = tps.get("llama.cpp-f32"), tps.get("llama.cpp-q8_0")
        for e, v in tps.items():
            r1 = f"{v / f32:.2f}" if f32 else "-"
            r2 = f"{v / q8:.2f}" if q8 else "-"
            bound = gbs * 1e9 / decode_step_bytes(cfg, MATRIX_BYTES[e])
            print(f"{label:<10} {e:<15} {v:>9.1f} {bound:>12.1f} {100 * v / bound:>8.0f}% "
                  f"{r1:>16} {r2:>17}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
