"""`kernelgpt tokenizer train|encode` through add_tokenizer_parser/run_tokenizer (the same calls
cli.py makes): files written, encode's token file round trip (the data.py format, vocab_size =
the tokenizer's), legacy KGPTIDS ids files still read, damaged files raise ValueError naming the
file, one-line errors with a non-zero exit code."""
from __future__ import annotations

import argparse
import struct

import numpy as np
import pytest

from kernelgpt.cli_tokenizer import add_tokenizer_parser, read_ids, run_tokenizer
from kernelgpt.data import TokenDataset, read_token_file
from kernelgpt.tokenizer import Tokenizer

LEGACY = struct.Struct("<8sIIQ")  # the old ids.bin header: magic, version, id width, count


def run(argv):
    p = argparse.ArgumentParser(prog="kernelgpt")
    add_tokenizer_parser(p.add_subparsers(dest="command"))
    return run_tokenizer(p.parse_args(argv))


def test_train_then_encode(tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello world, hello tokenizer\n" * 50 + "안녕하세요 세계\n", encoding="utf-8")
    b.write_text("def f(x):\n    return x + 1\n" * 30, encoding="utf-8")
    tok_path, ids_path = tmp_path / "tok.json", tmp_path / "ids.bin"
    assert run(["tokenizer", "train", "--input", str(a), str(b), "--vocab-size", "300",
                "--out", str(tok_path), "--special", "<|endoftext|>"]) == 0
    tok = Tokenizer.load(tok_path)
    assert tok.vocab_size == 300 and tok.special_tokens == {"<|endoftext|>": 299}
    assert tok.merges == Tokenizer.train([a.read_text(encoding="utf-8"), b.read_text(encoding="utf-8")], 299).merges
    assert run(["tokenizer", "encode", "--tokenizer", str(tok_path), "--input", str(a), "--out", str(ids_path)]) == 0
    ids = read_ids(ids_path)
    assert ids.dtype == np.dtype("<u2")
    want = tok.encode(a.read_text(encoding="utf-8"))
    assert ids.tolist() == want and len(want) > 0
    # the package's token file: magic, version, id width, vocab_size = the tokenizer's, count
    raw = ids_path.read_bytes()
    assert struct.unpack("<8sIIQQ", raw[:32]) == (b"KGPTTOK1", 1, 2, 300, len(want))
    assert len(raw) == 32 + 2 * len(want)
    same, vocab = read_token_file(ids_path)
    assert vocab == 300 and same.tolist() == want
    ds = TokenDataset.from_file(ids_path)  # what `train --data` opens
    assert ds.vocab_size == 300 and len(ds) == len(want)
    assert "wrote" in capsys.readouterr().out


def test_encode_special_tokens_round_trip(tmp_path):
    text = "hello world<|endoftext|>bye world<|endoftext|>"
    tok = Tokenizer.train(["hello world, bye world\n" * 20], 270, special_tokens=("<|endoftext|>",))
    tok.save(tmp_path / "tok.json")
    (tmp_path / "in.txt").write_text(text, encoding="utf-8")
    assert run(["tokenizer", "encode", "--tokenizer", str(tmp_path / "tok.json"), "--input",
                str(tmp_path / "in.txt"), "--out", str(tmp_path / "ids.bin"),
                "--allow-special"]) == 0
    ids = read_ids(tmp_path / "ids.bin")
    eot = tok.special_tokens["<|endoftext|>"]
    assert eot == tok.vocab_size - 1 and ids.tolist().count(eot) == 2  # the highest id survives
    assert tok.decode(ids.tolist()) == text
    assert read_token_file(tmp_path / "ids.bin")[1] == tok.vocab_size


@pytest.mark.parametrize("width", [2, 4])
def test_read_ids_reads_legacy_kgptids_files(tmp_path, rng, width):
    dtype = np.dtype("<u2") if width == 2 else np.dtype("<u4")
    ids = rng.integers(0, 65536 if width == 2 else 2**32, size=257).astype(dtype)
    p = tmp_path / "old.bin"
    p.write_bytes(LEGACY.pack(b"KGPTIDS\0", 1, width, ids.size) + ids.tobytes())
    got = read_ids(p)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, ids)
    p.write_bytes(LEGACY.pack(b"KGPTIDS\0", 1, width, 0))
    assert read_ids(p).size == 0
    # the training reader does not guess a vocab_size for it, and says what to do
    with pytest.raises(ValueError, match="old.bin.*legacy KGPTIDS.*read_ids"):
        read_token_file(p)


def test_errors_are_one_line_and_nonzero(tmp_path, capsys):
    assert run(["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--vocab-size", "300",
                "--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.txt" in err
    (tmp_path / "a.txt").write_text("abc", encoding="utf-8")
    assert run(["tokenizer", "train", "--input", str(tmp_path / "a.txt"), "--vocab-size", "100",
                "--out", str(tmp_path / "t.json")]) == 1
    assert "vocab_size" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    assert run(["tokenizer", "encode", "--tokenizer", str(tmp_path / "bad.json"), "--input",
                str(tmp_path / "a.txt"), "--out", str(tmp_path / "ids.bin")]) == 1
    assert "not a kernelgpt tokenizer" in capsys.readouterr().err


def _token_file_bytes(ids, vocab, version=1):
    return struct.pack("<8sIIQQ", b"KGPTTOK1", version, 2, vocab, len(ids)) + \
        np.asarray(ids, "<u2").tobytes()


@pytest.mark.parametrize("case, match", [
    ("garbage", "not a kernelgpt token file"),
    ("empty", "not a kernelgpt token file"),
    ("short_header", "truncated token file header"),
    ("version", "unsupported token file version 2"),
    ("truncated", "truncated or padded"),
    ("padded", "truncated or padded"),
    ("legacy_short", "too short"),
    ("legacy_version", "unsupported KGPTIDS"),
    ("legacy_truncated", "truncated or padded"),
    ("missing", "cannot read"),
])
def test_read_ids_rejects_bad_files(tmp_path, case, match):
    p = tmp_path / "x.bin"
    good = _token_file_bytes([1, 2, 3, 4], 300)
    legacy = LEGACY.pack(b"KGPTIDS\0", 1, 2, 10)
    data = {"garbage": b"hello, not ids", "empty": b"", "short_header": good[:20],
            "version": _token_file_bytes([1, 2, 3, 4], 300, version=2), "truncated": good[:-1],
            "padded": good + b"\0\0", "legacy_short": legacy[:12],
            "legacy_version": LEGACY.pack(b"KGPTIDS\0", 7, 2, 0),
            "legacy_truncated": legacy + b"\0" * 4}.get(case)
    if data is not None:
        p.write_bytes(data)
    with pytest.raises(ValueError, match=match) as e:
        read_ids(p)
    assert "x.bin" in str(e.value)  # the message names the file


def test_encode_rejects_a_bad_out_path(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("abc", encoding="utf-8")
    Tokenizer.train(["abcabc"], 257).save(tmp_path / "t.json")
    assert run(["tokenizer", "encode", "--tokenizer", str(tmp_path / "t.json"), "--input",
                str(tmp_path / "a.txt"), "--out", str(tmp_path / "no" / "dir" / "ids.bin")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err
