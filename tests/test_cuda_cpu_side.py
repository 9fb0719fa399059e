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
        cuda_backend.residual_forward(a, a, a)
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
