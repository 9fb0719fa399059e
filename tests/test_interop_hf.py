"""Hugging Face transformers directories: export -> transformers, transformers -> import, and
bad input refused whole. Tests that run transformers need torch (CPU) and skip without it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import kernelgpt
from kernelgpt import GPT, GPTConfig, Tokenizer

XS_LIKE = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128)
ODD = GPTConfig(vocab_size=301, block_size=37, n_layer=3, n_head=3, n_embd=48, norm_eps=1e-6)
TEXT = "the quick brown fox jumps over the lazy dog. hello world, hello there! " * 8


def _torch_tf():
    torch = pytest.importorskip("torch", reason="transformers models need torch (CPU wheel)")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, vocab_size=290, special_tokens=["<|endoftext|>"])


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("cfg", [XS_LIKE, ODD], ids=["xs", "odd"])
def test_export_loads_in_transformers(cfg, tok, tmp_path):
    torch, transformers = _torch_tf()
    m = GPT(cfg, backend="numpy", seed=7)
    # make the weights less uniform than the init so that a transposed or swapped tensor shows
    rng = np.random.default_rng(1)
    m.load_state_dict({n: a + rng.standard_normal(a.shape).astype(np.float32) * 0.05
                       for n, a in m.state_dict().items()})
    m.save_pretrained(tmp_path, tokenizer=tok)
    names = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    hf.eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, cfg.block_size))
    ours, _ = m.forward(ids)
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert _rel(ours, theirs) < 1e-4
    # greedy decoding: 32 tokens, the same
    prompt = np.asarray([tok.encode("hello ")], dtype=np.int64)
    mine = m.generate(prompt, 32, temperature=0.0)
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt), max_new_tokens=32, do_sample=False,
                          min_new_tokens=32, pad_token_id=0)
    np.testing.assert_array_equal(np.asarray(mine)[:, -32:], out.numpy()[:, -32:])
    # the tokenizer files load in transformers and encode like ours
    t = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert t("hello world, the fox")["input_ids"] == tok.encode("hello world, the fox")


def test_export_then_import_without_torch(tok, tmp_path):
    m = GPT(ODD, backend="numpy", seed=4)
    m.save_pretrained(tmp_path, tokenizer=tok)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["n_positions"] == ODD.block_size and cfg["layer_norm_epsilon"] == 1e-6
    m2, tok2 = kernelgpt.load_pretrained(tmp_path, backend="numpy")
    assert m2.config == ODD and tok2.encode(TEXT[:40]) == tok.encode(TEXT[:40])
    for n, a in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[n], a)
    # Conv1D layout: HF stores c_attn (in, out), the transpose of ours
    from kernelgpt.weights import read_safetensors
    st, _ = read_safetensors(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(st["transformer.h.1.attn.c_attn.weight"],
                                  m.state_dict()["h.1.attn.c_attn.w"].T)


def _hf_model(transformers, **kw):
    c = dict(vocab_size=97, n_positions=24, n_embd=40, n_layer=2, n_head=5,
             layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=0)
    c.update(kw)
    import torch
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**c))


def test_import_model_made_by_transformers(tmp_path):
    torch, transformers = _torch_tf()
    hf = _hf_model(transformers)
    hf.eval()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    m = GPT.from_pretrained(tmp_path, backend="numpy")
    assert (m.config.vocab_size, m.config.block_size, m.config.n_embd) == (97, 24, 40)
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


def test_import_sharded(tmp_path):
    torch, transformers = _torch_tf()
    hf = _hf_model(transformers)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    m = GPT.from_pretrained(tmp_path, backend="numpy")
    ids = np.random.default_rng(4).integers(0, 97, (1, 24))
    hf.eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert _rel(m.forward(ids)[0], theirs) < 1e-4


@pytest.mark.parametrize("field,value", [
    ("scale_attn_by_inverse_layer_idx", True), ("activation_function", "relu"),
    ("tie_word_embeddings", False), ("n_inner", 100), ("model_type", "llama"),
    ("architectures", ["GPT2ForSequenceClassification"])])
def test_unsupported_config_refused(field, value, tmp_path):
    GPT(ODD, backend="numpy").save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    c[field] = value
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match=field) as e:
        GPT.from_pretrained(tmp_path, backend="numpy")
    assert "\n" not in str(e.value)


def test_layer_norm_epsilon_is_kept(tmp_path):
    GPT(ODD, backend="numpy").save_pretrained(tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    c["layer_norm_epsilon"] = 1e-3
    (tmp_path / "config.json").write_text(json.dumps(c))
    assert GPT.from_pretrained(tmp_path, backend="numpy").config.norm_eps == 1e-3


def test_bad_weights_refused_whole(tmp_path):
    from kernelgpt import interop_hf
    src = tmp_path / "src"
    GPT(ODD, backend="numpy").save_pretrained(src)
    calls = []
    orig = GPT.__init__

    def counting(self, *a, **k):
        calls.append(1)
        orig(self, *a, **k)

    def case(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d
    # truncated safetensors
    d = case("trunc")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    # a shard index naming a missing file
    d2 = case("index")
    (d2 / "model.safetensors").rename(d2 / "part-1.safetensors")
    from kernelgpt.weights import SafetensorsFile
    wm = {n: "part-1.safetensors" for n in SafetensorsFile(d2 / "part-1.safetensors").entries}
    wm["transformer.wte.weight"] = "part-2.safetensors"
    (d2 / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    # mismatched shapes: the config says more positions than wpe has
    d3 = case("shape")
    c = json.loads((d3 / "config.json").read_text())
    c["n_positions"] += 1
    (d3 / "config.json").write_text(json.dumps(c))
    # pickle weights only
    d4 = case("pickle")
    (d4 / "model.safetensors").unlink()
    (d4 / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    GPT.__init__ = counting
    try:
        for d, msg in [(d, "truncated"), (d2, "part-2.safetensors.*missing"),
                       (d3, "has shape"), (d4, "convert them to safetensors")]:
            with pytest.raises(ValueError, match=msg) as e:
                interop_hf.from_pretrained(d, backend="numpy")
            assert "\n" not in str(e.value)
    finally:
        GPT.__init__ = orig
    assert calls == []          # no model was built for any of them


class _Opt:
    def __init__(self, model):
        self.model = model

    def state_dict(self):
        z = np.zeros(self.model.num_params(), np.float32)
        return {"m": z, "v": z, "step": 1}


def test_cli_export_and_sample_model(tok, tmp_path, capsys):
    from kernelgpt.checkpoint import save_checkpoint
    from kernelgpt.cli import main
    m = GPT(ODD, backend="numpy", seed=9)
    run = tmp_path / "run"
    save_checkpoint(run, model=m, optimizer=_Opt(m), train_config={},
                    trainer_state={"step": 1}, tokenizer=tok)
    hf_dir, wfile = tmp_path / "hf", tmp_path / "w.safetensors"
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(hf_dir)]) == 0
    assert main(["export", "--run", str(run), "--format", "weights", "--out", str(wfile)]) == 0
    m2, tok2 = kernelgpt.load_pretrained(hf_dir, backend="numpy")
    np.testing.assert_array_equal(m2.params, m.params)
    np.testing.assert_array_equal(GPT.load(wfile, backend="numpy").params, m.params)
    capsys.readouterr()
    common = ["--prompt", "hello", "--max-new-tokens", "12", "--temperature", "0",
              "--backend", "numpy"]
    outs = []
    for src in (["--run", str(run)], ["--model", str(hf_dir)],
                ["--model", str(wfile), "--tokenizer", str(run / "ckpt-00000001" /
                                                           "tokenizer.json")]):
        assert main(["sample", *src, *common]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) > len("hello")
    # a bad --model is one error line, exit 1
    assert main(["sample", "--model", str(tmp_path / "nope"), *common]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("kernelgpt sample: error:") and "\n" not in err
    import importlib.util
    if importlib.util.find_spec("gguf") is not None:       # the optional extra
        out = tmp_path / "m.gguf"
        assert main(["export", "--run", str(run), "--format", "gguf", "--out", str(out),
                     "--dtype", "q8_0"]) == 0
        assert out.stat().st_size > 0


def test_only_gpt2_configs_are_exported(tmp_path):
    """A config with an architecture field away from GPT-2's default (where this release has
    one) is refused in one line before any file is written."""
    import dataclasses
    from kernelgpt.interop_hf import check_gpt2
    check_gpt2(ODD, "x")                           # GPT-2 itself passes
    extra = [f for f in dataclasses.fields(GPTConfig)
             if f.name not in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                               "norm_eps")]
    if not extra:
        pytest.skip("this GPTConfig has no architecture fields besides GPT-2's")

    # a config-like dataclass with GPTConfig's fields and defaults, one field changed
    fake = dataclasses.make_dataclass("C", [(g.name, object, dataclasses.field(
        default=g.default)) for g in dataclasses.fields(GPTConfig)
        if g.default is not dataclasses.MISSING])
    for f in extra:
        changed = fake(**{f.name: "__other__"})
        for n in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            setattr(changed, n, getattr(ODD, n))
        with pytest.raises(ValueError, match=f.name):
            check_gpt2(changed, "x")
