"""The training loop: ``Trainer(model, data, config).fit()``.

One optimizer step = zero_grad, ``grad_accum`` micro-batches of forward + backward(1/grad_accum),
optional gradient all-reduce (``grad_reduce``, for data-parallel runs), clipping by global norm,
AdamW with linear warmup + cosine decay. Validation loss every ``eval_every`` steps; metrics
appended to ``out_dir/metrics.jsonl``; checkpoints (see checkpoint.py) every ``save_every`` steps
and at the end. A resumed run continues bit for bit as the uninterrupted one (same backend and
thread count): parameters, AdamW moments, step and the batch generator's state are all restored.
Ctrl-C saves a checkpoint at a step boundary and returns; a non-finite loss, gradient or
parameter raises TrainingDivergedError and leaves the last good checkpoint in place.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import numpy as np

from ._limits import check_batch_fits, check_model_fits
from .checkpoint import (CheckpointError, atomic_write_bytes, latest_checkpoint, load_checkpoint,
                         run_lock, save_checkpoint)
from .data import TokenDataset
from .distributed import SingleProcess, mean_across_ranks, run_ranks  # [distributed]
from .optim import AdamW, clip_grad_norm, lr_schedule

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


# Batch size per preset when none is given: what fits comfortably in memory and keeps every
# kernel busy on a laptop CPU (m has twice the context, so half the rows).
PRESET_BATCH_SIZE = {"xs": 8, "s": 8, "m": 4, "gpt2": 8, "llama-xs": 8, "llama-s": 8,
                     "llama-m": 4}


class TrainingDivergedError(RuntimeError):
    """The loss, the gradient or the parameters stopped being finite."""


# The training defaults, stated once: TrainConfig's fields below, which the command line and
# AdamW take theirs from.
DEFAULT_LR = 2e-3  # peak learning rate: high, since the default models are tiny and runs short


EVALS_PER_RUN = 5  # evaluations in a run whose eval_every is not given (plus the final one)


def default_eval_every(max_steps: int) -> int:
    """The validation interval of a run of ``max_steps`` steps when none is given: about
    EVALS_PER_RUN evaluations per run, whatever its length (200 for the default 1000 steps)."""
    return max(1, int(max_steps) // EVALS_PER_RUN)


class Throughput:
    """Tokens per second over the last ``window`` steps (total tokens / total time), the figure
    the progress bar shows: one step's own rate jumps with every pause of the machine."""

    def __init__(self, window: int = 50):
        from collections import deque
        self._steps: Any = deque(maxlen=int(window))

    def add(self, tokens: float, seconds: float) -> float:
        self._steps.append((float(tokens), max(float(seconds), 0.0)))
        return self.rate

    @property
    def rate(self) -> float:
        t = sum(s for _, s in self._steps)
        return sum(n for n, _ in self._steps) / t if t > 0 else 0.0


def smooth(values: List[float], alpha: float = 0.1) -> List[float]:
    """Exponential moving average (debiased at the start, as Adam's moments are)."""
    out, m = [], 0.0
    for k, v in enumerate(values, 1):
        m = (1 - alpha) * m + alpha * float(v)
        out.append(m / (1 - (1 - alpha) ** k))
    return out


def loss_figure(recs: List[Dict[str, Any]], title: str = "training loss") -> Any:
    """The loss plot of metrics records: the train loss per step (faint), its moving average,
    every validation point, a title and axes with units. Needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in recs]
    loss = [r["loss"] for r in recs]
    ax.plot(steps, loss, lw=0.6, alpha=0.3, color="C0", label="train (per step)")
    ax.plot(steps, smooth(loss), lw=1.6, color="C0", label="train (moving average)")
    val = [(r["step"], r["val_loss"]) for r in recs
           if isinstance(r.get("val_loss"), (int, float))]
    if val:
        ax.plot(*zip(*val), "o-", color="C1", ms=4, label="validation")
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats / token)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


@dataclass
class TrainConfig:
    batch_size: int = 8            # sequences per micro-batch
    block_size: Optional[int] = None  # tokens per sequence; None: the model's block_size
    max_steps: int = 1000          # optimizer steps in total (a resumed run counts on); the
                                   # default run: about half a pass over the default corpus on xs
    lr: float = DEFAULT_LR
    min_lr: Optional[float] = None  # floor of the cosine decay; None: lr / 10
    warmup_steps: Optional[int] = None  # linear warmup steps; None: max_steps / 20, in [1, 100]
                                        # (long enough to settle AdamW's moments, short of 10%)
    weight_decay: float = 0.1      # decoupled, matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0         # max global gradient norm; 0 disables clipping
    grad_accum: int = 1            # micro-batches per optimizer step
    eval_every: Optional[int] = None  # validation every N steps (and at the end); 0 disables
                                   # it; None: max_steps // 5 (five evaluations a run: 200 on
                                   # the default run's 1000 steps)
    eval_batches: int = 8          # validation batches per evaluation
    save_every: int = 500          # checkpoint every N steps (with an out_dir); 0: only at the
                                   # end (and on Ctrl-C); a long run loses at most 500 steps
    seed: int = 0                  # recorded; the command line seeds model init and data with it

    def __post_init__(self) -> None:
        if self.warmup_steps is None and isinstance(self.max_steps, int):
            self.warmup_steps = min(100, max(1, self.max_steps // 20))
        if self.eval_every is None and isinstance(self.max_steps, int):
            self.eval_every = default_eval_every(self.max_steps)

        def pos_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}, got {v!r}")
        for n in ("batch_size", "grad_accum"):
            pos_int(n)
        for n in ("max_steps", "warmup_steps", "eval_every", "eval_batches", "save_every",
                  "seed"):
            pos_int(n, 0)
        if self.block_size is not None:
            pos_int("block_size")
        for n in ("lr", "weight_decay", "grad_clip", "eps"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"TrainConfig.{n} must be a finite number >= 0, got {v!r}")
        if self.min_lr is not None and not (0 <= self.min_lr <= self.lr):
            raise ValueError(f"TrainConfig.min_lr must be in [0, lr], got {self.min_lr!r}")
        for n in ("beta1", "beta2"):
            if not 0 <= getattr(self, n) < 1:
                raise ValueError(f"TrainConfig.{n} must be in [0, 1), got {getattr(self, n)!r}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        return cls(**d)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while a step commits or a checkpoint is written (so the state on disk
    and in memory is never half-updated); re-raise it as KeyboardInterrupt afterwards. Only in
    the main thread and only when Python's default handler is installed."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    hit: List[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt


class Trainer:
    """Train ``model`` (a GPT) on ``data`` (a TokenDataset).

    out_dir: run folder for checkpoints, metrics.jsonl and loss.png (None: nothing is written).
    tokenizer: saved into every checkpoint (an object with ``save(path)``, a file path, or bytes).
    progress: show a tqdm bar (loss, tokens/s, ETA) on stderr.
    callbacks: called as ``cb(trainer, record)`` after every step (record = the metrics dict).
    grad_reduce: called as ``grad_reduce(model)`` after the micro-batches, before clipping (a
        data-parallel run averages gradients across ranks there).
    is_main: only the main rank writes files.
    comm: [distributed] a kernelgpt.distributed Communicator (default SingleProcess). With more
        than one rank: ``data`` is sharded (rank r reads rows [r*B, (r+1)*B) of each global
        batch), rank 0's parameters are broadcast, gradients are averaged by one all-reduce per
        optimizer step (the default ``grad_reduce``), losses are averaged over ranks, only rank
        0 writes files and shows progress. Global batch = world x batch_size x grad_accum;
        the learning rate is not scaled.
    """

    def __init__(self, model: Any, data: TokenDataset, config: Optional[TrainConfig] = None,
                 out_dir: Optional[Union[str, os.PathLike[str]]] = None, tokenizer: Any = None,
                 progress: bool = False, callbacks: Iterable[Callable[..., Any]] = (),
                 grad_reduce: Optional[Callable[[Any], None]] = None, is_main: bool = True,
                 comm: Any = None) -> None:
        cfg = config if config is not None else TrainConfig()
        # [distributed] data parallel over comm (see kernelgpt/distributed.py)
        self.comm = comm if comm is not None else SingleProcess()
        if self.comm.world_size > 1:
            if data.world != self.comm.world_size:
                data = data.shard(self.comm.rank, self.comm.world_size)
            self.comm.broadcast_(model.params)  # every rank starts from rank 0's parameters
            if grad_reduce is None:
                grad_reduce = lambda m: self.comm.allreduce_mean_(m.grads)  # noqa: E731
            is_main = is_main and self.comm.rank == 0
        # [/distributed]
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
        self.block_size = cfg.block_size or model.config.block_size
        if self.block_size > model.config.block_size:
            raise ValueError(f"block_size {self.block_size} exceeds the model's block_size "
                             f"{model.config.block_size}")
        if data.vocab_size > model.config.vocab_size:
            raise ValueError(f"the data's vocab_size {data.vocab_size} exceeds the model's "
                             f"{model.config.vocab_size}")
        if data.train.size < self.block_size + 1:
            raise ValueError(f"the training split has {data.train.size} tokens, too few for "
                             f"block_size {self.block_size}; give more data")
        # the activations of one micro-batch and AdamW's two moments, before either exists
        itemsize = int(np.dtype(str(model.params.dtype)).itemsize)
        check_batch_fits(model.config, (cfg.batch_size, self.block_size), itemsize,
                         extra_bytes=2 * int(model.params.size) * itemsize)
        self.model, self.data, self.config = model, data, cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if isinstance(tokenizer, (str, os.PathLike)):
            if not Path(tokenizer).is_file():  # never read a device or pipe until it ends
                from .data import not_a_regular_file
                what = not_a_regular_file(tokenizer) if os.path.exists(tokenizer) else \
                    "no such file"
                raise ValueError(f"tokenizer {os.fspath(tokenizer)}: {what}")
            tokenizer = Path(tokenizer).read_bytes()
        self.tokenizer = tokenizer
        self._token_nbytes: Optional[np.ndarray] = None  # byte length per token id, or None
        self._token_nbytes_read = False  # _token_nbytes is computed lazily, once
        self.progress, self.callbacks = progress, list(callbacks)
        self.grad_reduce, self.is_main = grad_reduce, is_main
        self.optimizer = AdamW(model, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.last_val_bpb: Optional[float] = None
        self.last_checkpoint: Optional[Path] = None
        self._resumed = False
        self._committed: Optional[Dict[str, Any]] = None  # the last committed step's record

    # ------------------------------------------------------------------ schedule / eval
    @property
    def min_lr(self) -> float:
        c = self.config
        return c.min_lr if c.min_lr is not None else c.lr / 10

    def lr_at(self, step: int) -> float:
        c = self.config
        assert c.warmup_steps is not None  # TrainConfig.__post_init__ resolved and checked it
        return lr_schedule(step, c.lr, self.min_lr, c.warmup_steps, c.max_steps)

    def can_evaluate(self) -> bool:
        return self.config.eval_batches > 0 and self.data.val.size >= self.block_size + 1

    def token_nbytes(self) -> Optional[np.ndarray]:
        """The UTF-8 byte length of each token id (special tokens 0), from the run's tokenizer;
        None without one (then no bits per byte are reported)."""
        if not self._token_nbytes_read:
            self._token_nbytes_read = True
            tok = self.tokenizer
            try:
                if isinstance(tok, (bytes, bytearray)):
                    from .tokenizer import Tokenizer
                    tok = Tokenizer.from_dict(json.loads(bytes(tok).decode("utf-8")))
                if tok is not None and hasattr(tok, "token_bytes"):
                    from .evaluation import token_byte_lengths
                    self._token_nbytes = token_byte_lengths(tok, self.model.config.vocab_size)
            except (ValueError, ImportError, TypeError) as e:
                log.warning("no bits per byte: cannot read the tokenizer (%s)", e)
        return self._token_nbytes

    def _bytes_of(self, y: np.ndarray) -> int:
        nb = self.token_nbytes()
        return 0 if nb is None else int(nb[y].sum())

    def bits_per_byte(self, loss: float, n_tokens: int, n_bytes: float) -> Optional[float]:
        """Mean loss (nats / token) over ``n_tokens`` targets decoding to ``n_bytes`` bytes ->
        bits per byte (see kernelgpt.evaluation); None without a tokenizer or bytes."""
        if self.token_nbytes() is None or not n_bytes:
            return None
        return float(loss) * n_tokens / (math.log(2.0) * float(n_bytes))

    def evaluate(self) -> Optional[float]:
        """Mean validation loss over ``eval_batches`` fixed batches (None without a val split).
        Also sets ``last_val_bpb`` (bits per byte of the same batches; None without a
        tokenizer)."""
        if not self.can_evaluate():
            return None
        losses: List[float] = []
        n_bytes: float = 0
        n_tok = 0
        for x, y in self.data.val_batches(self.config.eval_batches, self.config.batch_size,
                                          self.block_size):
            losses.append(self.model.forward(x, y, return_logits=False)[1])
            n_bytes += self._bytes_of(y)
            n_tok += y.size
        val = mean_across_ranks(self.comm, float(sum(losses) / len(losses)))  # [distributed]
        if self.token_nbytes() is not None:
            n_bytes = mean_across_ranks(self.comm, float(n_bytes))  # [distributed]
            self.last_val_bpb = self.bits_per_byte(val, n_tok, n_bytes)
        return val

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> Dict[str, Any]:
        extra = {} if self.data.data_dtype is None else {"data_dtype": self.data.data_dtype}
        src = self.data.source
        if src is not None and self.out_dir is not None:
            try:
                src = os.path.relpath(src, self.out_dir) if Path(src).resolve().is_relative_to(
                    self.out_dir.resolve()) else os.path.abspath(src)
            except (ValueError, OSError):
                src = os.path.abspath(src)
        return {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed_s": self.elapsed,
                "best_val_loss": self.best_val_loss, "last_val_loss": self.last_val_loss,
                "last_val_bpb": self.last_val_bpb, "block_size": self.block_size, "backend": self.model.backend.name,
                "data": dict(self.data.state_dict(), source=src,
                             fingerprint=self.data.fingerprint(),
                             val_fraction=self.data.val_fraction, **extra)}

    def load_state(self, ck: Any) -> None:
        """Restore parameters, optimizer, step and data position from a loaded Checkpoint."""
        from .model import GPTConfig
        try:  # compared as configs: an older release's dict lacks the fields added since
            same = GPTConfig.from_dict(ck.model_config) == self.model.config
        except ValueError:
            same = False
        if not same:
            raise CheckpointError(f"{ck.path}: model config {ck.model_config} does not match "
                                  f"the model's {self.model.config.to_dict()}")
        st = ck.trainer_state
        dstate = st.get("data") or {}
        fp = dstate.get("fingerprint")
        if fp is not None and not self.data.matches_fingerprint(fp):
            n = fp.get("n_tokens") if isinstance(fp, dict) else None
            same_n = n == len(self.data)
            raise CheckpointError(
                f"{ck.path}: the checkpoint was trained on other data ({n} tokens; this data "
                f"has {len(self.data)}{', with different content' if same_n else ''})")
        try:
            self.model.load_state_dict(ck.model_state)
            self.optimizer.load_state_dict(ck.optimizer_state)
            self.data.load_state_dict(dstate)
        except ValueError as e:
            raise CheckpointError(f"{ck.path}: {e}") from None
        self.step = int(st["step"])
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.elapsed = float(st.get("elapsed_s", 0.0))
        self.best_val_loss = st.get("best_val_loss")
        self.last_val_loss = st.get("last_val_loss")
        self.last_val_bpb = st.get("last_val_bpb")
        self.last_checkpoint = ck.path
        if self.tokenizer is None and ck.tokenizer_path is not None:
            self.tokenizer = ck.tokenizer_path.read_bytes()
        self._resumed = True
        if self.out_dir is not None and self.is_main:
            with run_lock(self.out_dir):  # RunFolderInUse while another trainer runs there
                self._trim_metrics(self.step)

    @classmethod
    def resume(cls, out_dir: Union[str, os.PathLike[str]], data: Optional[TokenDataset] = None,
               backend: Any = "auto", progress: bool = False,
               callbacks: Iterable[Callable[..., Any]] = (),
               comm: Any = None, **overrides: Any) -> "Trainer":
        """A Trainer continuing the run in ``out_dir`` from its latest checkpoint. ``data``
        defaults to the token file the run recorded; ``overrides`` change TrainConfig fields
        (e.g. max_steps=... to train longer)."""
        from .model import GPT, GPTConfig
        ck = load_checkpoint(out_dir)
        try:
            cfg = TrainConfig.from_dict(dict(ck.train_config, **overrides))
            mcfg = GPTConfig.from_dict(ck.model_config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{ck.path}: bad config ({e})") from None
        # an edited config.json (n_layer=10**7, ...) fails here, before anything is allocated
        check_model_fits(mcfg, batch=(cfg.batch_size, cfg.block_size or mcfg.block_size))
        if data is None:
            d = ck.trainer_state.get("data") or {}
            src = d.get("source")
            if not src:
                raise CheckpointError(f"{ck.path}: the run recorded no token file; pass data=")
            src_path = Path(src) if os.path.isabs(src) else Path(out_dir) / src
            try:
                fp = d.get("fingerprint")
                data = TokenDataset.from_file(
                    src_path, val_fraction=d.get("val_fraction", 0.1),
                    seed=d.get("seed", cfg.seed), data_dtype=d.get("data_dtype"),
                    vocab_size=fp.get("vocab_size") if isinstance(fp, dict) else None)
            except ValueError as e:
                raise CheckpointError(f"cannot reopen the run's data: {e}") from None
        model = GPT(mcfg, backend=backend)
        trainer = cls(model, data, cfg, out_dir=out_dir, progress=progress, callbacks=callbacks,
                      comm=comm)  # [distributed] every rank reads the same checkpoint
        trainer.load_state(ck)
        return trainer

    # ------------------------------------------------------------------ files
    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines past ``step`` (written by the run after its last checkpoint)."""
        assert self.out_dir is not None  # the one caller (load_state) checked it
        p = self.out_dir / METRICS_FILE
        if not p.is_file():
            return
        keep = []
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # a damaged line (not ours) is dropped
        atomic_write_bytes(p, "".join(l + "\n" for l in keep).encode())

    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current state (main rank with an out_dir only)."""
        if self.out_dir is None or not self.is_main:
            return None
        self._check_params_finite()
        with _sigint_deferred():
            self.last_checkpoint = save_checkpoint(
                self.out_dir, model=self.model, optimizer=self.optimizer,
                train_config=self.config.to_dict(), trainer_state=self.trainer_state(),
                tokenizer=self.tokenizer)
        return self.last_checkpoint

    def _check_params_finite(self) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            norm_sq = self.model.backend.global_norm_sq(self.model.params)
        if not math.isfinite(norm_sq):
            raise TrainingDivergedError(self._diverged_msg("the parameters are not finite"))

    def _diverged_msg(self, what: str) -> str:
        keep = (f"; the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint else "")
        return (f"training diverged at step {self.step + 1}: {what} (try a lower learning "
                f"rate){keep}")

    def plot_loss(self) -> Optional[Path]:
        """Write out_dir/loss.png from metrics.jsonl when matplotlib is importable."""
        if self.out_dir is None or not self.is_main:
            return None
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return None
        p = self.out_dir / METRICS_FILE
        if not p.is_file():
            return None
        recs = []
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
                if isinstance(r, dict) and isinstance(r.get("step"), (int, float)) \
                        and isinstance(r.get("loss"), (int, float)):
                    recs.append(r)
            except (ValueError, RecursionError):
                continue  # a damaged line does not stop the plot
        if not recs:
            return None
        cfg = self.model.config
        fig = loss_figure(recs, f"{self.out_dir.name}: {cfg.n_layer} layers x {cfg.n_embd} "
                                f"dims, vocab {cfg.vocab_size}, batch {self.config.batch_size}"
                                f" x {self.block_size} tokens")
        out = self.out_dir / LOSS_PLOT
        fig.savefig(out, dpi=100)
        return out

    # ------------------------------------------------------------------ the loop
    def _train_step(self) -> Dict[str, Any]:
        """One optimizer step; returns its metrics record. Raises TrainingDivergedError."""
        c, model = self.config, self.model
        t0 = time.perf_counter()
        model.zero_grad()
        loss = 0.0
        n_bytes: float = 0
        for _ in range(c.grad_accum):
            x, y = self.data.get_batch(c.batch_size, self.block_size)
            n_bytes += self._bytes_of(y)
            _, l = model.forward(x, y, return_logits=False)
            if not math.isfinite(l):
                raise TrainingDivergedError(self._diverged_msg(f"the loss is {l}"))
            model.backward(1.0 / c.grad_accum)
            loss += l / c.grad_accum
        if self.grad_reduce is not None:
            self.grad_reduce(model)
        loss = mean_across_ranks(self.comm, loss)  # [distributed] the global batch's mean loss
        bpb = None
        if self.token_nbytes() is not None:  # [distributed] bytes of the global batch / world
            n_bytes = mean_across_ranks(self.comm, float(n_bytes))
            bpb = self.bits_per_byte(loss, c.grad_accum * c.batch_size * self.block_size,
                                     n_bytes)
        norm = clip_grad_norm(model, c.grad_clip)
        if not math.isfinite(norm):
            raise TrainingDivergedError(self._diverged_msg(f"the gradient norm is {norm}"))
        lr = self.lr_at(self.step)
        # The commit: parameters, moments, counters and the step's record move together. A
        # Ctrl-C held back here is raised as the block ends, after the step happened: _fit tells
        # the two cases apart by self.step and finds the record in self._committed.
        with _sigint_deferred():
            self.optimizer.step(lr)
            self.step += 1
            n_tok = c.grad_accum * c.batch_size * self.block_size * self.data.world
            self.tokens_seen += n_tok
            dt = time.perf_counter() - t0
            self.elapsed += dt
            self._committed = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm,
                               "tokens_per_s": n_tok / max(dt, 1e-9),
                               "elapsed_s": round(self.elapsed, 3)}
            if bpb is not None:
                self._committed["bpb"] = bpb
        return self._committed

    def fit(self, resume: bool = False) -> Dict[str, Any]:
        """See :meth:`_fit`. [distributed] With several ranks, an exception on one rank ends
        the whole job (``comm.fail_fast``) instead of leaving the others in an all-reduce.
        The main rank holds the run folder's lock (checkpoint.run_lock) throughout: a second
        trainer on the same out_dir gets RunFolderInUse."""
        if self.comm.world_size > 1:
            return run_ranks(self._fit_locked, self.comm, resume)
        return self._fit_locked(resume)

    def _fit_locked(self, resume: bool = False) -> Dict[str, Any]:
        if self.out_dir is None or not self.is_main:
            return self._fit(resume)
        with run_lock(self.out_dir):
            return self._fit(resume)

    def _fit(self, resume: bool = False) -> Dict[str, Any]:
        """Train until ``config.max_steps``. ``resume=True`` first restores the latest
        checkpoint in ``out_dir``. Returns a summary dict: step, loss (last), val_loss (last),
        best_val_loss, tokens_seen, elapsed_s, tokens_per_s, interrupted, checkpoint, losses
        (this call's per-step training losses)."""
        c = self.config
        if resume:
            if self.out_dir is None:
                raise ValueError("fit(resume=True) needs an out_dir")
            self.load_state(load_checkpoint(self.out_dir))
        elif self.out_dir is not None and not self._resumed and self.is_main \
                and latest_checkpoint(self.out_dir) is not None:
            raise FileExistsError(f"{self.out_dir} already holds a checkpoint; resume it or "
                                  f"choose another folder")
        metrics = None
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            metrics = open(self.out_dir / METRICS_FILE, "a", encoding="utf-8")
        bar = None
        if self.progress and self.is_main:  # [distributed] rank 0 alone shows progress
            from tqdm.auto import tqdm
            bar = tqdm(total=c.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       smoothing=0.1)
        losses: List[float] = []
        speed = Throughput()
        last: Dict[str, Any] = {}
        interrupted = False
        # A Ctrl-C can land on any bytecode, so what was done is read from counters that move
        # inside the deferred blocks: self.step (with self._committed, the step's record) and
        # logged (the last step whose metrics line is in the file).
        start_step, t_start = self.step, time.perf_counter()
        logged = self.step
        self._committed = None
        try:
            while self.step < c.max_steps:
                snapshot, step_before = self.data.state_dict(), self.step
                try:
                    # Overflow shows up as a non-finite loss/gradient, which we check and report
                    # ourselves; NumPy's floating-point warnings would only add noise.
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        self._train_step()
                except KeyboardInterrupt:
                    if self.step == step_before:
                        self.data.load_state_dict(snapshot)  # the half-done step never happened
                    raise
                rec = self._committed
                assert rec is not None  # _train_step returned: it committed the step's record
                losses.append(rec["loss"])
                done = self.step >= c.max_steps
                if (c.eval_every and self.step % c.eval_every == 0) or done:
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        val = self.evaluate()
                    if val is not None:
                        rec["val_loss"] = val
                        if self.last_val_bpb is not None:
                            rec["val_bpb"] = self.last_val_bpb
                        self.last_val_loss = val
                        if self.best_val_loss is None or val < self.best_val_loss:
                            self.best_val_loss = val
                        if self.is_main:  # [distributed]
                            log.info("step %d: train loss %.4f, val loss %.4f", self.step,
                                     rec["loss"], val)
                if metrics is not None:
                    with _sigint_deferred():
                        metrics.write(json.dumps(rec) + "\n")
                        metrics.flush()
                        logged = self.step
                if bar is not None:
                    n_tok = c.grad_accum * c.batch_size * self.block_size * self.data.world
                    rate = speed.add(n_tok, n_tok / max(rec["tokens_per_s"], 1e-9))
                    post = {"loss": f"{rec['loss']:.3f}", "tok/s": f"{rate:.0f}"}
                    if self.last_val_loss is not None:
                        post["val"] = f"{self.last_val_loss:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                last = rec
                if c.save_every and self.step % c.save_every == 0 and not done:
                    self.save()
                for cb in self.callbacks:
                    cb(self, rec)
            self.save()
        except KeyboardInterrupt:
            interrupted = True
            committed = self._committed
            if committed is not None and committed["step"] == self.step > start_step:
                # Ctrl-C after a step's commit but before its bookkeeping (eval, logging) ended
                if len(losses) < self.step - start_step:
                    losses.append(committed["loss"])
                if metrics is not None and logged < self.step:
                    metrics.write(json.dumps(committed) + "\n")
                    metrics.flush()
                    logged = self.step
                last = committed
            log.warning("interrupted at step %d; saving a checkpoint", self.step)
            self.save()
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        self.plot_loss()
        wall = time.perf_counter() - t_start
        return {"step": self.step, "loss": last.get("loss"), "val_loss": self.last_val_loss,
                "bpb": last.get("bpb"), "val_bpb": self.last_val_bpb,
                "best_val_loss": self.best_val_loss, "tokens_seen": self.tokens_seen,
                "elapsed_s": self.elapsed,
                "tokens_per_s": ((self.step - start_step) * c.grad_accum * c.batch_size
                                 * self.block_size * self.data.world / wall)  # [distributed]
                                if wall > 0 else 0.0,
                "interrupted": interrupted, "checkpoint": self.last_checkpoint,
                "losses": losses}
