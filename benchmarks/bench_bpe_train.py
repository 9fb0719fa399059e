"""Claim: the C++ BPE trainer is at least 1000x the pure-Python reference on 1 MB of text at
vocab 1024, with identical merges.

pytest-benchmark suite (small sizes, so `pytest benchmarks/` stays short):
    PYTHONPATH=python python -m pytest benchmarks/bench_bpe_train.py --benchmark-only
The claim itself (the reference takes minutes on 1 MB; it is run once, honestly, not extrapolated):
    PYTHONPATH=python python benchmarks/bench_bpe_train.py --mb 1 --vocab 1024
Corpus: benchmarks/_bpe_corpus.py (stdlib .py files + the Korean text in benchmarks/data/).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bpe_corpus import corpus_documents  # noqa: E402

from kernelgpt import _bpe_reference as ref  # noqa: E402
from kernelgpt.tokenizer import Tokenizer  # noqa: E402


def _docs(n_bytes):
    return corpus_documents(n_bytes)


def test_train_native_256k_vocab1024(benchmark):
    docs = _docs(256_000)
    benchmark(lambda: Tokenizer.train(docs, 1024))


def test_train_native_4mb_vocab4096(benchmark):
    docs = _docs(4_000_000)
    benchmark.pedantic(lambda: Tokenizer.train(docs, 4096), rounds=3, iterations=1)


def test_train_reference_32k_vocab300(benchmark):
    docs = _docs(32_000)
    benchmark.pedantic(lambda: ref.train(docs, 300 - 256), rounds=1, iterations=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0, help="corpus size in MB (10^6 bytes)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5, help="native repeats (median)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    docs = _docs(int(args.mb * 1e6))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}; corpus {args.mb} MB in {len(docs)} documents")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tok = Tokenizer.train(docs, args.vocab, num_threads=args.threads)
        times.append(time.perf_counter() - t0)
    native = statistics.median(times)
    print(f"native: median {native:.4f} s over {args.repeats} runs ({len(tok.merges)} merges)")
    t0 = time.perf_counter()
    merges = ref.train(docs, args.vocab - 256)
    reference = time.perf_counter() - t0
    print(f"reference: {reference:.1f} s (one run)")
    same = merges == tok.merges
    ratio = reference / native
    print(f"merges identical: {same}; speed-up {ratio:.0f}x")
    print(f"claim (>= 1000x, identical merges): {'HELD' if same and ratio >= 1000 else 'NOT HELD'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
