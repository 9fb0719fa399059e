"""Training from a file (streamed in blocks) gives exactly the merges of training on the same text
as one str, wherever the blocks are cut: inside whitespace runs and runs of newlines, between "\\r"
and "\\n", inside a multi-byte character, before an apostrophe suffix. The read block is made tiny
(the `_FILE_BLOCK_BYTES` hook) so that every byte position is a block boundary."""
from __future__ import annotations

import random

import pytest

from kernelgpt import _bpe_reference as ref
from kernelgpt import tokenizer as tkm
from kernelgpt.tokenizer import Tokenizer

# Each line holds a place where a cut changes the "gpt2" split if the text before it is split on
# its own: "\n\n\n" before a letter is "\n\n" + "\n" inside a text but one chunk at its end.
AWKWARD = ("x\n\n\nleave  \n\n\ny   \n  z\r\n\r\nq\r\rw\n\r\n\n's\n'll\n\n'RE\n\n\n가나\n\n한국어\n"
           "\n\n😀\n\n\n\u00a0\n\n\u3000x\n\n  \n\n\n{}\t\t\n\n\n12345\n\n\n\n\n\n.a")


def corpus(seed: int) -> str:
    rnd = random.Random(seed)
    parts = ["\n", "\n\n", "\n\n\n", "\r\n", "\r", "  ", "   ", "\t", " le", "ave", "'s", "'ll",
             "'RE", "가", "한국어", "😀", "\u00a0", "\u3000", "x", "ab", "12", ".", "{"]
    return AWKWARD + "".join(rnd.choice(parts) for _ in range(400)) + AWKWARD


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64])
def test_file_training_equals_str_for_any_block_size(tmp_path, monkeypatch, pattern, block):
    text = corpus(block)
    f = tmp_path / "c.txt"
    f.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(tkm, "_FILE_BLOCK_BYTES", block)
    n = 120
    want = ref.train([text], n, pattern)
    assert Tokenizer.train(text, 256 + n, pattern=pattern).merges == want
    assert Tokenizer.train(f, 256 + n, pattern=pattern).merges == want


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_file_chunk_counts_equal_str_chunk_counts(tmp_path, pattern):
    from kernelgpt import _native
    text = AWKWARD * 3
    f = tmp_path / "c.txt"
    f.write_bytes(text.encode("utf-8"))
    a = _native.BpeTrainer(pattern)
    a.add_documents([text], 1)
    want = (a.num_chunks, a.num_unique_chunks, a.train(200).tolist())
    for block in (1, 2, 3, 4, 6):
        b = _native.BpeTrainer(pattern)
        b.add_file(str(f), 1, block_bytes=block)
        assert (b.num_chunks, b.num_unique_chunks, b.train(200).tolist()) == want, block


def test_block_bytes_must_not_be_negative(tmp_path):
    from kernelgpt import _native
    f = tmp_path / "c.txt"
    f.write_text("abc")
    with pytest.raises(ValueError, match="block_bytes"):
        _native.BpeTrainer("gpt2").add_file(str(f), 1, block_bytes=-1)
