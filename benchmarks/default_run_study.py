"""Which model, vocabulary and step count should `kernelgpt train` (no arguments) use?

Each candidate (preset, tokenizer vocabulary, learning rate) goes through what the default command
does: a BPE tokenizer trained on the default corpus (the standard library's source, ~2 MB), the
corpus encoded, the last 10% held out for validation (TokenDataset, seed 0), the model trained
with the preset's batch size, then scored on the WHOLE validation split in bits per byte
(kernelgpt.evaluation; comparable across vocabularies) and sampled with the command's own
settings (prompt "def ", temperature 0.8, top-k 40, seed 0).

Two ways to size the runs:

* a wall-clock budget (default 60 s, the tokenizer's time included): the script times a few steps
  of each candidate first, then trains as many steps as fit. Use it on a QUIET machine:
      OMP_NUM_THREADS=2 PYTHONPATH=python python benchmarks/default_run_study.py --budget 60
* a fixed step count per candidate (``--steps xs=8000,s=120`` or one number for all): what a
  shared machine can still compare. The step time is measured separately (``--time-steps``
  steps after a warm-up) and the table shows the wall time the run would take at that speed.

Prints a markdown table (and writes --out JSON): preset, vocab, lr, steps, ms/step, tokenizer
seconds, estimated and measured wall time, validation bits per byte, the sample's first line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

DEFAULT_CANDIDATES = ("xs:512:2e-3,xs:1024:2e-3,xs:2048:2e-3,xs:4096:2e-3,xs:1024:3e-3,"
                      "llama-xs:1024:2e-3,s:2048:1e-3")


def _import_kernelgpt() -> None:
    try:
        import kernelgpt._native  # noqa: F401
    except ImportError:
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
        sys.path.insert(0, os.path.abspath(here))


_import_kernelgpt()
from kernelgpt.corpus import default_corpus_files  # noqa: E402
from kernelgpt.data import TokenDataset, encode_texts, read_texts  # noqa: E402
from kernelgpt.evaluation import evaluate_tokens, token_byte_lengths  # noqa: E402
from kernelgpt.model import GPT, GPTConfig  # noqa: E402
from kernelgpt.tokenizer import Tokenizer  # noqa: E402
from kernelgpt.train import PRESET_BATCH_SIZE, TrainConfig, Trainer  # noqa: E402

_TOKENIZED: Dict[int, Any] = {}


def tokenized(vocab: int) -> Dict[str, Any]:
    """The default corpus tokenized as `kernelgpt train` does it (cached per vocabulary)."""
    if vocab not in _TOKENIZED:
        t0 = time.perf_counter()
        texts = read_texts(default_corpus_files())
        tok = Tokenizer.train(texts, vocab)
        ids = encode_texts(tok, texts, separator=None, allowed_special=None)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        _TOKENIZED[vocab] = {"tokenizer": tok, "ids": np.asarray(ids), "n_bytes": n_bytes,
                             "seconds": time.perf_counter() - t0}
    return _TOKENIZED[vocab]


def step_seconds(preset: str, vocab: int, data: TokenDataset, n: int) -> float:
    """Median seconds of one training step of a fresh model (after 3 warm-up steps)."""
    cfg = GPTConfig.preset(preset, vocab_size=vocab)
    tr = Trainer(GPT(cfg, backend="auto", seed=0), data,
                 TrainConfig(batch_size=PRESET_BATCH_SIZE[preset], max_steps=n + 3,
                             eval_every=0, save_every=0))
    times: List[float] = []
    for k in range(n + 3):
        t0 = time.perf_counter()
        tr._train_step()
        if k >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_candidate(preset: str, vocab: int, lr: float, steps: Optional[int], budget: float,
                  time_steps: int, sample_tokens: int) -> Dict[str, Any]:
    tk = tokenized(vocab)
    tok = tk["tokenizer"]
    mk = lambda: TokenDataset(tk["ids"], tok.vocab_size, val_fraction=0.1, seed=0)  # noqa: E731
    step_s = step_seconds(preset, tok.vocab_size, mk(), time_steps)
    if steps is None:  # as many steps as the budget holds after the tokenizer (and ~3% for eval)
        steps = max(10, int((budget * 0.97 - tk["seconds"]) / step_s))
    cfg = GPTConfig.preset(preset, vocab_size=tok.vocab_size)
    model = GPT(cfg, backend="auto", seed=0)
    data = mk()
    trainer = Trainer(model, data, TrainConfig(batch_size=PRESET_BATCH_SIZE[preset],
                                               max_steps=steps, lr=lr, eval_every=0,
                                               save_every=0), tokenizer=tok)
    t0 = time.perf_counter()
    summary = trainer.fit()
    train_s = time.perf_counter() - t0
    r = evaluate_tokens(model, data.val, token_bytes=token_byte_lengths(tok, cfg.vocab_size))
    prompt = tok.encode("def ")
    ids = np.asarray(model.generate(np.asarray(prompt, np.int32), sample_tokens,
                                    temperature=0.8, top_k=40, seed=0)).reshape(-1)
    sample = "def " + tok.decode([int(i) for i in ids[len(prompt):]])
    return {"preset": preset, "vocab": vocab, "lr": lr, "steps": steps,
            "batch": PRESET_BATCH_SIZE[preset], "block": cfg.block_size,
            "params_M": model.num_params() / 1e6, "step_ms": step_s * 1e3,
            "tokenizer_s": tk["seconds"], "bytes_per_token": tk["n_bytes"] / tk["ids"].size,
            "estimated_wall_s": tk["seconds"] + steps * step_s, "train_s": train_s,
            "final_train_loss": summary["loss"], "val_bpb": r["bits_per_byte"],
            "val_loss": r["loss"], "sample": sample}


def parse_steps(s: Optional[str]) -> Dict[str, int]:
    if not s:
        return {}
    if s.isdigit():
        return {"*": int(s)}
    out = {}
    for part in s.split(","):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                    help="preset:vocab:lr[:steps],... (default %(default)s)")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="wall-clock seconds per run, tokenizer included (default 60)")
    ap.add_argument("--steps", help="fixed steps instead of the budget: N for all, or "
                    "preset=N,... (e.g. xs=8000,s=100); candidates not named use the budget")
    ap.add_argument("--time-steps", type=int, default=20,
                    help="steps timed to measure the step time (default 20)")
    ap.add_argument("--threads", type=int, default=None, help="native threads (default: "
                    "OMP_NUM_THREADS or all cores)")
    ap.add_argument("--sample-tokens", type=int, default=60)
    ap.add_argument("--time-only", action="store_true",
                    help="only measure each candidate's step time (and its tokenizer's)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="with --time-only: interleaved rounds of --time-steps steps each")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args()
    if a.threads:
        from kernelgpt import set_num_threads
        set_num_threads(a.threads)
    fixed = parse_steps(a.steps)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# default-run study: budget {a.budget:g} s, threads "
          f"{a.threads or os.environ.get('OMP_NUM_THREADS', 'all')}, load average {load:.1f} "
          f"at start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    rows = []
    if a.time_only:  # interleaved rounds: the fastest step of each is the least disturbed
        trainers = {}
        for c in dict.fromkeys(":".join(x.split(":")[:2]) for x in a.candidates.split(",")):
            preset, vocab = c.split(":")
            tk = tokenized(int(vocab))
            data = TokenDataset(tk["ids"], tk["tokenizer"].vocab_size, val_fraction=0.1, seed=0)
            cfg = GPTConfig.preset(preset, vocab_size=tk["tokenizer"].vocab_size)
            tr = Trainer(GPT(cfg, backend="auto", seed=0), data,
                         TrainConfig(batch_size=PRESET_BATCH_SIZE[preset], max_steps=10 ** 6,
                                     eval_every=0, save_every=0))
            for _ in range(3):
                tr._train_step()
            trainers[c] = (tr, tk, [])
        for _ in range(a.rounds):
            for c, (tr, tk, times) in trainers.items():
                for _ in range(a.time_steps):
                    t0 = time.perf_counter()
                    tr._train_step()
                    times.append(time.perf_counter() - t0)
        print("| preset | vocab | fastest ms/step | median ms/step | steps in the budget (at the "
              "fastest) | tokenizer s | bytes/token |")
        print("|---|---|---|---|---|---|---|")
        for c, (tr, tk, times) in trainers.items():
            st = min(times)
            print(f"| {c.split(':')[0]} | {c.split(':')[1]} | {st * 1e3:.1f} | "
                  f"{statistics.median(times) * 1e3:.1f} | "
                  f"{int((a.budget * 0.97 - tk['seconds']) / st)} | {tk['seconds']:.1f} | "
                  f"{tk['n_bytes'] / tk['ids'].size:.2f} |", flush=True)
        return 0
    for c in a.candidates.split(","):
        preset, vocab, lr, *st = c.split(":")  # preset:vocab:lr[:steps]
        steps = int(st[0]) if st else fixed.get(preset, fixed.get("*"))
        row = run_candidate(preset, int(vocab), float(lr), steps, a.budget, a.time_steps,
                            a.sample_tokens)
        row["load_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        rows.append(row)
        first = row["sample"][:60]
        print(f"  {preset} vocab {vocab} lr {lr}: {row['steps']} steps, {row['step_ms']:.1f} "
              f"ms/step, val {row['val_bpb']:.3f} bits/byte, {row['train_s']:.0f} s; "
              f"{first!r}", flush=True)
    print()
    print("| preset | vocab | lr | steps | ms/step | tokenizer s | est. wall s | measured train s "
          "| val bits/byte | sample (first 60 characters) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = r["sample"][:60].replace("\n", "\\n").replace("|", "\\|").replace("`", "'")
        print(f"| {r['preset']} | {r['vocab']} | {r['lr']:g} | {r['steps']} | {r['step_ms']:.1f} "
              f"| {r['tokenizer_s']:.1f} | {r['estimated_wall_s']:.0f} | {r['train_s']:.0f} | "
              f"{r['val_bpb']:.3f} | `{first}` |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
