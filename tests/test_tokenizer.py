"""The BPE tokenizer: known answers, C++ trainer/encoder == the Python reference (same merges, same
ids) on tie-heavy and random corpora for both patterns, round trips, special tokens, save/load and
tiktoken ranks round trips, bad input, thread-count determinism, pathological inputs."""
from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from kernelgpt import _bpe_reference as ref
from kernelgpt.tokenizer import Tokenizer

PATTERNS = ["gpt4", "gpt2"]

ROUND_TRIP = {
    "empty": "",
    "ascii": "Hello, world! It's 2026; we're testing   spaces\tand\nnewlines\r\n  ",
    "korean": "생성형 인공지능은 텍스트, 이미지, 코드를 만들어 냅니다. 한국어 문장입니다!",
    "cjk": "漢字と仮名が混ざった日本語の文章、そして中文句子。",
    "emoji": "👍🏽 family: 👨‍👩‍👧‍👦 flags 🇰🇷🇯🇵 ✨",
    "code": "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "combining": "e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "digits": "3.14159 1234567890 ١٢٣ ๑๒๓",
}


def random_text(rnd: random.Random, n: int) -> str:
    """Text from a mix of scripts, digits, punctuation, whitespace runs, CRLF and apostrophes."""
    pieces = ["the", " the", "and", " of", "'s", "'ll", "'RE", "가", "나다", "한국", "漢", "字",
              "😀", "👍🏽", "e\u0301", "123", "4567", "  ", "\n", "\r\n", "\t", " ", ".", ",", "!?",
              "{}", "()", "ab", "ba", "a", "b", "zz", "é", "ß", "ǅ", "\u00a0", "\u3000"]
    return "".join(rnd.choice(pieces) for _ in range(n))


def ref_merges(texts, num_merges, pattern):
    return ref.train(texts, num_merges, pattern)


# ---------------------------------------------------------------- known answers and parity
def test_known_answer_wikipedia():
    tok = Tokenizer.train("aaabdaaabac", vocab_size=256 + 3)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.merges == [(97, 97), (97, 98), (256, 257)] == ref.train(["aaabdaaabac"], 3)
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


@pytest.mark.parametrize("backend", ["native", "python"])
def test_known_answer_both_backends(backend):
    tok = Tokenizer.train("aaabdaaabac", vocab_size=259, backend=backend)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_native_merges_equal_reference_on_ties(pattern):
    # Every pair occurs equally often in many of these: only the tie-break rule decides the order.
    texts = ["ab ba cd dc ef fe " * 3, "xy yx xy yx", "abcdefgh hgfedcba", "aa bb cc dd aa bb cc dd",
             "ab ab ab ab cd cd cd cd", "한 국 한 국", "1 2 3 4 12 34 21 43"]
    n = 120
    want = ref_merges(texts, n, pattern)
    got = Tokenizer.train(texts, 256 + n, pattern=pattern).merges
    assert got == want
    assert len(got) < n  # ran out of pairs: both stop at the same point


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_native_equals_reference_random_text(pattern, seed):
    rnd = random.Random(seed * 17 + len(pattern))
    texts = [random_text(rnd, rnd.randint(0, 600)) for _ in range(6)]
    n = rnd.randint(20, 200)
    want = ref_merges(texts, n, pattern)
    tok = Tokenizer.train(texts, 256 + n, pattern=pattern)
    assert tok.merges == want
    probe = texts + [random_text(rnd, 400), "".join(ROUND_TRIP.values())]
    for t in probe:
        assert tok.encode(t) == ref.encode_ordinary(t, want, pattern)


def test_native_equals_reference_on_python_source():
    src = Path(ref.__file__).read_text(encoding="utf-8")
    want = ref_merges([src], 300, "gpt4")
    tok = Tokenizer.train(src, 256 + 300)
    assert tok.merges == want
    assert tok.encode(src) == ref.encode_ordinary(src, want, "gpt4")
    assert Tokenizer.train(src, 256 + 300, backend="python").merges == want


def test_documents_do_not_merge_across_boundaries():
    # "ab" spans the two documents only if they are joined: as separate texts there is no such pair.
    assert Tokenizer.train(["a", "b"], 300).merges == []
    assert Tokenizer.train("ab", 300).merges == [(97, 98)]


def test_file_input_streams_same_as_str(tmp_path):
    rnd = random.Random(5)
    text = random_text(rnd, 3000)
    f = tmp_path / "corpus.txt"
    f.write_bytes(text.encode("utf-8"))
    a = Tokenizer.train(f, 600).merges
    b = Tokenizer.train(text, 600).merges
    c = Tokenizer.train([f, f], 600).merges
    d = Tokenizer.train([text, text], 600).merges
    assert a == b
    assert c == d


def test_native_file_streaming_across_blocks(tmp_path, monkeypatch):
    # A file bigger than the 16 MiB read block is cut at newlines: counts must equal the str path.
    line = "alpha beta\ngamma  delta\n\n  epsilon 12345\r\n"
    text = line * (17 * (1 << 20) // len(line) + 3)
    f = tmp_path / "big.txt"
    f.write_text(text, encoding="utf-8", newline="")
    assert Tokenizer.train(f, 300).merges == Tokenizer.train(text, 300).merges


# ---------------------------------------------------------------- round trips
@pytest.fixture(scope="module")
def tok():
    rnd = random.Random(11)
    corpus = [random_text(rnd, 800) for _ in range(4)] + list(ROUND_TRIP.values())
    return Tokenizer.train(corpus, 256 + 300 + 2, special_tokens=["<|endoftext|>", "<|pad|>"])


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip(tok, name):
    s = ROUND_TRIP[name]
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.decode_bytes(ids) == s.encode("utf-8")
    assert tok.encode_to_numpy(s).dtype == np.int32
    assert tok.encode_to_numpy(s).tolist() == ids
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_invalid_utf8_decodes_with_replacement(tok):
    # Token 0xff alone, a cut multi-byte sequence: invalid UTF-8 -> U+FFFD, never a crash.
    ids = [0xFF, ord("a"), 0xE2, 0x82]
    assert tok.decode_bytes(ids) == b"\xffa\xe2\x82"
    assert tok.decode(ids) == b"\xffa\xe2\x82".decode("utf-8", "replace")
    korean = tok.encode("한")
    assert len(tok.decode(korean[:1] if len(korean) > 1 else [korean[0]])) >= 1


def test_lone_surrogate_becomes_replacement_char(tok):
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
    assert tok.encode("a\ud800b") == ref.encode_ordinary("a\ud800b", tok.merges, "gpt4")


def test_token_bytes_and_vocab(tok):
    assert tok.vocab_size == 256 + 300 + 2
    assert tok.token_bytes(65) == b"A"
    table = ref.token_bytes_table(tok.merges)
    for i in range(256 + 300):
        assert tok.token_bytes(i) == table[i]
    assert tok.token_bytes(556) == b"<|endoftext|>"
    assert tok.special_tokens == {"<|endoftext|>": 556, "<|pad|>": 557}


# ---------------------------------------------------------------- special tokens
def test_special_tokens_semantics(tok):
    eot, pad = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|pad|>"]
    text = "hi<|endoftext|>there<|pad|>"
    with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>'"):
        tok.encode(text)
    with pytest.raises(ValueError, match="<\\|pad\\|>"):
        tok.encode(text, allowed_special={"<|endoftext|>"})
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.encode("hi") + [eot] + tok.encode("there") + [pad]
    assert tok.decode(ids) == text
    assert tok.encode(text, allowed_special="none") == ref.encode_ordinary(text, tok.merges, "gpt4")
    assert eot not in tok.encode(text, allowed_special="none")
    assert tok.encode("<|endoftext|><|endoftext|>", allowed_special={"<|endoftext|>"}) == [eot, eot]
    assert tok.encode("no specials here") == tok.encode("no specials here", allowed_special="all")
    with pytest.raises(ValueError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="some")


def test_special_longest_match_wins():
    t = Tokenizer.train("abc", 256 + 2, special_tokens=["<s>", "<s>x"])
    s, sx = t.special_tokens["<s>"], t.special_tokens["<s>x"]
    assert t.encode("<s>x<s>", allowed_special="all") == [sx, s]


# ---------------------------------------------------------------- batch and determinism
def test_encode_batch_equals_encode(tok):
    rnd = random.Random(3)
    texts = [random_text(rnd, rnd.randint(0, 300)) for _ in range(40)]
    want = [tok.encode(t) for t in texts]
    for nt in (1, 2, 3):
        assert tok.encode_batch(texts, num_threads=nt) == want
    arrs = tok.encode_batch(texts, as_numpy=True)
    assert [a.tolist() for a in arrs] == want
    with pytest.raises(ValueError, match="special token"):
        tok.encode_batch(["ok", "bad <|pad|>"])
    assert tok.encode_batch(["a<|pad|>"], allowed_special="all")[0][-1] == tok.special_tokens["<|pad|>"]


def test_training_deterministic_across_thread_counts():
    rnd = random.Random(9)
    texts = [random_text(rnd, 2000) for _ in range(8)]
    big = "\n".join(texts) * 300  # > 1 MiB: split into pieces shared by the threads
    results = {nt: Tokenizer.train([big] + texts, 256 + 200, num_threads=nt).merges for nt in (1, 2, 4)}
    assert results[1] == results[2] == results[4]


# ---------------------------------------------------------------- save / load / tiktoken
def test_save_load_round_trip(tok, tmp_path):
    p = tmp_path / "tok.json"
    tok.save(p)
    obj = json.loads(p.read_text(encoding="utf-8"))
    assert obj["format"] == "kernelgpt-bpe" and obj["version"] == 1
    t2 = Tokenizer.load(p)
    assert t2.merges == tok.merges and t2.special_tokens == tok.special_tokens
    assert t2.pattern == tok.pattern and t2.vocab_size == tok.vocab_size
    s = ROUND_TRIP["korean"] + "<|pad|>"
    assert t2.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def _edit(tmp_path, tok, fn):
    obj = tok.to_dict()
    fn(obj)
    p = tmp_path / "edited.json"
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


@pytest.mark.parametrize("edit,match", [
    (lambda o: o.update(format="minbpe"), "not a kernelgpt tokenizer"),
    (lambda o: o.update(version=3), "unsupported version 3"),
    (lambda o: o.pop("merges"), "missing field 'merges'"),
    (lambda o: o["merges"].__setitem__(5, [9999, 1]), "merge 5 .* does not exist"),
    (lambda o: o["merges"].__setitem__(5, [1]), "merge 5 is not"),
    (lambda o: o["merges"].__setitem__(7, o["merges"][3]), "repeat"),
    (lambda o: o.update(vocab_size=12), "vocab_size 12 does not match"),
    (lambda o: o.update(pattern="cl50k"), "unknown pattern"),
    (lambda o: o["special_tokens"].update({"<|pad|>": 999}), "special token '<\\|pad\\|>' has id 999"),
    (lambda o: o["merges"].pop(), "special token"),
], ids=["format", "version", "missing", "bad-id", "short-pair", "repeat", "vocab", "pattern",
        "special-id", "dropped-merge"])
def test_edited_file_rejected(tok, tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        Tokenizer.load(_edit(tmp_path, tok, edit))


def test_truncated_file_rejected(tok, tmp_path):
    p = tmp_path / "tok.json"
    tok.save(p)
    data = p.read_bytes()
    (tmp_path / "trunc.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="invalid JSON"):
        Tokenizer.load(tmp_path / "trunc.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not a kernelgpt tokenizer"):
        Tokenizer.load(tmp_path / "bin.json")


def test_tiktoken_export_import_round_trip(tok, tmp_path):
    p = tmp_path / "ranks.tiktoken"
    tok.export_tiktoken(p)
    lines = p.read_text().splitlines()
    assert len(lines) == 256 + len(tok.merges)
    b64, rank = lines[300].split()
    assert base64.b64decode(b64) == tok.token_bytes(300) and int(rank) == 300
    t2 = Tokenizer.from_tiktoken(p, pattern="gpt4", special_tokens=["<|endoftext|>", "<|pad|>"])
    assert t2.merges == tok.merges and t2.special_tokens == tok.special_tokens


def test_tiktoken_import_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.tiktoken"
    p.write_text("not base64!! x\n")
    with pytest.raises(ValueError, match="expected '<base64> <rank>'"):
        Tokenizer.from_tiktoken(p)
    # ranks with a gap load (tiktoken allows them: the ids are the ranks) ...
    p.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b if b != 7 else 300}\n" for b in range(256)))
    t = Tokenizer.from_tiktoken(p)
    assert t.encode("\x07a") == [300, 97] and t.vocab_size == 301
    with pytest.raises(ValueError, match="not a token of this vocabulary"):
        t.decode([7])
    # ... a byte missing, or a rank used twice, do not
    p.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(255)))
    with pytest.raises(ValueError, match="byte 0xff is missing"):
        Tokenizer.from_tiktoken(p)
    p.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b if b != 7 else 8}\n" for b in range(256)))
    with pytest.raises(ValueError, match="rank 8 appears twice"):
        Tokenizer.from_tiktoken(p)


def test_tiktoken_gives_identical_ids(tok):
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.Encoding(name="kgpt-test", pat_str=ref.PATTERNS["gpt4"],
                            mergeable_ranks=tok.mergeable_ranks(), special_tokens=tok.special_tokens)
    rnd = random.Random(21)
    for s in list(ROUND_TRIP.values()) + [random_text(rnd, 500) for _ in range(10)]:
        assert tok.encode(s) == enc.encode(s)
    s = "a<|endoftext|>b"
    assert tok.encode(s, allowed_special="all") == enc.encode(s, allowed_special="all")


# ---------------------------------------------------------------- bad input
def test_bad_train_arguments():
    with pytest.raises(ValueError, match="vocab_size must be >= 256"):
        Tokenizer.train("abc", 255)
    with pytest.raises(ValueError, match="258"):
        Tokenizer.train("abc", 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(ValueError, match="duplicate special token"):
        Tokenizer.train("abc", 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.train("abc", 300, special_tokens=[""])
    with pytest.raises(TypeError, match="bytes"):
        Tokenizer.train(b"abc", 300)
    with pytest.raises(TypeError, match="int"):
        Tokenizer.train(["abc", 5], 300)
    with pytest.raises(TypeError):
        Tokenizer.train(123, 300)
    with pytest.raises(TypeError, match="vocab_size"):
        Tokenizer.train("abc", 300.0)
    with pytest.raises(ValueError, match="pattern"):
        Tokenizer.train("abc", 300, pattern="cl50k")
    with pytest.raises(ValueError, match="backend"):
        Tokenizer.train("abc", 300, backend="rust")
    with pytest.raises(FileNotFoundError):
        Tokenizer.train(Path("/nonexistent/corpus.txt"), 300)
    with pytest.raises(ValueError, match="num_threads"):
        Tokenizer.train("abc", 300, num_threads=0)


def test_bad_encode_decode_arguments(tok):
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError):
        tok.encode_batch("one string")
    with pytest.raises(TypeError):
        tok.encode_batch(["ok", 3])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(np.array([2**40], dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        tok.token_bytes(tok.vocab_size)
    with pytest.raises(TypeError):
        tok.decode(np.array([1.5]))
    with pytest.raises(TypeError):
        tok.decode(["a"])
    assert tok.decode(np.array([104, 105], dtype=np.uint8)) == "hi"


def test_bad_merges_in_constructor():
    with pytest.raises(ValueError, match="merge 0"):
        Tokenizer([(256, 1)])


# ---------------------------------------------------------------- pathological inputs
def test_long_repeats_and_long_words():
    tok = Tokenizer.train(["a" * 5000, "xyz" * 2000, "ab" * 1000], 256 + 40)
    for s in ["a" * 100_000, "xyz" * 70_000, "ab" * 50_000 + "c"]:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        # a 200 KB word goes through the heap path: check against the reference on a slice
        # small enough for the O(n^2) reference
        head = s[:3000]
        assert tok.encode(head) == ref.encode_ordinary(head, tok.merges, "gpt4")
    big = "".join(random.Random(1).choice("abxyz") for _ in range(200_000))
    assert tok.decode(tok.encode(big)) == big
    mid = big[:2000]
    assert tok.encode(mid) == ref.encode_ordinary(mid, tok.merges, "gpt4")


def test_long_chunk_heap_path_equals_short_path():
    # 65..300 byte chunks use the heap; compare against the reference directly.
    rnd = random.Random(4)
    corpus = ["".join(rnd.choice("abc") for _ in range(3000))]
    tok = Tokenizer.train(corpus, 256 + 60)
    for n in (63, 64, 65, 100, 257, 300):
        w = "".join(rnd.choice("abc") for _ in range(n))
        assert tok.encode(w) == ref.encode_ordinary(w, tok.merges, "gpt4")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_threads_work_in_a_forked_child():
    # A child forked after the parent trained/encoded on threads must not hang (libgomp's pool
    # does not survive fork; the tokenizer uses fresh std::threads). Run in a subprocess with a
    # timeout so a regression fails instead of hanging the suite.
    import subprocess
    import sys
    import kernelgpt
    root = os.path.dirname(os.path.dirname(os.path.abspath(kernelgpt.__file__)))
    code = (
        f"import os, sys; sys.path.insert(0, {root!r})\n"
        "from kernelgpt.tokenizer import Tokenizer\n"
        "t = Tokenizer.train(['hello world ' * 500] * 8, 300, num_threads=2)\n"
        "t.encode_batch(['hello world'] * 4, num_threads=2)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    t2 = Tokenizer.train(['hello world ' * 500] * 8, 300, num_threads=2)\n"
        "    ok = t2.encode_batch(['hello world'] * 4, num_threads=2) == t.encode_batch(['hello world'] * 4)\n"
        "    os._exit(0 if ok and t2.merges == t.merges else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
