"""Hugging Face interchange: Tokenizer.save_hf writes a tokenizer.json that `tokenizers` and
`transformers.PreTrainedTokenizerFast` load and that encodes Korean, code, emoji, CRLF and special
tokens to our ids; Tokenizer.from_hf reads it back, reads byte-level BPE tokenizers trained by
`tokenizers` itself (tokenizer.json and GPT-2's vocab.json + merges.txt) with their ids, and
refuses what it cannot represent with one clear line. Needs `tokenizers` (importorskip)."""
from __future__ import annotations

import json
import random

import pytest

from kernelgpt.tokenizer import Tokenizer

tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "생성형 인공지능은 텍스트, 이미지, 코드를 만들어 냅니다. 한국어 문장입니다!",
    "def f(x):\r\n    return x ** 2  # square\r\n\r\nprint(f(3))\n\tif a != b: pass\n",
    "👍🏽 family: 👨‍👩‍👧‍👦 flags 🇰🇷🇯🇵 ✨ 😀😀",
    "line one\r\nline two\r\n\r\n  indented\r\n", "Hello WORLD's  \n\n  trailing  \n  ",
    "x/y\n/z //\r\n", "ǅungla ʰA e\u0301 don't DON'T 1234567 ١٢٣", "", " ", "\n",
]
SPECIAL_TEXT = "<|endoftext|>Hi<|pad|>\r\n<|endoftext|><|endoftext|> x<|pad|>"


def _corpus():
    rnd = random.Random(4)
    return TEXTS * 4 + ["".join(rnd.choice(TEXTS)[:rnd.randint(0, 40)] for _ in range(30)) for _ in range(10)]


@pytest.fixture(scope="module", params=["gpt4", "gpt2", "cl100k", "o200k"])
def tok(request):
    return Tokenizer.train(_corpus(), 256 + 400, pattern=request.param,
                           special_tokens=["<|endoftext|>", "<|pad|>"])


def test_save_hf_loads_in_tokenizers_with_our_ids(tok, tmp_path):
    tok.save_hf(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for s in TEXTS + [SPECIAL_TEXT, "".join(TEXTS)]:
        ids = tok.encode(s, allowed_special="all")
        assert hf.encode(s).ids == ids, s
        assert hf.decode(ids, skip_special_tokens=False) == s
    assert hf.get_vocab_size() == tok.vocab_size


def test_save_hf_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save_hf(tmp_path)
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    for s in TEXTS + [SPECIAL_TEXT]:
        ids = tok.encode(s, allowed_special="all")
        assert fast(s, add_special_tokens=False)["input_ids"] == ids, s
        assert fast.decode(ids) == s
    assert fast.eos_token == "<|endoftext|>"


def test_from_hf_round_trip(tok, tmp_path):
    tok.save_hf(tmp_path)
    for src in (tmp_path, tmp_path / "tokenizer.json"):
        t2 = Tokenizer.from_hf(src)
        assert t2 == tok
        assert t2.encode(SPECIAL_TEXT, allowed_special="all") == tok.encode(SPECIAL_TEXT, allowed_special="all")


def _hf_trained(vocab_size=600):
    """A byte-level BPE trained by `tokenizers` (GPT-2 style: its ids, merges, no whole lookup)."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    t = tokenizers.Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator(_corpus(), trainer=tr)
    return t


def test_from_hf_reads_a_tokenizers_trained_bpe(tmp_path):
    hf = _hf_trained()
    hf.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_hf(tmp_path / "tokenizer.json")
    assert tok.pattern == "gpt2" and tok.special_tokens == {"<|endoftext|>": 0}
    eot = "a<|endoftext|>b"
    for s in TEXTS + ["".join(TEXTS), eot]:
        assert tok.encode(s, allowed_special="all") == hf.encode(s).ids, s
    # GPT-2's files: vocab.json + merges.txt (written by the BPE model itself)
    d = tmp_path / "gpt2"
    d.mkdir()
    hf.model.save(str(d))
    tok2 = Tokenizer.from_hf(d / "vocab.json")
    assert Tokenizer.from_hf(d) == tok2
    for s in TEXTS:
        assert tok2.encode(s) == hf.encode(s).ids, s
    assert tok2.special_tokens == {"<|endoftext|>": 0}


def _edit(tmp_path, tok, fn):
    tok.save_hf(tmp_path)
    p = tmp_path / "tokenizer.json"
    obj = json.loads(p.read_text(encoding="utf-8"))
    fn(obj)
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


@pytest.mark.parametrize("fn,match", [
    (lambda o: o.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda o: o["model"].update(type="WordPiece"), "not a byte-level BPE"),
    (lambda o: o["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda o: o["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+"), "unknown split pattern"),
    (lambda o: o["pre_tokenizer"]["pretokenizers"][1].update(add_prefix_space=True), "prefix space"),
    (lambda o: o.update(pre_tokenizer={"type": "Whitespace"}), "not byte-level"),
    (lambda o: o["model"]["vocab"].update({"☃": 9999}), "not byte-level"),
    (lambda o: o["model"]["merges"].reverse(), "no earlier merge makes"),
    (lambda o: o["added_tokens"][0].update(lstrip=True), "lstrip"),
    (lambda o: o["model"]["vocab"].update({"<|orphan|>": 5000}), "neither a byte nor made by a merge"),
], ids=["normalizer", "wordpiece", "byte_fallback", "pattern", "prefix", "pretok", "char", "order",
        "lstrip", "orphan"])
def test_from_hf_refuses_what_it_cannot_represent(tmp_path, fn, match):
    tok = Tokenizer.train(_corpus(), 256 + 50, special_tokens=["<|endoftext|>"])
    p = _edit(tmp_path, tok, fn)
    with pytest.raises(ValueError, match=match) as e:
        Tokenizer.from_hf(p)
    assert "\n" not in str(e.value)


def test_load_recognises_a_tokenizer_json(tmp_path):
    tok = Tokenizer.train(_corpus(), 256 + 20)
    tok.save_hf(tmp_path)
    with pytest.raises(ValueError, match="use Tokenizer.from_hf|read it with Tokenizer.from_hf"):
        Tokenizer.load(tmp_path / "tokenizer.json")


def test_save_hf_of_an_openai_layout(tmp_path):
    # ids that are not ours (tiktoken ranks) survive the trip through tokenizer.json
    import base64
    tok = Tokenizer.train(_corpus(), 256 + 100, pattern="o200k")
    order = list(range(33, 127)) + [b for b in range(256) if not 33 <= b < 127]
    ranks = {bytes([b]): k for k, b in enumerate(order)}
    ranks.update({tok.token_bytes(i): i + 10 for i in range(256, 256 + len(tok.merges))})
    f = tmp_path / "r.tiktoken"
    f.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    t1 = Tokenizer.from_tiktoken(f, pattern="o200k", special_tokens={"<|endoftext|>": 260})
    t1.save_hf(tmp_path / "hf")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    for s in TEXTS + ["x<|endoftext|>y"]:
        assert hf.encode(s).ids == t1.encode(s, allowed_special="all"), s
    assert Tokenizer.from_hf(tmp_path / "hf") == t1


def test_whole_token_lookup_switch_matches_ignore_merges(tmp_path):
    # "abc" is a token (a + bc), but merging "abc" makes "ab" first and stops at ab + c: the
    # whole-chunk lookup (tiktoken; tokenizers with ignore_merges) gives 258, pure merging 256, 99.
    merges = [(97, 98), (98, 99), (97, 257)]
    for whole, want in ((True, [258]), (False, [256, 99])):
        tok = Tokenizer(merges, "gpt2", whole_token_lookup=whole)
        assert tok.encode("abc") == want
        d = tmp_path / str(whole)
        tok.save_hf(d)
        assert tokenizers.Tokenizer.from_file(str(d / "tokenizer.json")).encode("abc").ids == want
        t2 = Tokenizer.from_hf(d)
        assert t2 == tok and t2.encode("abc") == want
        f = tmp_path / f"{whole}.json"
        tok.save(f)
        assert Tokenizer.load(f).encode("abc") == want
