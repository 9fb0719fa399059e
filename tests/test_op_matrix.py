"""Every op of the backend interface (backends/base.py), on every backend this machine has and,
for native, on every instruction-set path this CPU has (AVX-512, AVX2, portable: the non-GEMM
kernels and the GEMM micro-kernel forced together), against the NumPy reference run in float64.

One table (CASES) of op calls with their shapes, odd and tail sizes included. Each case runs on
the target in float32 with every overwritten output poisoned (NaN) first and every accumulated
(+=) output starting from random values, then on the reference in float64 and float32; the bound
is conftest.assert_close's: relative error <= max(1e-5, 2 * err(float32 reference) + 1e-6).

Adding an op touches, in order (docs/ARCHITECTURE.md, "How to add an op"):
  1. python/kernelgpt/backends/base.py        the signature, contract and any limit
  2. python/kernelgpt/backends/numpy_backend.py  the reference
  3. csrc/cpu/ (ops.h + the kernel)          the native kernel and its ISA variants
  4. csrc/bindings/native_cpu.cpp or native_gemm.cpp  the binding (checks: array_checks.h)
  5. python/kernelgpt/backends/native_backend.py  export under the base.py name
  6. csrc/cuda/ + csrc/bindings/cuda_ops.cpp  the CUDA kernel and binding
  7. python/kernelgpt/backends/cuda_backend.py   the wrapper (checks shared from base.py)
  8. tests/fake_cuda/fake_cuda_impl.py       the CPU stand-in for the CUDA binding
  9. this file                               a row in CASES
Backend-specific properties (bitwise equality between ISA paths, thread-count determinism, bad
input) stay in test_native_ops.py, test_native_gemm.py and test_cuda_ops.py.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import numpy as np
import pytest

from conftest import assert_close, native_ops_paths, set_native_ops_path
from kernelgpt.backends import numpy_backend as R

# --------------------------------------------------------------------------------- targets
_GEMM_KERNEL = {"avx512": "avx512", "avx2": "avx2_fma", "portable": "portable"}


def _targets() -> List[Any]:
    t = [pytest.param(("numpy", None), id="numpy-f32")]
    t += [pytest.param(("native", p), id=f"native-{p}") for p in native_ops_paths()]
    t.append(pytest.param(("cuda", None), id="cuda", marks=pytest.mark.cuda))
    return t


@pytest.fixture(params=_targets())
def target(request):
    name, path = request.param
    if name == "cuda":
        from kernelgpt.backends import cuda_backend
        reason = cuda_backend.unavailable_reason()
        if reason:
            pytest.skip(f"cuda backend not available: {reason}")
        yield cuda_backend
        return
    if name == "numpy":
        yield R
        return
    from kernelgpt import _native as nat
    from kernelgpt.backends import native_backend
    set_native_ops_path(path)
    nat._set_gemm_kernel(_GEMM_KERNEL[path])
    try:
        yield native_backend
    finally:
        set_native_ops_path("avx512")
        nat._set_gemm_kernel("auto")


# --------------------------------------------------------------------------------- the table
class A(NamedTuple):
    """One positional argument: kind "in" (input), "out" (overwritten: poisoned on the target),
    "acc" (accumulated or updated in place: starts from ``value``), "arg" (passed as is: ids,
    sizes, scalars, None)."""
    name: str
    kind: str
    value: Any


class Case(NamedTuple):
    op: str
    args: List[A]
    kwargs: Dict[str, Any]
    returns: bool = False          # compare the return value (a float) too
    cuda: bool = True              # False: an op (or argument) the CUDA backend lacks so far


def g(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def ids(rng, upper, *shape):
    return rng.integers(0, upper, shape).astype(np.int32)


def _ref64(op: str, args: List[A], **kw) -> Dict[str, np.ndarray]:
    """Run the float64 reference on fresh copies; the outputs by name."""
    vals = [np.array(a.value, np.float64) if a.kind in ("in", "out", "acc") and a.value is not None
            else a.value for a in args]
    getattr(R, op)(*vals, **kw)
    return {a.name: v for a, v in zip(args, vals) if a.kind in ("out", "acc")}


def _embedding(rng, B, T, C, V):
    maxT = T + 3
    idx = ids(rng, V, B, T)
    idx[0, 0] = idx[-1, -1] = V - 1          # repeated ids: the scatter-add
    return [Case("embedding_forward", [A("out", "out", np.zeros((B, T, C))), A("idx", "arg", idx),
                                       A("wte", "in", g(rng, V, C)), A("wpe", "in", g(rng, maxT, C))], {}),
            Case("embedding_backward", [A("dwte", "acc", g(rng, V, C)), A("dwpe", "acc", g(rng, maxT, C)),
                                        A("dout", "in", g(rng, B, T, C)), A("idx", "arg", idx)], {})]


def _embedding_nopos(rng, B, T, C, V):
    """wpe / dwpe None: no position table (rotary positions)."""
    idx = ids(rng, V, B, T)
    return [Case("embedding_forward", [A("out", "out", np.zeros((B, T, C))), A("idx", "arg", idx),
                                       A("wte", "in", g(rng, V, C)), A("wpe", "arg", None)], {}),
            Case("embedding_backward", [A("dwte", "acc", g(rng, V, C)), A("dwpe", "arg", None),
                                        A("dout", "in", g(rng, B, T, C)), A("idx", "arg", idx)], {})]


def _layernorm(rng, N, C):
    x, w, b = g(rng, N, C, scale=3.0) + 1.5, g(rng, C), g(rng, C)
    fwd = [A("out", "out", np.zeros((N, C))), A("mean", "out", np.zeros(N)),
           A("rstd", "out", np.zeros(N)), A("x", "in", x), A("w", "in", w), A("b", "in", b)]
    saved = _ref64("layernorm_forward", fwd)
    return [Case("layernorm_forward", fwd, {}),
            Case("layernorm_forward", fwd + [A("eps", "arg", 1e-3)], {}),
            Case("layernorm_backward", [A("dx", "out", np.zeros((N, C))), A("dw", "acc", g(rng, C)),
                                        A("db", "acc", g(rng, C)), A("dout", "in", g(rng, N, C)),
                                        A("x", "in", x), A("w", "in", w),
                                        A("mean", "in", saved["mean"]), A("rstd", "in", saved["rstd"])], {})]


def _matmul(rng, N, C, OC):
    x, w = g(rng, N, C), g(rng, OC, C)
    cases = []
    for bias in (True, False):
        cases.append(Case("matmul_forward", [A("out", "out", np.zeros((N, OC))), A("x", "in", x),
                                             A("w", "in", w),
                                             A("bias", "in" if bias else "arg", g(rng, OC) if bias else None)], {}))
        cases.append(Case("matmul_backward", [
            A("dx", "out", np.zeros((N, C))), A("dw", "acc", g(rng, OC, C)),
            A("dbias", "acc" if bias else "arg", g(rng, OC) if bias else None),
            A("dout", "in", g(rng, N, OC)), A("x", "in", x), A("w", "in", w)], {}))
    cases.append(Case("matmul_backward", [                  # dx skipped
        A("dx", "arg", None), A("dw", "acc", g(rng, OC, C)), A("dbias", "acc", g(rng, OC)),
        A("dout", "in", g(rng, N, OC)), A("x", "in", x), A("w", "in", w)], {}))
    return cases


def _attention(rng, B, T, C, NH):
    qkv = g(rng, B, T, 3 * C, scale=1.5)
    fwd = [A("out", "out", np.zeros((B, T, C))), A("lse", "out", np.zeros((B, NH, T))),
           A("qkv", "in", qkv), A("n_head", "arg", NH)]
    saved = _ref64("attention_forward", fwd)
    return [Case("attention_forward", fwd, {}),
            Case("attention_backward", [A("dqkv", "out", np.zeros((B, T, 3 * C))),
                                        A("dout", "in", g(rng, B, T, C)), A("qkv", "in", qkv),
                                        A("out", "in", saved["out"]), A("lse", "in", saved["lse"]),
                                        A("n_head", "arg", NH)], {})]


def _decode(rng, B, NH, maxT, HS, n_valid):
    kc, vc = g(rng, B, NH, maxT, HS), g(rng, B, NH, maxT, HS)
    kc[:, :, n_valid:] = np.nan        # positions past n_valid must never be read
    vc[:, :, n_valid:] = np.nan
    return [Case("attention_decode", [A("out", "out", np.zeros((B, NH * HS))),
                                      A("q", "in", g(rng, B, NH * HS, scale=2.0)),
                                      A("k_cache", "in", kc), A("v_cache", "in", vc),
                                      A("n_valid", "arg", n_valid)], {})]


def _elementwise(rng, *shape):
    x = g(rng, *shape, scale=3.0)
    x.flat[0] = -30.0                  # far tails: exp over/underflow paths
    x.flat[-1] = 30.0
    return [Case("gelu_forward", [A("out", "out", np.zeros(shape)), A("x", "in", x)], {}),
            Case("gelu_backward", [A("dx", "out", np.zeros(shape)), A("dout", "in", g(rng, *shape)),
                                   A("x", "in", x)], {}),
            Case("add", [A("out", "out", np.zeros(shape)), A("a", "in", x), A("b", "in", g(rng, *shape))], {})]


def _rmsnorm(rng, N, C):
    x, w = g(rng, N, C, scale=3.0) + 0.5, g(rng, C)
    fwd = [A("out", "out", np.zeros((N, C))), A("rstd", "out", np.zeros(N)), A("x", "in", x),
           A("w", "in", w)]
    saved = _ref64("rmsnorm_forward", fwd)
    return [Case("rmsnorm_forward", fwd, {}, cuda=False),
            Case("rmsnorm_forward", fwd + [A("eps", "arg", 1e-3)], {}, cuda=False),
            Case("rmsnorm_backward", [A("dx", "out", np.zeros((N, C))), A("dw", "acc", g(rng, C)),
                                      A("dout", "in", g(rng, N, C)), A("x", "in", x),
                                      A("w", "in", w), A("rstd", "in", saved["rstd"])], {},
                 cuda=False)]


def _rope(rng, B, T, NH, NKV, HS, theta, pos0):
    D = (NH + 2 * (NH if NKV is None else NKV)) * HS
    tail = [A("n_head", "arg", NH), A("n_kv_head", "arg", NKV), A("theta", "arg", theta),
            A("pos0", "arg", pos0)]
    return [Case("rope_forward", [A("out", "out", np.zeros((B, T, D))),
                                  A("x", "in", g(rng, B, T, D))] + tail, {}, cuda=False),
            Case("rope_backward", [A("dx", "out", np.zeros((B, T, D))),
                                   A("dout", "in", g(rng, B, T, D))] + tail, {}, cuda=False)]


def _swiglu(rng, N, H):
    x = g(rng, N, 2 * H, scale=3.0)
    x.flat[0] = -30.0                  # far tails of the sigmoid
    x.flat[-1] = 30.0
    return [Case("swiglu_forward", [A("out", "out", np.zeros((N, H))), A("x", "in", x)], {},
                 cuda=False),
            Case("swiglu_backward", [A("dx", "out", np.zeros((N, 2 * H))),
                                     A("dout", "in", g(rng, N, H)), A("x", "in", x)], {},
                 cuda=False)]


def _gqa_attention(rng, B, T, NH, NKV, HS):
    C, D = NH * HS, (NH + 2 * NKV) * HS
    qkv = g(rng, B, T, D, scale=1.5)
    fwd = [A("out", "out", np.zeros((B, T, C))), A("lse", "out", np.zeros((B, NH, T))),
           A("qkv", "in", qkv), A("n_head", "arg", NH), A("n_kv_head", "arg", NKV)]
    saved = _ref64("attention_forward", fwd)
    return [Case("attention_forward", fwd, {}, cuda=False),
            Case("attention_backward", [A("dqkv", "out", np.zeros((B, T, D))),
                                        A("dout", "in", g(rng, B, T, C)), A("qkv", "in", qkv),
                                        A("out", "in", saved["out"]), A("lse", "in", saved["lse"]),
                                        A("n_head", "arg", NH), A("n_kv_head", "arg", NKV)], {},
                 cuda=False)]


def _gqa_decode(rng, B, NH, NKV, maxT, HS, n_valid):
    kc, vc = g(rng, B, NKV, maxT, HS), g(rng, B, NKV, maxT, HS)
    kc[:, :, n_valid:] = np.nan        # positions past n_valid must never be read
    vc[:, :, n_valid:] = np.nan
    return [Case("attention_decode", [A("out", "out", np.zeros((B, NH * HS))),
                                      A("q", "in", g(rng, B, NH * HS, scale=2.0)),
                                      A("k_cache", "in", kc), A("v_cache", "in", vc),
                                      A("n_valid", "arg", n_valid)], {}, cuda=NKV == NH)]


def _crossentropy(rng, N, V):
    logits, t = g(rng, N, V, scale=4.0), ids(rng, V, N)
    fwd = [A("losses", "out", np.zeros(N)), A("probs", "out", np.zeros((N, V))),
           A("logits", "in", logits), A("targets", "arg", t)]
    saved = _ref64("crossentropy_forward", fwd)
    return [Case("crossentropy_forward", fwd, {}),
            Case("crossentropy_backward", [A("dlogits", "out", np.zeros((N, V))),
                                           A("probs", "in", saved["probs"]),
                                           A("targets", "arg", t), A("scale", "arg", 1.0 / N)], {})]


def _classifier(rng, N, C, V):
    x, wte, t = g(rng, N, C), g(rng, V, C), ids(rng, V, N)
    cases = []
    for with_dx, with_dwte in ((True, True), (True, False), (False, True), (False, False)):
        cases.append(Case("classifier_forward_backward", [
            A("losses", "out", np.zeros(N)),
            A("dx", "out", np.zeros((N, C))) if with_dx else A("dx", "arg", None),
            A("dwte", "acc", g(rng, V, C)) if with_dwte else A("dwte", "arg", None),
            A("x", "in", x), A("wte", "in", wte), A("targets", "arg", t),
            A("scale", "arg", 1.0 / N)], {}))
    return cases


def _optimizer(rng, n, step, wd):
    return [Case("global_norm_sq", [A("g", "in", g(rng, n))], {}, returns=True),
            Case("scale_", [A("g", "acc", g(rng, n)), A("s", "arg", 0.37)], {}),
            Case("zero_", [A("a", "acc", g(rng, n))], {}),
            Case("adamw_update", [A("params", "acc", g(rng, n)), A("grads", "in", g(rng, n)),
                                  A("m", "acc", g(rng, n, scale=0.1)),
                                  A("v", "acc", np.abs(g(rng, n)) * 0.01)],
                 dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=wd, step=step))]


# (builder, shapes): every shape list holds a size-1 case, odd sizes and vector tails.
_TABLE: List[Tuple[Callable, List[tuple]]] = [
    (_embedding, [(1, 1, 12, 5), (2, 7, 20, 300), (3, 33, 64, 16), (2, 7, 36, 11), (3, 65, 36, 50),
                  (2, 129, 64, 300)]),
    (_embedding_nopos, [(1, 1, 12, 5), (2, 7, 20, 300), (3, 65, 36, 50), (2, 129, 64, 300)]),
    (_layernorm, [(1, 12), (7, 20), (7, 36), (65, 64), (67, 64), (130, 384), (257, 768)]),
    (_matmul, [(1, 12, 5), (1, 12, 36), (3, 20, 37), (4, 33, 100), (7, 36, 12), (17, 33, 37),
               (65, 64, 192), (67, 12, 100), (67, 20, 5), (130, 96, 7), (512, 128, 384)]),
    (_attention, [(1, 1, 12, 3), (1, 1, 12, 4), (2, 7, 20, 4), (2, 7, 36, 6), (1, 33, 48, 3),
                  (1, 65, 36, 3), (2, 67, 64, 2), (1, 130, 32, 1), (1, 70, 128, 2),
                  (1, 130, 128, 2), (2, 45, 80, 2), (1, 20, 72, 3), (2, 129, 64, 2),
                  (2, 33, 256, 2), (1, 64, 48, 1)]),
    (_decode, [(1, 3, 8, 4, 1), (2, 2, 40, 10, 37), (1, 6, 64, 64, 64), (3, 1, 9, 12, 5),
               (2, 3, 16, 4, 1), (1, 2, 65, 32, 65), (2, 4, 129, 64, 100), (1, 1, 7, 128, 5)]),
    (_elementwise, [(1,), (7, 13), (5, 12), (3, 33, 20), (2, 67, 20), (3, 65, 48), (70001,),
                    (100003,)]),
    (_rmsnorm, [(1, 12), (7, 20), (7, 36), (65, 64), (67, 67), (130, 384), (257, 768)]),
    # (B, T, NH, NKV, HS, theta, pos0); NKV None: GPT-2's (B, T, 3C) layout
    (_rope, [(1, 1, 1, 1, 2, 10000.0, 0), (2, 7, 4, 2, 16, 10000.0, 0), (1, 33, 4, 1, 24, 500.0, 5),
             (2, 9, 6, 3, 64, 10000.0, 100), (1, 5, 8, 8, 128, 1e6, 0), (2, 67, 2, 2, 6, 1e4, 3),
             (1, 13, 3, None, 18, 10000.0, 0), (3, 130, 4, 2, 64, 10000.0, 0)]),
    (_swiglu, [(1, 1), (7, 13), (5, 12), (33, 20), (67, 48), (3, 700), (17, 1000)]),
    # (B, T, NH, NKV, HS): grouped-query shapes (4,2), (4,1), (6,3), (8,8)
    (_gqa_attention, [(1, 1, 4, 2, 16), (2, 7, 4, 2, 16), (1, 33, 4, 1, 24), (2, 67, 6, 3, 64),
                      (1, 70, 8, 8, 128), (1, 130, 4, 1, 16), (2, 20, 4, 2, 24), (1, 9, 6, 3, 128),
                      (2, 65, 4, 1, 64)]),
    (_gqa_decode, [(1, 4, 2, 8, 16, 1), (2, 4, 1, 40, 24, 37), (1, 6, 3, 64, 64, 64),
                   (2, 8, 8, 9, 128, 5), (3, 4, 2, 17, 16, 17), (1, 4, 1, 130, 128, 100)]),
    (_crossentropy, [(1, 3), (1, 5), (7, 65), (7, 300), (33, 1000), (67, 257), (4, 50304)]),
    (_classifier, [(1, 12, 5), (7, 36, 50), (17, 33, 300), (65, 64, 1000)]),
    (_optimizer, [(1, 1, 0.0), (13, 2, 0.0), (1001, 3, 0.1), (70003, 1000, 0.1),
                  (65536 * 3 + 7, 50, 0.1)]),
]


def _params() -> List[Any]:
    out = []
    for build, shapes in _TABLE:
        for shape in shapes:
            cases = build(np.random.default_rng(hash(shape) % (1 << 32)), *shape)
            for i, c in enumerate(cases):
                out.append(pytest.param(c, id=f"{c.op}-{'x'.join(map(str, shape))}-{i}"))
    return out


CASES = _params()


# --------------------------------------------------------------------------------- the check
def _on(be, a: A) -> Any:
    if a.kind == "arg":
        return be.asarray(a.value) if isinstance(a.value, np.ndarray) else a.value
    if a.kind == "out":
        return be.asarray(np.full(np.shape(a.value), np.nan, np.float32))
    return be.asarray(np.asarray(a.value, np.float32))


def _run_ref(c: Case, dtype) -> Tuple[Dict[str, np.ndarray], Any]:
    # the reference sees exactly the target's inputs: rounded to float32 first
    vals = [np.array(np.asarray(a.value, np.float32), dtype) if a.kind != "arg" else a.value
            for a in c.args]
    ret = getattr(R, c.op)(*vals, **c.kwargs)
    return {a.name: v for a, v in zip(c.args, vals) if a.kind in ("out", "acc")}, ret


@pytest.mark.parametrize("case", CASES)
def test_op_matches_float64_reference(target, case):
    if getattr(target, "name", "") == "cuda" and not case.cuda:
        pytest.skip("not on the CUDA backend yet")
    vals = [_on(target, a) for a in case.args]
    ret = getattr(target, case.op)(*vals, **case.kwargs)
    want64, ret64 = _run_ref(case, np.float64)
    want32, _ = _run_ref(case, np.float32)
    got = {a.name: np.asarray(target.to_numpy(v)) for a, v in zip(case.args, vals)
           if a.kind in ("out", "acc")}
    for name, w in want64.items():
        if case.op == "zero_":
            assert np.array_equal(got[name], np.zeros_like(got[name]))
            continue
        assert_close(got[name], w, name=f"{case.op}:{name}", ref32=want32[name])
    if case.returns:
        assert isinstance(ret, float)
        assert abs(ret - ret64) <= 1e-10 * max(abs(ret64), 1.0)
