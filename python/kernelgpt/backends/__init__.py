"""Backend registry: ``get_backend("auto"|"numpy"|"native"|"cuda")`` returns a module that
implements the op interface of :mod:`kernelgpt.backends.base`."""
from __future__ import annotations

import importlib
from types import ModuleType

BACKEND_NAMES = ("numpy", "native", "cuda")
_MODULES = {"numpy": "numpy_backend", "native": "native_backend", "cuda": "cuda_backend"}


def _load(name: str) -> ModuleType | None:
    try:
        mod = importlib.import_module(f"{__name__}.{_MODULES[name]}")
    except ImportError:
        return None
    return mod if mod.is_available() else None


def available_backends() -> list[str]:
    """Names of the backends that can run here, best first."""
    return [n for n in ("cuda", "native", "numpy") if _load(n) is not None]


def get_backend(name: str = "auto") -> ModuleType:
    """The backend module called ``name``; "auto" picks cuda when CuPy sees a GPU and the CUDA
    module is built, else native, else numpy."""
    if not isinstance(name, str) or (name != "auto" and name not in _MODULES):
        raise ValueError(f"unknown backend {name!r}: choose one of auto, {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        for cand in ("cuda", "native", "numpy"):
            mod = _load(cand)
            if mod is not None:
                return mod
        raise RuntimeError("no backend available")  # numpy is always available; unreachable
    mod = _load(name)
    if mod is None:
        raise RuntimeError(f"backend {name!r} is not available on this machine "
                           f"(available: {', '.join(available_backends())})")
    return mod
