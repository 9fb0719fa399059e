"""Data-parallel training (kernelgpt.distributed): 2 ranks with batch B reproduce 1 rank with 2B,
every rank ends with the same parameters, a failing or stuck rank ends the job with a clear
message instead of a hang. The multi-rank tests start `mpirun -np 2` on tests/_mpi_worker.py and
skip when mpirun or mpi4py is missing; the single-process parts run everywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import rel_err
from kernelgpt import distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_mpi_worker.py")
# The workers import the kernelgpt this process imported (the installed one in CI, python/ in a
# dev checkout), so they see the same compiled backends.
PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(dist.__file__)))


def _have_mpi() -> str | None:
    if shutil.which("mpirun") is None:
        return "mpirun not found"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed"
    return None


needs_mpi = pytest.mark.skipif(_have_mpi() is not None, reason=str(_have_mpi()))


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1",
               # containers often forbid cross-process memory access (CMA): copy through shm
               OMPI_MCA_btl_vader_single_copy_mechanism="none",
               PYTHONPATH=os.pathsep.join(p for p in (PYDIR, env.get("PYTHONPATH")) if p))
    return env


def mpirun(n: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = ["mpirun", "-np", str(n), sys.executable, WORKER, *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def single(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, WORKER, *args, "--single"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


def _backend_or_skip(name: str) -> None:
    from kernelgpt.backends import get_backend
    try:
        get_backend(name)
    except (RuntimeError, ImportError) as e:
        pytest.skip(f"backend {name} not available: {e}")


# ------------------------------------------------------------------ single process, no MPI
def test_single_process_collectives_are_identity(rng):
    comm = dist.SingleProcess()
    a = rng.standard_normal(17).astype(np.float32)
    before = a.copy()
    comm.allreduce_mean_(a)
    comm.broadcast_(a)
    comm.barrier()
    assert np.array_equal(a, before)
    assert comm.bcast_object({"step": 3, "lr": [1.5]}) == {"step": 3, "lr": [1.5]}
    assert dist.mean_across_ranks(comm, 2.5) == 2.5 and dist.is_main(comm)
    with pytest.raises(dist.DistributedAbort):
        comm.abort("boom")
    with pytest.raises(ValueError, match="root"):
        comm.broadcast_(a, root=1)


def test_single_process_fail_fast_lets_the_exception_through():
    comm = dist.SingleProcess()
    with pytest.raises(KeyError):
        with comm.fail_fast():
            raise KeyError("x")


@pytest.mark.parametrize("n,world", [(8, 1), (8, 2), (12, 3)])
def test_rank_slices_tile_the_global_batch(n, world):
    rows = np.arange(n)
    got = np.concatenate([rows[dist.rank_slice(n, r, world)] for r in range(world)])
    assert np.array_equal(got, rows)


def test_rank_slice_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        dist.rank_slice(7, 0, 2)
    with pytest.raises(ValueError, match="rank"):
        dist.rank_slice(8, 2, 2)


def test_watchdog_fires_only_when_a_wait_is_too_long():
    fired = []
    wd = dist._Watchdog(0.2, fired.append, who="rank 0: ")
    try:
        with wd.guard("all-reduce"):
            time.sleep(0.05)
        time.sleep(0.4)              # disarmed: nothing fires between collectives
        assert fired == []
        with wd.guard("all-reduce"):
            deadline = time.monotonic() + 5
            while not fired and time.monotonic() < deadline:
                time.sleep(0.02)
        assert fired and fired[0].startswith("rank 0: all-reduce waited more than 0.2 s")
    finally:
        wd.close()
    with pytest.raises(ValueError, match="timeout"):
        dist._Watchdog(0, fired.append)


def test_init_distributed_rejects_unknown_backend_and_bad_timeout():
    with pytest.raises(ValueError, match="backend"):
        dist.init_distributed("tpu")
    with pytest.raises(ValueError, match="timeout"):
        dist.init_distributed("numpy", timeout=-1)


# ------------------------------------------------------------------ 2 ranks under mpirun
@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("backend", ["numpy", "native"])
@pytest.mark.parametrize("accum", [1, 2], ids=["accum1", "accum2"])
def test_two_ranks_batch_b_equal_one_rank_batch_2b(tmp_path, backend, accum):
    _backend_or_skip(backend)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    common = ["step", "--backend", backend, "--steps", "4", "--accum", str(accum)]
    _ok(single(*common, "--batch", "4", "--out", str(one)))
    # different init seeds per rank: the broadcast from rank 0 must make them agree
    _ok(mpirun(2, *common, "--batch", "2", "--out", str(two)))
    ref = np.load(one / "rank0.npz")
    r0, r1 = np.load(two / "rank0.npz"), np.load(two / "rank1.npz")
    assert len(r0["losses"]) == 4 and np.all(np.isfinite(r0["losses"]))
    assert r0["losses"][-1] < r0["losses"][0], "training did not move the loss"
    np.testing.assert_allclose(r0["losses"], ref["losses"], rtol=2e-6, atol=0)
    assert rel_err(r0["params"], ref["params"]) < 1e-5
    assert np.max(np.abs(r0["params"] - ref["params"])) < 1e-4
    # the optimizer step is identical on every rank: bit for bit
    assert np.array_equal(r0["params"], r1["params"])
    assert np.array_equal(r0["losses"], r1["losses"])


@pytest.mark.mpi
@needs_mpi
def test_failing_rank_ends_the_job_with_a_clear_message():
    t0 = time.monotonic()
    p = mpirun(2, "fail", timeout=30)
    assert p.returncode != 0
    assert "rank 1 failed: ValueError: injected failure for the test" in p.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.mpi
@needs_mpi
def test_stuck_rank_is_cut_off_by_the_timeout():
    t0 = time.monotonic()
    p = mpirun(2, "hang", "--timeout", "1.5", timeout=40)
    assert p.returncode != 0
    assert "rank 0: all-reduce waited more than 1.5 s" in p.stderr
    assert time.monotonic() - t0 < 40


@pytest.mark.cuda
def test_nccl_calls_on_one_gpu():
    """The NCCL communicator's all-reduce and broadcast calls on one GPU (world size 1). Two and
    more GPUs need a multi-GPU machine: not covered here."""
    cp = pytest.importorskip("cupy")
    try:
        from cupy.cuda import nccl  # noqa: F401
        n_dev = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, no NCCL build
        pytest.skip(f"CuPy cannot reach a GPU with NCCL: {e}")
    if n_dev < 1:
        pytest.skip("no CUDA device")
    p = single("nccl", timeout=120)
    _ok(p)
    assert "NCCL OK" in p.stdout


@pytest.mark.mpi
@needs_mpi
def test_rank_that_dies_without_a_word_ends_the_job():
    p = mpirun(2, "die", timeout=30)
    assert p.returncode != 0


def test_unbounded_suspends_the_watchdog():
    comm = dist.SingleProcess()
    fired = []
    comm._watchdog = dist._Watchdog(0.1, fired.append)
    try:
        with comm.unbounded():
            with comm._guard("barrier"):
                time.sleep(0.4)
        assert fired == []
        with comm._guard("barrier"):
            deadline = time.monotonic() + 5
            while not fired and time.monotonic() < deadline:
                time.sleep(0.02)
        assert fired
    finally:
        comm.close()


# ------------------------------------------------------------------ the Trainer under mpirun
@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("backend", ["numpy", "native"])
def test_trainer_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path, backend):
    _backend_or_skip(backend)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    common = ["train", "--backend", backend, "--steps", "4"]
    _ok(single(*common, "--batch", "4", "--out", str(one)))
    _ok(mpirun(2, *common, "--batch", "2", "--out", str(two), "--run", str(tmp_path / "run")))
    ref = np.load(one / "result0.npz")
    r0, r1 = np.load(two / "result0.npz"), np.load(two / "result1.npz")
    np.testing.assert_allclose(r0["losses"], ref["losses"], rtol=2e-6, atol=0)
    np.testing.assert_allclose(r0["val_loss"], ref["val_loss"], rtol=2e-6)
    assert rel_err(r0["params"], ref["params"]) < 1e-5
    assert np.array_equal(r0["params"], r1["params"])      # identical step on every rank
    assert np.array_equal(r0["losses"], r1["losses"])      # every rank logs the global loss
    # rank 0 alone wrote the run folder: metrics hold each step once, with the global loss
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [1, 2, 3, 4]
    np.testing.assert_allclose([json.loads(l)["loss"] for l in lines], r0["losses"], rtol=1e-12)


@pytest.mark.mpi
@needs_mpi
def test_resume_under_mpi_continues_the_run_exactly(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    for d in (straight, split):
        d.mkdir()
    common = ["train", "--backend", "numpy", "--batch", "2"]
    _ok(mpirun(2, *common, "--steps", "4", "--out", str(straight),
               "--run", str(tmp_path / "run_a")))
    _ok(mpirun(2, *common, "--steps", "2", "--out", str(split), "--run", str(tmp_path / "run_b")))
    assert (tmp_path / "run_b" / "LATEST").is_file()
    # a new job: every rank reads rank 0's checkpoint and trains steps 3 and 4
    _ok(mpirun(2, *common, "--steps", "4", "--out", str(split), "--run", str(tmp_path / "run_b"),
               "--resume"))
    a = np.load(straight / "result0.npz")
    for r in (0, 1):
        b = np.load(split / f"result{r}.npz")
        assert int(b["step"]) == 4
        assert np.array_equal(b["params"], a["params"])     # bit for bit
        assert np.array_equal(b["losses"], a["losses"][2:])


# ------------------------------------------------------------------ the command line under mpirun
@pytest.mark.mpi
@needs_mpi
def test_cli_train_distributed_then_resume(tmp_path):
    pytest.importorskip("kernelgpt.tokenizer", reason="the tokenizer is not merged into this build")
    (tmp_path / "data.txt").write_text("def f(x):\n    return x + 1\n" * 400)
    tiny = ["--data", "data.txt", "--out", "run", "--batch-size", "2", "--block-size", "16",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--vocab-size", "280",
            "--backend", "numpy", "--eval-every", "2", "--save-every", "2"]

    def kgpt_mpi(*args):
        cmd = ["mpirun", "-np", "2", sys.executable, "-m", "kernelgpt", "train", "--distributed",
               "--dist-timeout", "60", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=120)

    p = kgpt_mpi(*tiny, "--max-steps", "4")
    _ok(p)
    assert p.stderr.count("training 1 layers") == 1          # rank 0 alone talks
    steps = [json.loads(l)["step"] for l in (tmp_path / "run/metrics.jsonl").read_text()
             .splitlines()]
    assert steps == [1, 2, 3, 4]
    p = kgpt_mpi("--out", "run", "--resume", "--max-steps", "6")
    _ok(p)
    assert "resuming run at step 4 of 6" in p.stderr
    steps = [json.loads(l)["step"] for l in (tmp_path / "run/metrics.jsonl").read_text()
             .splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # every user error still ends the whole job with one clear line
    p = kgpt_mpi(*tiny, "--max-steps", "4")
    assert p.returncode != 0 and "already holds a trained run" in p.stderr


def test_cli_dist_timeout_needs_distributed(tmp_path):
    pytest.importorskip("kernelgpt.tokenizer", reason="the tokenizer is not merged into this build")
    p = subprocess.run([sys.executable, "-m", "kernelgpt", "train", "--dist-timeout", "5"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--dist-timeout needs --distributed" in p.stderr
