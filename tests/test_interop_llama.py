"""Llama-style configs in and out: transformers directories (LlamaForCausalLM) both ways, bad
Llama directories refused whole, and the GGUF "llama" export read back with gguf.GGUFReader.
Tests that run transformers need torch (CPU) and skip without it; GGUF tests skip without gguf.
llama.cpp itself runs the GGUF files in tests/test_interop_gguf.py (skipped without llama_cpp)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

import kernelgpt
from kernelgpt import GPT, GPTConfig, Tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. hello world, hello there! " * 8
_LL = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu")
XS_LIKE = GPTConfig.preset("llama-xs")              # GQA 4/2, untied, no bias
# odd sizes: 6 heads over 2 kv heads, a hidden width of no rule, biases, tied, another theta
ODD_TIED_BIAS = GPTConfig(vocab_size=301, block_size=37, n_layer=3, n_head=6, n_embd=72,
                          n_kv_head=2, mlp_hidden=100, bias=True, tie_embeddings=True,
                          norm_eps=1e-6, rope_theta=500000.0, **_LL)
# 3 heads over 1 kv head, the default swiglu width, untied, no bias
ODD_UNTIED = GPTConfig(vocab_size=299, block_size=29, n_layer=2, n_head=3, n_embd=48,
                       n_kv_head=1, bias=False, tie_embeddings=False, **_LL)
# plain multi-head attention (n_kv_head None), biases, untied
MHA_BIAS = GPTConfig(vocab_size=300, block_size=20, n_layer=1, n_head=2, n_embd=32, bias=True,
                     tie_embeddings=False, rope_theta=1234.5, **_LL)
CONFIGS = [XS_LIKE, ODD_TIED_BIAS, ODD_UNTIED, MHA_BIAS]
IDS = ["xs", "odd-tied-bias", "odd-untied", "mha-bias"]


def _torch_tf():
    torch = pytest.importorskip("torch", reason="transformers models need torch (CPU wheel)")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, vocab_size=290, special_tokens=["<|endoftext|>"])


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _model(cfg, seed=7):
    m = GPT(cfg, backend="numpy", seed=seed)
    # weights less uniform than the init, so that a swapped, transposed or permuted tensor shows
    rng = np.random.default_rng(seed + 1)
    m.load_state_dict({n: a + rng.standard_normal(a.shape).astype(np.float32) * 0.05
                       for n, a in m.state_dict().items()})
    return m


# ---------------------------------------------------------------------------------- HF out
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_llama_export_loads_in_transformers(cfg, tok, tmp_path):
    torch, transformers = _torch_tf()
    m = _model(cfg)
    m.save_pretrained(tmp_path, tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    hf.eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, cfg.block_size))
    ours, _ = m.forward(ids)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert _rel(ours, theirs) < 1e-4
    # greedy decoding: 32 tokens, the same (within the context)
    prompt = np.asarray([tok.encode("hello ")], dtype=np.int64)
    n = min(32, cfg.block_size - prompt.shape[1])
    mine = m.generate(prompt, n, temperature=0.0)
    # ours does not stop at <|endoftext|> here, so neither does theirs (min_new_tokens would
    # forbid it instead, and change the greedy choice)
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt), max_new_tokens=n, do_sample=False,
                          pad_token_id=0)
    assert out.shape[1] == prompt.shape[1] + n
    np.testing.assert_array_equal(np.asarray(mine)[:, -n:], out.numpy()[:, -n:])
    if cfg is XS_LIKE:   # the tokenizer files load in transformers and encode like ours
        t = transformers.AutoTokenizer.from_pretrained(tmp_path)
        assert t("hello world, the fox")["input_ids"] == tok.encode("hello world, the fox")


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_llama_round_trip_without_torch(cfg, tok, tmp_path):
    m = _model(cfg, seed=3)
    m.save_pretrained(tmp_path, tokenizer=tok)
    c = json.loads((tmp_path / "config.json").read_text())
    assert c["model_type"] == "llama" and c["architectures"] == ["LlamaForCausalLM"]
    assert (c["num_key_value_heads"], c["intermediate_size"], c["head_dim"]) == \
        (cfg.kv_heads, cfg.hidden, cfg.n_embd // cfg.n_head)
    assert c["tie_word_embeddings"] is cfg.tie_embeddings
    assert c["attention_bias"] is c["mlp_bias"] is cfg.bias
    assert c["rope_theta"] == cfg.rope_theta and c["rms_norm_eps"] == cfg.norm_eps
    m2, tok2 = kernelgpt.load_pretrained(tmp_path, backend="numpy")
    assert m2.config == cfg and tok2.encode(TEXT[:40]) == tok.encode(TEXT[:40])
    for n, a in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[n], a)
    # the fused projections are split under transformers' names, rows in our order
    from kernelgpt.weights import read_safetensors
    st, _ = read_safetensors(tmp_path / "model.safetensors")
    C, kv, H = cfg.n_embd, cfg.kv_heads * cfg.head_size, cfg.hidden
    qkv, fc = m.state_dict()["h.0.attn.c_attn.w"], m.state_dict()["h.0.mlp.c_fc.w"]
    np.testing.assert_array_equal(st["model.layers.0.self_attn.q_proj.weight"], qkv[:C])
    np.testing.assert_array_equal(st["model.layers.0.self_attn.k_proj.weight"], qkv[C:C + kv])
    np.testing.assert_array_equal(st["model.layers.0.self_attn.v_proj.weight"], qkv[C + kv:])
    np.testing.assert_array_equal(st["model.layers.0.mlp.gate_proj.weight"], fc[:H])
    np.testing.assert_array_equal(st["model.layers.0.mlp.up_proj.weight"], fc[H:])
    assert ("lm_head.weight" in st) is (not cfg.tie_embeddings)
    assert ("model.layers.0.self_attn.o_proj.bias" in st) is cfg.bias


def test_mixed_architectures_refused(tmp_path):
    # neither GPT-2 nor Llama: refused in one line naming the field, nothing written
    for cfg, field in [(dataclasses.replace(XS_LIKE, pos_emb="learned"), "pos_emb"),
                       (dataclasses.replace(XS_LIKE, mlp="gelu"), "mlp"),
                       (GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16,
                                  bias=False), "bias"),
                       (GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16,
                                  norm="rmsnorm"), "norm")]:
        with pytest.raises(ValueError, match=f"GPTConfig.{field}=") as e:
            GPT(cfg, backend="numpy").save_pretrained(tmp_path / "x")
        assert "\n" not in str(e.value)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------- HF in
def _hf_llama(transformers, **kw):
    import torch
    c = dict(vocab_size=97, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
             num_attention_heads=5, num_key_value_heads=1, max_position_embeddings=24,
             rms_norm_eps=1e-5, rope_theta=20000.0, bos_token_id=0, eos_token_id=0)
    c.update(kw)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**c))
    with torch.no_grad():    # norms away from 1 and biases away from 0, so that a lost one shows
        for n, p in hf.named_parameters():
            if n.endswith(("norm.weight", ".bias")):
                p.add_(torch.randn_like(p) * 0.2)
    return hf.eval()


@pytest.mark.parametrize("kw", [{}, {"attention_bias": True, "mlp_bias": True,
                                     "tie_word_embeddings": True}], ids=["untied", "tied-bias"])
def test_import_llama_made_by_transformers(kw, tmp_path):
    torch, transformers = _torch_tf()
    hf = _hf_llama(transformers, **kw)
    hf.save_pretrained(tmp_path)
    m = GPT.from_pretrained(tmp_path, backend="numpy")
    c = m.config
    assert (c.vocab_size, c.block_size, c.n_embd, c.n_head, c.kv_heads, c.hidden) == \
        (97, 24, 40, 5, 1, 72)
    assert (c.rope_theta, c.bias, c.tie_embeddings) == \
        (20000.0, bool(kw), bool(kw))
    ids = np.random.default_rng(3).integers(0, 97, (3, 24))
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert _rel(m.forward(ids)[0], theirs) < 1e-4
    # training from it works: the loss goes down in a few steps
    from kernelgpt.optim import AdamW
    opt = AdamW(m, lr=1e-2)
    x, y = ids[:, :-1], ids[:, 1:]
    losses = []
    for _ in range(5):
        m.zero_grad()
        _, loss = m.forward(x, y, return_logits=False)
        m.backward()
        opt.step()
        losses.append(loss)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def _written(tmp_path, cfg=ODD_TIED_BIAS):
    src = tmp_path / "src"
    _model(cfg).save_pretrained(src)
    return src


def _edit(src, dst, **fields):
    shutil.copytree(src, dst)
    c = json.loads((dst / "config.json").read_text())
    c.update(fields)
    (dst / "config.json").write_text(json.dumps(c))
    return dst


@pytest.mark.parametrize("field,value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
    ("head_dim", 24), ("hidden_act", "gelu"), ("num_local_experts", 4),
    ("sliding_window", 16), ("mlp_bias", False), ("partial_rotary_factor", 0.5),
    ("quantization_config", {"quant_method": "bitsandbytes"}),
    ("architectures", ["LlamaForSequenceClassification"]), ("model_type", "mixtral")])
def test_llama_unsupported_config_refused(field, value, tmp_path):
    d = _edit(_written(tmp_path), tmp_path / "d", **{field: value})
    calls = []
    orig = GPT.__init__

    def counting(self, *a, **k):
        calls.append(1)
        orig(self, *a, **k)
    GPT.__init__ = counting
    try:
        with pytest.raises(ValueError, match=field) as e:
            GPT.from_pretrained(d, backend="numpy")
    finally:
        GPT.__init__ = orig
    assert "\n" not in str(e.value) and calls == []


def test_llama_bad_weights_refused_whole(tmp_path):
    from kernelgpt import interop_hf
    from kernelgpt.weights import read_safetensors, write_safetensors
    src = _written(tmp_path)
    # the config says more kv heads than k_proj has rows
    d1 = _edit(src, tmp_path / "kv", num_key_value_heads=3)
    # a wider MLP than gate_proj
    d2 = _edit(src, tmp_path / "mlp", intermediate_size=101)
    # untied in the config, but no lm_head
    d3 = _edit(src, tmp_path / "nohead", tie_word_embeddings=False)
    # tied in the config, and an lm_head that is not the embedding
    d4 = _edit(src, tmp_path / "head", tie_word_embeddings=True)
    st, meta = read_safetensors(d4 / "model.safetensors")
    st["lm_head.weight"] = st["model.embed_tokens.weight"] + 1
    write_safetensors(d4 / "model.safetensors", st, meta)
    # a tensor of another architecture
    d5 = _edit(src, tmp_path / "extra")
    st, meta = read_safetensors(d5 / "model.safetensors")
    st["model.layers.0.mlp.experts.0.weight"] = np.zeros((2, 2), np.float32)
    write_safetensors(d5 / "model.safetensors", st, meta)
    calls = []
    orig = GPT.__init__

    def counting(self, *a, **k):
        calls.append(1)
        orig(self, *a, **k)
    GPT.__init__ = counting
    try:
        for d, msg in [(d1, r"k_proj\.\w+' has shape"), (d2, r"mlp\.\w+_proj\.\w+' has shape"),
                       (d3, "missing tensor lm_head.weight"), (d4, "lm_head"),
                       (d5, "unexpected tensor")]:
            with pytest.raises(ValueError, match=msg) as e:
                interop_hf.from_pretrained(d, backend="numpy")
            assert "\n" not in str(e.value)
    finally:
        GPT.__init__ = orig
    assert calls == []


def test_transformers_4_rope_theta_key(tmp_path):
    """A config.json of transformers 4.x (rope_theta at the top, no rope_parameters) is read."""
    src = _written(tmp_path)
    d = tmp_path / "v4"
    shutil.copytree(src, d)
    c = json.loads((d / "config.json").read_text())
    del c["rope_parameters"]
    c["rope_theta"] = 777.0
    (d / "config.json").write_text(json.dumps(c))
    assert GPT.from_pretrained(d, backend="numpy").config.rope_theta == 777.0
    c["rope_parameters"] = {"rope_type": "default", "rope_theta": 999.0}   # 5.x's key wins
    del c["rope_theta"]
    (d / "config.json").write_text(json.dumps(c))
    assert GPT.from_pretrained(d, backend="numpy").config.rope_theta == 999.0


# ---------------------------------------------------------------------------------- GGUF
def _rotate_half(x, pos, theta):
    """Ours / Hugging Face: pairs (i, i + d/2) rotated by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def _rotate_adjacent(x, pos, theta):
    """llama.cpp's "normal" rope (GGML_ROPE_TYPE_NORMAL): pairs (2i, 2i+1), the same angles."""
    d = x.shape[-1]
    ang = pos * theta ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(ang), np.sin(ang)
    out = x.copy()
    out[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    out[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    return out


def _interleaved_by_loops(w, n_heads):
    """Row 2i+p of each head = row p*hs/2 + i (written with loops, not with the module's
    reshape)."""
    hs = w.shape[0] // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        for i in range(hs // 2):
            for p in range(2):
                out[h * hs + 2 * i + p] = w[h * hs + p * hs // 2 + i]
    return out


def test_rope_interleave_keeps_attention_scores():
    """q.k after our rope on our weights == q.k after llama.cpp's rope on the exported ones."""
    from kernelgpt.interop_gguf import rope_interleave
    rng = np.random.default_rng(0)
    nh, hs, C = 3, 8, 20
    wq, wk = rng.standard_normal((nh * hs, C)), rng.standard_normal((nh * hs, C))
    np.testing.assert_array_equal(rope_interleave(wq, nh), _interleaved_by_loops(wq, nh))
    x1, x2 = rng.standard_normal(C), rng.standard_normal(C)
    for p1, p2 in [(0, 0), (3, 1), (17, 9)]:
        q = (wq @ x1).reshape(nh, hs)
        k = (wk @ x2).reshape(nh, hs)
        ours = (_rotate_half(q, p1, 1e4) * _rotate_half(k, p2, 1e4)).sum(-1)
        q2 = (rope_interleave(wq, nh) @ x1).reshape(nh, hs)
        k2 = (rope_interleave(wk, nh) @ x2).reshape(nh, hs)
        theirs = (_rotate_adjacent(q2, p1, 1e4) * _rotate_adjacent(k2, p2, 1e4)).sum(-1)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)
        if (p1, p2) != (0, 0):   # without the permutation the scores differ
            q3 = (wq @ x1).reshape(nh, hs)
            k3 = (wk @ x2).reshape(nh, hs)
            wrong = (_rotate_adjacent(q3, p1, 1e4) * _rotate_adjacent(k3, p2, 1e4)).sum(-1)
            assert not np.allclose(ours, wrong)


def _expected_gguf(cfg, state):
    """GGUF name -> array, built from our state dict by hand."""
    C, kv, H = cfg.n_embd, cfg.kv_heads * cfg.head_size, cfg.hidden
    out = {"token_embd.weight": state["wte"], "output_norm.weight": state["ln_f.w"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = state["lm_head.w"]
    kinds = [("w", "weight"), ("b", "bias")] if cfg.bias else [("w", "weight")]
    for l in range(cfg.n_layer):
        p, b = f"h.{l}.", f"blk.{l}."
        out[b + "attn_norm.weight"] = state[p + "ln_1.w"]
        out[b + "ffn_norm.weight"] = state[p + "ln_2.w"]
        for k, s in kinds:
            qkv = state[p + "attn.c_attn." + k]
            out[b + "attn_q." + s] = _interleaved_by_loops(qkv[:C], cfg.n_head)
            out[b + "attn_k." + s] = _interleaved_by_loops(qkv[C:C + kv], cfg.kv_heads)
            out[b + "attn_v." + s] = qkv[C + kv:]
            out[b + "attn_output." + s] = state[p + "attn.c_proj." + k]
            out[b + "ffn_gate." + s] = state[p + "mlp.c_fc." + k][:H]
            out[b + "ffn_up." + s] = state[p + "mlp.c_fc." + k][H:]
            out[b + "ffn_down." + s] = state[p + "mlp.c_proj." + k]
    return out


def _dequant_q8_0(raw, shape):
    b = raw.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = b[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("cfg", [XS_LIKE, ODD_TIED_BIAS], ids=["xs", "odd-tied-bias"])
def test_llama_gguf_tensors_and_keys(cfg, dtype, tok, tmp_path):
    gguf = pytest.importorskip("gguf")
    m = _model(cfg)
    p = tmp_path / "m.gguf"
    m.export_gguf(p, tok, dtype=dtype)
    r = gguf.GGUFReader(str(p))
    f = lambda k: r.fields[k].contents()  # noqa: E731
    assert f("general.architecture") == "llama"
    want = {"llama.context_length": cfg.block_size, "llama.embedding_length": cfg.n_embd,
            "llama.block_count": cfg.n_layer, "llama.feed_forward_length": cfg.hidden,
            "llama.attention.head_count": cfg.n_head,
            "llama.attention.head_count_kv": cfg.kv_heads,
            "llama.rope.dimension_count": cfg.n_embd // cfg.n_head,
            "llama.vocab_size": cfg.vocab_size,
            "general.file_type": {"f32": 0, "f16": 1, "q8_0": 7}[dtype]}
    for k, v in want.items():
        assert f(k) == v, k
    assert f("llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps, rel=1e-6)
    assert f("llama.rope.freq_base") == pytest.approx(cfg.rope_theta, rel=1e-6)
    assert f("tokenizer.ggml.model") == "gpt2" and f("tokenizer.ggml.pre") == "llama-bpe"
    assert len(f("tokenizer.ggml.tokens")) == cfg.vocab_size
    assert f("tokenizer.ggml.eos_token_id") == tok.eot_token
    exp = _expected_gguf(cfg, m.state_dict())
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(exp)
    for name, a in exp.items():
        t = got[name]
        assert [int(x) for x in t.shape] == list(a.shape[::-1]), name
        if a.ndim == 1 or dtype == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape), a)
        elif dtype == "f16" or a.shape[-1] % 32:
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape),
                                          a.astype(np.float16))
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            deq = _dequant_q8_0(np.asarray(t.data), a.shape)
            amax = np.abs(a.reshape(-1, 32)).max(axis=1, keepdims=True)
            err = np.abs(deq.reshape(-1, 32) - a.reshape(-1, 32))
            assert (err <= amax / 127 * (0.5 + 127 * 2.0 ** -11) + 1e-7).all()


def test_gguf_mixed_architecture_refused(tok, tmp_path):
    pytest.importorskip("gguf")
    cfg = dataclasses.replace(XS_LIKE, pos_emb="learned")
    with pytest.raises(ValueError, match="pos_emb"):
        GPT(cfg, backend="numpy").export_gguf(tmp_path / "x.gguf", tok)
    assert list(tmp_path.iterdir()) == []
