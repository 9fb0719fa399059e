"""Data-parallel training over existing engines: MPI (mpi4py) on the CPU, NCCL (CuPy) on GPUs.

Owns the ``Communicator`` interface the trainer talks to and its three implementations:
``SingleProcess`` (no-op, the default), ``MPICommunicator`` (mpi4py over COMM_WORLD) and
``NCCLCommunicator`` (cupy.cuda.nccl, bootstrapped over MPI). It also owns fault handling: a rank
that raises aborts the whole job with "rank R failed: ..." (``fail_fast``), and an optional
watchdog aborts the job when one collective waits longer than ``timeout`` seconds.
Deliberately left out: model parallelism, overlapping the all-reduce with the backward pass,
and any communication engine of our own.

Semantics (what the trainer builds on top):
- Every rank holds the full model. One in-place ``allreduce_mean_`` per optimizer step (after
  gradient accumulation, before clipping) turns each rank's mean-loss gradient into the mean
  over all ranks, so the optimizer step is identical on every rank.
- Global batch = world_size x batch_size x grad_accum sequences; the loss is the mean over all of
  them. The learning rate is NOT scaled with world_size: scale it yourself if you want to.
- The collectives themselves are deterministic for a fixed world size: float32 sums by the MPI
  library (or NCCL), then a float32 division by world_size, done identically on every rank.

Importing this module imports neither mpi4py nor cupy; they load when a communicator is made.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, ContextManager, Iterator, List, Optional, Protocol, Sequence, Tuple, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T_ = TypeVar("T_")

_INSTALL_HINT = ("--distributed needs mpi4py and an MPI library "
                 "(e.g. `apt install openmpi-bin libopenmpi-dev` then `pip install mpi4py`), "
                 "and the job must be started by a launcher: "
                 "`mpirun -np N python -m kernelgpt ...`")


class DistributedAbort(RuntimeError):
    """Raised by ``SingleProcess.abort`` (a single process has no job to tear down)."""


class Communicator(Protocol):
    """What the trainer needs from a process group. Arrays are the backend's arrays."""
    rank: int
    world_size: int

    def allreduce_mean_(self, a: Any) -> None:
        """a = mean of ``a`` over all ranks, in place (a flat, C-contiguous float array)."""
    def broadcast_(self, a: Any, root: int = 0) -> None:
        """a = root's ``a`` on every rank, in place."""
    def barrier(self) -> None: ...
    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """root's ``obj`` on every rank; obj must be JSON-serialisable (nothing is pickled)."""
    def abort(self, msg: str, code: int = 1) -> None:
        """Report ``msg`` on stderr and end the whole job (every rank) with exit status ``code``."""


def is_main(comm: Communicator) -> bool:
    """True on the rank that logs, shows progress and writes checkpoints (rank 0)."""
    return comm.rank == 0


def mean_across_ranks(comm: Communicator, value: float) -> float:
    """The mean of a Python float over all ranks (float64; used for the logged loss)."""
    if comm.world_size == 1:
        return float(value)
    buf = np.array([value], dtype=np.float64)
    comm.allreduce_mean_(buf)
    return float(buf[0])


def rank_slice(n_global: int, rank: int, world_size: int) -> slice:
    """Rows of a global batch of ``n_global`` sequences that belong to ``rank``: contiguous blocks
    in rank order, so rank r of N with batch B reads exactly the rows [r*B, (r+1)*B) of the
    global batch that one rank with batch N*B would read."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if n_global % world_size:
        raise ValueError(f"global batch {n_global} is not divisible by world_size {world_size}")
    b = n_global // world_size
    return slice(rank * b, (rank + 1) * b)


# ---------------------------------------------------------------------------------- watchdog
class _Watchdog:
    """Aborts the job when one guarded wait (a collective) lasts longer than ``timeout`` s.

    A daemon thread polls a deadline that ``guard()`` arms on entry and clears on exit. The MPI
    collectives release the GIL while they block, so the thread runs, and MPI_Abort from it ends
    every rank (mpi4py asks for MPI_THREAD_MULTIPLE). The timeout covers the time a rank waits for
    the slowest rank to arrive, so it must exceed the imbalance of one step, not the step."""

    def __init__(self, timeout: float, on_timeout: Callable[[str], None], who: str = ""):
        if not (isinstance(timeout, (int, float)) and timeout > 0 and np.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self._on_timeout = on_timeout
        self._who = who
        self._lock = threading.Lock()
        self._deadline: Optional[float] = None
        self._what = ""
        self._stop = threading.Event()
        self._poll = min(1.0, max(0.01, self.timeout / 20))
        self._thread = threading.Thread(target=self._run, name="kernelgpt-dist-watchdog",
                                        daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        with self._lock:
            self._deadline, self._what = time.monotonic() + self.timeout, what
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if late:
                self._on_timeout(f"{self._who}{what} waited more than {self.timeout:g} s "
                                 "(--dist-timeout): another rank is stuck, dead or much slower")
                return

    def close(self) -> None:
        self._stop.set()


class _Base:
    """Shared plumbing: the watchdog guard and ``fail_fast``."""
    rank: int = 0
    world_size: int = 1
    _watchdog: Optional[_Watchdog] = None

    _unbounded = False

    def _guard(self, what: str) -> ContextManager[None]:
        if self._watchdog is None or self._unbounded:
            return contextlib.nullcontext()
        return self._watchdog.guard(what)

    @contextlib.contextmanager
    def unbounded(self) -> Iterator[None]:
        """Collectives in this block wait without the timeout: for waits that are long by
        design, such as every rank waiting while rank 0 trains the tokenizer."""
        prev, self._unbounded = self._unbounded, True
        try:
            yield
        finally:
            self._unbounded = prev

    def abort(self, msg: str, code: int = 1) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @contextlib.contextmanager
    def fail_fast(self) -> Iterator[None]:
        """Run the body of a rank's main; any exception (Ctrl-C included) ends the whole job with
        "rank R failed: ..." instead of leaving the other ranks waiting in a collective.
        A no-op guard with one rank: the exception propagates as usual."""
        try:
            yield
        except SystemExit as e:
            if self.world_size == 1 or e.code in (None, 0):
                raise
            self.abort(f"rank {self.rank} failed: exit status {e.code}")
        except BaseException as e:
            if self.world_size == 1:
                raise
            log.debug("rank %d traceback:\n%s", self.rank, traceback.format_exc())
            self.abort(f"rank {self.rank} failed: {type(e).__name__}: {e}")

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None


def _report(rank: int, world: int, msg: str) -> None:
    # The job is about to die: stderr is the one channel the user is sure to see (not logging,
    # which may be unconfigured or print it twice).
    sys.stderr.write(f"kernelgpt: {msg}; aborting all {world} ranks\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------- single
class SingleProcess(_Base):
    """One process, no communication: every collective is the identity."""

    def __init__(self) -> None:
        self.rank, self.world_size = 0, 1

    def allreduce_mean_(self, a: Any) -> None:
        pass

    def broadcast_(self, a: Any, root: int = 0) -> None:
        _check_root(root, 1)

    def barrier(self) -> None:
        pass

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        _check_root(root, 1)
        return json.loads(json.dumps(obj))  # same contract as the other communicators

    def abort(self, msg: str, code: int = 1) -> None:
        raise DistributedAbort(msg)

    def __repr__(self) -> str:
        return "SingleProcess()"


def _check_root(root: int, world: int) -> None:
    if not isinstance(root, (int, np.integer)) or not 0 <= root < world:
        raise ValueError(f"root must be a rank in [0, {world}), got {root!r}")


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI  # noqa: WPS433 - the MPI library loads only when asked for
    except ImportError as e:
        raise RuntimeError(f"{_INSTALL_HINT} ({e})") from e
    return MPI


def _host_float_array(a: Any, argname: str = "a") -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{argname} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{argname} must be float32 or float64, got {a.dtype}")
    if not a.flags.c_contiguous or not a.flags.writeable:
        raise TypeError(f"{argname} must be a writeable C-contiguous array")
    return a


# ---------------------------------------------------------------------------------- MPI
class MPICommunicator(_Base):
    """Collectives over mpi4py's COMM_WORLD (or a given communicator), on numpy arrays.

    allreduce_mean_ is one MPI_Allreduce(IN_PLACE, SUM) on the flat buffer followed by a
    division by world_size in the buffer's dtype. CuPy arrays (the CUDA backend without NCCL)
    are staged through host memory."""

    def __init__(self, comm: Any = None, timeout: Optional[float] = None):
        MPI = _import_mpi()
        self._MPI = MPI
        self._comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.world_size = int(self._comm.Get_rank()), int(self._comm.Get_size())
        self._watchdog = None if timeout is None else _Watchdog(timeout, self._timed_out,
                                                                f"rank {self.rank}: ")

    def _timed_out(self, msg: str) -> None:
        self.abort(msg, code=2)

    def allreduce_mean_(self, a: Any) -> None:
        if not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__"):
            host = np.ascontiguousarray(a.get())
            self.allreduce_mean_(host)
            a.set(host)
            return
        a = _host_float_array(a)
        if self.world_size == 1:
            return
        with self._guard("all-reduce"):
            self._comm.Allreduce(self._MPI.IN_PLACE, a, op=self._MPI.SUM)
        np.divide(a, a.dtype.type(self.world_size), out=a)

    def broadcast_(self, a: Any, root: int = 0) -> None:
        _check_root(root, self.world_size)
        if not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__"):
            host = np.ascontiguousarray(a.get())
            self.broadcast_(host, root)
            a.set(host)
            return
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            raise TypeError("broadcast_ needs a C-contiguous numpy.ndarray")
        if self.world_size > 1:
            with self._guard("broadcast"):
                self._comm.Bcast(a, root=root)

    def barrier(self) -> None:
        if self.world_size > 1:
            with self._guard("barrier"):
                self._comm.Barrier()

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        _check_root(root, self.world_size)
        # JSON bytes, not pickle: a rank never unpickles what another sent.
        data = json.dumps(obj).encode() if self.rank == root else b""
        if self.world_size == 1:
            return json.loads(data)
        n = np.array([len(data)], np.int64)
        with self._guard("broadcast"):
            self._comm.Bcast(n, root=root)
            buf = np.frombuffer(data, np.uint8).copy() if self.rank == root \
                else np.empty(int(n[0]), np.uint8)
            self._comm.Bcast(buf, root=root)
        return json.loads(buf.tobytes())

    def abort(self, msg: str, code: int = 1) -> None:
        _report(self.rank, self.world_size, msg)
        self._comm.Abort(code)
        os._exit(code)  # Abort does not return; belt and braces

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, world_size={self.world_size})"


# ---------------------------------------------------------------------------------- NCCL
class NCCLCommunicator(_Base):
    """Collectives between GPUs through NCCL (cupy.cuda.nccl), for the CUDA backend.

    UNVERIFIED with more than one rank: it was written on a machine without a GPU, and the lent
    GPU machine had one GPU (NCCL refuses two ranks on one device). Checked there (H200, CuPy 14.2,
    NCCL 2.28.9): the unique id is bytes and crosses MPI as written below; NcclCommunicator,
    allReduce and bcast with these arguments run with one rank. Design: every rank picks the GPU
    ``local_rank % device_count`` (local_rank from an MPI shared-memory split), rank 0 makes the
    NCCL unique id and MPI broadcasts it, each rank joins an NcclCommunicator. allreduce_mean_
    enqueues ncclAllReduce(SUM, float32, in place) on CuPy's current stream, then scales by
    1/world_size on the same stream; the call synchronises that stream inside the watchdog guard
    so a dead peer becomes a timeout instead of a silent hang. Host (numpy) arrays, such as the
    logged loss, go through MPI. With one rank and no mpi4py it runs stand-alone.
    """

    def __init__(self, timeout: Optional[float] = None, mpi_comm: Any = None,
                 select_device: bool = True):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as e:
            raise RuntimeError(f"the NCCL communicator needs CuPy with NCCL support ({e})") from e
        self._cp, self._nccl_mod = cupy, nccl
        self._mpi: Optional[MPICommunicator] = None
        try:
            self._mpi = MPICommunicator(mpi_comm, timeout=timeout)
        except RuntimeError:
            if _launcher_world_size() > 1:
                raise
        self.rank = self._mpi.rank if self._mpi else 0
        self.world_size = self._mpi.world_size if self._mpi else 1
        if select_device:
            n_dev = cupy.cuda.runtime.getDeviceCount()
            if n_dev < 1:
                raise RuntimeError("the NCCL communicator needs a CUDA device; none is visible")
            cupy.cuda.Device(self._local_rank() % n_dev).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        if self._mpi is not None and self.world_size > 1:
            # CuPy 14 returns the id as bytes, older CuPy as a tuple of ints: send its type too.
            msg = None if uid is None else {"bytes": isinstance(uid, bytes), "id": list(uid)}
            msg = self._mpi.bcast_object(msg, root=0)
            uid = bytes(msg["id"]) if msg["bytes"] else tuple(msg["id"])
        self._watchdog = None if timeout is None else _Watchdog(timeout, self._timed_out,
                                                                f"rank {self.rank}: ")
        with self._guard("NCCL init"):
            self._nccl = nccl.NcclCommunicator(self.world_size, uid, self.rank)

    def _local_rank(self) -> int:
        if self._mpi is None:
            return 0
        MPI = self._mpi._MPI
        node = self._mpi._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        try:
            return int(node.Get_rank())
        finally:
            node.Free()

    def _timed_out(self, msg: str) -> None:
        self.abort(msg, code=2)

    def _check_device_array(self, a: Any, argname: str) -> Any:
        cp = self._cp
        if not isinstance(a, cp.ndarray):
            raise TypeError(f"{argname} must be a cupy.ndarray, got {type(a).__name__}")
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise TypeError(f"{argname} must be a C-contiguous float32 cupy array, got {a.dtype}")
        return a

    def allreduce_mean_(self, a: Any) -> None:
        if isinstance(a, np.ndarray):
            if self._mpi is not None:
                self._mpi.allreduce_mean_(a)
            return
        a = self._check_device_array(a, "a")
        if self.world_size > 1:
            self._nccl_allreduce_mean(a)

    def _nccl_allreduce_mean(self, a: Any) -> None:
        # Split out so a one-GPU check can drive the NCCL calls with world_size 1.
        nccl, stream = self._nccl_mod, self._cp.cuda.get_current_stream()
        with self._guard("NCCL all-reduce"):
            self._nccl.allReduce(a.data.ptr, a.data.ptr, a.size, nccl.NCCL_FLOAT32,
                                 nccl.NCCL_SUM, stream.ptr)
            a /= np.float32(self.world_size)   # CuPy kernel on the same (current) stream
            stream.synchronize()

    def broadcast_(self, a: Any, root: int = 0) -> None:
        _check_root(root, self.world_size)
        if isinstance(a, np.ndarray):
            if self._mpi is not None:
                self._mpi.broadcast_(a, root)
            return
        a = self._check_device_array(a, "a")
        if self.world_size > 1:
            self._nccl_bcast(a, root)

    def _nccl_bcast(self, a: Any, root: int) -> None:
        nccl, stream = self._nccl_mod, self._cp.cuda.get_current_stream()
        with self._guard("NCCL broadcast"):
            self._nccl.bcast(a.data.ptr, a.size, nccl.NCCL_FLOAT32, root, stream.ptr)
            stream.synchronize()

    def barrier(self) -> None:
        self._cp.cuda.get_current_stream().synchronize()
        if self._mpi is not None:
            with self._guard("barrier"):
                self._mpi._comm.Barrier()

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        if self._mpi is None:
            _check_root(root, 1)
            return json.loads(json.dumps(obj))
        return self._mpi.bcast_object(obj, root)

    def abort(self, msg: str, code: int = 1) -> None:
        if self._mpi is not None:
            self._mpi.abort(msg, code)
        _report(self.rank, self.world_size, msg)
        os._exit(code)

    def close(self) -> None:
        super().close()
        if getattr(self, "_nccl", None) is not None:
            self._nccl.destroy()
            self._nccl = None

    def __repr__(self) -> str:
        return f"NCCLCommunicator(rank={self.rank}, world_size={self.world_size})"


# ---------------------------------------------------------------------------------- choice
def _launcher_world_size() -> int:
    """World size announced by mpirun/srun/hydra in the environment (1 when none)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


def init_distributed(backend_name: str = "auto", timeout: Optional[float] = None) -> Communicator:
    """The communicator for a data-parallel run on ``backend_name`` ("numpy", "native", "cuda" or
    "auto"): NCCL for the CUDA backend, MPI otherwise. Call it once, before building the model
    (the NCCL path selects this rank's GPU). ``timeout`` (seconds, None = wait forever) bounds
    each collective: past it the watchdog aborts the whole job with exit status 2.
    Raises RuntimeError with installation hints when mpi4py (or CuPy/NCCL) is missing."""
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    name = backend_name
    if name == "auto":
        from .backends import get_backend
        name = get_backend("auto").name
    if name == "cuda":
        return NCCLCommunicator(timeout=timeout)
    if name not in ("numpy", "native"):
        raise ValueError(f"unknown backend {backend_name!r}: choose auto, numpy, native or cuda")
    return MPICommunicator(timeout=timeout)


def run_ranks(main: Callable[..., T_], comm: Communicator, *args: Any, **kwargs: Any) -> T_:
    """``main(*args, **kwargs)`` under ``comm.fail_fast()`` (see there)."""
    guard = getattr(comm, "fail_fast", None)
    with (guard() if guard is not None else contextlib.nullcontext()):
        return main(*args, **kwargs)


# ---------------------------------------------------------------------------------- one step
def distributed_train_step(model: Any, optimizer: Any, micro_batches: Sequence[Tuple[Any, Any]],
                           comm: Communicator, grad_clip: Optional[float] = None,
                           lr: Optional[float] = None) -> Tuple[float, float]:
    """One data-parallel optimizer step: zero grads, forward+backward every micro-batch of this
    rank (each scaled by 1/len(micro_batches)), ONE all-reduce of the flat gradient buffer, clip
    by global norm (identical on every rank), ``optimizer.step(lr)``.
    Returns (loss averaged over micro-batches and ranks, gradient norm before clipping)."""
    if not micro_batches:
        raise ValueError("micro_batches must hold at least one (idx, targets) pair")
    be = model.backend
    model.zero_grad()
    total = 0.0
    for x, y in micro_batches:
        _, loss = model.forward(x, y, return_logits=False)
        model.backward(1.0 / len(micro_batches))
        total += loss
    comm.allreduce_mean_(model.grads)
    loss = mean_across_ranks(comm, total / len(micro_batches))
    norm = float(np.sqrt(be.global_norm_sq(model.grads)))
    if grad_clip is not None and norm > grad_clip:
        be.scale_(model.grads, grad_clip / (norm + 1e-6))
    if lr is None:
        optimizer.step()
    else:
        optimizer.step(lr=lr)
    return loss, norm


__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator",
           "DistributedAbort", "init_distributed", "run_ranks", "is_main", "mean_across_ranks",
           "rank_slice", "distributed_train_step"]
