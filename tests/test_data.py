"""Token files (format, atomic write, validation), text -> ids, the default corpus, batches
(shift by one, determinism, state round trip, sharding)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from kernelgpt.corpus import default_corpus_files
from kernelgpt.data import (HEADER_SIZE, MAGIC, TokenDataset, atomic_write, encode_texts,
                            list_text_files, looks_like_token_file, read_token_file,
                            read_token_header, tokenize_files, write_token_file)


class ByteTokenizer:
    """Stand-in tokenizer: one id per UTF-8 byte."""
    vocab_size = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def encode_batch(self, texts):
        return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) for t in texts]


@pytest.mark.parametrize("vocab, dtype", [(300, np.uint16), (65536, np.uint16),
                                          (70000, np.uint32)])
def test_token_file_round_trip(tmp_path, rng, vocab, dtype):
    ids = rng.integers(0, vocab, size=1001)
    ids[0], ids[-1] = 0, vocab - 1
    p = write_token_file(tmp_path / "t.bin", ids, vocab)
    got, v = read_token_file(p)
    assert v == vocab and got.dtype == dtype
    np.testing.assert_array_equal(got, ids)
    raw = p.read_bytes()
    assert raw[:8] == MAGIC and len(raw) == HEADER_SIZE + ids.size * np.dtype(dtype).itemsize
    # documented header layout: version, width, vocab, n_tokens, little-endian
    assert struct.unpack("<IIQQ", raw[8:32]) == (1, np.dtype(dtype).itemsize, vocab, ids.size)


def test_token_file_empty(tmp_path):
    got, v = read_token_file(write_token_file(tmp_path / "e.bin", np.zeros(0, np.int64), 10))
    assert got.size == 0 and v == 10


def test_token_file_rejects_bad_ids(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        write_token_file(tmp_path / "x.bin", [1, 2, 300], 256)
    with pytest.raises(ValueError, match="1-D"):
        write_token_file(tmp_path / "x.bin", np.zeros((2, 2), np.int64), 256)
    with pytest.raises(TypeError):
        write_token_file(tmp_path / "x.bin", np.zeros(3, np.float32), 256)
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize("damage", ["truncate", "pad", "magic", "version", "width", "tiny",
                                    "empty", "vocab_too_big_for_width", "legacy_ids"])
def test_token_file_validation(tmp_path, damage):
    p = write_token_file(tmp_path / "t.bin", np.arange(100) % 256, 256)
    raw = bytearray(p.read_bytes())
    if damage == "truncate":
        raw = raw[:-3]
    elif damage == "pad":
        raw += b"\0\0"
    elif damage == "magic":
        raw[:8] = b"NOTOURS!"
    elif damage == "version":
        raw[8:12] = struct.pack("<I", 99)
    elif damage == "width":
        raw[12:16] = struct.pack("<I", 3)
    elif damage == "tiny":
        raw = raw[:10]
    elif damage == "empty":
        raw = b""
    elif damage == "vocab_too_big_for_width":
        raw[16:24] = struct.pack("<Q", 2**16 + 1)
    elif damage == "legacy_ids":  # the tokenizer command's former ids.bin
        raw = struct.pack("<8sIIQ", b"KGPTIDS\0", 1, 2, 100) + bytes(raw[HEADER_SIZE:])
    p.write_bytes(bytes(raw))
    want = {"magic": "not a kernelgpt token file", "version": "version 99",
            "width": "id width 3", "tiny": "truncated token file header",
            "empty": "not a kernelgpt token file", "legacy_ids": "legacy KGPTIDS.*read_ids",
            "vocab_too_big_for_width": "does not fit"}.get(damage, "truncated or padded")
    with pytest.raises(ValueError, match=want) as e:
        read_token_file(p)
    assert "t.bin" in str(e.value)
    with pytest.raises(ValueError, match=want):
        TokenDataset.from_file(p)
    assert looks_like_token_file(p) == (damage not in ("magic", "empty"))


def test_looks_like_token_file(tmp_path):
    assert looks_like_token_file(write_token_file(tmp_path / "t.bin", [1, 2], 256))
    (tmp_path / "a.txt").write_text("KGPTTOK")  # one byte short of the magic
    assert not looks_like_token_file(tmp_path / "a.txt")
    assert not looks_like_token_file(tmp_path / "missing.bin")
    assert not looks_like_token_file(tmp_path)  # a folder


def test_read_missing_token_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        read_token_header(tmp_path / "nope.bin")


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("crash mid-write")
    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_list_and_tokenize_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bb")
    (tmp_path / "d" / "sub" / "a.py").write_text("aa")
    (tmp_path / "d" / "img.png").write_bytes(b"\x89PNG\0")
    (tmp_path / "d" / ".hidden.txt").write_text("hh")
    (tmp_path / "c.dat").write_text("cc\xe9")
    files = list_text_files([tmp_path / "d", tmp_path / "c.dat", tmp_path / "d" / "b.txt"])
    assert [f.name for f in files] == ["b.txt", "a.py", "c.dat"]  # sorted per dir, deduplicated
    with pytest.raises(FileNotFoundError, match="nope"):
        list_text_files([tmp_path / "nope"])
    out = tokenize_files(ByteTokenizer(), [tmp_path / "d", tmp_path / "c.dat"], tmp_path / "t.bin")
    ids, vocab = read_token_file(out)
    assert vocab == 256
    assert bytes(ids.astype(np.uint8)) == "bbaacc\xe9".encode()


def test_encode_texts_without_batch():
    class One:
        def encode(self, t):
            return [len(t)]
    np.testing.assert_array_equal(encode_texts(One(), ["ab", "cde"]), [2, 3])
    assert encode_texts(One(), []).size == 0


def test_default_corpus_is_fixed_stdlib_source():
    files = default_corpus_files(200_000)
    assert files == default_corpus_files(200_000)  # same order every time
    assert all(f.suffix == ".py" for f in files)
    assert not any(part in ("test", "tests", "site-packages") for f in files for part in f.parts)
    total = sum(f.stat().st_size for f in files)
    assert 200_000 <= total < 200_000 + max(f.stat().st_size for f in files)
    assert default_corpus_files(1) == files[:1]


def _dataset(n=5000, seed=0, val_fraction=0.1):
    toks = (np.arange(n) * 7 % 251).astype(np.uint16)
    return TokenDataset(toks, 256, val_fraction=val_fraction, seed=seed)


def test_split_and_batch_shapes():
    ds = _dataset()
    assert ds.train.size == 4500 and ds.val.size == 500
    np.testing.assert_array_equal(np.concatenate([ds.train, ds.val]), ds.tokens)
    x, y = ds.get_batch(4, 16)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int32
    assert x.flags.c_contiguous and y.flags.c_contiguous
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    # every row is a contiguous window of the train split
    for row in np.concatenate([x, y[:, -1:]], axis=1):
        starts = np.flatnonzero(ds.train[:-16] == row[0])
        assert any(np.array_equal(ds.train[s:s + 17], row) for s in starts)


def test_batches_deterministic_and_resumable():
    a, b = _dataset(seed=3), _dataset(seed=3)
    for _ in range(3):
        np.testing.assert_array_equal(a.get_batch(2, 8)[0], b.get_batch(2, 8)[0])
    state = a.state_dict()
    import json
    state = json.loads(json.dumps(state))  # the state survives JSON (as in trainer_state.json)
    want = [a.get_batch(2, 8)[0] for _ in range(3)]
    c = _dataset(seed=3)
    c.load_state_dict(state)
    assert c.batches_drawn == 3
    for w in want:
        np.testing.assert_array_equal(c.get_batch(2, 8)[0], w)
    assert not np.array_equal(_dataset(seed=4).get_batch(2, 8)[0], _dataset(seed=3).get_batch(2, 8)[0])


def test_val_batches_fixed_and_independent():
    ds = _dataset()
    first = [x for x, _ in ds.val_batches(3, 2, 8)]
    ds.get_batch(2, 8)
    again = [x for x, _ in ds.val_batches(3, 2, 8)]
    for p, q in zip(first, again):
        np.testing.assert_array_equal(p, q)
    before = ds.state_dict()["rng"]
    list(ds.val_batches(2, 2, 8))
    assert ds.state_dict()["rng"] == before  # evaluation does not move the training stream


def test_shards_partition_the_global_batch():
    full = _dataset(seed=5)
    ranks = [_dataset(seed=5).shard(r, 3) for r in range(3)]
    for _ in range(2):
        x, y = full.get_batch(6, 8)
        parts = [r.get_batch(2, 8) for r in ranks]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    with pytest.raises(ValueError):
        full.shard(3, 3)


def test_bad_dataset_input():
    with pytest.raises(ValueError, match="too few"):
        TokenDataset(np.arange(10), 256).get_batch(1, 16)
    with pytest.raises(ValueError, match="val_fraction"):
        TokenDataset(np.arange(10), 256, val_fraction=1.0)
    with pytest.raises(ValueError, match="1-D"):
        TokenDataset(np.zeros((2, 2), np.int64), 256)
    with pytest.raises(ValueError, match="bad data state"):
        _dataset().load_state_dict({"rng": {"bit_generator": "MT19937"}, "batches_drawn": 0})


def test_from_file(tmp_path):
    p = write_token_file(tmp_path / "t.bin", np.arange(1000) % 256, 256)
    ds = TokenDataset.from_file(p, val_fraction=0.2, seed=1)
    assert isinstance(ds.tokens, np.memmap) and ds.val.size == 200 and ds.vocab_size == 256
    assert ds.source == str(p)


# ---------------------------------------------------------------- foreign token files, text check
from kernelgpt.data import (check_utf8_text, encode_texts, read_texts, read_token_array,  # noqa
                            token_format, tokenize_files)


def test_npy_and_raw_token_files(tmp_path):
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3], np.int64)
    np.save(tmp_path / "a.npy", ids.astype(np.int32))
    ids.astype(np.uint16).tofile(tmp_path / "train.bin")     # nanoGPT's prepare.py writes this
    ids.astype(np.uint32).tofile(tmp_path / "train32.bin")
    assert token_format(tmp_path / "a.npy") == "npy"
    assert token_format(tmp_path / "train.bin") is None           # no dtype: not recognised
    assert token_format(tmp_path / "train.bin", "uint16") == "raw"
    for path, dt in ((tmp_path / "a.npy", None), (tmp_path / "train.bin", "uint16"),
                     (tmp_path / "train32.bin", "uint32")):
        got, vocab, _ = read_token_array(path, dt)
        assert got.tolist() == ids.tolist() and vocab == 10      # max id + 1
        ds = TokenDataset.from_file(path, val_fraction=0.2, data_dtype=dt, vocab_size=12)
        assert ds.vocab_size == 12 and ds.tokens.tolist() == ids.tolist()
        assert ds.data_dtype == (dt if path.suffix == ".bin" else None)
        with pytest.raises(ValueError, match="outside the vocabulary of 9"):
            read_token_array(path, dt, vocab_size=9)
    # the 32-bit ids read as 16-bit are a different stream, not an error; an odd size is
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="whole number of uint16"):
        read_token_array(tmp_path / "odd.bin", "uint16")
    np.save(tmp_path / "2d.npy", np.zeros((2, 3), np.int32))
    np.save(tmp_path / "f.npy", np.zeros(3, np.float32))
    np.save(tmp_path / "neg.npy", np.array([1, -2], np.int16))
    for name, msg in (("2d.npy", "1-D integer"), ("f.npy", "1-D integer"),
                      ("neg.npy", "negative")):
        with pytest.raises(ValueError, match=msg):
            read_token_array(tmp_path / name)
    with pytest.raises(ValueError, match="data_dtype"):
        token_format(tmp_path / "a.npy", "int8")


def test_binary_file_is_not_text(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("생성형 text\n", encoding="utf-8")
    check_utf8_text(good)
    assert read_texts([good], strict=True) == ["생성형 text\n"]
    bad = tmp_path / "train.bin"
    bad.write_bytes(b"abc\xff\xfe def")   # invalid UTF-8, no NUL
    small = tmp_path / "small.bin"   # uint16 ids < 256: ASCII and NUL bytes, valid UTF-8
    np.array([100, 101, 102], np.uint16).tofile(small)
    with pytest.raises(ValueError, match=r"a NUL byte at offset 1\b"):
        read_texts([small], strict=True)
    with pytest.raises(ValueError, match=r"not UTF-8 text \(an invalid byte at offset 3\).*"
                                         r"--data-dtype") as e:
        read_texts([good, bad], strict=True)
    assert "\n" not in str(e.value)
    assert read_texts([bad])  # the lenient reader (default corpus) is unchanged


def test_documents_are_separated():
    from kernelgpt import Tokenizer
    tok = Tokenizer.train(["abc abc", "xyz"], 262, special_tokens=("<|endoftext|>",))
    eot = tok.special_tokens["<|endoftext|>"]
    ids = encode_texts(tok, ["abc", "xyz", "q"], separator=eot)
    parts = [tok.encode("abc"), tok.encode("xyz"), tok.encode("q")]
    assert ids.tolist() == parts[0] + [eot] + parts[1] + [eot] + parts[2]
    assert encode_texts(tok, ["abc"], separator=eot).tolist() == parts[0]
    assert encode_texts(tok, ["abc", "xyz"]).tolist() == parts[0] + parts[1]  # 0.1.0's join


def test_tokenize_files_with_separator(tmp_path):
    from kernelgpt import Tokenizer
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "b.txt").write_text("xyz")
    tok = Tokenizer.train(["abc xyz"], 260, special_tokens=("<|endoftext|>",))
    out = tokenize_files(tok, [tmp_path], tmp_path / "t.bin", separator="<|endoftext|>")
    ids, _ = read_token_file(out)
    assert ids.tolist() == tok.encode("abc") + [tok.eot_token] + tok.encode("xyz")
    with pytest.raises(ValueError, match="not a special token"):
        tokenize_files(tok, [tmp_path], tmp_path / "u.bin", separator="<|x|>")
