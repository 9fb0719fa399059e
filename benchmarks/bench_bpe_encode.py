"""Claim: native BPE encode gives exactly the reference's ids and stays linear-ish on pathological
input (10x longer word or run of one character -> under 20x the time); it also prints MB/s on one
thread and a 2-thread batch, and the speed-up over the reference (no target for that ratio).

pytest-benchmark suite:
    PYTHONPATH=python python -m pytest benchmarks/bench_bpe_encode.py --benchmark-only
Script (prints MB/s medians and the linearity ratios):
    PYTHONPATH=python python benchmarks/bench_bpe_encode.py [--mb 1] [--vocab 4096]
Corpus: benchmarks/_bpe_corpus.py. Comparison with tiktoken: benchmarks/compare_tokenizers.py.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bpe_corpus import corpus_documents  # noqa: E402
from _common import median_time  # noqa: E402

from kernelgpt import _bpe_reference as ref  # noqa: E402
from kernelgpt.tokenizer import Tokenizer  # noqa: E402


@functools.lru_cache(maxsize=None)
def _tok(vocab: int = 4096) -> Tokenizer:
    return Tokenizer.train(corpus_documents(4_000_000), vocab)


def test_encode_native_1mb(benchmark):
    tok, text = _tok(), "".join(corpus_documents(1_000_000))
    benchmark(tok.encode_to_numpy, text)


def test_encode_batch_native_1mb_2threads(benchmark):
    tok, docs = _tok(), corpus_documents(1_000_000)
    benchmark(lambda: tok.encode_batch(docs, num_threads=2, as_numpy=True))


def test_encode_reference_20kb(benchmark):
    tok, text = _tok(), "".join(corpus_documents(20_000))
    benchmark.pedantic(lambda: ref.encode_ordinary(text, tok.merges), rounds=1, iterations=1)


def test_decode_native_1mb(benchmark):
    tok = _tok()
    ids = tok.encode("".join(corpus_documents(1_000_000)))
    benchmark(tok.decode_bytes, ids)


def test_encode_native_long_word_1mb(benchmark):
    tok = _tok()
    word = "".join(c for c in "".join(corpus_documents(3_000_000)) if c.isascii() and c.isalpha())[:1_000_000]
    benchmark.pedantic(tok.encode_to_numpy, args=(word,), rounds=3, iterations=1)


def _median(fn, repeats=5):
    return median_time(fn, repeats, warmup=0)[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}")
    tok = _tok(args.vocab)
    docs = corpus_documents(int(args.mb * 1e6))
    text = "".join(docs)
    nb = len(text.encode())
    native = _median(lambda: tok.encode_to_numpy(text))
    batch = _median(lambda: tok.encode_batch(docs, num_threads=2, as_numpy=True))
    t0 = time.perf_counter()
    want = ref.encode_ordinary(text, tok.merges)
    reference = time.perf_counter() - t0
    same = want == tok.encode(text)
    print(f"encode {args.mb} MB at vocab {args.vocab}: native {nb / native / 1e6:.1f} MB/s, "
          f"batch(2 threads) {nb / batch / 1e6:.1f} MB/s, reference {nb / reference / 1e6:.3f} MB/s "
          f"(one run); speed-up {reference / native:.0f}x; identical ids: {same}")
    letters = "".join(c for c in "".join(corpus_documents(3_000_000)) if c.isascii() and c.isalpha())
    lin = []
    for name, small, big in [("word", letters[:100_000], letters[:1_000_000]),
                             ("repeat", "a" * 100_000, "a" * 1_000_000)]:
        ts, tb = _median(lambda: tok.encode_to_numpy(small)), _median(lambda: tok.encode_to_numpy(big))
        lin.append(tb / ts)
        print(f"pathological {name}: 100 KB {ts * 1e3:.1f} ms, 1 MB {tb * 1e3:.1f} ms (x{tb / ts:.1f} for 10x input)")
    held = same and max(lin) < 20
    print(f"claim (identical ids, 10x input < 20x time): {'HELD' if held else 'NOT HELD'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
