"""Autoregressive sampling for :class:`kernelgpt.model.GPT`, with a KV cache.

The prompt is run once through the model's normal forward (the prefill), which also copies each
layer's keys and values into per-layer caches (B,NH,maxT,HS) held as backend arrays; each new
token then runs one position through the blocks (``backend.attention_decode`` and matmuls over B
rows). When the sequence reaches block_size the context window slides: the cache is rebuilt from
the last block_size tokens, so cached and uncached generation see exactly the same context.
Token choice (temperature, top-k, top-p) happens on the host in float64 from an explicit
``numpy.random.Generator`` (the top-k candidates are found on the float32 logits, which selects
the same set); nothing here keeps state between calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np


# ---------------------------------------------------------------------------------- arguments
def _check_prompt(model, prompt_ids: Any) -> Tuple[np.ndarray, bool]:
    """-> (int32 array (B,T), whether the prompt was 1-D)."""
    cfg = model.config
    a = prompt_ids
    if not isinstance(a, np.ndarray):
        a = np.asarray(model.backend.to_numpy(a) if hasattr(a, "shape") else a)
    if a.size == 0:
        raise ValueError("prompt_ids is empty: give at least one token id")
    if a.dtype.kind not in "iu":
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {a.dtype}")
    one_d = a.ndim == 1
    if one_d:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"prompt_ids must be 1-D (T,) or 2-D (B, T), got shape {a.shape}")
    if a.shape[1] > cfg.block_size:
        raise ValueError(f"prompt has {a.shape[1]} tokens, more than block_size={cfg.block_size}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(f"prompt_ids hold token ids in [{lo}, {hi}], outside [0, "
                         f"{cfg.vocab_size})")
    return np.ascontiguousarray(a, dtype=np.int32), one_d


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen: validated once (:meth:`checked`), then read by the Python rule
    (:func:`pick_tokens`) and by its C++ twin (``kgpt::cpu::SamplingParams``, filled from this
    object by the native binding). ``generate``/``generate_stream`` build one from their keyword
    arguments.

    - temperature: >= 0; 0 is greedy (the first largest logit).
    - top_k: keep the k largest logits (ties at the k-th value all kept); None keeps all.
    - top_p: then keep the smallest set of most likely tokens whose mass reaches top_p (the most
      likely one always kept); None (or 1) keeps all.
    - stop: a token id or ids; a row ends when it emits one (the stop token is kept).
    - seed: None (fresh entropy), an int >= 0 or a numpy Generator (used as is).
    - max_new_tokens: how many tokens to add at most.
    Adding an option: a field here, its check in :meth:`checked`, the rule in
    :func:`pick_tokens`, the same in the C++ struct and pick_token (csrc/cpu/decode.*), the
    binding's one conversion (sampling_params in csrc/bindings/native_decode.cpp), and tests.
    """
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    stop: Any = None
    seed: Any = None
    max_new_tokens: int = 0

    def checked(self, vocab_size: int) -> "SamplingParams":
        """A validated copy for a vocabulary of ``vocab_size``: numbers as Python floats/ints,
        top_k clipped to the vocabulary, stop as a tuple of ids. ValueError names the field."""
        V = int(vocab_size)
        n = self.max_new_tokens
        if not _is_int(n) or n < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {n!r}")
        try:
            temperature = float(self.temperature)
        except (TypeError, ValueError):
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}") \
                from None
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        top_k = self.top_k
        if top_k is not None:
            if not _is_int(top_k) or top_k < 1:
                raise ValueError(f"top_k must be an int >= 1 (or None), got {top_k!r}")
            top_k = min(int(top_k), V)
        top_p = self.top_p
        if top_p is not None:
            try:
                top_p = float(top_p)
            except (TypeError, ValueError):
                raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}") from None
            if not 0.0 < top_p <= 1.0:
                raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        stop: Optional[Tuple[int, ...]] = None
        if self.stop is not None:
            try:
                ids = [self.stop] if _is_int(self.stop) else list(self.stop)
            except TypeError:
                ids = [None]
            if not ids or any(not _is_int(s) or not 0 <= s < V for s in ids):
                raise ValueError(f"stop must be a token id or a non-empty sequence of token ids "
                                 f"in [0, {V}), got {self.stop!r}")
            stop = tuple(int(s) for s in ids)
        seed = self.seed
        if not (seed is None or isinstance(seed, np.random.Generator)
                or (_is_int(seed) and seed >= 0)):
            raise ValueError(f"seed must be None, an int >= 0 or a numpy Generator, got {seed!r}")
        return SamplingParams(temperature, top_k, top_p, stop, seed, int(n))

    @property
    def stop_ids(self) -> Optional[np.ndarray]:
        return None if self.stop is None else np.asarray(self.stop, dtype=np.int64)

    def rng(self) -> np.random.Generator:
        """The generator the draws come from (the seed's own when it is a Generator)."""
        return self.seed if isinstance(self.seed, np.random.Generator) \
            else np.random.default_rng(self.seed)


# ---------------------------------------------------------------------------------- token choice
def pick_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator
                ) -> np.ndarray:
    """Choose one token per row of logits (B,V) -> int64 (B,) by the rule of ``params`` (a
    checked :class:`SamplingParams`). temperature 0 = argmax; else
    softmax(logits / temperature) restricted to the top_k largest (ties at the k-th value all
    kept) and then to the smallest set of most likely tokens whose probability reaches top_p (the
    most likely one always kept). One ``rng.random(B)`` draw u per call; a row takes the first
    candidate, in token-id order, whose cumulative probability exceeds u (so a zero-probability
    token is never chosen). Only the candidates are exponentiated and summed. Non-finite logits
    raise ValueError."""
    temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
    raw = np.asarray(logits)
    B, V = raw.shape
    if not np.isfinite(raw).all():
        raise ValueError("logits must be finite: the model produced NaN or inf (diverged weights?)")
    if temperature == 0.0:
        return raw.argmax(axis=1).astype(np.int64)
    u = rng.random(B)
    out = np.empty(B, dtype=np.int64)
    # With top_k, the candidates can be chosen on float32 logits directly: float32 -> float64 is
    # exact and dividing by a temperature in [1e-30, 1e30] keeps every float32 value's order and
    # ties without overflow or underflow, so the candidate set and their z are the same as from
    # the float64 division of all V logits (which this skips).
    direct = (top_k is not None and top_k < V and raw.dtype == np.float32
              and 1e-30 <= temperature <= 1e30)
    z = None if direct else np.asarray(raw, dtype=np.float64) / temperature
    for b in range(B):
        if direct:
            rb = raw[b]
            kth = np.partition(rb, V - top_k)[V - top_k]
            cand = np.flatnonzero(rb >= kth)          # ascending token ids
            zc = rb[cand].astype(np.float64) / temperature
        elif top_k is not None and top_k < V:
            zb = z[b]
            kth = np.partition(zb, V - top_k)[V - top_k]
            cand = np.flatnonzero(zb >= kth)          # ascending token ids
            zc = zb[cand]
        else:
            cand, zc = None, z[b]
        probs = np.exp(zc - zc.max())
        probs /= probs.sum()
        if top_p is not None and top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_p = probs[order]
            keep_sorted = (np.cumsum(sorted_p) - sorted_p) < top_p   # mass before < p
            keep_sorted[0] = True
            keep = np.zeros_like(keep_sorted)
            keep[order] = keep_sorted
            probs = np.where(keep, probs, 0.0)
        cdf = np.cumsum(probs)
        i = min(int(np.count_nonzero(cdf <= u[b] * cdf[-1])), cdf.size - 1)
        out[b] = i if cand is None else cand[i]
    return out


# ---------------------------------------------------------------------------------- decoding
def _logit_steps(model, tokens: np.ndarray, n_steps: int, choose: Callable[[np.ndarray], Any],
                 use_cache: bool = True) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Core loop over a validated prompt (B,T) int32: yields (logits (B,V), a fresh host numpy
    copy in the model's dtype; chosen tokens (B,) int32) per step, where ``choose(logits)`` picks
    the tokens. Kept lean: after each step has streamed every weight through the caches, each
    Python operation here runs cold."""
    maxT = model.config.block_size
    be = model.backend
    B, T0 = tokens.shape
    seq = np.empty((B, T0 + n_steps), np.int32)      # the prompt, then the chosen tokens
    seq[:, :T0] = tokens
    end = T0
    kv = model.kv_cache(B) if use_cache else None
    n_cached = 0
    for i in range(n_steps):
        if not use_cache:
            logits = model.next_logits(seq[:, max(0, end - maxT):end])
        elif i == 0 or n_cached == maxT:  # first step or the window slides: (re)build the cache
            window = np.ascontiguousarray(seq[:, max(0, end - maxT):end])
            logits = model.prefill(kv, window)
            n_cached = window.shape[1]
        else:
            logits = model.decode_step(kv, seq[:, end - 1], n_cached)
            n_cached += 1
        host = np.array(be.to_numpy(logits))
        nxt = np.asarray(choose(host), dtype=np.int32)
        seq[:, end] = nxt
        end += 1
        yield host, nxt


def _params(model, max_new_tokens, temperature, top_k, top_p, seed, stop) -> SamplingParams:
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, seed=seed,
                          max_new_tokens=max_new_tokens).checked(model.config.vocab_size)


def generate_stream(model, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Any = None,
                    stop: Any = None, use_cache: bool = True) -> Iterator[Any]:
    """Yield new tokens one step at a time: an int for a 1-D prompt, an int32 array (B,) for a
    2-D one (B prompts of equal length). ``stop``: a token id or a sequence of token ids; a row
    ends when it emits any of them (the stop token is yielded). Rows that ended are padded with
    their stop token until every row has ended. Arguments are validated before the first yield
    (see :class:`SamplingParams`)."""
    tokens, one_d = _check_prompt(model, prompt_ids)
    sp = _params(model, max_new_tokens, temperature, top_k, top_p, seed, stop)
    return _stream(model, tokens, one_d, sp, sp.rng(), use_cache)


def _stream(model, tokens: np.ndarray, one_d: bool, sp: SamplingParams,
            rng: np.random.Generator, use_cache: bool) -> Iterator[Any]:
    stop_ids = sp.stop_ids
    done = np.zeros(tokens.shape[0], dtype=bool)
    last = np.zeros(tokens.shape[0], dtype=np.int32)

    def choose(logits):
        t = pick_tokens(logits, sp, rng).astype(np.int32)
        return t if stop_ids is None else np.where(done, last, t)

    for _, nxt in _logit_steps(model, tokens, sp.max_new_tokens, choose, use_cache):
        if stop_ids is not None:
            done |= np.isin(nxt, stop_ids)
            last[...] = nxt
        yield int(nxt[0]) if one_d else nxt.copy()
        if done.all():
            return


def _cached_decoder(model, B: int) -> Optional[Any]:
    """generate()'s KVCache for batch size B, kept on the model between calls: building one
    allocates and zero-fills every layer's KV cache (about 1 ms on S, 1% of a 96-token call).
    None (and nothing kept) where its fused decoder cannot sample (the backend has none for this
    model or batch). Only generate(), which runs to completion, reuses it; generate_stream()
    iterators build their own, so several can be interleaved. The prefill rewrites every cache
    position read."""
    dec = model._generate_decoder
    if dec is None or dec.B != B:
        model._generate_decoder = None  # free the old caches before allocating new ones
        dec = model.kv_cache(B)
        if dec.fused is None or not hasattr(dec.fused, "sample"):
            return None
        model._generate_decoder = dec
    return dec


_LM_FILTER_MIN_STEPS = 8


def _generate_fused(model, tokens: np.ndarray, sp: SamplingParams,
                    rng: np.random.Generator) -> Optional[np.ndarray]:
    """generate() through the fused decoder's own sampling loop (``Decoder.sample``: the decode
    step and pick_tokens' rule per token in C++), or None where there is none. The same tokens
    as the generate_stream path: the same logits, the same rule, the same draws (one
    ``rng.random(B)`` per sampled step, in order; a chunk is drawn at once and the generator
    rewound to what was used), the same window slides and stop handling. The rule runs in C++
    float64 arithmetic whose exp can differ from NumPy's in the last bit, which could change a
    token only when a draw falls within ~1e-16 of a cumulative-probability boundary."""
    B, T0 = tokens.shape
    n, temperature = sp.max_new_tokens, sp.temperature
    maxT = model.config.block_size
    if getattr(model.backend, "make_decoder", None) is None:
        return None  # no fused decoder on this backend: do not build caches for nothing
    if temperature != 0.0 and not 1e-30 <= temperature <= 1e30:
        return None  # where logits / temperature can overflow, keep pick_tokens' float64 route
    dec = _cached_decoder(model, B)
    if dec is None:
        return None
    seq = np.empty((B, T0 + n), np.int32)
    seq[:, :T0] = tokens
    end, n_cached = T0, 0
    done = np.zeros(B, np.uint8)
    stop_ids = sp.stop_ids
    stop = np.asarray(sp.stop if sp.stop is not None else [], np.int32)

    def push(logits) -> bool:  # one token chosen in Python; True when every row has stopped
        nonlocal end
        t = pick_tokens(logits, sp, rng).astype(np.int32)
        if stop_ids is not None:
            t = np.where(done.astype(bool), seq[:, end - 1], t)
            done[np.isin(t, stop)] = 1
        seq[:, end] = t
        end += 1
        return stop_ids is not None and bool(done.all())

    while end - T0 < n:
        if end == T0 or n_cached == maxT:  # first step or the window slides: (re)build the cache
            window = np.ascontiguousarray(seq[:, max(0, end - maxT):end])
            n_cached = window.shape[1]
            if push(np.array(model.prefill(dec, window))):
                break
            continue
        k = min(n - (end - T0), maxT - n_cached)
        state = rng.bit_generator.state
        u = rng.random((k, B)) if temperature != 0.0 else np.zeros((k, B))
        out = np.empty((k, B), np.int32)
        tok = seq[:, end - 1].copy()       # updated in place by sample()
        # lm_filter: greedy and top-k read a bfloat16 copy of the lm_head to bound the logits and
        # compute exact ones only for the tokens that can be chosen (the same tokens, 11% fewer
        # bytes per step on S); its table is rebuilt on each call, which pays from ~8 steps on.
        got, bad = dec.fused.sample(out, tok, n_cached, u, sp, stop, done, dec.logits,
                                    lm_filter=k >= _LM_FILTER_MIN_STEPS)
        seq[:, end:end + got] = out[:got].T
        end += got
        n_cached += got
        if temperature != 0.0 and got < k:  # give back the draws not used
            rng.bit_generator.state = state
            rng.random((got, B))
        if bad:  # that step ran but its logits are not finite: choose as pick_tokens does
            n_cached += 1
            if push(dec.logits.copy()):
                break
        elif stop_ids is not None and done.all():
            break
    return seq[:, :end]


def generate(model, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Any = None,
             stop: Any = None, use_cache: bool = True) -> np.ndarray:
    """Prompt plus up to ``max_new_tokens`` sampled tokens, as an int32 numpy array of shape
    (B, T + n), B = 1 for a 1-D prompt (n < max_new_tokens when every row hit ``stop``).
    temperature 0 is greedy; ``seed`` (int, Generator, or None for fresh entropy) makes sampling
    reproducible. See :func:`generate_stream` for ``stop`` and :class:`SamplingParams` for every
    option. With the KV cache on a backend whose fused decoder samples in its own loop (native),
    the whole loop runs there."""
    tokens, _ = _check_prompt(model, prompt_ids)
    sp = _params(model, max_new_tokens, temperature, top_k, top_p, seed, stop)
    with model.lock:  # the KV cache kept on the model serves one call at a time
        return _generate(model, tokens, sp, use_cache)


def _generate(model, tokens: np.ndarray, sp: SamplingParams, use_cache: bool) -> np.ndarray:
    rng = sp.rng()
    if use_cache and sp.max_new_tokens > 0:
        fast = _generate_fused(model, tokens, sp, rng)
        if fast is not None:
            return fast
    steps: List[Any] = list(_stream(model, tokens, False, sp, rng, use_cache))
    new = np.stack(steps, axis=1) if steps else np.zeros((tokens.shape[0], 0), np.int32)
    return np.concatenate([tokens, new.astype(np.int32)], axis=1)
