"""`kernelgpt tokenizer train|encode` through add_tokenizer_parser/run_tokenizer (the same calls
cli.py makes): files written, ids.bin round trip, one-line errors with a non-zero exit code."""
from __future__ import annotations

import argparse
import struct

import numpy as np
import pytest

from kernelgpt.cli_tokenizer import add_tokenizer_parser, read_ids, run_tokenizer
from kernelgpt.tokenizer import Tokenizer


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
    assert ids.tolist() == tok.encode(a.read_text(encoding="utf-8"))
    magic, version, width, n = struct.unpack("<8sIIQ", ids_path.read_bytes()[:24])
    assert (magic, version, width, n) == (b"KGPTIDS\0", 1, 2, len(ids))
    assert "wrote" in capsys.readouterr().out


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


def test_read_ids_rejects_other_files(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"hello")
    with pytest.raises(ValueError, match="too short"):
        read_ids(p)
    p.write_bytes(struct.pack("<8sIIQ", b"KGPTIDS\0", 1, 2, 10) + b"\0" * 4)
    with pytest.raises(ValueError, match="size"):
        read_ids(p)
