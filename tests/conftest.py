"""Shared fixtures: seeded rng, the backends available here, the float64 reference, and the
tolerance helper used by every parity test."""
from __future__ import annotations

import os

import numpy as np
import pytest

# Keep thread counts explicit and small in tests (2-core CI machine).
os.environ.setdefault("OMP_NUM_THREADS", "2")


def subprocess_env(**extra: str) -> dict:
    """The environment for a child Python that must import the kernelgpt this test process
    imports (the checkout's python/ in a dev build, site-packages when installed): its directory
    first on PYTHONPATH, then the caller's entries; ``extra`` variables on top."""
    import kernelgpt
    from pathlib import Path
    here = str(Path(kernelgpt.__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([here] + rest), **extra)


def run_kernelgpt(*args, cwd, timeout: float = 120):
    """`python -m kernelgpt ARGS` in cwd (subprocess_env, KERNELGPT_DEBUG unset): the
    CompletedProcess, output captured as text."""
    import subprocess
    import sys
    env = subprocess_env()
    env.pop("KERNELGPT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "kernelgpt", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _backend_or_skip(name: str):
    from kernelgpt.backends import get_backend
    try:
        return get_backend(name)
    except (RuntimeError, ImportError) as e:
        pytest.skip(f"backend {name} not available: {e}")


@pytest.fixture(params=["numpy", "native", pytest.param("cuda", marks=pytest.mark.cuda)])
def backend(request):
    """Every backend, skipped where it cannot run."""
    return _backend_or_skip(request.param)


@pytest.fixture(params=["native", pytest.param("cuda", marks=pytest.mark.cuda)])
def fast_backend(request):
    """The compiled backends only (the ones compared against the reference)."""
    return _backend_or_skip(request.param)


@pytest.fixture
def ref():
    """The NumPy reference backend (call it with float64 arrays)."""
    from kernelgpt.backends import numpy_backend
    return numpy_backend


def rel_err(got, want) -> float:
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    denom = np.linalg.norm(want.ravel())
    return float(np.linalg.norm((got - want).ravel()) / max(denom, 1e-30))


def assert_close(got, want, *, name="out", tol=1e-5, ref32=None, floor=1e-6):
    """||got - want|| / ||want|| must be below ``tol``; when ``ref32`` (the float32 NumPy result)
    is given, the bound is max(tol, 2 * rel_err(ref32, want) + floor) (flash-attention's rule)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{name}: non-finite values (unwritten elements?)"
    bound = tol
    if ref32 is not None:
        bound = max(tol, 2 * rel_err(ref32, want) + floor)
    err = rel_err(got, want)
    assert err <= bound, f"{name}: relative error {err:.3g} > {bound:.3g}"


def hook_isas(set_isa, names) -> list:
    """The ISA names a string-valued test hook takes on this CPU: "scalar" first, then each of
    ``names`` that ``set_isa(name)`` accepts (it raises ValueError for one the CPU lacks). The hook
    is left at "auto"."""
    out = ["scalar"]
    try:
        for name in names:
            try:
                set_isa(name)
                out.append(name)
            except ValueError:
                pass
    finally:
        set_isa("auto")
    return out


def native_ops_paths() -> list:
    """The native non-GEMM code paths this CPU has: "avx512", "avx2", "portable" (most capable
    first); [] without the native module."""
    try:
        from kernelgpt import _native as nat
    except ImportError:
        return []
    set_native_ops_path("avx512")
    return ((["avx512"] if nat.ops_use_avx512() else []) + (["avx2"] if nat.ops_use_avx2() else [])
            + ["portable"])


def set_native_ops_path(name: str) -> None:
    """Force the native non-GEMM kernels onto one code path ("avx512" = the default: the most
    capable the CPU has)."""
    from kernelgpt import _native as nat
    nat._set_ops_force_portable(name == "portable")
    nat._set_ops_allow_avx512(name == "avx512")
