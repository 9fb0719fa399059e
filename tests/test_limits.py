"""Each limit is stated once (kernelgpt/backends/base.py) and enforced the same way by every
backend: the same bad call gets the same exception type and the same message on numpy, native
and (where present) cuda, and the native module reads its limits from base.py."""
from __future__ import annotations

import numpy as np
import pytest

from kernelgpt.backends import available_backends, base, get_backend

BACKENDS = available_backends()


def _call(be, fn, *arrays, **kw):
    args = [be.asarray(np.asarray(a, np.float32)) if isinstance(a, np.ndarray) else a
            for a in arrays]
    return getattr(be, fn)(*args, **kw)


def _errors(fn, *arrays, **kw):
    """{backend: (exception type, message)} of the same call on every backend."""
    out = {}
    for name in BACKENDS:
        be = get_backend(name)
        with pytest.raises(Exception) as e:
            _call(be, fn, *arrays, **kw)
        out[name] = (type(e.value), str(e.value))
    return out


def test_head_size_limit_is_the_same_everywhere():
    hs = base.MAX_HEAD_SIZE + 1
    B, T, C = 1, 2, hs
    errs = _errors("attention_forward", np.zeros((B, T, C)), np.zeros((B, 1, T)),
                   np.zeros((B, T, 3 * C)), 1)
    want = f"head size C/n_head must be <= {base.MAX_HEAD_SIZE}, got {hs}"
    for name, (typ, msg) in errs.items():
        if name == "cuda":  # CUDA's narrower limit, from the same function
            assert typ is ValueError and f"<= {base.CUDA_MAX_HEAD_SIZE} on cuda" in msg
            continue
        assert typ is ValueError and msg == want, (name, msg)
    # at the limit itself every CPU backend runs
    C = base.MAX_HEAD_SIZE
    for name in BACKENDS:
        if name == "cuda":
            continue
        be = get_backend(name)
        out, lse = be.empty((1, 2, C)), be.empty((1, 1, 2))
        be.attention_forward(out, lse, be.asarray(np.zeros((1, 2, 3 * C), np.float32)), 1)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_norm_eps_rule_is_the_same_everywhere(eps):
    N, C = 2, 4
    errs = _errors("layernorm_forward", np.zeros((N, C)), np.zeros(N), np.zeros(N),
                   np.ones((N, C)), np.ones(C), np.zeros(C), eps)
    for name, (typ, msg) in errs.items():
        assert typ is ValueError and msg.startswith("eps must be a finite number > 0"), (name, msg)


def test_thread_limit_is_bases():
    nat = pytest.importorskip("kernelgpt._native")
    with pytest.raises(ValueError, match=rf"num_threads must be in \[1, {base.MAX_THREADS}\]"):
        nat.set_num_threads(base.MAX_THREADS + 1)
    with pytest.raises(ValueError, match=rf"\[1, {base.MAX_THREADS}\]"):
        base.check_num_threads(base.MAX_THREADS + 1)
    import kernelgpt
    with pytest.raises(ValueError, match=rf"\[1, {base.MAX_THREADS}\]"):
        kernelgpt.set_num_threads(0)


def test_native_reads_its_limits_from_base(tmp_path):
    """A base.py stating a smaller head-size limit changes what the native binding accepts."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import kernelgpt
    pytest.importorskip("kernelgpt._native")
    pkg = Path(kernelgpt.__file__).resolve().parent
    copy = tmp_path / "kernelgpt"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    b = copy / "backends" / "base.py"
    b.write_text(b.read_text().replace("MAX_HEAD_SIZE = 256", "MAX_HEAD_SIZE = 64"))
    code = ("import numpy as np\nfrom kernelgpt import _native as n\n"
            "try:\n"
            "    n.attention_forward(np.zeros((1,2,65),np.float32), np.zeros((1,1,2),np.float32),"
            " np.zeros((1,2,195),np.float32), 1)\n"
            "except ValueError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "head size C/n_head must be <= 64, got 65"
