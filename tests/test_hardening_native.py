"""Hardening of the native kernels and their bindings: no C++ exception escapes an OpenMP region
or a thread (MemoryError instead of an abort), zero-size arrays with absurd dimensions return at
once, int arguments of any size give a clear ValueError, the thread count is one process-wide
value, and processes forked after the parent ran parallel kernels work (on one thread) instead
of hanging. What can crash or hang runs in a subprocess with a timeout."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from conftest import subprocess_env

nat = pytest.importorskip("kernelgpt._native")


def run_py(code: str, timeout: float = 60, threads: int = 2) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter that imports this kernelgpt; fails the test on a
    timeout (a hang) instead of blocking pytest."""
    env = subprocess_env(OMP_NUM_THREADS=str(threads))
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"subprocess hung (> {timeout} s); output so far: {e.stdout!r} {e.stderr!r}")


def assert_ok(r: subprocess.CompletedProcess, *expect: str) -> None:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    for e in expect:
        assert e in r.stdout, r.stdout


@pytest.fixture
def restore_threads():
    before = nat.max_threads()
    yield
    nat.set_num_threads(before)


# ---------------------------------------------------------------- 1. exceptions in parallel regions
def test_attention_decode_zero_width_cache_with_huge_maxT_returns():
    # (B, NH, 2**40, 0) caches hold no floats; the kernel sized 2**40 floats of scratch inside its
    # OpenMP region, and the std::bad_alloc there aborted the process.
    r = run_py("""
        import numpy as np
        from kernelgpt import _native
        k = np.empty((2, 2, 2**40, 0), np.float32)
        out = np.empty((2, 0), np.float32)
        _native.attention_decode(out, out.copy(), k, k.copy(), 2**40)
        _native.attention_decode(out, out.copy(), k, k.copy(), np.int64(7))
        print("returned")
    """)
    assert_ok(r, "returned")


def test_attention_decode_scratch_failure_in_threads_is_memory_error():
    # A real cache whose per-thread scratch (n_valid floats) cannot be allocated under an address
    # space limit: the failure happens on the OpenMP threads and must come back as MemoryError.
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("an address-space limit starves AddressSanitizer's own allocator")
    r = run_py("""
        import resource
        import numpy as np
        from kernelgpt import _native
        assert _native.max_threads() == 2
        B, NH, maxT, HS = 2, 1, 2**22, 1
        k = np.ones((B, NH, maxT, HS), np.float32)
        v = np.ones((B, NH, maxT, HS), np.float32)
        q = np.ones((B, NH * HS), np.float32)
        out = np.empty_like(q)
        _native.attention_decode(out, q, k, v, 2**15)  # the pool's threads exist from here on
        vm = [l for l in open("/proc/self/status") if l.startswith("VmSize")][0]
        size = int(vm.split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 20), resource.RLIM_INFINITY))
        try:
            _native.attention_decode(out, q, k, v, maxT)  # 16 MB of scratch per thread
            print("no error")  # possible only if the limit left room: still no abort
        except MemoryError:
            print("MemoryError")
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        _native.attention_decode(out, q, k, v, maxT)
        assert np.allclose(out, 1.0)
        print("recovered")
    """)
    assert_ok(r, "MemoryError", "recovered")


def test_attention_zero_size_batch_with_huge_dimensions_returns_at_once():
    # T = 0 with B * NH = 2**40 (head) loops: the kernels looped over every (b, h) with a fresh
    # allocation each, effectively forever.
    r = run_py("""
        import numpy as np
        from kernelgpt import _native
        B, T, C, NH = 2**40, 0, 4, 2
        qkv = np.empty((B, T, 3 * C), np.float32)
        out = np.empty((B, T, C), np.float32)
        lse = np.empty((B, NH, T), np.float32)
        _native.attention_forward(out, lse, qkv, NH)
        dqkv = np.empty_like(qkv)
        _native.attention_backward(dqkv, out.copy(), qkv, out, lse, NH)
        print("returned")
    """, timeout=30)
    assert_ok(r, "returned")


def test_classifier_huge_zero_width_vocabulary_is_memory_error():
    # wte (2**60, 0) holds no floats; the logits block R*V overflowed int64 before its allocation.
    r = run_py("""
        import numpy as np
        from kernelgpt import _native
        x = np.empty((1, 0), np.float32)
        wte = np.empty((2**60, 0), np.float32)
        try:
            _native.classifier_forward_backward(np.empty(1, np.float32), None, None, x, wte,
                                       np.zeros(1, np.int32), 1.0)
            print("no error")
        except MemoryError:
            print("MemoryError")
    """, timeout=30)
    assert_ok(r, "MemoryError")


def test_peak_probes_reject_absurd_thread_counts():
    # 10**5 threads were started (each std::thread that failed to start left the running ones
    # joinable: std::terminate), 2**31 gave pybind11's "incompatible function arguments".
    r = run_py("""
        import numpy as np
        from kernelgpt import _native
        for fn, args in ((_native.fma_peak_gflops, ("avx2_fma",)),
                         (_native.read_bandwidth_gbs, (1.0,))):
            for bad in (0, -1, 10**5, 2**31, 2**64):
                try:
                    fn(*args, threads=bad, seconds=0.01)
                    print("accepted", bad)
                except ValueError as e:
                    assert "threads must be in [1, 4096]" in str(e), e
        assert _native.read_bandwidth_gbs(0.1, threads=np.int64(1), seconds=0.01) > 0
        print("done")
    """, timeout=60)
    assert_ok(r, "done")
    assert "accepted" not in r.stdout


# ---------------------------------------------------------------- 3. int arguments
@pytest.mark.parametrize("bad", [0, -1, 2**31, 2**63, 2**64, -(2**70)])
def test_set_num_threads_out_of_range_is_value_error(bad, restore_threads):
    with pytest.raises(ValueError, match=r"num_threads must be in \[1, 4096\], got " + str(bad)):
        nat.set_num_threads(bad)


@pytest.mark.parametrize("bad", [2.0, True, "2", None])
def test_set_num_threads_non_int_is_type_error(bad, restore_threads):
    with pytest.raises(TypeError, match="num_threads must be an int"):
        nat.set_num_threads(bad)


def test_set_num_threads_accepts_numpy_ints(restore_threads):
    from kernelgpt.backends import native_backend as nb
    nat.set_num_threads(np.int64(3))
    assert nat.max_threads() == 3
    nb.set_num_threads(np.int32(1))
    assert nb.get_num_threads() == 1
    with pytest.raises(ValueError, match="num_threads"):
        nb.set_num_threads(np.int64(2**40))


def test_thread_count_is_process_wide(restore_threads):
    # It was OpenMP's per-thread value: a count set on one Python thread did not apply to kernels
    # called from another (the GIL-released kernels run on the caller's thread).
    nat.set_num_threads(1)
    seen = []
    t = threading.Thread(target=lambda: (nat.set_num_threads(3), seen.append(nat.max_threads())))
    t.start()
    t.join()
    assert seen == [3] and nat.max_threads() == 3


@pytest.mark.parametrize("bad", [0, -5, 2**64])
def test_size_arguments_out_of_range_are_value_errors(bad):
    qkv = np.zeros((1, 2, 12), np.float32)
    out, lse = np.zeros((1, 2, 4), np.float32), np.zeros((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="n_head must be"):
        nat.attention_forward(out, lse, qkv, bad)
    with pytest.raises(ValueError, match="n_head must be"):
        nat.attention_backward(np.zeros_like(qkv), out, qkv, out, lse, bad)
    k = np.zeros((1, 2, 4, 2), np.float32)
    q = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match=r"n_valid must be in \[1, 4\]"):
        nat.attention_decode(q, q.copy(), k, k.copy(), bad)
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="step must be in"):
        nat.adamw_update(p, p.copy(), p.copy(), p.copy(), lr=1e-3, beta1=0.9, beta2=0.95,
                         eps=1e-8, weight_decay=0.0, step=bad)


def test_size_arguments_accept_numpy_ints_and_reject_floats():
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1, 3, 12)).astype(np.float32)
    out, lse = np.zeros((1, 3, 4), np.float32), np.zeros((1, 2, 3), np.float32)
    out2, lse2 = out.copy(), lse.copy()
    nat.attention_forward(out, lse, qkv, 2)
    nat.attention_forward(out2, lse2, qkv, np.int64(2))
    assert np.array_equal(out, out2) and np.array_equal(lse, lse2)
    with pytest.raises(TypeError, match="n_head must be an int"):
        nat.attention_forward(out, lse, qkv, 2.0)
    k = np.zeros((1, 2, 4, 2), np.float32)
    nat.attention_decode(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), k, k.copy(),
                         np.uint8(4))


# ---------------------------------------------------------------- 2. fork after OpenMP
FORK_SCRIPT = """
    import multiprocessing as mp
    import numpy as np
    from kernelgpt import _native
    from kernelgpt.backends import native_backend as nb
    from kernelgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32),
                backend="native")
    rng = np.random.default_rng(0)
    # 64 x 16 rows: the GEMMs and the classifier run on 2 OpenMP threads in the parent
    batches = [rng.integers(0, 64, (64, 16)).astype(np.int32) for _ in range(4)]

    def forward(i):
        logits, loss = model.forward(batches[i], np.roll(batches[i], 1, axis=1))
        return np.asarray(logits), loss

    def child(i):
        nb.set_num_threads(2)  # asked for, but a forked child stays on one thread
        return _native.max_threads(), nb.get_num_threads(), forward(i)

    if __name__ == "__main__":
        assert _native.max_threads() == 2
        ref = [forward(i) for i in range(4)]  # the parent's OpenMP pool is running from here
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(child, range(4))
        for (lg, ls), (t1, t2, (lg2, ls2)) in zip(ref, got):
            assert (t1, t2) == (1, 1), (t1, t2)
            assert ls2 == ls and np.array_equal(lg2, lg), (ls, ls2)
        assert _native.max_threads() == 2  # the parent keeps its threads
        print("child threads", got[0][0], "losses", [g[2][1] for g in got])
"""


def test_fork_pool_after_parallel_forward_matches_parent():
    # The children hung forever in their first parallel region (GNU OpenMP's pool does not
    # survive fork); now they run the kernels on one thread, bitwise as the 2-thread parent.
    r = run_py(FORK_SCRIPT, timeout=120)
    assert_ok(r, "child threads 1")


def test_os_fork_child_runs_gemm_after_parent():
    r = run_py("""
        import os
        import numpy as np
        from kernelgpt import _native
        a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
        c = np.empty_like(a)
        _native.gemm(c, a, a)
        pid = os.fork()
        if pid == 0:
            c2 = np.empty_like(a)
            _native.gemm(c2, a, a)
            os._exit(0 if np.array_equal(c, c2) and _native.max_threads() == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print("child status", os.waitstatus_to_exitcode(status))
    """, timeout=60)
    assert_ok(r, "child status 0")
