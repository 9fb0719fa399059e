"""The embedded default corpus: the Python standard library's own .py source files.

They are present wherever the package runs (found through ``sysconfig.get_paths()["stdlib"]``),
so ``python -m kernelgpt train`` needs no download. Files are taken in a fixed order (relative
paths sorted, directories walked in sorted order) until ``max_bytes`` is reached; test suites
(``test``/``tests``/``idle_test`` folders), installed packages (site-packages, dist-packages) and
caches are skipped. The corpus differs between Python versions, which is fine: it is a demo
corpus, and a run records the files it used.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import List, Optional

DEFAULT_MAX_BYTES = 2_000_000  # ~2 MB: enough text for the small default model, fast to tokenize
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files(max_bytes: Optional[int] = DEFAULT_MAX_BYTES,
                         root: "Optional[os.PathLike[str]]" = None) -> List[Path]:
    """The standard library's .py files in a fixed order, cut once their total size reaches
    ``max_bytes`` (None: all of them). Raises FileNotFoundError when none are found."""
    root = Path(root) if root is not None else stdlib_dir()
    files: List[Path] = []
    total = 0
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            p = Path(dirpath, name)
            try:
                size = p.stat().st_size
            except OSError:
                continue
            if size == 0:
                continue
            files.append(p)
            total += size
            if max_bytes is not None and total >= max_bytes:
                return files
    if not files:
        raise FileNotFoundError(f"no Python source files found under {root} for the default "
                                f"corpus; pass --data FILE_OR_DIR")
    return files


def default_corpus_texts(max_bytes: Optional[int] = DEFAULT_MAX_BYTES) -> List[str]:
    """The default corpus as one str per file (UTF-8, undecodable bytes replaced)."""
    from .data import read_texts
    return read_texts(default_corpus_files(max_bytes))
