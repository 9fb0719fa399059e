"""Property-based fuzzing (hypothesis) of the tokenizer's inputs: file loaders (Tokenizer.load on
random and mutated JSON, from_tiktoken on random ranks files), decode/decode_bytes, and every
tokenizer-related `_native` function on arbitrary arguments. The rule checked everywhere: a
result that is right, or one clear ValueError/TypeError; never a crash, hang or another exception.

Each property runs in a subprocess (a crash there fails one test, not the whole run) with a
bounded example count, so the file takes a few seconds. Needs `hypothesis` (test-only)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import kernelgpt  # noqa: E402
from kernelgpt import _native  # noqa: E402
from kernelgpt.tokenizer import Tokenizer  # noqa: E402

# CI: a fixed set of examples. Longer hunts: KGPT_FUZZ_EXAMPLES=2000 KGPT_FUZZ_RANDOM=1.
EXAMPLES = int(os.environ.get("KGPT_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize=not os.environ.get("KGPT_FUZZ_RANDOM"), database=None,
                suppress_health_check=list(HealthCheck))
CLEAR = (ValueError, TypeError)  # UnicodeError and friends are ValueError subclasses
PYBIND_MISMATCH = "incompatible function arguments"


def _clear_error(e: BaseException) -> None:
    assert isinstance(e, CLEAR), f"{type(e).__name__}: {e}"
    msg = str(e)
    assert msg.strip(), f"{type(e).__name__} without a message"


def _tok():
    return Tokenizer.train(["hello world, hello there <|x|>", "abcabc ab"], 280,
                           special_tokens=["<|x|>"])


_WORK = tempfile.mkdtemp(prefix="kgpt-fuzz-")

# ------------------------------------------------------------------ values of any kind
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-300, 300), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=20),
    st.sampled_from(["gpt4", "gpt2", "", "\ud800", "<|x|>", "all", "none"]),
    st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    st.builds(np.uint64, st.integers(0, 2**64 - 1)),
    st.builds(np.int32, st.integers(-(2**31), 2**31 - 1)),
    st.builds(np.float64, st.floats()))
arrays = st.one_of(
    st.builds(lambda xs: np.array(xs, np.int32), st.lists(st.integers(-5, 400), max_size=8)),
    st.builds(lambda xs: np.array(xs, np.int64), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8)),
    st.builds(lambda xs: np.array(xs, np.uint64), st.lists(st.integers(0, 2**64 - 1), max_size=8)),
    st.builds(lambda xs: np.array(xs, np.float32), st.lists(st.floats(width=32), max_size=8)),
    st.builds(lambda xs: np.array(xs, np.int32).reshape(-1, 2),
              st.lists(st.integers(-5, 300), max_size=6).map(lambda x: x[: len(x) // 2 * 2])),
    st.builds(lambda xs: np.array(xs, np.int64)[::2], st.lists(st.integers(0, 300), max_size=8)))
anything = st.recursive(st.one_of(scalars, arrays),
                        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                st.tuples(inner, inner)), max_leaves=8)


# ------------------------------------------------------------------ Tokenizer.load
def _valid_obj():
    return _tok().to_dict()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=10)


@st.composite
def mutated_json(draw):
    obj = _valid_obj()
    kind = draw(st.sampled_from(["field", "drop", "merge", "special", "raw", "truncate", "whole"]))
    if kind == "field":
        obj[draw(st.sampled_from(sorted(obj) + ["extra"]))] = draw(json_values)
    elif kind == "drop":
        obj.pop(draw(st.sampled_from(sorted(obj))))
    elif kind == "merge":
        i = draw(st.integers(0, len(obj["merges"]) - 1))
        obj["merges"][i] = draw(st.one_of(json_values, st.lists(st.integers(), min_size=2, max_size=2)))
    elif kind == "special":
        obj["special_tokens"] = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))
    elif kind == "whole":
        obj = draw(json_values)
    data = json.dumps(obj).encode()
    if kind == "raw":
        data = draw(st.binary(max_size=200))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    return data


@FUZZ
@given(mutated_json())
def check_load(data):
    path = os.path.join(_WORK, "t.json")
    with open(path, "wb") as f:
        f.write(data)
    try:
        tok = Tokenizer.load(path)
    except Exception as e:  # noqa: BLE001
        assert isinstance(e, ValueError), f"{type(e).__name__}: {e}"
        assert path in str(e), str(e)
        return
    text = "hello abc <|x|>"
    assert tok.decode(tok.encode(text, allowed_special="none")) == text


# ------------------------------------------------------------------ from_tiktoken
@st.composite
def ranks_file(draw):
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    extra = draw(st.lists(st.tuples(st.binary(min_size=1, max_size=4),
                                    st.integers(-3, 300)), max_size=6))
    lines += [f"{base64.b64encode(tb).decode()} {r}" for tb, r in extra]
    mutate = draw(st.sampled_from(["none", "shuffle", "garbage", "drop", "raw"]))
    if mutate == "shuffle":
        lines = draw(st.permutations(lines))
    elif mutate == "garbage":
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    elif mutate == "drop":
        lines.pop(draw(st.integers(0, len(lines) - 1)))
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if mutate == "raw":
        data = draw(st.binary(max_size=300))
    return data


@FUZZ
@given(ranks_file())
def check_from_tiktoken(data):
    path = os.path.join(_WORK, "r.tiktoken")
    with open(path, "wb") as f:
        f.write(data)
    try:
        tok = Tokenizer.from_tiktoken(path)
    except Exception as e:  # noqa: BLE001
        assert isinstance(e, ValueError), f"{type(e).__name__}: {e}"
        return
    for i in range(tok.vocab_size):  # each rank's bytes decode back as that token
        assert tok.decode_bytes([i]) == tok.token_bytes(i)


# ------------------------------------------------------------------ decode / decode_bytes
@FUZZ
@given(st.one_of(anything, st.lists(st.integers(-3, 300), max_size=10),
                 st.lists(st.one_of(st.integers(), st.builds(np.int64, st.integers(0, 300))),
                          max_size=5)))
def check_decode(ids):
    tok = _tok()
    v = tok.vocab_size
    try:
        out = tok.decode_bytes(ids)
    except Exception as e:  # noqa: BLE001
        _clear_error(e)
        assert PYBIND_MISMATCH not in str(e), str(e)
        return
    flat = list(np.asarray(ids).ravel()) if isinstance(ids, np.ndarray) else list(ids)
    assert all(0 <= int(i) < v for i in flat)
    assert out == b"".join(tok.token_bytes(int(i)) for i in flat)
    assert tok.decode(ids) == out.decode("utf-8", "replace")


# ------------------------------------------------------------------ every _native function
def _paths():
    good = os.path.join(_WORK, "good.txt")
    with open(good, "wb") as f:
        f.write("hello wörld\r\n".encode() * 20)
    bad = os.path.join(_WORK, "bad.txt")
    with open(bad, "wb") as f:
        f.write(b"hello \xff\xfe world")
    empty = os.path.join(_WORK, "empty.txt")
    open(empty, "wb").close()
    return [good, bad, empty, _WORK, os.path.join(_WORK, "missing.txt"), "", "\ud800", "a\x00b"]


def _encoder():
    return _native.BpeEncoder(np.array([[97, 98], [256, 99]], np.int32), ["<|x|>", "<|y|>"], "gpt4")


CALLS = {
    "BpeEncoder": lambda a: _native.BpeEncoder(*a[:3]),
    "encode": lambda a: _encoder().encode(*a[:2]),
    "encode_batch": lambda a: _encoder().encode_batch(a[0], a[1], _few_threads(a[2])),
    "decode": lambda a: _encoder().decode(a[0]),
    "token_bytes": lambda a: _encoder().token_bytes(a[0]),
    "BpeTrainer": lambda a: _native.BpeTrainer(a[0]),
    "add_documents": lambda a: _native.BpeTrainer("gpt4").add_documents(a[0], 1),
    "add_file": lambda a: _native.BpeTrainer("gpt2").add_file(a[0], 1),
    "train": lambda a: _trained(a[0]),
    "pretokenize": lambda a: _native.pretokenize(*a[:2]),
    "pretokenize_spans": lambda a: _native.pretokenize_spans(*a[:2]),
    "_pretokenize_safe_boundary": lambda a: _native._pretokenize_safe_boundary(*a[:2]),
    "_pretokenize_range": lambda a: _native._pretokenize_range(*a[:4]),
}


def _few_threads(n):
    """n when it is a small int-like (any value is checked, but 2**20 threads would be slow)."""
    return n if isinstance(n, (int, np.integer)) and n < 64 else 1


def _trained(n):
    tr = _native.BpeTrainer("gpt4")
    tr.add_documents(["abab cdcd ab"], 1)
    return tr.train(n)


# Arguments that only carry an int: any int-like value must give a result or a clear ValueError
# (never pybind's "incompatible function arguments"). Argument 0 unless noted.
INT_ARGS = {"token_bytes": 0, "train": 0, "_pretokenize_safe_boundary": 1, "_pretokenize_range": 1}


@st.composite
def native_call(draw):
    name = draw(st.sampled_from(sorted(CALLS)))
    args = [draw(anything) for _ in range(4)]
    if name in ("add_file",):
        args[0] = draw(st.one_of(st.sampled_from(_paths()), anything))
    if name in ("encode", "pretokenize", "pretokenize_spans", "_pretokenize_safe_boundary",
                "_pretokenize_range") and draw(st.booleans()):
        args[0] = draw(st.one_of(st.text(max_size=30), st.binary(max_size=30)))
        args[1] = draw(st.one_of(st.sampled_from(["gpt4", "gpt2", [], [0], [1, 0]]), anything))
    if name == "_pretokenize_range" and draw(st.booleans()):
        args[1:3] = draw(st.tuples(st.integers(-2, 40), st.integers(-2, 40)))
        args[3] = draw(st.sampled_from(["gpt4", "gpt2"]))
    if name in ("encode_batch", "add_documents") and draw(st.booleans()):
        args[0] = draw(st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20)), max_size=4))
        args[1] = draw(st.one_of(st.just([]), st.lists(st.integers(-2, 3), max_size=3), anything))
    int_only = name in INT_ARGS and draw(st.booleans())  # every other argument valid
    if int_only:
        args[INT_ARGS[name]] = draw(st.one_of(st.integers(), st.builds(np.int64, st.integers(-50, 500)),
                                              st.builds(np.uint64, st.integers(0, 2**64 - 1))))
        if name in ("_pretokenize_safe_boundary", "_pretokenize_range"):
            args[0] = draw(st.text(max_size=20))
        if name == "_pretokenize_range":
            args[2:4] = [draw(st.one_of(st.integers(), st.integers(0, 20))), "gpt4"]
    return name, args, int_only


@FUZZ
@given(native_call())
def check_native(call):
    name, args, int_only = call
    try:
        CALLS[name](args)
    except RuntimeError as e:  # an unreadable file (a folder, ...): the reason, named
        assert name == "add_file" and "file" in str(e), f"{name}: {e}"
    except Exception as e:  # noqa: BLE001
        _clear_error(e)
        if int_only:
            assert PYBIND_MISMATCH not in str(e), f"{name}: {e}"


# ------------------------------------------------------------------ the tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kernelgpt.__file__)))


@pytest.mark.parametrize("check", ["check_load", "check_from_tiktoken", "check_decode",
                                   "check_native"])
def test_fuzz(check):
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path[:0] = [{ROOT!r}, {here!r}]\n"
            "import test_fuzz_tokenizer as m\n"
            f"m.{check}()\n"
            "print('FUZZ OK')\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                           env=dict(os.environ, OMP_NUM_THREADS="2"))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{check} hung")
    assert r.returncode == 0 and "FUZZ OK" in r.stdout, \
        f"{check}: exit code {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
