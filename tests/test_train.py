"""The Trainer on the numpy backend: loss falls on real text, resume is bit-exact (also after a
Ctrl-C, even one landing mid-step), checkpoints round-trip, damaged checkpoints are rejected, an
interrupted save leaves the previous checkpoint whole, divergence raises TrainingDivergedError."""
from __future__ import annotations

import json
import math
import signal
from types import SimpleNamespace

import numpy as np
import pytest

import kernelgpt.checkpoint as ckmod
import kernelgpt.train as trmod
from kernelgpt.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, load_model
from kernelgpt.corpus import default_corpus_files
from kernelgpt.data import TokenDataset, write_token_file
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.train import TrainConfig, Trainer, TrainingDivergedError

MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def text_ids():
    """~20 KB of the standard library's source as bytes (a byte-level 'tokenizer')."""
    raw = b"".join(f.read_bytes() for f in default_corpus_files(20_000))
    return np.frombuffer(raw, np.uint8).astype(np.uint16)


@pytest.fixture
def token_file(tmp_path, text_ids):
    return write_token_file(tmp_path / "tokens.bin", text_ids, 256)


def make(token_file, out=None, seed=0, **cfg):
    cfg = {"batch_size": 4, "max_steps": 6, "lr": 3e-3, "warmup_steps": 2, "eval_every": 3,
           "eval_batches": 2, **cfg}
    model = GPT(MODEL, backend="numpy", seed=seed)
    data = TokenDataset.from_file(token_file, val_fraction=0.1, seed=seed)
    return Trainer(model, data, TrainConfig(**cfg), out_dir=out)


def test_loss_falls_on_real_text(token_file):
    tr = make(token_file, max_steps=40, eval_every=40, eval_batches=4, lr=1e-2, warmup_steps=4)
    before = tr.evaluate()
    assert before == pytest.approx(math.log(256), abs=0.3)  # untrained: near uniform
    s = tr.fit()
    assert s["step"] == 40 and len(s["losses"]) == 40 and not s["interrupted"]
    assert s["val_loss"] < before - 1.0
    assert np.mean(s["losses"][-5:]) < np.mean(s["losses"][:5]) - 1.0
    assert s["checkpoint"] is None and s["tokens_seen"] == 40 * 4 * 16


def _straight(token_file, tmp_path, **cfg):
    tr = make(token_file, tmp_path / "straight", **cfg)
    s = tr.fit()
    return s["losses"], tr.model.params.copy(), tr.optimizer.m.copy()


def test_resume_is_bit_exact(token_file, tmp_path):
    losses, params, m = _straight(token_file, tmp_path)
    run = tmp_path / "split"
    first = make(token_file, run, max_steps=3).fit()
    assert first["step"] == 3 and latest_checkpoint(run).name == "ckpt-00000003"
    tr = Trainer.resume(run, backend="numpy", max_steps=6)  # reopens run's recorded token file
    assert tr.step == 3
    second = tr.fit()
    assert first["losses"] + second["losses"] == losses  # identical floats, not approximately
    np.testing.assert_array_equal(tr.model.params, params)
    np.testing.assert_array_equal(tr.optimizer.m, m)
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_fit_resume_flag_and_existing_run(token_file, tmp_path):
    run = tmp_path / "r"
    make(token_file, run, max_steps=2).fit()
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        make(token_file, run, max_steps=4).fit()
    tr = make(token_file, run, max_steps=4)
    s = tr.fit(resume=True)
    assert s["step"] == 4 and len(s["losses"]) == 2


def test_ctrl_c_saves_and_resumes_exactly(token_file, tmp_path):
    losses, params, _ = _straight(token_file, tmp_path)
    run = tmp_path / "ctrlc"

    def stop_at_3(trainer, rec):
        if rec["step"] == 3:
            raise KeyboardInterrupt
    tr = make(token_file, run)
    tr.callbacks.append(stop_at_3)
    s = tr.fit()
    assert s["interrupted"] and s["step"] == 3 and latest_checkpoint(run).name == "ckpt-00000003"
    tr2 = Trainer.resume(run, backend="numpy")
    s2 = tr2.fit()
    assert s["losses"] + s2["losses"] == losses
    np.testing.assert_array_equal(tr2.model.params, params)


def test_ctrl_c_mid_step_discards_the_half_step(token_file, tmp_path, monkeypatch):
    losses, params, _ = _straight(token_file, tmp_path, grad_accum=2)
    run = tmp_path / "mid"
    tr = make(token_file, run, grad_accum=2)
    calls = {"n": 0}
    real_backward = tr.model.backward

    def backward(*a, **k):  # the 8th micro-batch = the second half of step 4
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_backward(*a, **k)
    monkeypatch.setattr(tr.model, "backward", backward)
    s = tr.fit()
    assert s["interrupted"] and s["step"] == 3
    tr2 = Trainer.resume(run, backend="numpy")
    s2 = tr2.fit()
    assert s["losses"] + s2["losses"] == losses
    np.testing.assert_array_equal(tr2.model.params, params)


@pytest.mark.parametrize("moment", ["commit", "metrics_line", "evaluation"])
def test_real_sigint_during_step_bookkeeping(token_file, tmp_path, monkeypatch, moment):
    """A real SIGINT while step 3 commits (held back, raised once the step is done), while its
    metrics line is written (held back too), or during its evaluation: the run stops at step 3
    with one metrics line per step, and the resumed run matches the uninterrupted one exactly."""
    # Started with SIGINT ignored (a background job of a non-interactive shell, nohup), Python
    # leaves it ignored: give this test Python's own handler, as an interactive run has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_during_bookkeeping(token_file, tmp_path, monkeypatch, moment)
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_during_bookkeeping(token_file, tmp_path, monkeypatch, moment):
    losses, params, _ = _straight(token_file, tmp_path)
    run = tmp_path / moment
    tr = make(token_file, run)  # eval_every=3: step 3 is evaluated
    if moment == "commit":
        real_step, calls = tr.optimizer.step, []

        def opt_step(lr):
            calls.append(lr)
            if len(calls) == 3:
                signal.raise_signal(signal.SIGINT)
            return real_step(lr)
        monkeypatch.setattr(tr.optimizer, "step", opt_step)
    elif moment == "metrics_line":
        fired = []

        def dumps(obj, **kw):  # the step-3 record, once
            if isinstance(obj, dict) and obj.get("step") == 3 and "grad_norm" in obj \
                    and not fired:
                fired.append(obj)
                signal.raise_signal(signal.SIGINT)
            return json.dumps(obj, **kw)
        monkeypatch.setattr(trmod, "json", SimpleNamespace(dumps=dumps, loads=json.loads))
    else:
        real_eval = tr.evaluate

        def evaluate():
            if tr.step == 3:
                signal.raise_signal(signal.SIGINT)
            return real_eval()
        monkeypatch.setattr(tr, "evaluate", evaluate)
    s = tr.fit()
    monkeypatch.undo()
    assert s["interrupted"] and s["step"] == 3 and latest_checkpoint(run).name == "ckpt-00000003"
    assert s["losses"] == losses[:3]

    def logged():
        return [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged() == [1, 2, 3]
    tr2 = Trainer.resume(run, backend="numpy")
    s2 = tr2.fit()
    assert s["losses"] + s2["losses"] == losses
    np.testing.assert_array_equal(tr2.model.params, params)
    assert logged() == [1, 2, 3, 4, 5, 6]


def test_checkpoint_round_trip(token_file, tmp_path):
    run = tmp_path / "rt"
    tr = make(token_file, run, max_steps=2, save_every=1)
    tr.tokenizer = b'{"fake": "tokenizer"}'
    tr.fit()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt")) == ["ckpt-00000002"]
    ck = load_checkpoint(run)
    assert ck.step == 2 and ck.model_config == MODEL.to_dict()
    assert ck.train_config["max_steps"] == 2 and ck.tokenizer_path.read_bytes() == tr.tokenizer
    for name, arr in tr.model.state_dict().items():
        assert ck.model_state[name].dtype == np.float32
        np.testing.assert_array_equal(ck.model_state[name], arr)
    np.testing.assert_array_equal(ck.optimizer_state["v"], tr.optimizer.v)
    assert ck.optimizer_state["step"] == 2
    assert ck.trainer_state["data"]["batches_drawn"] == 2
    # load_model rebuilds the model (it would load the tokenizer too: drop the fake one first)
    (ck.path / "tokenizer.json").unlink()
    man = json.loads((ck.path / "manifest.json").read_text())
    del man["files"]["tokenizer.json"]
    (ck.path / "manifest.json").write_text(json.dumps(man))
    model, tok, _ = load_model(run, backend="numpy")
    assert tok is None
    np.testing.assert_array_equal(model.params, tr.model.params)


@pytest.mark.parametrize("damage", ["flip_model", "truncate_optimizer", "drop_manifest",
                                    "edit_config", "foreign_manifest", "latest_dangling",
                                    "no_latest", "missing_run"])
def test_damaged_checkpoint_rejected(token_file, tmp_path, damage):
    run = tmp_path / "dmg"
    make(token_file, run, max_steps=1).fit()
    ck = latest_checkpoint(run)
    target = {"flip_model": "model.safetensors", "truncate_optimizer": "optimizer.safetensors",
              "drop_manifest": "manifest.json", "edit_config": "config.json",
              "foreign_manifest": "manifest.json", "latest_dangling": "LATEST",
              "no_latest": "LATEST", "missing_run": "nowhere"}[damage]
    if damage == "flip_model":
        raw = bytearray((ck / target).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (ck / target).write_bytes(bytes(raw))
    elif damage == "truncate_optimizer":
        raw = (ck / target).read_bytes()
        (ck / target).write_bytes(raw[:len(raw) // 2])
    elif damage == "drop_manifest":
        (ck / target).unlink()
    elif damage == "edit_config":
        (ck / target).write_text((ck / target).read_text().replace('"n_layer": 1', '"n_layer": 2'))
    elif damage == "foreign_manifest":
        (ck / target).write_text('{"hello": "world"}')
    elif damage == "latest_dangling":
        (run / target).write_text("ckpt-00000999\n")
    elif damage == "no_latest":
        (run / target).unlink()
    path = tmp_path / "nowhere" if damage == "missing_run" else run
    with pytest.raises(CheckpointError, match=target):
        load_checkpoint(path)
    with pytest.raises(ValueError):  # CheckpointError is a ValueError
        Trainer.resume(path, backend="numpy")


def test_interrupted_save_leaves_previous_checkpoint_whole(token_file, tmp_path, monkeypatch):
    run = tmp_path / "atomic"
    tr = make(token_file, run, max_steps=2)
    tr.fit()
    good = tr.model.params.copy()
    real = ckmod.atomic_write_bytes

    def crash_on_config(path, data):
        if path.name == "config.json":
            raise OSError("disk unplugged mid-save")
        return real(path, data)
    monkeypatch.setattr(ckmod, "atomic_write_bytes", crash_on_config)
    tr.config.max_steps = 3
    tr._resumed = True  # continue the same run in-process
    with pytest.raises(OSError, match="unplugged"):
        tr.fit()
    monkeypatch.undo()
    assert latest_checkpoint(run).name == "ckpt-00000002"
    assert [p.name for p in run.iterdir() if p.name.startswith((".tmp", "ckpt"))] == \
        ["ckpt-00000002"]
    model, _, ck = load_model(run, backend="numpy")
    assert ck.step == 2
    np.testing.assert_array_equal(model.params, good)


def test_nan_loss_raises_and_keeps_last_good_checkpoint(token_file, tmp_path):
    run = tmp_path / "nan"

    def poison(trainer, rec):
        if rec["step"] == 3:
            trainer.model.param_views["h.0.mlp.c_fc.w"][0, 0] = np.nan
    tr = make(token_file, run, max_steps=6, save_every=2)
    tr.callbacks.append(poison)
    with pytest.raises(TrainingDivergedError, match="step 4.*loss is nan.*ckpt-00000002"):
        tr.fit()
    assert latest_checkpoint(run).name == "ckpt-00000002"
    model, _, ck = load_model(run, backend="numpy")
    assert np.all(np.isfinite(model.params)) and ck.step == 2


def test_huge_lr_diverges(token_file):
    tr = make(token_file, max_steps=10, lr=1e30, warmup_steps=0, grad_clip=0.0)
    with pytest.raises(TrainingDivergedError, match="diverged"):
        tr.fit()


def test_grad_accum_counts_tokens(token_file):
    s = make(token_file, max_steps=2, grad_accum=3).fit()
    assert s["tokens_seen"] == 2 * 3 * 4 * 16 and all(map(math.isfinite, s["losses"]))


def test_bad_train_config(token_file):
    for bad in ({"batch_size": 0}, {"lr": float("nan")}, {"grad_accum": 1.5},
                {"min_lr": 1.0, "lr": 0.1}, {"beta2": 1.0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="block_size"):
        make(token_file, block_size=32)


def test_loss_plot_when_matplotlib_is_present(token_file, tmp_path):
    pytest.importorskip("matplotlib")
    make(token_file, tmp_path / "plot", max_steps=3).fit()
    assert (tmp_path / "plot" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- bits per byte, progress, plot
def test_eval_every_scales_with_max_steps():
    assert TrainConfig(max_steps=1000).eval_every == 200     # the default run: unchanged
    assert TrainConfig(max_steps=50).eval_every == 10
    assert TrainConfig(max_steps=5000).eval_every == 1000
    assert TrainConfig(max_steps=3).eval_every == 1
    assert TrainConfig(max_steps=50, eval_every=7).eval_every == 7
    assert TrainConfig(max_steps=50, eval_every=0).eval_every == 0


def test_throughput_is_a_moving_average():
    tp = trmod.Throughput(window=4)
    for _ in range(4):
        tp.add(1000, 0.01)                  # 100,000 tok/s
    rate = tp.add(1000, 1.0)                # one slow step (a pause of the machine)
    assert 2_000 < rate < 5_000             # (3000 tokens / 1.03 s), not the step's 1,000
    for _ in range(4):
        rate = tp.add(1000, 0.01)
    assert rate == pytest.approx(100_000)   # the pause has left the window


def test_metrics_report_bits_per_byte(tmp_path, text_ids):
    from kernelgpt import Tokenizer
    from kernelgpt.evaluation import token_byte_lengths
    tok = Tokenizer.train(["abc"], 258, special_tokens=("<|endoftext|>",))
    ids = text_ids.copy()
    ids[::50] = 257                         # special tokens count 0 bytes
    tf = write_token_file(tmp_path / "t.bin", ids, 258)
    model = GPT(GPTConfig(vocab_size=258, block_size=16, n_layer=1, n_head=2, n_embd=16),
                backend="numpy", seed=0)
    data = TokenDataset.from_file(tf, val_fraction=0.1, seed=0)
    cfg = TrainConfig(batch_size=4, max_steps=4, eval_every=2, eval_batches=2)
    tr = Trainer(model, data, cfg, out_dir=tmp_path / "run", tokenizer=tok)
    summary = tr.fit()
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("bpb" in r for r in recs) and [("val_bpb" in r) for r in recs] == \
        [False, True, False, True]
    nb = token_byte_lengths(tok)
    assert nb[257] == 0 and nb[65] == 1
    n_bytes = sum(int(nb[y].sum()) for _, y in data.val_batches(2, 4, 16))
    want = recs[-1]["val_loss"] * 2 * 4 * 16 / (math.log(2) * n_bytes)
    assert recs[-1]["val_bpb"] == pytest.approx(want, rel=1e-12)
    assert summary["val_bpb"] == recs[-1]["val_bpb"] and summary["bpb"] == recs[-1]["bpb"]
    # a resumed run's Trainer reads the tokenizer from the checkpoint (bytes)
    tr2 = Trainer.resume(tmp_path / "run", backend="numpy", max_steps=6)
    assert tr2.token_nbytes().tolist() == nb.tolist()
    # without a tokenizer: no bits per byte, nothing else changes
    tr3 = Trainer(GPT(model.config, backend="numpy", seed=0), data, cfg, out_dir=None)
    s3 = tr3.fit()
    assert s3["bpb"] is None and s3["val_bpb"] is None and s3["val_loss"] is not None


def test_resume_on_a_raw_token_file(tmp_path, text_ids):
    raw = tmp_path / "train.bin"
    text_ids.astype(np.uint16).tofile(raw)
    data = TokenDataset.from_file(raw, val_fraction=0.1, seed=0, data_dtype="uint16",
                                  vocab_size=256)
    cfg = TrainConfig(batch_size=4, max_steps=3, eval_every=0, eval_batches=1)
    Trainer(GPT(MODEL, backend="numpy", seed=0), data, cfg, out_dir=tmp_path / "run").fit()
    tr = Trainer.resume(tmp_path / "run", backend="numpy", max_steps=4)
    assert tr.data.data_dtype == "uint16" and tr.step == 3 and tr.fit()["step"] == 4


def test_loss_figure_has_smoothed_curve_val_points_title_and_units():
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    recs = [{"step": s, "loss": 5 - s / 40 + rng.normal(0, 0.3)} for s in range(1, 101)]
    for s in (25, 50, 75, 100):
        recs[s - 1]["val_loss"] = 5 - s / 40
    fig = trmod.loss_figure(recs, "my run")
    ax = fig.axes[0]
    assert ax.get_title() == "my run"
    assert "step" in ax.get_xlabel() and "nats" in ax.get_ylabel()
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert list(lines["validation"].get_xdata()) == [25, 50, 75, 100]
    raw = np.asarray(lines["train (per step)"].get_ydata())
    sm = np.asarray(lines["train (moving average)"].get_ydata())
    assert sm.shape == raw.shape and np.std(np.diff(sm)) < 0.2 * np.std(np.diff(raw))
