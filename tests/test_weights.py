"""Weights-only files (GPT.save / GPT.load), the safetensors reader, and load_model on a
checkpoint folder without its optimizer file."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from kernelgpt import GPT, GPTConfig
from kernelgpt.checkpoint import CheckpointError, load_model, save_checkpoint
from kernelgpt.weights import SafetensorsFile, read_safetensors

CFG = GPTConfig(vocab_size=70, block_size=12, n_layer=2, n_head=3, n_embd=24, norm_eps=1e-6)


def test_save_load_round_trip(tmp_path):
    m = GPT(CFG, backend="numpy", seed=3)
    p = tmp_path / "w.safetensors"
    m.save(p)
    m2 = GPT.load(p, backend="numpy")
    assert m2.config == CFG                      # from the file's metadata (norm_eps included)
    for n, a in m.state_dict().items():
        np.testing.assert_array_equal(m2.state_dict()[n], a)
    ids = np.random.default_rng(0).integers(0, 70, (2, 12))
    np.testing.assert_array_equal(m2.forward(ids)[0], m.forward(ids)[0])


def test_load_refuses_foreign_and_bad_files(tmp_path):
    from safetensors.numpy import save_file
    m = GPT(CFG, backend="numpy")
    plain = tmp_path / "plain.safetensors"
    save_file(m.state_dict(), str(plain))        # no kernelgpt metadata
    with pytest.raises(ValueError, match="not a kernelgpt weights file"):
        GPT.load(plain)
    good = tmp_path / "w.safetensors"
    m.save(good)
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        GPT.load(trunc)
    (tmp_path / "tiny").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="not a safetensors file"):
        GPT.load(tmp_path / "tiny")
    # a config whose shapes do not match the tensors
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    cfg = json.loads(header["__metadata__"]["config"])
    cfg["n_embd"] = 30
    cfg["n_head"] = 3
    header["__metadata__"]["config"] = json.dumps(cfg)
    h = json.dumps(header).encode()
    bad = tmp_path / "shape.safetensors"
    bad.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    with pytest.raises(ValueError, match="has shape"):
        GPT.load(bad)


def test_reader_converts_half_types(tmp_path):
    from safetensors.numpy import save_file
    a = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    bf16 = (a.view(np.uint32) >> 16).astype(np.uint16)     # truncation to bfloat16
    p = tmp_path / "h.safetensors"
    save_file({"h": a.astype(np.float16)}, str(p))
    got, _ = read_safetensors(p)
    np.testing.assert_array_equal(got["h"], a.astype(np.float16).astype(np.float32))
    # bf16: write the header by hand (numpy has no bfloat16)
    h = json.dumps({"b": {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + bf16.tobytes())
    got = SafetensorsFile(tmp_path / "b.safetensors").read("b")
    np.testing.assert_array_equal(got, (bf16.astype(np.uint32) << 16).view(np.float32))


class _Opt:
    def __init__(self, model):
        self.model = model

    def state_dict(self):
        z = np.zeros(self.model.num_params(), np.float32)
        return {"m": z, "v": z, "step": 1, "lr": 1e-3}


def test_load_model_without_optimizer_file(tmp_path):
    m = GPT(CFG, backend="numpy", seed=5)
    ck = save_checkpoint(tmp_path / "run", model=m, optimizer=_Opt(m), train_config={},
                         trainer_state={"step": 1})
    (ck / "optimizer.safetensors").unlink()      # kept for inference only
    model, tok, info = load_model(tmp_path / "run", backend="numpy")
    assert tok is None and info.optimizer_state == {}
    np.testing.assert_array_equal(model.params, m.params)
    # the model file itself is still required and checked
    (ck / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path / "run", backend="numpy")
