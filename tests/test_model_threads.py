"""One GPT used from several threads: calls are serialised (same results as one thread), and a
backward() whose forward() was overwritten by another thread's raises instead of computing
gradients from the wrong activations."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from kernelgpt.backends import available_backends
from kernelgpt.model import GPT, GPTConfig

CFG = GPTConfig(vocab_size=61, block_size=24, n_layer=2, n_head=2, n_embd=32)
BACKENDS = [b for b in ("numpy", "native") if b in available_backends()]


def _run_threads(fns):
    errors = []

    def wrap(f):
        def run():
            try:
                f()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
        return run
    ts = [threading.Thread(target=wrap(f)) for f in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_forward_and_generate_give_single_thread_results(backend):
    m = GPT(CFG, backend=backend, seed=1)
    m.params[:] += np.random.default_rng(0).standard_normal(m.params.size).astype(np.float32) * 0.2
    rng = np.random.default_rng(5)
    batches = [rng.integers(0, CFG.vocab_size, (2 + i % 3, 5 + 3 * i)).astype(np.int32)
               for i in range(6)]
    want_loss = [m.forward(b, b)[1] for b in batches]
    want_logits = [np.array(m.forward(b)[0]) for b in batches]
    prompts = [rng.integers(0, CFG.vocab_size, (1 + i % 2, 3)).astype(np.int32) for i in range(4)]
    want_gen = [m.generate(p, 30, temperature=0.8, top_k=10, seed=i) for i, p in enumerate(prompts)]
    got_loss, got_logits, got_gen = {}, {}, {}

    def fwd(k):
        def f():
            for rep in range(5):
                for i, b in enumerate(batches):
                    if (i + k) % 2 == 0:
                        got_loss[(k, rep, i)] = m.forward(b, b)[1]
                    else:
                        got_logits[(k, rep, i)] = np.array(m.forward(b)[0])
        return f

    def gen(k):
        def f():
            for rep in range(3):
                for i, p in enumerate(prompts):
                    got_gen[(k, rep, i)] = m.generate(p, 30, temperature=0.8, top_k=10, seed=i)
        return f

    _run_threads([fwd(0), fwd(1), gen(0), gen(1)])
    assert len(got_loss) + len(got_logits) == 2 * 5 * len(batches)
    for (k, rep, i), loss in got_loss.items():
        assert loss == want_loss[i]
    for (k, rep, i), lg in got_logits.items():
        np.testing.assert_array_equal(lg, want_logits[i])
    assert len(got_gen) == 2 * 3 * len(prompts)
    for (k, rep, i), g in got_gen.items():
        np.testing.assert_array_equal(g, want_gen[i])


def test_backward_after_another_threads_forward_raises():
    m = GPT(CFG, backend=BACKENDS[-1], seed=1)
    x = np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 8)).astype(np.int32)
    m.forward(x, x)
    _run_threads([lambda: m.forward(x, x)])
    with pytest.raises(RuntimeError, match="thread"):
        m.backward()
    m.forward(x, x)       # a forward in this thread makes backward valid again
    m.backward()


def test_absurd_config_fails_fast_with_one_line():
    """GPT(GPTConfig(n_layer=10**9)) used to hang listing parameter shapes: now a MemoryError
    naming the size, before anything is listed or allocated."""
    import subprocess
    import sys
    code = ("from kernelgpt.model import GPT, GPTConfig\n"
            "try:\n"
            "    GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=10**9, n_head=4, n_embd=128),"
            " backend='numpy')\n"
            "except MemoryError as e:\n"
            "    print('refused:', e)\n")
    import kernelgpt
    from pathlib import Path
    env = dict(__import__("os").environ, PYTHONPATH=str(Path(kernelgpt.__file__).parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused:") and "n_layer=1000000000" in r.stdout
    assert "TB" in r.stdout
