"""Same-run A/B of two source trees (e.g. a release and the working tree) on the native backend:
the XS and S training steps and S batch-1 sampling, timed by each tree's own
benchmarks/bench_native_step.py worker (the same protocol as that benchmark), the trees
interleaved round by round so drift on a shared machine hits both alike.

Usage: OMP_NUM_THREADS=2 python3 benchmarks/ab_trees.py OLD_TREE NEW_TREE [--rounds 5]
       [--inner 5] [--threads 2] [--jobs train:xs,train:s,sample:s]
Each tree must have its native module built (scripts/dev_build.sh). Prints one line per round and
the median of the per-round new/old time ratios (< 1: the new tree is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

JOBS = [("train", "xs"), ("train", "s"), ("sample", "s")]


def run(tree: str, what: str, name: str, inner: int, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.join(tree, "python"), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "bench_native_step.py"),
                          "--worker", "native", what, name, str(inner), str(threads)],
                         env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["median"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--jobs", default="train:xs,train:s,sample:s",
                    help="what:config pairs to time (default: %(default)s)")
    a = ap.parse_args()
    jobs = [tuple(j.split(":")) for j in a.jobs.split(",")]
    ratios = {j: [] for j in jobs}
    for r in range(a.rounds):
        line = []
        for what, name in jobs:
            order = (a.old, a.new) if r % 2 == 0 else (a.new, a.old)
            t = {tree: run(tree, what, name, a.inner, a.threads) for tree in order}
            ratios[(what, name)].append(t[a.new] / t[a.old])
            line.append(f"{what} {name}: old {t[a.old] * 1e3:.2f} ms new {t[a.new] * 1e3:.2f} ms")
        print(f"round {r + 1}: " + "; ".join(line), flush=True)
    for (what, name), rs in ratios.items():
        print(f"{what} {name}: new/old time, median of {len(rs)} rounds: "
              f"{statistics.median(rs):.3f} (range {min(rs):.3f}-{max(rs):.3f})")


if __name__ == "__main__":
    main()
