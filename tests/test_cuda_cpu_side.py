"""The CUDA backend's CPU-side behaviour, runnable on machines without a GPU (or without CuPy):
kernelgpt._cuda imports when built and counts devices, the backend reports itself unavailable with
a reason and get_backend("cuda") raises a clear RuntimeError, and the pure-Python argument checks
reject non-CuPy arrays with TypeError."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from kernelgpt.backends import cuda_backend, get_backend


def _have_gpu() -> bool:
    return cuda_backend.is_available()


def test_module_imports_and_counts_devices():
    try:
        cuda = importlib.import_module("kernelgpt._cuda")
    except ImportError:
        pytest.skip("kernelgpt._cuda was not built here (KERNELGPT_CUDA=OFF or no nvcc)")
    n = cuda.device_count()
    assert isinstance(n, int) and n >= 0
    for fn in ("attention_forward", "attention_backward", "layernorm_forward", "softmax_ce_fused",
               "global_norm_sq", "adamw_update", "embedding_backward"):
        assert callable(getattr(cuda, fn)), fn


def test_unavailable_without_gpu_gives_reason_and_clear_error():
    if _have_gpu():
        pytest.skip("a GPU is visible: this checks the GPU-less path")
    assert cuda_backend.is_available() is False
    reason = cuda_backend.unavailable_reason()
    assert isinstance(reason, str) and reason
    with pytest.raises(RuntimeError, match="cuda"):
        get_backend("cuda")
    assert get_backend("auto").name in ("native", "numpy")


def test_device_count_zero_without_gpu():
    cuda = pytest.importorskip("kernelgpt._cuda")
    if _have_gpu():
        pytest.skip("a GPU is visible")
    assert cuda.device_count() == 0


def test_numpy_arrays_are_rejected_with_typeerror():
    a = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(TypeError, match="out must be a cupy.ndarray"):
        cuda_backend._dev(a, "out")
    with pytest.raises(TypeError, match="a must be a cupy.ndarray"):
        cuda_backend.add(a, a, a)
    with pytest.raises(TypeError, match="qkv"):
        cuda_backend.attention_forward(a, a, a, 2)
    with pytest.raises(TypeError, match="g"):
        cuda_backend.global_norm_sq(np.zeros(4, np.float32))


def test_helpers_without_cupy_raise_runtimeerror():
    if cuda_backend.cupy is not None:
        pytest.skip("CuPy is installed")
    with pytest.raises(RuntimeError, match="CuPy"):
        cuda_backend.empty((2, 2))
    assert cuda_backend.to_numpy(np.ones(2)).tolist() == [1.0, 1.0]


def test_set_tf32_is_a_plain_flag():
    old = cuda_backend._TF32
    try:
        cuda_backend.set_tf32(False)
        assert cuda_backend._TF32 is False
    finally:
        cuda_backend._TF32 = old


def _real_cupy_present() -> bool:
    import importlib.util
    return importlib.util.find_spec("cupy") is not None


def test_fake_binding_has_the_real_signatures():
    """The fake _cuda used below must take exactly the real binding's parameters, in order."""
    import inspect
    import os
    import re
    import sys
    cuda = pytest.importorskip("kernelgpt._cuda")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fake_cuda"))
    try:
        fake = importlib.import_module("fake_cuda_impl")
    finally:
        sys.path.pop(0)
    for name in (n for n in dir(cuda) if not n.startswith("_")):
        doc = getattr(cuda, name).__doc__.splitlines()[0]
        real = re.findall(r"(\w+):", doc.split("(", 1)[1].rsplit(")", 1)[0])
        assert real == list(inspect.signature(getattr(fake, name)).parameters), name


def test_backend_plumbing_against_a_fake_device():
    """cuda_backend + the CUDA test files, run on numpy stand-ins for CuPy and _cuda (subprocess):
    catches Python-side errors (validation, argument order, chunking) without a GPU."""
    import os
    import subprocess
    import sys
    if _real_cupy_present():
        pytest.skip("real CuPy installed: the GPU tests cover this")
    here = os.path.dirname(os.path.abspath(__file__))
    import kernelgpt
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(kernelgpt.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_root, os.path.join(here, "fake_cuda")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "fakeplugin",
                        "-p", "no:cacheprovider", os.path.join(here, "test_cuda_ops.py"),
                        os.path.join(here, "test_cuda_model.py"),
                        # the S-size model checks are slow on a CPU and add no plumbing coverage
                        "--deselect", "tests/test_cuda_model.py::test_loss_and_every_gradient_match_numpy[fused-s]",
                        "--deselect", "tests/test_cuda_model.py::test_loss_and_every_gradient_match_numpy[unfused-s]"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=here)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last and "2 deselected" in last, last
