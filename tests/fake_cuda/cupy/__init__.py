"""FAKE cupy backed by numpy (tests only): exercises kernelgpt's cuda_backend plumbing on a CPU.
Empty float arrays are NaN-filled so unwritten outputs show."""
import numpy as _np
import types as _types


class ndarray(_np.ndarray):
    @property
    def data(self):
        return _types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def device(self):
        return _types.SimpleNamespace(id=0)

    def get(self):
        return _np.array(self).view(_np.ndarray)


def _wrap(a):
    return _np.asarray(a).view(ndarray)


def asarray(a, dtype=None):
    return _np.array(_np.asarray(a), dtype=dtype, copy=True).view(ndarray) if not isinstance(a, ndarray) or (dtype is not None and a.dtype != dtype) else a


def ascontiguousarray(a, dtype=None):
    return _np.ascontiguousarray(a, dtype=dtype).view(ndarray)


def empty(shape, dtype="float32"):
    a = _np.empty(shape, dtype=dtype)
    if a.dtype.kind == "f":
        a.fill(_np.nan)
    return a.view(ndarray)


def zeros(shape, dtype="float32"):
    return _np.zeros(shape, dtype=dtype).view(ndarray)


def arange(*a, **k):
    return _np.arange(*a, **k).view(ndarray)


def sort(a):
    return _np.sort(a).view(ndarray)


def count_nonzero(a):
    return _np.count_nonzero(a)


def asnumpy(a):
    return _np.array(a).view(_np.ndarray)


int32, int64, float32, float64 = _np.int32, _np.int64, _np.float32, _np.float64


def __getattr__(name):
    return getattr(_np, name)


class _Stream:
    ptr = 0


class _Runtime:
    @staticmethod
    def getDevice():
        return 0

    @staticmethod
    def getDeviceCount():
        return 1


class _Device:
    @staticmethod
    def get_cublas_handle():
        return 0


cuda = _types.SimpleNamespace(get_current_stream=lambda: _Stream(), runtime=_Runtime(), device=_Device())


import time as _time


class _Event:
    def record(self):
        self.t = _time.perf_counter()

    def synchronize(self):
        pass


def _elapsed(s, e):
    return (e.t - s.t) * 1e3


cuda.Event = _Event
cuda.get_elapsed_time = _elapsed
cuda.runtime.getDeviceProperties = lambda i: {"name": b"FAKE"}


def get_default_memory_pool():
    return _types.SimpleNamespace(free_all_blocks=lambda: None)
