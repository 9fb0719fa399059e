"""pytest set-up of the benchmark suites (`pytest benchmarks/ --benchmark-only`).

Which kernelgpt the benchmarks measure: the one Python imports first, if it has its compiled
extension (``kernelgpt._native``): a source tree on PYTHONPATH that ``scripts/dev_build.sh`` built,
else the installed package (``pip install .``). A source tree without a built extension (a clean
clone run with ``PYTHONPATH=python``) is dropped from the path so that the installed package is
used instead; the environment's PYTHONPATH is cleaned the same way for the scripts' subprocesses.
Where no kernelgpt with the extension can be imported at all, every suite that needs it is skipped
with that reason (one line each) instead of failing on import; suites that need an optional peer
(``regex``) or a CUDA device skip themselves.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import pytest

# Suites that run on the NumPy reference alone (no compiled extension needed).
_PURE_NUMPY = {"bench_numpy_model.py"}

# Keep thread counts explicit (the figures in README.md are for 2 threads).
os.environ.setdefault("OMP_NUM_THREADS", "2")


def _forget_kernelgpt() -> None:
    for name in [m for m in sys.modules if m == "kernelgpt" or m.startswith("kernelgpt.")]:
        del sys.modules[name]


def _has_native() -> Optional[str]:
    """The folder holding the importable kernelgpt when its extension imports, else None."""
    try:
        import kernelgpt
        import kernelgpt._native  # noqa: F401
    except ImportError:
        return None
    return str(Path(kernelgpt.__file__).resolve().parent)


def _same(a: str, b: Path) -> bool:
    try:
        return Path(a or ".").resolve() == b
    except OSError:
        return False


def _arrange() -> Optional[str]:
    """Make ``import kernelgpt`` give a package with its extension when one is installed.
    Returns why none can be used (None when one is)."""
    if _has_native() is not None:
        return None
    try:
        import kernelgpt
    except ImportError as e:
        return f"kernelgpt is not importable ({e}): run `pip install .` first"
    shadow = Path(kernelgpt.__file__).resolve().parents[1]  # e.g. <checkout>/python
    kept: List[str] = [p for p in sys.path if not _same(p, shadow)]
    if len(kept) == len(sys.path):  # not a path entry we can drop: nothing else to try
        return (f"kernelgpt at {shadow} has no compiled extension (kernelgpt._native): run "
                f"`pip install .` or scripts/dev_build.sh first")
    sys.path[:] = kept
    _forget_kernelgpt()
    if _has_native() is not None:
        env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
               if p and not _same(p, shadow)]
        if env:
            os.environ["PYTHONPATH"] = os.pathsep.join(env)
        else:
            os.environ.pop("PYTHONPATH", None)
        return None
    sys.path.insert(0, str(shadow))  # nothing better installed: keep the first one
    _forget_kernelgpt()
    return (f"kernelgpt at {shadow} has no compiled extension (kernelgpt._native) and no "
            f"installed kernelgpt has one: run `pip install .` or scripts/dev_build.sh first")


_WHY_NOT = _arrange()
try:  # the NumPy-only suites need kernelgpt itself, with or without its extension
    import kernelgpt  # noqa: F401
    _IMPORTABLE = True
except ImportError:
    _IMPORTABLE = False


class _Skipped(pytest.File):
    """A suite that cannot run here: one skipped collection report with the reason."""

    def collect(self):  # type: ignore[override]
        pytest.skip(_WHY_NOT or "")


def pytest_pycollect_makemodule(module_path, parent):  # type: ignore[no-untyped-def]
    if _WHY_NOT is not None and (Path(str(module_path)).name not in _PURE_NUMPY
                                 or not _IMPORTABLE):
        return _Skipped.from_parent(parent, path=Path(str(module_path)))
    return None


def pytest_report_header(config):  # type: ignore[no-untyped-def]
    if _WHY_NOT is not None:
        return f"kernelgpt benchmarks: {_WHY_NOT}"
    import kernelgpt
    return f"kernelgpt benchmarks: measuring {Path(kernelgpt.__file__).resolve().parent}"
