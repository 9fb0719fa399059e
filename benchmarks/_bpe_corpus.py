"""Benchmark corpus for the tokenizer claims: the Python standard library's .py files of the
running interpreter (sysconfig "stdlib" path, all subfolders, sorted by relative path, read as
UTF-8 with undecodable files skipped) followed by the Korean text shipped with the benchmarks
(benchmarks/data/generative-ai-overview.ko.md), repeated in that order and truncated to the size
asked for (at a character boundary).
Deterministic for a given interpreter; real code plus prose, available offline."""
from __future__ import annotations

import os
import random
import sysconfig
from pathlib import Path
from typing import List

_KOREAN = Path(__file__).resolve().parent / "data" / "generative-ai-overview.ko.md"


def source_texts() -> List[str]:
    """The stdlib .py files (sorted) and the Korean text, one str each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for p in sorted(root.rglob("*.py"), key=lambda q: q.relative_to(root).as_posix()):
        if "site-packages" in p.parts or "dist-packages" in p.parts:
            continue
        try:
            texts.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    texts.append(_KOREAN.read_text(encoding="utf-8"))
    return texts


def corpus_documents(n_bytes: int) -> List[str]:
    """Documents (files) repeated in order until their UTF-8 size reaches n_bytes; the last one
    is cut so the total is at most n_bytes."""
    src = source_texts()
    out, total, i = [], 0, 0
    while total < n_bytes:
        t = src[i % len(src)]
        b = len(t.encode("utf-8"))
        if total + b > n_bytes:
            t = t.encode("utf-8")[: n_bytes - total].decode("utf-8", "ignore")
            b = len(t.encode("utf-8"))
            if b == 0:
                break
        out.append(t)
        total += b
        i += 1
    return out


def corpus_text(n_bytes: int) -> str:
    return "".join(corpus_documents(n_bytes))


def corpus_lines(n_bytes: int) -> List[str]:
    """The corpus held as lines (keepends), how the train comparison feeds every tool."""
    return corpus_text(n_bytes).splitlines(keepends=True)


def write_corpus_file(path: os.PathLike, n_bytes: int) -> None:
    Path(path).write_text(corpus_text(n_bytes), encoding="utf-8", newline="")


# ---- encode workloads: "code", "korean" and "mixed" text of about n_bytes, a different text for each
# seed (so an encoder meets text it has not seen: no cross-call cache advantage), deterministic.
def _code_text(n_bytes: int, seed: int) -> str:
    code = _code_all()
    step = 7_919_003
    off = (seed * step) % max(1, len(code) - n_bytes - 1)
    return code[off:off + n_bytes]


def _korean_text(n_bytes: int, seed: int) -> str:
    """Words of the shipped Korean text, drawn at random (seeded) and joined by spaces; every
    40th word ends a line."""
    words = _KOREAN.read_text(encoding="utf-8").split()
    r = random.Random(seed)
    out, total = [], 0
    while total < n_bytes:
        w = r.choice(words) + ("\n" if len(out) % 40 == 39 else " ")
        out.append(w)
        total += len(w.encode("utf-8"))
    return "".join(out)


def _mixed_text(n_bytes: int, seed: int) -> str:
    """Alternating pieces: 8 KB of code, then 4 KB of Korean."""
    parts, total, i = [], 0, 0
    while total < n_bytes:
        p = _code_text(8000, seed * 1000 + i) if i % 2 == 0 else _korean_text(4000, seed * 1000 + i)
        parts.append(p)
        total += len(p.encode("utf-8"))
        i += 1
    return "".join(parts)


_CODE_CACHE: List[str] = []


def _code_all() -> str:
    if not _CODE_CACHE:
        _CODE_CACHE.append("".join(source_texts()[:-1]))
    return _CODE_CACHE[0]


WORKLOADS = ("mixed", "korean", "code")


def workload_text(kind: str, n_bytes: int, seed: int = 0) -> str:
    """About n_bytes of `kind` text ("mixed", "korean" or "code"); another seed, another text."""
    return {"mixed": _mixed_text, "korean": _korean_text, "code": _code_text}[kind](n_bytes, seed)


if __name__ == "__main__":
    src = source_texts()
    print(f"{len(src)} documents, {sum(len(t.encode()) for t in src) / 1e6:.1f} MB of unique text")
