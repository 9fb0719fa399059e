"""The package imports, the native module is built, and backend selection rejects bad names."""
import pytest


def test_import_is_lazy_and_versioned():
    import kernelgpt
    assert kernelgpt.__version__
    with pytest.raises(AttributeError):
        kernelgpt.no_such_thing  # noqa: B018


def test_native_module_threads():
    from kernelgpt import _native
    assert _native.max_threads() >= 1
    with pytest.raises(ValueError, match="num_threads"):
        _native.set_num_threads(0)


def test_unknown_backend_rejected():
    from kernelgpt.backends import get_backend
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        get_backend("tpu")
