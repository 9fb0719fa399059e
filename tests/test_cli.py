"""`python -m kernelgpt train/sample` end to end in subprocesses (tiny options, tiny data), and
every user error exiting non-zero with one line on stderr and no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_kernelgpt

pytest.importorskip("kernelgpt.tokenizer", reason="the tokenizer is not merged into this build")

# The directory holding the kernelgpt that this test process imports (the checkout's python/ in a
# dev build, site-packages when installed), so subprocesses see the same package and extension.
import kernelgpt  # noqa: E402

PYTHON_DIR = Path(kernelgpt.__file__).resolve().parents[1]
TINY = ["--max-steps", "4", "--batch-size", "2", "--block-size", "16", "--n-layer", "1",
        "--n-head", "2", "--n-embd", "16", "--vocab-size", "280", "--backend", "numpy",
        "--eval-every", "2", "--save-every", "2"]


def kgpt(*args, cwd):
    return run_kernelgpt(*args, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run shared by the tests below."""
    d = tmp_path_factory.mktemp("cli")
    data = d / "data"
    data.mkdir()
    import kernelgpt.corpus as corpus
    for i, f in enumerate(corpus.default_corpus_files(12_000)):
        (data / f"doc{i}.py").write_bytes(f.read_bytes())
    r = kgpt("train", "--data", data, "--out", d / "run", *TINY, cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r


def test_train_writes_a_run_folder(trained):
    d, r = trained
    run = d / "run"
    assert (run / "LATEST").read_text().strip() == "ckpt-00000004"
    ck = run / "ckpt-00000004"
    for f in ("model.safetensors", "optimizer.safetensors", "config.json", "tokenizer.json",
              "trainer_state.json", "manifest.json"):
        assert (ck / f).is_file(), f
    cfg = json.loads((ck / "config.json").read_text())
    from kernelgpt.model import GPTConfig
    assert cfg["model"] == GPTConfig(vocab_size=280, block_size=16, n_layer=1, n_head=2,
                                     n_embd=16).to_dict()
    assert cfg["model"]["norm"] == "layernorm" and cfg["model"]["n_kv_head"] is None
    assert cfg["train"]["max_steps"] == 4 and cfg["train"]["batch_size"] == 2
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [1, 2, 3, 4]
    assert "val_loss" in recs[1] and "val_loss" in recs[3]
    assert r.stdout.startswith("def ")  # the closing sample
    assert "Traceback" not in r.stderr


def test_resume_and_sample(trained):
    d, _ = trained
    r = kgpt("train", "--out", d / "run", "--resume", "--max-steps", "5", "--backend", "numpy",
             cwd=d)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert (d / "run" / "LATEST").read_text().strip() == "ckpt-00000005"
    args = ["sample", "--run", d / "run", "--prompt", "import", "--max-new-tokens", "12",
            "--seed", "3", "--top-k", "20", "--backend", "numpy"]
    a, b = kgpt(*args, cwd=d), kgpt(*args, cwd=d)
    assert a.returncode == 0, a.stderr
    assert a.stdout.startswith("import") and len(a.stdout) > len("import")
    assert a.stdout == b.stdout  # seeded: reproducible
    g = kgpt("sample", "--run", d / "run", "--prompt", "x", "--temperature", "0",
             "--max-new-tokens", "5", cwd=d)
    assert g.returncode == 0, g.stderr


@pytest.mark.parametrize("case", [
    "missing_run", "corrupt_checkpoint", "long_prompt", "unknown_backend", "unavailable_backend",
    "bad_steps", "bad_lr", "missing_data", "existing_run", "resume_changes_model",
    "resume_without_out", "bad_model_shape", "no_subcommand", "token_file_vocab_too_big",
    "token_file_among_texts", "tokenizer_without_token_file", "tokenizer_not_the_encoder",
    "legacy_ids_file", "resume_changes_tokenizer"])
def test_user_errors_are_one_line(trained, case, tmp_path):
    d, _ = trained
    run = d / "run"
    if case == "tokenizer_not_the_encoder":
        from kernelgpt.data import write_token_file
        write_token_file(tmp_path / "v300.bin", np.arange(3000) % 300, 300)
    if case == "legacy_ids_file":
        import struct
        (tmp_path / "old.bin").write_bytes(struct.pack("<8sIIQ", b"KGPTIDS\0", 1, 2, 3000)
                                           + (np.arange(3000) % 256).astype("<u2").tobytes())
    if case == "corrupt_checkpoint":
        import shutil
        shutil.copytree(run, tmp_path / "copy")
        ck = tmp_path / "copy" / (tmp_path / "copy" / "LATEST").read_text().strip()
        raw = bytearray((ck / "model.safetensors").read_bytes())
        raw[-5] ^= 0x55
        (ck / "model.safetensors").write_bytes(bytes(raw))
    args = {
        "missing_run": ["sample", "--run", tmp_path / "nope", "--prompt", "a"],
        "corrupt_checkpoint": ["sample", "--run", tmp_path / "copy", "--prompt", "a"],
        "long_prompt": ["sample", "--run", run, "--prompt", "x y z " * 40],
        "unknown_backend": ["train", "--backend", "fortran"],
        "unavailable_backend": ["sample", "--run", run, "--backend", "cuda"]
        if not _has_cuda() else ["sample", "--run", tmp_path / "nope"],
        "bad_steps": ["train", "--max-steps", "0"],
        "bad_lr": ["train", "--lr", "-1"],
        "missing_data": ["train", "--data", tmp_path / "absent.txt", "--out", tmp_path / "o"],
        "existing_run": ["train", "--out", run, *TINY],
        "resume_changes_model": ["train", "--out", run, "--resume", "--n-layer", "3"],
        "resume_without_out": ["train", "--resume"],
        "bad_model_shape": ["train", "--data", run / "tokenizer.json", "--out", tmp_path / "o2",
                            "--n-head", "3", "--n-embd", "16", "--max-steps", "1",
                            "--vocab-size", "260"],
        "no_subcommand": [],
        # run/tokens.bin is a token file (KGPTTOK1) of the run's 280-token vocabulary
        "token_file_vocab_too_big": ["train", "--data", run / "tokens.bin", "--vocab-size", "260",
                                     "--out", tmp_path / "o3"],
        "token_file_among_texts": ["train", "--data", run / "tokens.bin", d / "data",
                                   "--out", tmp_path / "o4"],
        "tokenizer_without_token_file": ["train", "--data", d / "data", "--tokenizer",
                                         run / "tokenizer.json", "--out", tmp_path / "o5"],
        "tokenizer_not_the_encoder": ["train", "--data", tmp_path / "v300.bin", "--tokenizer",
                                      run / "tokenizer.json", "--out", tmp_path / "o6"],
        "legacy_ids_file": ["train", "--data", tmp_path / "old.bin", "--out", tmp_path / "o7"],
        "resume_changes_tokenizer": ["train", "--out", run, "--resume", "--tokenizer",
                                     run / "tokenizer.json"],
    }[case]
    r = kgpt(*args, cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], r.stderr
    assert lines[0].startswith("kernelgpt"), r.stderr
    want = {"missing_run": "not found", "corrupt_checkpoint": "model.safetensors",
            "long_prompt": "block size", "unknown_backend": "fortran",
            "bad_steps": "--max-steps", "bad_lr": "--lr", "missing_data": "absent.txt",
            "existing_run": "--resume", "resume_changes_model": "--n-layer",
            "resume_without_out": "--out", "bad_model_shape": "divisible",
            "token_file_vocab_too_big": "280-token vocabulary, more than the model's "
                                        "--vocab-size 260",
            "token_file_among_texts": "only --data path",
            "tokenizer_without_token_file": "token file", "tokenizer_not_the_encoder": "300",
            "legacy_ids_file": "legacy KGPTIDS", "resume_changes_tokenizer": "--tokenizer",
            }.get(case)
    if want:
        assert want in lines[0], lines[0]


def test_encoded_token_file_feeds_train(trained, tmp_path):
    """`tokenizer encode` -> `train --data ids.bin --tokenizer tok.json`: no tokenizer is trained,
    the model trains on exactly the encoded ids, the run keeps the tokenizer (it samples) and
    records the token file, so --resume reopens it."""
    from kernelgpt.cli_tokenizer import read_ids
    from kernelgpt.tokenizer import Tokenizer
    d, _ = trained
    tok_json = d / "run" / "tokenizer.json"
    text = "".join(f.read_text(encoding="utf-8") for f in sorted((d / "data").iterdir()))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    e = kgpt("tokenizer", "encode", "--tokenizer", tok_json, "--input", tmp_path / "corpus.txt",
             "--out", tmp_path / "ids.bin", cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    tok = Tokenizer.load(tok_json)
    assert read_ids(tmp_path / "ids.bin").tolist() == tok.encode(text)
    run = tmp_path / "run"
    r = kgpt("train", "--data", tmp_path / "ids.bin", "--tokenizer", tok_json, "--out", run,
             *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "training a BPE tokenizer" not in r.stderr and "token file" in r.stderr
    assert r.stdout.startswith("def ")  # the closing sample: the run has a tokenizer
    ck = run / "ckpt-00000004"
    assert (ck / "tokenizer.json").read_bytes() == tok_json.read_bytes()
    assert (run / "tokenizer.json").read_bytes() == tok_json.read_bytes()
    assert not (run / "tokens.bin").exists()  # the given token file is used where it is
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["data"]["source"] == os.path.abspath(tmp_path / "ids.bin")
    assert state["data"]["fingerprint"]["vocab_size"] == tok.vocab_size
    assert json.loads((ck / "config.json").read_text())["model"]["vocab_size"] == tok.vocab_size
    r = kgpt("train", "--out", run, "--resume", "--max-steps", "5", "--backend", "numpy",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_token_file_without_tokenizer_takes_its_vocab(trained, tmp_path):
    """A token file alone: the model's vocab is the file's (no --vocab-size), no sample."""
    d, _ = trained
    tiny = [a for a in TINY if a not in ("--vocab-size", "280")]
    run = tmp_path / "run"
    r = kgpt("train", "--data", d / "run" / "tokens.bin", "--out", run, *tiny, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cannot sample" in r.stderr and r.stdout == ""
    ck = run / "ckpt-00000004"
    assert json.loads((ck / "config.json").read_text())["model"]["vocab_size"] == 280
    assert not (ck / "tokenizer.json").exists()


def _has_cuda() -> bool:
    from kernelgpt.backends import available_backends
    return "cuda" in available_backends()


def test_main_is_importable_as_console_script():
    from kernelgpt.cli import build_parser, main
    assert callable(main)
    p = build_parser()
    a = p.parse_args(["train"])
    assert a.backend == "auto" and a.max_steps is None and a.data is None
    a = p.parse_args(["sample", "--run", "r"])
    assert a.prompt and a.max_new_tokens > 0


def test_real_ctrl_c_saves_and_resumes(trained, tmp_path):
    """SIGINT to a training process: checkpoint at a step boundary, exit 130, one metrics line
    per step up to the checkpoint, resume continues. The signal lands wherever the process is
    (often in the middle of the third step's bookkeeping, which the test has just seen written):
    test_train.py's test_real_sigint_during_step_bookkeeping pins those moments down one by one."""
    import signal
    import time
    d, _ = trained
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    run = tmp_path / "run"
    tiny = [a if a != "4" else "100000" for a in TINY]  # --max-steps: far more than we wait for
    # SIGINT's default disposition in the child, as in a terminal, even where this test runs as
    # a background job that inherited it ignored (Python then keeps it ignored).
    p = subprocess.Popen([sys.executable, "-m", "kernelgpt", "train", "--data", d / "data",
                          "--out", run, *tiny], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine is slow, not wrong
        metrics = run / "metrics.jsonl"
        seen = 0
        while time.monotonic() < deadline and p.poll() is None:
            if metrics.is_file():
                seen = metrics.read_text().count("\n")  # complete lines only
                if seen >= 3:
                    break
            time.sleep(0.05)
        if p.poll() is not None:
            pytest.fail(f"training ended (status {p.returncode}) before SIGINT: "
                        f"{p.communicate()[1]}")
        assert seen >= 3, "no three metrics lines before the deadline"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    step = json.loads((run / (run / "LATEST").read_text().strip() / "trainer_state.json")
                      .read_text())["step"]
    assert step >= 3

    def logged():
        return [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged() == list(range(1, step + 1))  # every committed step logged once, no more
    r = kgpt("train", "--out", run, "--resume", "--max-steps", step + 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert logged() == list(range(1, step + 3))


# ---------------------------------------------------------------- eval, foreign data, separators
def test_documents_are_separated_by_endoftext(trained):
    d, _ = trained
    from kernelgpt import Tokenizer
    from kernelgpt.data import read_token_file
    tok = Tokenizer.load(d / "run" / "tokenizer.json")
    eot = tok.special_tokens["<|endoftext|>"]
    ids, _ = read_token_file(d / "run" / "tokens.bin")
    n_docs = len([p for p in (d / "data").iterdir() if p.stat().st_size])
    assert n_docs > 1 and int((np.asarray(ids) == eot).sum()) == n_docs - 1


def test_special_option_adds_specials(tmp_path):
    (tmp_path / "a.txt").write_text("<|user|> hello world " * 40)
    (tmp_path / "b.txt").write_text("<|user|> again hello " * 40)
    r = kgpt("train", "--data", tmp_path / "a.txt", tmp_path / "b.txt", "--special", "<|user|>",
             "--out", tmp_path / "run", *TINY, "--max-steps", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from kernelgpt import Tokenizer
    from kernelgpt.data import read_token_file
    tok = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    assert set(tok.special_tokens) == {"<|endoftext|>", "<|user|>"}
    ids = np.asarray(read_token_file(tmp_path / "run" / "tokens.bin")[0])
    assert int((ids == tok.special_tokens["<|user|>"]).sum()) == 80
    assert int((ids == tok.special_tokens["<|endoftext|>"]).sum()) == 1


def test_eval_command(trained, tmp_path):
    d, _ = trained
    f = sorted((d / "data").iterdir())[0]
    r = kgpt("eval", "--run", d / "run", "--data", f, "--json", "--backend", "numpy", cwd=d)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n_bytes"] == f.stat().st_size          # every byte of the file, once
    from kernelgpt.checkpoint import load_model
    from kernelgpt.evaluation import evaluate
    model, tok, _ = load_model(d / "run", backend="numpy")
    ref = evaluate(model, tok, f.read_text(encoding="utf-8"))
    assert res["n_tokens"] == ref["n_tokens"]
    assert res["bits_per_byte"] == pytest.approx(ref["bits_per_byte"], rel=1e-9)
    assert "eval" in r.stderr                           # the progress bar
    # two files and a stride: one line each plus a total; text output
    g = sorted((d / "data").iterdir())[1]
    r = kgpt("eval", "--run", d / "run", "--data", f, g, "--stride", "4", "--backend", "numpy",
             cwd=d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("total:") and "bits/byte" in lines[-1]


def test_train_and_eval_on_npy_and_nanogpt_bin(trained, tmp_path):
    d, _ = trained
    from kernelgpt.data import read_token_file
    ids = np.asarray(read_token_file(d / "run" / "tokens.bin")[0])
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))
    ids.astype(np.uint16).tofile(tmp_path / "train.bin")
    tok = d / "run" / "tokenizer.json"
    # a raw .bin without --data-dtype is neither text nor a known token file: refused
    r = kgpt("train", "--data", tmp_path / "train.bin", "--out", tmp_path / "x", *TINY,
             cwd=tmp_path)
    assert r.returncode == 1 and "not UTF-8 text" in r.stderr and "--data-dtype" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x" / "LATEST").exists()
    for name, extra in (("ids.npy", []), ("train.bin", ["--data-dtype", "uint16"])):
        out = tmp_path / f"run-{name}"
        r = kgpt("train", "--data", tmp_path / name, *extra, "--tokenizer", tok, "--out", out,
                 *TINY, "--threads", "1", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "bits/byte" in r.stderr
        st = json.loads((out / "ckpt-00000004" / "trainer_state.json").read_text())
        assert st["data"]["fingerprint"]["n_tokens"] == ids.size
        r = kgpt("train", "--out", out, "--resume", "--max-steps", "5", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        r = kgpt("eval", "--run", out, "--data", tmp_path / name, *extra, "--backend", "numpy",
                 "--threads", "1", cwd=tmp_path)
        assert r.returncode == 0 and f"{ids.size - 1} tokens" in r.stdout, r.stderr


def test_threads_option_sets_the_native_thread_count(trained, monkeypatch, capsys):
    d, _ = trained
    import kernelgpt.cli as cli
    calls = []
    monkeypatch.setattr(kernelgpt, "set_num_threads", lambda n: calls.append(n))
    f = sorted((d / "data").iterdir())[0]
    assert cli.main(["sample", "--run", str(d / "run"), "--threads", "3", "--max-new-tokens",
                     "2", "--backend", "numpy"]) == 0
    assert cli.main(["eval", "--run", str(d / "run"), "--data", str(f), "--threads", "2",
                     "--backend", "numpy"]) == 0
    assert calls == [3, 2]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--threads", "0"])


def test_run_defaults_default_quick_and_preset():
    """No options: the default model's vocabulary and steps (chosen by the default-run study);
    --quick: a run of a few seconds; --model: the preset's vocabulary and TrainConfig's steps;
    options given win over all of these."""
    from kernelgpt.cli import (DEFAULT_MAX_STEPS, DEFAULT_MODEL, DEFAULT_VOCAB, QUICK,
                               build_parser, run_defaults)
    from kernelgpt.train import TrainConfig
    p = build_parser()
    # the study's choice (benchmarks/README.md, "The default run"): about a minute on 2 cores
    assert (DEFAULT_MODEL, DEFAULT_VOCAB, DEFAULT_MAX_STEPS) == ("xs", 1024, 7000)
    assert run_defaults(p.parse_args(["train"])) == ("xs", 1024, 7000)
    assert run_defaults(p.parse_args(["train", "--quick"])) == ("xs", 512, 200)
    assert QUICK["max_steps"] <= 200  # a few seconds on XS, for tests and demos
    assert run_defaults(p.parse_args(["train", "--model", "s"])) == (
        "s", 8192, TrainConfig().max_steps)
    assert run_defaults(p.parse_args(["train", "--quick", "--max-steps", "7", "--vocab-size",
                                      "300", "--model", "llama-xs"])) == ("llama-xs", 300, 7)


def test_quick_run_records_its_sizes(trained, tmp_path):
    """`train --quick` trains the XS model with a 512-token vocabulary (the steps cut to 2 here
    to keep the test short: an option given wins over --quick's)."""
    d, _ = trained
    r = kgpt("train", "--quick", "--data", d / "data", "--out", tmp_path / "q", "--max-steps",
             "2", "--backend", "numpy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "q" / "ckpt-00000002" / "config.json").read_text())
    assert (cfg["model"]["n_layer"], cfg["model"]["n_embd"], cfg["model"]["block_size"]) == \
        (2, 128, 64)
    assert cfg["model"]["vocab_size"] == 512 and cfg["train"]["max_steps"] == 2


def test_quick_cannot_change_a_resumed_run(trained, tmp_path):
    d, _ = trained
    r = kgpt("train", "--out", d / "run", "--resume", "--quick", cwd=tmp_path)
    assert r.returncode == 1 and "--quick cannot change when resuming" in r.stderr


def test_v0_1_0_run_resumes_with_its_recorded_steps(tmp_path):
    """A 0.1.0 run resumed without --max-steps keeps its own step count (6), not the new default
    run's: it is complete, so nothing more is trained."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "run_v0_1_0", run)
    r = kgpt("train", "--out", run, "--resume", "--backend", "numpy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "at step 6 of 6" in r.stderr
    assert (run / "LATEST").read_text().strip() == "ckpt-00000006"
