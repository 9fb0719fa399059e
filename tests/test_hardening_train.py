"""Hardening of the training side (issue 14): absurd sizes fail fast with one line, resume checks
the whole token file, one trainer per run folder, one clear line for every expected CLI error,
run-folder files with the usual permissions. Crashes, hangs and runaway memory are tried in
subprocesses with a timeout and an address-space limit."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kernelgpt
from kernelgpt.checkpoint import CheckpointError, load_checkpoint
from kernelgpt.data import TokenDataset, write_token_file
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.train import TrainConfig, Trainer

PYTHON_DIR = Path(kernelgpt.__file__).resolve().parents[1]
MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)
AS_LIMIT = 3 << 30  # a runaway allocation dies at 3 GB instead of eating the machine


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(PYTHON_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for k in ("KERNELGPT_DEBUG", "KERNELGPT_MEMORY_LIMIT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def kgpt(*args, cwd, timeout=60, **env):
    """`python -m kernelgpt ARGS` with 3 GB of address space; a hang is a test failure."""
    try:
        return subprocess.run([sys.executable, "-m", "kernelgpt", *map(str, args)], cwd=cwd,
                              env=_env(**env), capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"kernelgpt {' '.join(map(str, args))} hung (> {timeout}s)")


def one_line_error(r, *needles):
    """Non-zero status, stderr one line without a traceback, containing every needle."""
    assert r.returncode not in (0, None), (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def token_file(tmp_path):
    ids = (np.arange(3000) * 7 % 251).astype(np.uint16)
    return write_token_file(tmp_path / "tokens.bin", ids, 256)


def tiny_run(token_file, out, max_steps=2, tokenizer=None):
    model = GPT(MODEL, backend="numpy")
    tr = Trainer(model, TokenDataset.from_file(token_file), TrainConfig(
        batch_size=2, max_steps=max_steps, eval_every=0), out_dir=out, tokenizer=tokenizer)
    tr.fit()
    return tr


def edit_checkpoint(ck: Path, name: str, edit=None, raw: bytes = None):
    """Change one file of a checkpoint and update its manifest (so only the content is wrong)."""
    p = ck / name
    if raw is not None:
        p.write_bytes(raw)
    else:
        d = json.loads(p.read_text())
        edit(d)
        p.write_text(json.dumps(d))
    man = json.loads((ck / "manifest.json").read_text())
    man["files"][name] = {"size": p.stat().st_size,
                          "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    (ck / "manifest.json").write_text(json.dumps(man))


def _tokenizer():
    tk = pytest.importorskip("kernelgpt.tokenizer", reason="the tokenizer is not built")
    return tk.Tokenizer.train(["hello world, hello tokens " * 20], 260)


# ------------------------------------------------------------------------------ 1. sizes
def test_estimate_is_arithmetic_and_matches_the_layout():
    from kernelgpt._limits import estimate_bytes, param_count
    from kernelgpt.model import param_shapes
    for name in ("xs", "s", "m", "gpt2"):
        cfg = GPTConfig.preset(name)
        assert param_count(cfg) == sum(int(np.prod(s)) for _, s in param_shapes(cfg))
    t0 = time.perf_counter()
    est = estimate_bytes({"vocab_size": 10**12, "block_size": 1024, "n_layer": 10**9,
                          "n_head": 12, "n_embd": 768}, batch=(10**9, 1024))
    assert time.perf_counter() - t0 < 0.01
    assert est["model"] > 4 * 4 * 10**9 * 12 * 768 * 768 and est["activations"] > 10**18


def test_check_model_fits_names_the_sizes(monkeypatch):
    from kernelgpt._limits import ModelTooLargeError, check_model_fits
    small = GPTConfig.preset("xs")
    assert check_model_fits(small, batch=(8, 64))["total"] < 50e6
    with pytest.raises(MemoryError, match=r"n_layer=10000000.* needs [\d.]+ TB .*more than the "
                                          r"[\d.]+ GB available"):
        check_model_fits({"vocab_size": 512, "block_size": 64, "n_layer": 10**7, "n_head": 4,
                          "n_embd": 128})
    monkeypatch.setenv("KERNELGPT_MEMORY_LIMIT", "1M")
    with pytest.raises(ModelTooLargeError, match=r"batch of 8 x 64 tokens.*1.05 MB available"):
        check_model_fits(small, batch=(8, 64))
    monkeypatch.setenv("KERNELGPT_MEMORY_LIMIT", "off")
    check_model_fits({"vocab_size": 512, "block_size": 64, "n_layer": 10**7, "n_head": 4,
                      "n_embd": 128})
    monkeypatch.setenv("KERNELGPT_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="KERNELGPT_MEMORY_LIMIT"):
        check_model_fits(small)


def test_available_memory_is_known_here():
    from kernelgpt._limits import available_bytes
    os.environ.pop("KERNELGPT_MEMORY_LIMIT", None)
    avail = available_bytes()
    if sys.platform.startswith("linux"):
        assert avail is not None and 1 << 20 < avail


def test_trainer_rejects_a_batch_that_cannot_fit(token_file):
    model = GPT(MODEL, backend="numpy")
    with pytest.raises(MemoryError, match="batch of 1000000000 x 16 tokens"):
        Trainer(model, TokenDataset.from_file(token_file), TrainConfig(batch_size=10**9))


def run_py(code, *args, timeout=60):
    """Run Python code in a subprocess with 3 GB of address space."""
    try:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(),
                              capture_output=True, text=True, timeout=timeout,
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung (> {timeout}s): {code}")


def test_get_batch_rejects_a_batch_that_cannot_fit(token_file):
    r = run_py("import sys\n"
               "from kernelgpt.data import TokenDataset\n"
               "ds = TokenDataset.from_file(sys.argv[1])\n"
               "for f in (lambda: ds.get_batch(10**9, 16),\n"
               "          lambda: next(ds.val_batches(1, 10**9, 16))):\n"
               "    try:\n"
               "        f()\n"
               "    except MemoryError as e:\n"
               "        print('MemoryError:', e)\n", token_file)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, (r.stdout, r.stderr)
    for line in lines:
        assert "batch of 1000000000 x 16 tokens" in line and "available" in line


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "1000000000"], "batch of 1000000000 x 16 tokens"),
    (["--n-embd", "10000000", "--n-head", "1"], "n_embd=10000000"),
    (["--vocab-size", str(10**9)], "vocab_size=1000000000"),
    (["--n-layer", str(10**7)], "n_layer=10000000"),
])
def test_cli_train_absurd_sizes_fail_fast(tmp_path, token_file, args, needle):
    base = ["--max-steps", "1", "--block-size", "16", "--n-layer", "1", "--n-head", "2",
            "--n-embd", "16", "--backend", "numpy"]
    opts = dict(zip(base[::2], base[1::2]))
    opts.update(dict(zip(args[::2], args[1::2])))
    t0 = time.perf_counter()
    r = kgpt("train", "--data", token_file, "--out", tmp_path / "run",
             *[x for kv in opts.items() for x in kv], cwd=tmp_path)
    one_line_error(r, needle, "available")
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "run" / "LATEST").exists()


def test_cli_train_absurd_size_fails_before_the_tokenizer_is_trained(tmp_path):
    pytest.importorskip("kernelgpt.tokenizer", reason="the tokenizer is not built")
    (tmp_path / "a.txt").write_text("some text " * 100)
    r = kgpt("train", "--data", tmp_path / "a.txt", "--out", tmp_path / "run", "--vocab-size",
             str(10**9), "--backend", "numpy", cwd=tmp_path)
    one_line_error(r, "vocab_size=1000000000", "available")
    assert not (tmp_path / "run" / "tokenizer.json").exists()


@pytest.mark.parametrize("field,value", [("n_layer", 10**7), ("vocab_size", 10**12),
                                         ("n_embd", 10**7)])
@pytest.mark.parametrize("command", ["sample", "resume"])
def test_checkpoint_with_absurd_config_fails_fast(tmp_path, token_file, field, value, command):
    run = tmp_path / "run"
    tiny_run(token_file, run, tokenizer=b"{}")
    ck = load_checkpoint(run).path
    edit_checkpoint(ck, "config.json", lambda d: d["model"].update(
        {field: value, **({"n_head": 1} if field == "n_embd" else {})}))
    if command == "sample":
        r = kgpt("sample", "--run", run, "--backend", "numpy", cwd=tmp_path)
    else:
        r = kgpt("train", "--out", run, "--resume", "--max-steps", "3", "--backend", "numpy",
                 cwd=tmp_path)
    one_line_error(r, f"{field}={value}", "available")


# ------------------------------------------------------------------------------ 2. fingerprint
def test_resume_detects_a_rewritten_middle(tmp_path):
    ids = (np.arange(12000) * 7 % 251).astype(np.uint16)
    token_file = write_token_file(tmp_path / "tokens.bin", ids, 256)
    run = tmp_path / "run"
    tiny_run(token_file, run)
    ids[6000] += 1  # same count, same first and last 4,096 tokens: only the middle differs
    write_token_file(token_file, ids, 256)
    with pytest.raises(CheckpointError, match="other data"):
        Trainer.resume(run, backend="numpy", max_steps=3)
    r = kgpt("train", "--out", run, "--resume", "--max-steps", "3", "--backend", "numpy",
             cwd=tmp_path)
    one_line_error(r, "other data")


def test_fingerprint_covers_every_token_and_not_the_dtype():
    a = (np.arange(20000) % 250).astype(np.uint16)
    fp = TokenDataset(a, 256).fingerprint()
    for i in (0, 9999, 19999):
        b = a.copy()
        b[i] += 1
        assert TokenDataset(b, 256).fingerprint() != fp
    assert TokenDataset(a.astype(np.int64), 256).fingerprint() == fp
    assert TokenDataset(a, 256).matches_fingerprint(fp)
    assert not TokenDataset(a[:-1], 256).matches_fingerprint(fp)


def _fingerprint_010(tokens, vocab_size, val_fraction):
    """The data fingerprint that kernelgpt 0.1.0 wrote into trainer_state.json."""
    head = np.asarray(tokens[:4096], dtype=np.int64)
    tail = np.asarray(tokens[-4096:], dtype=np.int64)
    return {"n_tokens": int(tokens.size), "vocab_size": vocab_size, "val_fraction": val_fraction,
            "checksum": int((head * 31 + 7).sum() ^ (tail * 17 + 3).sum()) & 0xFFFFFFFF}


def test_checkpoint_of_010_with_old_fingerprint_still_resumes(token_file, tmp_path):
    run = tmp_path / "run"
    tiny_run(token_file, run)
    ck = load_checkpoint(run).path
    ids = np.memmap(token_file, np.uint16, "r", offset=32)
    edit_checkpoint(ck, "trainer_state.json", lambda d: d["data"].update(
        fingerprint=_fingerprint_010(ids, 256, 0.1)))
    tr = Trainer.resume(run, backend="numpy", max_steps=3)
    assert tr.fit()["step"] == 3
    # the old form still tells other data apart where it can (here: another token count)
    run2 = tmp_path / "run2"
    tiny_run(token_file, run2)
    ck2 = load_checkpoint(run2).path
    edit_checkpoint(ck2, "trainer_state.json", lambda d: d["data"].update(
        fingerprint=_fingerprint_010(ids[:-5], 256, 0.1)))
    with pytest.raises(CheckpointError, match="other data"):
        Trainer.resume(run2, backend="numpy", max_steps=3)


def test_fingerprint_is_computed_once_per_dataset(token_file, tmp_path, monkeypatch):
    import kernelgpt.data as dmod
    calls = []
    real = dmod.hash_tokens
    monkeypatch.setattr(dmod, "hash_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    tr = tiny_run(token_file, tmp_path / "run", max_steps=4)
    tr.save()
    assert len(calls) == 1


# ------------------------------------------------------------------------------ 3. lock
HOLDER = r"""
import sys, time
from pathlib import Path
import numpy as np
from kernelgpt.data import TokenDataset
from kernelgpt.model import GPT, GPTConfig
from kernelgpt.train import TrainConfig, Trainer
out, tok, ready, go = sys.argv[1:5]
def wait(trainer, rec):
    if rec["step"] == 1:
        Path(ready).write_text("x")
        t0 = time.time()
        while not Path(go).exists() and time.time() - t0 < 60:
            time.sleep(0.02)
m = GPT(GPTConfig(256, 16, 1, 2, 16), backend="numpy")
Trainer(m, TokenDataset.from_file(tok), TrainConfig(batch_size=2, max_steps=3, eval_every=0),
        out_dir=out, callbacks=[wait]).fit()
"""


def _snapshot(folder: Path):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file()
                                         else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("resume", [False, True])
def test_second_trainer_on_the_same_run_folder_exits(token_file, tmp_path, resume):
    run = tmp_path / "run"
    if resume:
        tiny_run(token_file, run, max_steps=1)
        # the holder resumes through the Python API; drop the first run's checkpoint counter
    ready, go = tmp_path / "ready", tmp_path / "go"
    holder_args = [sys.executable, "-c", HOLDER, run, token_file, ready, go]
    if resume:
        holder_args[2] = HOLDER.replace(
            "Trainer(m, TokenDataset.from_file(tok), TrainConfig(batch_size=2, max_steps=3, "
            "eval_every=0),\n        out_dir=out, callbacks=[wait]).fit()",
            "t = Trainer.resume(out, backend='numpy', max_steps=3); t.callbacks = [wait]; "
            "t.fit()").replace('rec["step"] == 1', 'rec["step"] == 2')
    holder = subprocess.Popen(holder_args, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not ready.exists():
            assert holder.poll() is None, holder.communicate()
            assert time.time() - t0 < 60
            time.sleep(0.02)
        before = _snapshot(run)
        args = (["--resume", "--max-steps", "5"] if resume else
                ["--data", token_file, "--max-steps", "2", "--batch-size", "2", "--block-size",
                 "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16"])
        r = kgpt("train", "--out", run, "--backend", "numpy", *args, cwd=tmp_path)
        one_line_error(r, f"run folder in use by pid {holder.pid}")
        assert _snapshot(run) == before
    finally:
        go.write_text("x")
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert load_checkpoint(run).step == 3


def test_run_lock_is_released_and_reentrant(tmp_path):
    from kernelgpt.checkpoint import RunFolderInUse, run_lock
    with run_lock(tmp_path):
        with run_lock(tmp_path):  # the same process may nest it (CLI around Trainer.fit)
            pass
        r = subprocess.run([sys.executable, "-c",
                            "import sys; from kernelgpt.checkpoint import run_lock\n"
                            "try:\n with run_lock(sys.argv[1]): pass\n"
                            "except Exception as e: print(type(e).__name__, e)",
                            tmp_path], env=_env(), capture_output=True, text=True, timeout=60)
        assert f"RunFolderInUse run folder in use by pid {os.getpid()}" in r.stdout, r
    with run_lock(tmp_path):
        pass
    assert issubclass(RunFolderInUse, RuntimeError)


# ------------------------------------------------------------------------------ 4. CLI errors
@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.update(data=[]), "trainer_state.json"),
    (lambda d: d.update(data=[1]), "trainer_state.json"),
    (lambda d: d.update(tokens_seen="x"), "tokens_seen"),
    (lambda d: d["data"].update(rng=[]), "trainer_state.json"),
    (lambda d: d["data"].update(fingerprint=[]), "fingerprint"),
    (lambda d: d["data"].update(source=7), "source"),
    (lambda d: d.update(optimizer=[]), "optimizer"),
])
def test_resume_with_bad_trainer_state_is_one_line(token_file, tmp_path, edit, needle):
    run = tmp_path / "run"
    tiny_run(token_file, run)
    edit_checkpoint(load_checkpoint(run).path, "trainer_state.json", edit)
    r = kgpt("train", "--out", run, "--resume", "--max-steps", "3", "--backend", "numpy",
             cwd=tmp_path)
    one_line_error(r, needle)


def test_resume_with_bad_train_config_is_one_line(token_file, tmp_path):
    run = tmp_path / "run"
    tiny_run(token_file, run)
    edit_checkpoint(load_checkpoint(run).path, "config.json", lambda d: d.update(train=[1]))
    r = kgpt("train", "--out", run, "--resume", "--max-steps", "3", "--backend", "numpy",
             cwd=tmp_path)
    one_line_error(r, "config.json")


@pytest.mark.parametrize("name", ["trainer_state.json", "config.json", "manifest.json"])
def test_deeply_nested_run_file_is_one_line(token_file, tmp_path, name):
    run = tmp_path / "run"
    tiny_run(token_file, run)
    ck = load_checkpoint(run).path
    deep = b"[" * 200000 + b"]" * 200000
    if name == "manifest.json":
        (ck / name).write_bytes(deep)
    else:
        edit_checkpoint(ck, name, raw=deep)
    for args in (["sample", "--run", run], ["train", "--out", run, "--resume"]):
        r = kgpt(*args, "--backend", "numpy", cwd=tmp_path)
        one_line_error(r, name, "nested")


def test_deeply_nested_tokenizer_file_is_one_line(token_file, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 200000 + b"]" * 200000)
    r = kgpt("train", "--data", token_file, "--tokenizer", deep, "--out", tmp_path / "run",
             cwd=tmp_path)
    one_line_error(r, str(deep), "nested")


def test_metrics_with_garbage_lines_do_not_break_training(token_file, tmp_path):
    run = tmp_path / "run"
    tiny_run(token_file, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[" * 100000 + "\n" + "not json\n")
    tr = Trainer.resume(run, backend="numpy", max_steps=3)
    assert tr.fit()["step"] == 3


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
@pytest.mark.parametrize("opt", ["--data", "--tokenizer"])
def test_non_regular_file_is_named_as_such(token_file, tmp_path, opt):
    args = ["--data", "/dev/null"] if opt == "--data" else ["--data", token_file,
                                                           "--tokenizer", "/dev/null"]
    r = kgpt("train", *args, "--out", tmp_path / "run", cwd=tmp_path)
    line = one_line_error(r, "/dev/null", "not a regular file", "character device")
    assert "not found" not in line and "no such file" not in line


def test_list_text_files_says_what_a_non_regular_path_is(tmp_path):
    from kernelgpt.data import list_text_files
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match="/dev/null: not a regular file .a character device"):
            list_text_files(["/dev/null"])
    with pytest.raises(FileNotFoundError, match="not found"):
        list_text_files([tmp_path / "missing.txt"])


def test_memory_error_reaching_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from kernelgpt import cli

    def boom(args):
        raise MemoryError()
    monkeypatch.setattr(cli, "_sample", boom)
    monkeypatch.delenv("KERNELGPT_DEBUG", raising=False)
    assert cli.main(["sample", "--run", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory" in err[0]


@pytest.mark.parametrize("exc", [KeyError("x"), AttributeError("y"), IndexError("z"),
                                 RecursionError("deep")])
def test_unexpected_errors_at_the_cli_are_one_line(tmp_path, monkeypatch, capsys, exc):
    from kernelgpt import cli

    def boom(args):
        raise exc
    monkeypatch.setattr(cli, "_sample", boom)
    monkeypatch.delenv("KERNELGPT_DEBUG", raising=False)
    assert cli.main(["sample", "--run", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and type(exc).__name__ in err[0] and "KERNELGPT_DEBUG" in err[0]


# ------------------------------------------------------------------------------ 5. permissions
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_folder_files_follow_the_umask(token_file, tmp_path, umask):
    tok = _tokenizer()
    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        tiny_run(token_file, run, tokenizer=tok)
        tok.save(tmp_path / "tok.json")
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()] + [tmp_path / "tok.json"]
    assert any(p.name == "tokenizer.json" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_one_atomic_write_helper_with_directory_fsync(tmp_path, monkeypatch):
    import kernelgpt.checkpoint as ckmod
    import kernelgpt.data as dmod
    assert dmod.atomic_write is ckmod.atomic_write
    assert dmod.atomic_write_bytes is ckmod.atomic_write_bytes
    synced = []
    monkeypatch.setattr(ckmod, "fsync_dir", lambda p: synced.append(Path(p)))
    tok = _tokenizer()
    tok.save(tmp_path / "t.json")
    assert synced == [tmp_path]
    ckmod.atomic_write_bytes(tmp_path / "x", b"1")
    assert synced == [tmp_path, tmp_path] and (tmp_path / "x").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json", "x"]  # no temporaries left


# ------------------------------------------------------------------------------ nearby
def test_trainer_tokenizer_path_must_be_a_regular_file(token_file):
    r = run_py("import sys\n"
               "from kernelgpt.data import TokenDataset\n"
               "from kernelgpt.model import GPT, GPTConfig\n"
               "from kernelgpt.train import Trainer\n"
               "m = GPT(GPTConfig(256, 16, 1, 2, 16), backend='numpy')\n"
               "try:\n"
               "    Trainer(m, TokenDataset.from_file(sys.argv[1]), tokenizer='/dev/zero')\n"
               "except ValueError as e:\n"
               "    print(e)\n", token_file, timeout=30)
    assert "/dev/zero: not a regular file (a character device)" in r.stdout, r


def test_oversized_run_json_is_refused_without_reading_it_whole(token_file, tmp_path,
                                                               monkeypatch):
    import kernelgpt.checkpoint as ckmod
    run = tmp_path / "run"
    tiny_run(token_file, run)
    ck = load_checkpoint(run).path
    edit_checkpoint(ck, "trainer_state.json", lambda d: d.update(pad="x" * 5000))
    monkeypatch.setattr(ckmod, "MAX_JSON_BYTES", 4096)
    with pytest.raises(CheckpointError, match="trainer_state.json: too large for a run file"):
        load_checkpoint(run)


def test_checkpoint_tensors_larger_than_memory_are_refused(token_file, tmp_path, monkeypatch):
    run = tmp_path / "run"
    tiny_run(token_file, run)
    monkeypatch.setenv("KERNELGPT_MEMORY_LIMIT", "50000")  # the tensors are ~93 kB
    with pytest.raises(MemoryError, match="loading the checkpoint .* needs 93.* kB, more than "
                                          "the 50 kB available"):
        load_checkpoint(run)


def test_check_model_fits_copies_for_the_model_constructor():
    from kernelgpt._limits import check_model_fits, param_count
    cfg = GPTConfig.preset("xs")
    n = param_count(cfg)
    assert check_model_fits(cfg, copies=3)["model"] == 3 * 4 * n
    assert check_model_fits(cfg, training=False)["model"] == 4 * n
    with pytest.raises(MemoryError, match="3 parameter-sized arrays"):
        check_model_fits(cfg, copies=3, available=3 * 4 * n - 1)
    check_model_fits(cfg, copies=3, available=3 * 4 * n)


def test_estimate_reads_any_config_object_with_defaults():
    from types import SimpleNamespace
    from kernelgpt._limits import param_count
    from kernelgpt.model import param_shapes
    base = dict(vocab_size=100, block_size=8, n_layer=2, n_head=2, n_embd=4)
    n = param_count(SimpleNamespace(**base))
    assert n == param_count(GPTConfig(**base)) == param_count(base)
    assert n == sum(int(np.prod(s)) for _, s in param_shapes(GPTConfig(**base)))
    with pytest.raises(ValueError, match="n_layer"):
        param_count(SimpleNamespace(**dict(base, n_layer=0)))
