"""GGUF export: the file read back with gguf.GGUFReader holds every tensor and key llama.cpp's
gpt2 loader reads (skipped without the gguf package: pip install 'kernelgpt[gguf]'), and
llama.cpp itself (llama-cpp-python; skipped without it) runs the gpt2 and llama exports: our
tokenization, our logits and our greedy tokens. The llama export's keys and tensors are checked
in tests/test_interop_llama.py."""
from __future__ import annotations

import random

import numpy as np
import pytest

from kernelgpt import GPT, GPTConfig, Tokenizer

gguf = pytest.importorskip("gguf")

CFG = GPTConfig(vocab_size=300, block_size=40, n_layer=2, n_head=4, n_embd=64, norm_eps=1e-6)
ODD = GPTConfig(vocab_size=301, block_size=37, n_layer=1, n_head=3, n_embd=48)
TEXT = "the quick brown fox jumps over the lazy dog. hello world, hello there! " * 8

GGUF_NAMES = {  # our name -> llama.cpp's gpt2 tensor name (src/models/gpt2.cpp)
    "wte": "token_embd.weight", "wpe": "position_embd.weight",
    "ln_f.w": "output_norm.weight", "ln_f.b": "output_norm.bias",
    "ln_1.w": "attn_norm.weight", "ln_1.b": "attn_norm.bias",
    "attn.c_attn.w": "attn_qkv.weight", "attn.c_attn.b": "attn_qkv.bias",
    "attn.c_proj.w": "attn_output.weight", "attn.c_proj.b": "attn_output.bias",
    "ln_2.w": "ffn_norm.weight", "ln_2.b": "ffn_norm.bias",
    "mlp.c_fc.w": "ffn_up.weight", "mlp.c_fc.b": "ffn_up.bias",
    "mlp.c_proj.w": "ffn_down.weight", "mlp.c_proj.b": "ffn_down.bias"}


def _gguf_name(ours: str) -> str:
    if ours.startswith("h."):
        _, l, rest = ours.split(".", 2)
        return f"blk.{l}.{GGUF_NAMES[rest]}"
    return GGUF_NAMES[ours]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, vocab_size=290, special_tokens=["<|endoftext|>"])


def _model(cfg):
    m = GPT(cfg, backend="numpy", seed=2)
    rng = np.random.default_rng(5)
    m.load_state_dict({n: a + rng.standard_normal(a.shape).astype(np.float32) * 0.05
                       for n, a in m.state_dict().items()})
    return m


def _field(r, key):
    f = r.fields[key]
    return f.contents()


def _dequant_q8_0(raw: np.ndarray, shape) -> np.ndarray:
    """Q8_0 by hand: blocks of 34 bytes, an f16 scale then 32 int8."""
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = b[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("cfg", [CFG, ODD], ids=["pow2", "odd"])
def test_gguf_tensors_and_keys(cfg, dtype, tok, tmp_path):
    m = _model(cfg)
    p = tmp_path / "m.gguf"
    m.export_gguf(p, tok, dtype=dtype)
    r = gguf.GGUFReader(str(p))
    # keys
    assert _field(r, "general.architecture") == "gpt2"
    assert _field(r, "gpt2.context_length") == cfg.block_size
    assert _field(r, "gpt2.embedding_length") == cfg.n_embd
    assert _field(r, "gpt2.feed_forward_length") == 4 * cfg.n_embd
    assert _field(r, "gpt2.block_count") == cfg.n_layer
    assert _field(r, "gpt2.attention.head_count") == cfg.n_head
    assert _field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(cfg.norm_eps, rel=1e-6)
    assert _field(r, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7}[dtype]
    assert _field(r, "tokenizer.ggml.model") == "gpt2"
    assert _field(r, "tokenizer.ggml.pre") == "llama-bpe"      # the gpt4 pattern
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    eot = tok.eot_token
    assert tokens[ord(" ")] == "\u0120" and tokens[ord("a")] == "a" and tokens[10] == "\u010a"
    assert tokens[eot] == "<|endoftext|>" and types[eot] == int(gguf.TokenType.CONTROL)
    for i in range(tok.vocab_size, cfg.vocab_size):
        assert tokens[i] == f"[PAD{i}]" and types[i] == int(gguf.TokenType.UNUSED)
    # every ordinary token spells its bytes in GPT-2's byte-level alphabet
    from kernelgpt.tokenizer import _byte_to_unicode
    u = _byte_to_unicode()
    for i in range(256 + len(tok.merges)):
        assert tokens[i] == "".join(u[b] for b in tok.token_bytes(i))
        assert types[i] == int(gguf.TokenType.NORMAL)
    merges = _field(r, "tokenizer.ggml.merges")
    assert merges == [f"{tokens[a]} {tokens[b]}" for a, b in tok.merges]
    assert _field(r, "tokenizer.ggml.bos_token_id") == eot
    assert _field(r, "tokenizer.ggml.eos_token_id") == eot
    assert _field(r, "tokenizer.ggml.add_bos_token") is False
    # tensors: every parameter once, no "output" (tied to token_embd)
    got = {t.name: t for t in r.tensors}
    state = m.state_dict()
    assert set(got) == {_gguf_name(n) for n in state}
    for n, a in state.items():
        t = got[_gguf_name(n)]
        assert [int(x) for x in t.shape] == list(a.shape[::-1])      # ggml's dims: reversed
        kind = t.tensor_type
        if a.ndim == 1 or dtype == "f32":
            assert kind == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape), a)
        elif dtype == "f16" or a.shape[-1] % 32:
            assert kind == gguf.GGMLQuantizationType.F16      # q8_0 needs rows of 32k
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape),
                                          a.astype(np.float16))
        else:
            assert kind == gguf.GGMLQuantizationType.Q8_0
            deq = _dequant_q8_0(np.asarray(t.data), a.shape)
            blocks = a.reshape(-1, 32)
            amax = np.abs(blocks).max(axis=1, keepdims=True)
            err = np.abs(deq.reshape(-1, 32) - blocks)
            # half a step of the block's scale (amax / 127), plus the f16 rounding of the scale
            assert (err <= amax / 127 * (0.5 + 127 * 2.0 ** -11) + 1e-7).all()


def test_pre_tokenizer_names(tmp_path):
    m = GPT(ODD, backend="numpy")
    t2 = Tokenizer.train(TEXT, vocab_size=270, pattern="gpt2")
    m.export_gguf(tmp_path / "a.gguf", t2)
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    assert _field(r, "tokenizer.ggml.pre") == "gpt-2"
    assert "tokenizer.ggml.bos_token_id" not in r.fields          # no <|endoftext|>
    t3 = Tokenizer.train(TEXT, vocab_size=270, pattern="cl100k")
    with pytest.raises(ValueError, match="cl100k"):
        m.export_gguf(tmp_path / "b.gguf", t3)
    assert not (tmp_path / "b.gguf").exists()
    from kernelgpt.interop_gguf import export_gguf
    export_gguf(m, tmp_path / "b.gguf", t3, pre_tokenizer="llama-bpe")
    assert _field(gguf.GGUFReader(str(tmp_path / "b.gguf")), "tokenizer.ggml.pre") == "llama-bpe"


def test_bad_arguments(tok, tmp_path):
    m = GPT(GPTConfig(vocab_size=200, block_size=8, n_layer=1, n_head=2, n_embd=32),
            backend="numpy")
    with pytest.raises(ValueError, match="larger than the model"):
        m.export_gguf(tmp_path / "x.gguf", tok)
    with pytest.raises(ValueError, match="dtype"):
        GPT(ODD, backend="numpy").export_gguf(tmp_path / "x.gguf", tok, dtype="q4_0")
    with pytest.raises(ValueError, match="tokenizer"):
        GPT(ODD, backend="numpy").export_gguf(tmp_path / "x.gguf", None)
    assert list(tmp_path.iterdir()) == []


# llama.cpp's regex for "llama-bpe" (src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3).
LLAMA_BPE = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
             r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def test_gpt4_pattern_splits_like_llama_bpe():
    regex = pytest.importorskip("regex")
    from kernelgpt._bpe_reference import PATTERNS
    ours, theirs = regex.compile(PATTERNS["gpt4"]), regex.compile(LLAMA_BPE)
    alphabet = list("aZé9 \t\n\r'sStTlLdD.,!?-_") + ["  ", "\n\n", " \n ", "'ll", "'VE", "12345",
                                                     "ß", "日本", "\u00a0", "😀"]
    rnd = random.Random(0)
    for _ in range(3000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 14)))
        assert ours.findall(s) == theirs.findall(s), repr(s)


# ---------------------------------------------------------------------------------- llama.cpp
LLAMA_TINY = GPTConfig(vocab_size=300, block_size=80, n_layer=2, n_head=4, n_embd=64,
                       n_kv_head=2, norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False,
                       tie_embeddings=False, rope_theta=5000.0, norm_eps=1e-6)
LLAMA_TIED_BIAS = GPTConfig(vocab_size=300, block_size=80, n_layer=1, n_head=2, n_embd=32,
                            norm="rmsnorm", pos_emb="rope", mlp="swiglu", mlp_hidden=96,
                            bias=True, tie_embeddings=True)
GPT2_TINY = GPTConfig(vocab_size=300, block_size=80, n_layer=2, n_head=4, n_embd=64)


@pytest.mark.parametrize("cfg", [GPT2_TINY, LLAMA_TINY, LLAMA_TIED_BIAS],
                         ids=["gpt2", "llama", "llama-tied-bias"])
def test_llama_cpp_runs_our_gguf(cfg, tok, tmp_path):
    """llama.cpp itself loads the f32 export, tokenizes like us, gives our logits and our greedy
    tokens (skipped without llama-cpp-python)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    m = GPT(cfg, backend="numpy", seed=3)
    rng = np.random.default_rng(4)      # weights spread wider than the init: clear argmaxes
    m.load_state_dict({n: a + rng.standard_normal(a.shape).astype(np.float32) * 0.1
                       for n, a in m.state_dict().items()})
    p = tmp_path / "m.gguf"
    m.export_gguf(p, tok, dtype="f32")
    llm = llama_cpp.Llama(model_path=str(p), n_ctx=cfg.block_size, n_threads=1,
                          n_threads_batch=1, seed=0, logits_all=True, verbose=False,
                          type_k=0, type_v=0)      # an f32 KV cache (ggml type 0), as ours
    text = "hello world, the quick fox"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    prompt = tok.encode("hello ")
    llm.reset()
    llm.eval(prompt)
    theirs = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    ours = m.forward(np.asarray([prompt]))[0][0, -1]
    # gpt2: ggml's CPU GELU rounds through an f16 lookup table, hence the wider tolerance
    tol = 1e-4 if cfg.mlp == "swiglu" else 2e-3
    assert np.abs(theirs - ours).max() <= tol * np.abs(ours).max()
    n = 32
    got = []
    for t in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                          reset=True):
        got.append(int(t))
        if len(got) == n:
            break
    mine = np.asarray(m.generate(np.asarray(prompt), n, temperature=0.0))[0, len(prompt):]
    assert len(mine) == n
    assert got == [int(x) for x in mine]
