"""Claim: Tokenizer.from_tiktoken loads OpenAI's cl100k/o200k ranks in a fraction of a second (its
C++ reader), against its own Python reference reader and gigatoken's Tokenizer.from_tiktoken.
Reads the ranks bpe-openai ships (nothing downloaded), written out as plain .tiktoken files;
wall clock, median of 5 loads (3 for the Python reader). Needs bpe-openai; gigatoken optional.

    PYTHONPATH=python python3 benchmarks/bench_tiktoken_load.py
"""
import gzip
import os
import statistics
import sys
import tempfile
import time

from kernelgpt import Tokenizer
from kernelgpt import tokenizer as tokmod


def median_load(fn, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    try:
        import bpe_openai
    except ImportError:
        sys.exit("needs bpe-openai (pip install bpe-openai): it ships the cl100k/o200k ranks")
    try:
        import gigatoken
    except ImportError:
        gigatoken = None
    data = os.path.join(os.path.dirname(bpe_openai.__file__), "data")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'ranks':12s} {'kernelgpt':>10s} {'Python reader':>14s} {'gigatoken':>10s}   seconds")
        for base in ("cl100k_base", "o200k_base"):
            plain = os.path.join(tmp, base + ".tiktoken")
            with gzip.open(os.path.join(data, base + ".tiktoken.gz")) as f, open(plain, "wb") as g:
                g.write(f.read())
            pat = base.split("_")[0]
            fast = median_load(lambda: Tokenizer.from_tiktoken(plain, pattern=pat), 5)
            tokmod._FAST_TIKTOKEN = False
            try:
                slow = median_load(lambda: Tokenizer.from_tiktoken(plain, pattern=pat), 3)
            finally:
                tokmod._FAST_TIKTOKEN = True
            giga = median_load(lambda: gigatoken.Tokenizer.from_tiktoken(plain), 5) if gigatoken else float("nan")
            print(f"{base:12s} {fast:10.3f} {slow:14.3f} {giga:10.3f}")


if __name__ == "__main__":
    main()
