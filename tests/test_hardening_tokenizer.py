"""Tokenizer hardening: races with other Python threads while the GIL is released, thread
creation failures, the raw native classes' argument checks, and one clear error for each kind of
bad argument or file. Crashes and hangs run in a subprocess with a timeout (and a memory limit
where a regression would allocate without bound)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kernelgpt
from kernelgpt import _native
from kernelgpt.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(kernelgpt.__file__)))
PYBIND_MISMATCH = "incompatible function arguments"

# Prelude of the subprocess scripts: the package on the path, and `limit_memory(extra_mb)`, which
# caps the address space at what the process maps now plus extra_mb (thread stacks count: a few
# threads fit, dozens do not, so std::thread creation fails for real, root or not).
PRELUDE = textwrap.dedent(f"""
    import os, sys, threading, time, resource, logging
    sys.path.insert(0, {ROOT!r})
    import numpy as np
    from kernelgpt import _native
    from kernelgpt.tokenizer import Tokenizer
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="LOG %(name)s %(message)s")

    def limit_memory(extra_mb):
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                cur = int(line.split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cur + (extra_mb << 20),) * 2)
""")


def run_script(body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    try:
        return subprocess.run([sys.executable, "-c", code], timeout=timeout, capture_output=True,
                              text=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the script hung (> {timeout} s)")


def assert_ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit code {r.returncode}; stderr:\n{r.stderr[-3000:]}"
    assert "SURVIVED" in r.stdout, r.stdout + r.stderr


needs_linux_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status") or
                                      not hasattr(os, "fork"), reason="needs Linux /proc and rlimits")


def small_encoder(specials=()):
    return _native.BpeEncoder(np.array([[97, 98]], np.int32), list(specials), "gpt4")


# ------------------------------------------------------------------ 1. decode vs. a writer thread
@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_decode_bytes_of_an_array_another_thread_writes(dtype):
    # Another thread flips every id between a valid one and one far outside the table while the
    # GIL is released: each call must either decode or raise ValueError, never read out of bounds.
    r = run_script(f"""
        tok = Tokenizer([], "gpt4")
        ids = np.full(2_000_000, 97, dtype=np.{dtype})
        stop = False
        def writer():
            while not stop:
                ids[:] = 2**30
                ids[:] = 97
        t = threading.Thread(target=writer)
        t.start()
        t0 = time.time()
        try:
            while time.time() - t0 < 1.0:
                try:
                    out = tok.decode_bytes(ids)
                    assert set(out) <= {{97}}, "bytes of an id that was never in the array"
                except ValueError as e:
                    assert "out of range" in str(e), e
        finally:
            stop = True
            t.join()
        print("SURVIVED")
    """)
    assert_ok(r)


# ------------------------------------------------------------------ 2. thread creation failure
@needs_linux_proc
def test_encode_batch_falls_back_when_threads_cannot_start():
    r = run_script("""
        tok = Tokenizer.train("ab ab abc", 258)
        texts = ["ab abc %d" % i for i in range(300)]
        want = tok.encode_batch(texts, num_threads=1)
        limit_memory(48)
        got = tok.encode_batch(texts, num_threads=256)
        assert got == want
        raw = tok._enc.encode_batch(texts, [], 1000)
        assert [a.tolist() for a in raw] == want
        print("SURVIVED")
    """)
    assert_ok(r)
    assert "could not start" in r.stderr  # the fallback is logged


@needs_linux_proc
def test_train_falls_back_when_threads_cannot_start():
    r = run_script("""
        docs = ["hello world %d abab" % i for i in range(600)]
        want = Tokenizer.train(docs, 300, num_threads=1).merges
        limit_memory(48)
        got = Tokenizer.train(docs, 300, num_threads=500).merges
        assert got == want
        print("SURVIVED")
    """)
    assert_ok(r)
    assert "could not start" in r.stderr


@needs_linux_proc
def test_peak_probes_raise_when_threads_cannot_start():
    r = run_script("""
        limit_memory(48)
        for call in (lambda: _native.read_bandwidth_gbs(1.0, 200, 0.01),
                     lambda: _native.fma_peak_gflops("avx2_fma", 200, 0.01),
                     lambda: _native.fma_peak_gflops("avx512", 200, 0.01)):
            try:
                call()
                raise SystemExit("200 threads started under a 48 MB margin: the test proves nothing")
            except RuntimeError as e:
                assert "thread" in str(e), e
            except ValueError as e:  # this CPU lacks the ISA
                assert "CPU" in str(e), e
        print("SURVIVED")
    """)
    assert_ok(r)


# ------------------------------------------------------------------ 3. the list cleared meanwhile
def test_native_encode_batch_holds_its_texts():
    r = run_script("""
        enc = _native.BpeEncoder(np.array([[97, 98]], np.int32), [], "gpt4")
        overlapped = {"str": 0, "bytes": 0}  # runs where the clear came while the work ran
        for rep in range(20):
            for kind in ("str", "bytes"):
                if overlapped[kind] >= 2:
                    continue
                texts = [("ab " * 200_000) + str(i) for i in range(4)]
                if kind == "bytes":
                    texts = [t.encode() for t in texts]
                want = [enc.encode(t, []).tolist() for t in texts]
                def clear():
                    time.sleep(0.002)
                    texts.clear()
                t = threading.Thread(target=clear)
                t.start()
                out = enc.encode_batch(texts, [], 1)
                t.join()
                got = [o.tolist() for o in out]
                assert got in (want, []), "wrong ids"  # [] when the clear came first
                overlapped[kind] += got == want
        assert min(overlapped.values()) >= 1, overlapped
        print("SURVIVED")
    """)
    assert_ok(r)


def test_native_add_documents_holds_its_documents():
    r = run_script("""
        probe = _native.BpeTrainer("gpt4")
        probe.add_documents([("ab " * 200_000) + "0"], 1)
        want = 4 * probe.num_chunks
        overlapped = 0
        for rep in range(20):
            if overlapped >= 2:
                break
            tr = _native.BpeTrainer("gpt4")
            docs = [("ab " * 200_000) + str(i) for i in range(4)]
            def clear():
                time.sleep(0.002)
                docs.clear()
            t = threading.Thread(target=clear)
            t.start()
            tr.add_documents(docs, 1)
            t.join()
            assert tr.num_chunks in (0, want), tr.num_chunks  # 0 when the clear came first
            overlapped += tr.num_chunks == want
        assert overlapped >= 1
        print("SURVIVED")
    """)
    assert_ok(r)


# ------------------------------------------------------------------ 4. empty special token
def test_native_encoder_refuses_an_empty_special_token():
    with pytest.raises(ValueError, match="empty"):
        small_encoder(["<|a|>", ""])


@needs_linux_proc
def test_native_encoder_with_empty_special_does_not_hang():
    # Before the check, encode looped forever appending ids: run it capped in time and memory.
    r = run_script("""
        limit_memory(512)
        try:
            enc = _native.BpeEncoder(np.zeros((0, 2), np.int32), [""], "gpt4")
            enc.encode("abc", [0])
        except ValueError:
            pass
        print("SURVIVED")
    """, timeout=20)
    assert_ok(r)


# ------------------------------------------------------------------ 5. one clear error each
@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["hello world, hello there"] * 3, 270, special_tokens=["<|end|>"])


def no_pybind_mismatch(excinfo):
    assert PYBIND_MISMATCH not in str(excinfo.value), str(excinfo.value)
    assert "\n" not in str(excinfo.value).strip(), str(excinfo.value)


@pytest.mark.parametrize("n", [2**31, 2**63, 2**64, -1, 0])
def test_num_threads_out_of_range(tok, n):
    with pytest.raises(ValueError, match="num_threads") as e:
        tok.encode_batch(["a"], num_threads=n)
    no_pybind_mismatch(e)
    with pytest.raises(ValueError, match="num_threads") as e:
        Tokenizer.train("abc", 258, num_threads=n)
    no_pybind_mismatch(e)


@pytest.mark.parametrize("n", [2**31, 2**64, -1])
def test_native_num_threads_out_of_range(n, tmp_path):
    enc = small_encoder()
    tr = _native.BpeTrainer("gpt4")
    f = tmp_path / "a.txt"
    f.write_text("abc")
    for call in (lambda: enc.encode_batch(["a"], [], n), lambda: tr.add_documents(["a"], n),
                 lambda: tr.add_file(str(f), n)):
        with pytest.raises(ValueError, match="num_threads") as e:
            call()
        no_pybind_mismatch(e)


def test_num_threads_numpy_integer(tok):
    assert tok.encode_batch(["hello"], num_threads=np.int64(2)) == [tok.encode("hello")]
    t = Tokenizer.train(["hello world"] * 3, 260, num_threads=np.int32(2))
    assert t.merges == Tokenizer.train(["hello world"] * 3, 260, num_threads=1).merges
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=True)
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(["a"], num_threads=2.0)


@pytest.mark.parametrize("tid", [2**64, 2**63, -(2**63) - 1, -1, 10**30])
def test_token_bytes_out_of_range(tok, tid):
    with pytest.raises(ValueError, match="out of range") as e:
        tok.token_bytes(tid)
    no_pybind_mismatch(e)
    with pytest.raises(ValueError, match="out of range") as e:
        tok._enc.token_bytes(tid)
    no_pybind_mismatch(e)
    assert tok.token_bytes(np.int64(104)) == b"h"
    assert tok._enc.token_bytes(np.uint8(104)) == b"h"


@pytest.mark.parametrize("v", [2**64, 2**31 + 300, 10**30])
def test_vocab_size_too_large(v):
    with pytest.raises(ValueError, match="vocab_size") as e:
        Tokenizer.train("abc", v)
    no_pybind_mismatch(e)


@pytest.mark.parametrize("n", [2**64, 2**63])
def test_native_train_num_merges_too_large(n):
    tr = _native.BpeTrainer("gpt4")
    tr.add_documents(["abc"], 1)
    with pytest.raises(ValueError, match="num_merges") as e:
        tr.train(n)
    no_pybind_mismatch(e)


def test_lone_surrogate_special_token_refused_before_training():
    consumed = []

    def data():
        consumed.append(1)
        yield "abc"
    with pytest.raises(ValueError, match="special token") as e:
        Tokenizer.train(data(), 300, special_tokens=["ok", "\ud800"])
    no_pybind_mismatch(e)
    assert not consumed, "training ran before the special tokens were checked"
    with pytest.raises(ValueError, match="special token"):
        Tokenizer([], "gpt4", ["\udfff"])
    with pytest.raises(ValueError, match="special token") as e:
        small_encoder(["\ud800"])
    no_pybind_mismatch(e)


def test_decode_uint64_max_names_the_real_id(tok):
    big = 2**64 - 1
    for ids in (np.array([97, big], np.uint64), [97, big], (97, big)):
        with pytest.raises(ValueError) as e:
            tok.decode_bytes(ids)
        assert str(big) in str(e.value) and "-1" not in str(e.value), str(e.value)
        assert "position 1" in str(e.value)
    with pytest.raises(ValueError) as e:
        tok.decode_bytes([-(2**70)])
    assert str(-(2**70)) in str(e.value)


def test_decode_numpy_integers_in_a_list(tok):
    assert tok.decode([np.int64(104), np.int32(105)]) == "hi"
    assert tok.decode_bytes((np.uint16(104),)) == b"h"
    assert tok._enc.decode([np.int64(104), 105]) == b"hi"
    assert tok.decode(np.array([104, 105], np.uint64)) == "hi"
    for bad in ([1.0], ["a"], [None]):
        with pytest.raises(TypeError, match="ids must be"):
            tok.decode(bad)


def test_native_decode_list_mutated_by_index():
    # An __index__ that empties the list while decode walks it: no stale item pointer is used.
    enc = small_encoder()
    ids = []

    class Evil:
        def __index__(self):
            ids.clear()
            return 97
    ids.extend([98, Evil()] + [97] * 1000)
    assert enc.decode(ids) == b"b" + b"a" * 1001


def test_invalid_utf8_file_refused_by_both_backends(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good text\n" * 3 + b"caf\xc3\xa9 \xff tail")
    off = len(b"good text\n" * 3 + b"caf\xc3\xa9 ")
    for backend in ("native", "python"):
        with pytest.raises(ValueError, match="not valid UTF-8") as e:
            Tokenizer.train([f], 300, backend=backend)
        assert str(f) in str(e.value) and f"offset {off}" in str(e.value), (backend, str(e.value))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        _native.BpeTrainer("gpt4").add_file(str(f), 1)


@pytest.mark.parametrize("data", [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"ab\xe2\x82",
                                  b"\x80", b"\xf8\x88\x80\x80\x80"])
def test_native_add_file_agrees_with_python_utf8(tmp_path, data):
    # Surrogates, overlong forms, > U+10FFFF, a cut sequence at the end, stray continuation bytes.
    f = tmp_path / "x.txt"
    f.write_bytes(b"ok " + data)
    with pytest.raises(UnicodeDecodeError):
        (b"ok " + data).decode("utf-8")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        _native.BpeTrainer("gpt4").add_file(str(f), 1)


def test_valid_utf8_file_still_trains_like_text(tmp_path):
    text = "한국어 text é 👍🏽 \r\n" * 50
    f = tmp_path / "ok.txt"
    f.write_bytes(text.encode())
    assert Tokenizer.train([f], 300).merges == Tokenizer.train(text, 300).merges


def _ranks_lines(extra):
    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    return "\n".join(lines + extra) + "\n"


def test_tiktoken_duplicate_rank_named(tmp_path):
    f = tmp_path / "dup.tiktoken"
    f.write_text(_ranks_lines([f"{base64.b64encode(b'ab').decode()} 256",
                               f"{base64.b64encode(b'cd').decode()} 256"]))
    with pytest.raises(ValueError, match="rank 256") as e:
        Tokenizer.from_tiktoken(f)
    assert "missing" not in str(e.value) and "twice" in str(e.value), str(e.value)


def test_tiktoken_negative_rank_named(tmp_path):
    f = tmp_path / "neg.tiktoken"
    f.write_text(_ranks_lines([f"{base64.b64encode(b'ab').decode()} -1"]))
    with pytest.raises(ValueError, match="negative") as e:
        Tokenizer.from_tiktoken(f)
    assert "missing" not in str(e.value)


def _tok_json(**over):
    obj = {"format": "kernelgpt-bpe", "version": 1, "pattern": "gpt4", "vocab_size": 257,
           "merges": [[97, 98]], "special_tokens": {}}
    obj.update(over)
    return obj


@pytest.mark.parametrize("bad", [{"pattern": []}, {"pattern": {}}, {"special_tokens": {"a": []}},
                                 {"special_tokens": {"a": 257.0}}, {"vocab_size": []},
                                 {"merges": [[97, 98.0]]}, {"merges": {}}, {"version": []}])
def test_load_malformed_fields_give_value_error(tmp_path, bad):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(_tok_json(**bad)))
    with pytest.raises(ValueError, match=str(f)):
        Tokenizer.load(f)


def test_load_deeply_nested_json(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="not a kernelgpt tokenizer file"):
        Tokenizer.load(f)
    f.write_text(json.dumps(_tok_json(merges=[[97, 98]], pattern="[" * 100_000)))
    with pytest.raises(ValueError, match="unknown pattern"):
        Tokenizer.load(f)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_files_follow_the_umask(tmp_path, tok):
    old = os.umask(0o022)
    try:
        tok.save(tmp_path / "tokenizer.json")
        tok.export_tiktoken(tmp_path / "ranks.tiktoken")
    finally:
        os.umask(old)
    assert (tmp_path / "tokenizer.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "ranks.tiktoken").stat().st_mode & 0o777 == 0o644
    assert Tokenizer.load(tmp_path / "tokenizer.json").merges == tok.merges
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary left over


def test_native_encoder_arguments_one_clear_error():
    enc = small_encoder(["<x>"])
    for allowed in ([2**40], [2**64], [-1], [1]):
        with pytest.raises(ValueError, match="allowed special index") as e:
            enc.encode("a<x>", allowed)
        no_pybind_mismatch(e)
        with pytest.raises(ValueError, match="allowed special index") as e:
            enc.encode_batch(["a<x>"], allowed, 1)
        no_pybind_mismatch(e)
    assert enc.encode("ab<x>", (np.int64(0),)).tolist() == [256, 257]
    assert [a.tolist() for a in enc.encode_batch(("ab", b"<x>"), [0], 1)] == [[256], [257]]
    for merges in (np.array([[97, 98]], np.int64), [[97, 98]],
                   np.zeros((2, 2), np.int32)[:, ::-1].T):
        with pytest.raises(TypeError, match="merges must be") as e:
            _native.BpeEncoder(merges, [], "gpt4")
        no_pybind_mismatch(e)
    with pytest.raises(TypeError, match="texts must be") as e:
        enc.encode_batch("abc", [], 1)
    no_pybind_mismatch(e)
    with pytest.raises(TypeError, match="docs must be") as e:
        _native.BpeTrainer("gpt4").add_documents(b"abc", 1)
    no_pybind_mismatch(e)


@needs_linux_proc
def test_huge_vocab_size_trains_within_memory():
    # vocab_size 2**31 asks for "as many merges as exist": nothing may be sized by it up front.
    r = run_script("""
        want = Tokenizer.train("hello hello world", 300).merges
        limit_memory(1024)
        t = Tokenizer.train("hello hello world", 2**31)
        assert t.merges == want, (t.merges, want)
        print("SURVIVED")
    """)
    assert_ok(r)


def test_native_add_file_path_checks(tmp_path):
    (tmp_path / "a").write_text("abc abc")
    tr = _native.BpeTrainer("gpt4")
    with pytest.raises(ValueError, match="NUL"):  # fopen would have opened "<dir>/a"
        tr.add_file(str(tmp_path / "a\x00b"), 1)
    assert tr.num_chunks == 0
    tr.add_file(tmp_path / "a", 1)  # os.PathLike
    assert tr.num_chunks == 2
    with pytest.raises(RuntimeError, match="cannot open") as e:  # a name that is not UTF-8
        tr.add_file(os.fsdecode(bytes(tmp_path / "x") + b"\xff"), 1)
    no_pybind_mismatch(e)
    with pytest.raises(TypeError, match="path must be"):
        tr.add_file(3, 1)


def test_decode_iterables_checked_like_lists(tok):
    assert tok.decode(iter([104, np.int64(105)])) == "hi"
    assert tok.decode(range(104, 106)) == "hi"
    with pytest.raises(TypeError, match="ids must be ints"):  # was truncated to id 104
        tok.decode(x for x in [104.5])
    with pytest.raises(ValueError, match=str(2**70)):
        tok.decode(iter([2**70]))
    for bad in ("abc", b"abc", 5):
        with pytest.raises(TypeError, match="ids must be"):
            tok.decode(bad)
