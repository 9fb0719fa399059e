"""What users reach for: pickling and copying a Tokenizer, tiktoken's method names, encode_batch
returning lists, train_files, and a warning when train gets a list of str that are file names."""
from __future__ import annotations

import copy
import logging
import pathlib
import pickle
import random

import pytest

from kernelgpt.tokenizer import Tokenizer

TEXTS = ["Hello world, it's 2026!\r\n", "생성형 인공지능 한국어", "👍🏽 ✨ emoji", "def f(x):\n    return x\n",
         "a<|endoftext|>b"]


@pytest.fixture(scope="module")
def tok():
    rnd = random.Random(2)
    corpus = ["".join(rnd.choice(TEXTS) for _ in range(20)) for _ in range(5)]
    return Tokenizer.train(corpus, 256 + 120, special_tokens=["<|endoftext|>", "<|pad|>"])


@pytest.mark.parametrize("clone", [lambda t: pickle.loads(pickle.dumps(t)), copy.deepcopy, copy.copy],
                         ids=["pickle", "deepcopy", "copy"])
def test_pickle_and_copy(tok, clone):
    t2 = clone(tok)
    assert t2 is not tok and t2 == tok
    for s in TEXTS:
        assert t2.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")
    assert t2.special_tokens == tok.special_tokens and t2.vocab_size == tok.vocab_size


def test_tiktoken_names(tok):
    s = "x<|endoftext|>y"
    assert tok.encode_ordinary(s) == tok.encode(s, allowed_special="none")
    assert tok.encode_ordinary(s) != tok.encode(s, allowed_special="all")
    assert tok.n_vocab == tok.vocab_size == tok.max_token_value + 1
    assert tok.eot_token == tok.special_tokens["<|endoftext|>"]
    ids = [tok.encode(t, allowed_special="all") for t in TEXTS]
    assert tok.decode_batch(ids) == TEXTS
    assert tok.decode_single_token_bytes(ids[0][0]) == tok.token_bytes(ids[0][0])
    assert b"".join(tok.decode_tokens_bytes(ids[1])) == TEXTS[1].encode()
    assert tok.special_tokens_set == {"<|endoftext|>", "<|pad|>"}
    no_eot = Tokenizer.train("abc", 257)
    assert not hasattr(no_eot, "eot_token")
    with pytest.raises(AttributeError, match="<\\|endoftext\\|>"):
        no_eot.eot_token


def test_tiktoken_names_agree_with_tiktoken(tok):
    tiktoken = pytest.importorskip("tiktoken")
    from kernelgpt import _bpe_reference as ref
    enc = tiktoken.Encoding("t", pat_str=ref.PATTERNS["gpt4"], mergeable_ranks=tok.mergeable_ranks(),
                            special_tokens=tok.special_tokens)
    assert tok.eot_token == enc.eot_token and tok.n_vocab == enc.n_vocab
    for s in TEXTS:
        assert tok.encode_ordinary(s) == enc.encode_ordinary(s)
    ids = enc.encode_ordinary_batch(TEXTS)
    assert tok.decode_batch(ids) == enc.decode_batch(ids)
    assert all(tok.decode_single_token_bytes(i) == enc.decode_single_token_bytes(i) for i in ids[1])


def test_encode_batch_returns_lists(tok):
    out = tok.encode_batch(TEXTS, allowed_special="all")
    assert type(out) is list and all(type(x) is list for x in out)
    assert all(type(i) is int for x in out for i in x)
    assert out == [tok.encode(t, allowed_special="all") for t in TEXTS]
    arrs = tok.encode_batch(TEXTS, allowed_special="all", as_numpy=True)
    assert [a.tolist() for a in arrs] == out
    assert type(tok.encode(TEXTS[0])) is list


def test_train_warns_on_a_list_of_file_names(tmp_path, caplog):
    files = []
    for k, t in enumerate(TEXTS[:3]):
        f = tmp_path / f"part{k}.txt"
        f.write_text(t * 5, encoding="utf-8")
        files.append(f)
    with caplog.at_level(logging.WARNING, logger="kernelgpt.tokenizer"):
        Tokenizer.train([str(f) for f in files], 260)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "train_files" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kernelgpt.tokenizer"):
        Tokenizer.train([str(files[0]), "not a file"], 260)
        Tokenizer.train(files, 260)
        Tokenizer.train(TEXTS, 260)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_train_files(tmp_path):
    files = []
    for k, t in enumerate(TEXTS[:3]):
        f = tmp_path / f"part{k}.txt"
        f.write_text(t * 5, encoding="utf-8")
        files.append(f)
    texts = [f.read_bytes().decode("utf-8") for f in files]  # (read_text would turn CRLF into LF)
    want = Tokenizer.train(texts, 300, pattern="gpt2").merges
    assert Tokenizer.train_files([str(f) for f in files], 300, pattern="gpt2").merges == want
    assert Tokenizer.train_files(files, 300, pattern="gpt2").merges == want
    assert Tokenizer.train_files(str(files[0]), 300).merges == Tokenizer.train(texts[0], 300).merges
    with pytest.raises(FileNotFoundError):
        Tokenizer.train_files([tmp_path / "missing.txt"], 300)
    with pytest.raises(TypeError):
        Tokenizer.train_files([b"bytes"], 300)
