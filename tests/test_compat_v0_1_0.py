"""Files written by kernelgpt 0.1.0 keep loading and give the same numbers.

tests/fixtures/run_v0_1_0 is a run folder written by the 0.1.0 command line (`kernelgpt train`,
2 layers x 16 dims, vocab 280, numpy backend, 6 steps); run_v0_1_0_expected.json holds what 0.1.0
computed from it: losses, seeded sampled tokens and the tokenizer's ids. Nothing here is fitted to
the current code: the expectations were recorded once, by 0.1.0.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kernelgpt.backends import available_backends
from kernelgpt.checkpoint import load_model
from kernelgpt.data import read_token_file
from kernelgpt.model import GPT

FIX = Path(__file__).parent / "fixtures"
RUN = FIX / "run_v0_1_0"
EXPECTED = json.loads((FIX / "run_v0_1_0_expected.json").read_text())
BACKENDS = [b for b in ("numpy", "native") if b in available_backends()]


def _batch():
    toks, _ = read_token_file(RUN / "tokens.bin")
    ids = np.asarray(toks[:4 * 16 + 1], dtype=np.int64)
    return ids[:-1].reshape(4, 16), ids[1:].reshape(4, 16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_v0_1_0_checkpoint_gives_its_recorded_loss(backend):
    model, tok, ckpt = load_model(RUN, backend=backend)
    x, y = _batch()
    _, loss = model.forward(x, y)
    assert loss == pytest.approx(EXPECTED[f"loss_{backend}"], rel=1e-6)
    assert loss == pytest.approx(EXPECTED["loss_float64"], rel=1e-6)


def test_v0_1_0_checkpoint_float64_loss():
    model, _, _ = load_model(RUN, backend="numpy")
    m64 = GPT(model.config, backend="numpy", dtype="float64")
    m64.load_state_dict(model.state_dict())
    x, y = _batch()
    _, loss = m64.forward(x, y)
    assert loss == pytest.approx(EXPECTED["loss_float64"], rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_v0_1_0_checkpoint_samples_the_recorded_tokens(backend):
    model, _, _ = load_model(RUN, backend=backend)
    g = model.generate(np.array([1, 2, 3]), 20, temperature=0.9, top_k=40, seed=123)
    assert g[0].tolist() == EXPECTED[f"tokens_topk_{backend}"]
    g = model.generate(np.array([5]), 20, temperature=1.0, seed=7)
    assert g[0].tolist() == EXPECTED[f"tokens_plain_{backend}"]
    g = model.generate(np.array([5, 6]), 20, temperature=0.0)
    assert g[0].tolist() == EXPECTED[f"tokens_greedy_{backend}"]
    # uncached sampling picks the same tokens
    g = model.generate(np.array([1, 2, 3]), 20, temperature=0.9, top_k=40, seed=123,
                       use_cache=False)
    assert g[0].tolist() == EXPECTED[f"tokens_topk_{backend}"]


def test_v0_1_0_tokenizer_and_token_file_load():
    _, tok, ckpt = load_model(RUN, backend="numpy")
    assert tok is not None
    ids = tok.encode("def f(x):\n    return x + 1\n")
    assert list(np.asarray(ids).tolist()) == EXPECTED["encode"]
    toks, vocab = read_token_file(RUN / "tokens.bin")
    assert vocab == 280 and toks.size > 1000 and int(toks.max()) < 280
    assert ckpt.step == 6


def test_v0_1_0_run_resumes(tmp_path):
    """A 0.1.0 run folder resumes: two more steps on top of its checkpoint."""
    import os
    import subprocess
    import sys
    import kernelgpt
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    pydir = str(Path(kernelgpt.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pydir, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "train", "--out", str(run), "--resume",
                        "--max-steps", "8", "--backend", "numpy"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (run / "LATEST").read_text().strip() == "ckpt-00000008"
