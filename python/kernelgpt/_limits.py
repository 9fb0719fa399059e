"""Memory estimates for a GPT config, checked before anything is allocated.

A config read from a command line or a checkpoint's config.json can ask for absurd sizes
(``n_layer=10**7``, ``vocab_size=10**12``, ``--batch-size 1000000000``). Building such a model
would hang listing parameters, or grow until the kernel kills the process. The functions here
estimate the bytes arithmetically (a few dozen integer operations, whatever the sizes) so that
:func:`check_model_fits` can refuse with one line, e.g.
``MemoryError: the model needs 12.3 GB (params, grads, AdamW state), more than the 8.1 GB available``,
before the first array exists.

Available memory: the environment variable ``KERNELGPT_MEMORY_LIMIT`` (bytes, or a number with a
K/M/G/T suffix, powers of 1024; ``0``/``off``/``none`` disables the check), else MemAvailable from
/proc/meminfo, else the available physical pages (os.sysconf), else no limit.

The estimates follow the layout of model.py (parameters and gradients in one flat buffer each,
AdamW's m and v, the activation buffers of one (B, T)); they are meant to be close, not exact:
their job is to stop sizes that cannot possibly fit, not to budget the last megabyte.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Tuple

ENV_LIMIT = "KERNELGPT_MEMORY_LIMIT"


class ModelTooLargeError(MemoryError):
    """A model (or a batch for it) needs more memory than this machine has available."""


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _int_field(config: Any, name: str, default: Optional[int] = None) -> int:
    v = _field(config, name, default)
    if isinstance(v, bool) or v is None:
        raise ValueError(f"GPT config field {name} must be a positive int, got {v!r}")
    try:
        iv = int(v)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"GPT config field {name} must be a positive int, got {v!r}") from None
    if iv != v or iv < 1:
        raise ValueError(f"GPT config field {name} must be a positive int, got {v!r}")
    return iv


def _shape(config: Any) -> Tuple[int, int, int, int, int]:
    """(V, maxT, L, NH, C) of a GPTConfig-like object or a dict of its fields."""
    return (_int_field(config, "vocab_size"), _int_field(config, "block_size"),
            _int_field(config, "n_layer"), _int_field(config, "n_head", 1),
            _int_field(config, "n_embd"))


def param_count(config: Any) -> int:
    """Number of parameters of the model of ``config`` (a GPTConfig, or any object or dict with
    its fields), from the model's parameter table (kernelgpt.model.param_table) without listing
    the layers: the embedding and final groups plus n_layer times one block, so a config with
    n_layer=10**9 is counted at once."""
    import dataclasses
    import math
    from .model import GPTConfig, param_table
    _shape(config)  # the size fields, checked with this module's messages
    cfg: GPTConfig
    if isinstance(config, GPTConfig):
        cfg = config
    else:
        names = [f.name for f in dataclasses.fields(GPTConfig)]
        d = {n: _field(config, n) for n in names if _field(config, n) is not None}
        cfg = GPTConfig.from_dict(d)
    t = param_table(cfg)

    def size(specs: Any) -> int:
        return sum(math.prod(s.shape(cfg)) for s in specs)
    return size(t.embedding) + cfg.n_layer * size(t.block) + size(t.final)


def model_bytes(config: Any, dtype_bytes: int = 4, training: bool = True,
                copies: Optional[int] = None) -> int:
    """Bytes of the parameters and, when training, of the gradients and AdamW's two moments
    (``copies`` parameter-sized arrays when given instead: e.g. 3 for GPT.__init__'s host init
    buffer, parameters and gradients)."""
    n = param_count(config)
    k = int(copies) if copies is not None else (4 if training else 1)
    return n * int(dtype_bytes) * k


def activation_bytes(config: Any, batch: Tuple[int, int], dtype_bytes: int = 4,
                     training: bool = True) -> int:
    """Bytes of the activation buffers for a batch of ``batch = (B, T)`` token ids: per layer
    16 (B*T, C)-sized buffers, the layernorm statistics and the attention's log-sum-exp; the
    embeddings, final layernorm and loss; one (B*T, V) logits buffer; the attention's (B, NH, T, T)
    score scratch (twice: scores and their exponentials); when training the gradient buffers
    (14 more (B*T, C)-sized ones). Sampling also keeps a key/value cache of (B, T, C) per layer."""
    V, _, L, NH, C = _shape(config)
    B, T = (int(x) for x in batch)
    if B < 1 or T < 1:
        raise ValueError(f"batch must be (B, T) with B, T >= 1, got {batch!r}")
    N = B * T
    per_layer = 16 * N * C + 4 * N + B * NH * T
    floats = L * per_layer + 6 * N * C + 4 * N + N * V + 2 * B * NH * T * T
    if training:
        floats += 14 * N * C + V * C  # activation gradients; the classifier's dwte share
    else:
        floats += 2 * L * N * C       # key/value cache
    return floats * int(dtype_bytes) + 2 * N * 4  # + int32 ids and targets


def _parse_size(text: str) -> Optional[int]:
    """'8G' -> 8 * 2**30; '0', 'off', 'none', '' -> None (no limit). ValueError when malformed."""
    t = text.strip().lower()
    if t in ("", "0", "off", "none", "unlimited"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", t)
    if not m:
        raise ValueError(f"{ENV_LIMIT}={text!r}: expected bytes or a number with K/M/G/T, "
                         f"e.g. 8G")
    mult = 1024 ** " kmgt".index(m.group(2) or " ")
    return int(float(m.group(1)) * mult)


def available_bytes() -> Optional[int]:
    """Memory this process may still use (see the module doc), or None when unknown/unlimited."""
    env = os.environ.get(ENV_LIMIT)
    if env is not None:
        return _parse_size(env)
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    parts = line.split()
                    unit = parts[2].lower() if len(parts) > 2 else b"b"
                    return int(parts[1]) * (1024 if unit == b"kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
    return f"{int(n)} bytes"


def estimate_bytes(config: Any, batch: Optional[Tuple[int, int]] = None, dtype_bytes: int = 4,
                   training: bool = True, copies: Optional[int] = None) -> Dict[str, int]:
    """{"model": ..., "activations": ..., "total": ...} in bytes (activations 0 without batch)."""
    m = model_bytes(config, dtype_bytes, training, copies)
    a = activation_bytes(config, batch, dtype_bytes, training) if batch is not None else 0
    return {"model": m, "activations": a, "total": m + a}


def check_model_fits(config: Any, batch: Optional[Tuple[int, int]] = None, dtype_bytes: int = 4,
                     training: bool = True, available: Optional[int] = None,
                     copies: Optional[int] = None) -> Dict[str, int]:
    """Raise ModelTooLargeError (a MemoryError) with one line naming the sizes when the model of
    ``config`` (a GPTConfig, or any object / dict with its fields), with gradients and AdamW
    state when ``training``, plus the activations of a ``batch = (B, T)`` when given, needs more
    than ``available`` bytes (default: :func:`available_bytes`). ``copies`` replaces the count of
    parameter-sized arrays (4 when training, else 1). Returns the estimate. Raises ValueError
    when a size field is not a positive int.

    GPT.__init__ can call ``check_model_fits(config, dtype_bytes=itemsize, copies=3)`` first
    (its host init buffer, the parameters, the gradients); the trainer and the command line
    check the full training footprint before building the model."""
    est = estimate_bytes(config, batch, dtype_bytes, training, copies)
    if available is None:
        available = available_bytes()
    if available is None or est["total"] <= available:
        return est
    V, maxT, L, NH, C = _shape(config)
    shape = f"vocab_size={V}, block_size={maxT}, n_layer={L}, n_head={NH}, n_embd={C}"
    what = ("params, grads, AdamW state" if training else "params") if copies is None else \
        f"{copies} parameter-sized arrays"
    if batch is not None and est["activations"] > 0:
        B, T = batch
        msg = (f"the model ({shape}) with a batch of {B} x {T} tokens needs "
               f"{format_bytes(est['total'])} ({format_bytes(est['model'])} {what}, "
               f"{format_bytes(est['activations'])} activations)")
    else:
        msg = f"the model ({shape}) needs {format_bytes(est['total'])} ({what})"
    raise ModelTooLargeError(f"{msg}, more than the {format_bytes(available)} available "
                             f"(set {ENV_LIMIT} to change the limit)")


def check_bytes_fit(nbytes: int, what: str, available: Optional[int] = None) -> None:
    """ModelTooLargeError "WHAT needs X, more than the Y available" when ``nbytes`` does not fit
    in ``available`` (default: :func:`available_bytes`)."""
    if available is None:
        available = available_bytes()
    if available is not None and nbytes > available:
        raise ModelTooLargeError(f"{what} needs {format_bytes(nbytes)}, more than the "
                                 f"{format_bytes(available)} available (set {ENV_LIMIT} to "
                                 f"change the limit)")


def check_batch_fits(config: Any, batch: Tuple[int, int], dtype_bytes: int = 4,
                     training: bool = True, extra_bytes: int = 0,
                     available: Optional[int] = None) -> int:
    """Like :func:`check_model_fits` for a model that already exists: only the activations of
    ``batch = (B, T)`` (plus ``extra_bytes``, e.g. optimizer state still to allocate) must fit.
    Returns the bytes needed."""
    need = activation_bytes(config, batch, dtype_bytes, training) + int(extra_bytes)
    B, T = batch
    check_bytes_fit(need, f"a batch of {B} x {T} tokens for the model "
                          f"(n_layer={_int_field(config, 'n_layer')}, "
                          f"n_embd={_int_field(config, 'n_embd')}, "
                          f"vocab_size={_int_field(config, 'vocab_size')})", available)
    return need
