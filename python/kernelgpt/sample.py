"""Autoregressive sampling for :class:`kernelgpt.model.GPT`, with a KV cache.

The prompt is run once through the model's normal forward (the prefill), which also copies each
layer's keys and values into per-layer caches (B,NH,maxT,HS) held as backend arrays; each new
token then runs one position through the blocks (``backend.attention_decode`` and matmuls over B
rows). When the sequence reaches block_size the context window slides: the cache is rebuilt from
the last block_size tokens, so cached and uncached generation see exactly the same context.
Token choice (repetition penalty, temperature, top-k, top-p, min-p; see SamplingParams) happens
on the host in float64 from an explicit
``numpy.random.Generator`` (the top-k candidates are found on the float32 logits, which selects
the same set); nothing here keeps state between calls. A ragged batch (prompts of different
lengths) decodes each row at its own positions, its rows together through the fused decoder
where the backend has one (_ragged_logit_steps).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from .model import GPT, KVCache


# ---------------------------------------------------------------------------------- arguments
def _ragged(prompt_ids: Any) -> bool:
    """Whether prompt_ids is a list/tuple of 1-D prompts of different lengths."""
    a = prompt_ids
    if not isinstance(a, (list, tuple)) or len(a) < 2:
        return False
    if not all(isinstance(r, (list, tuple)) or (isinstance(r, np.ndarray) and r.ndim == 1)
               for r in a):
        return False
    return len({len(r) for r in a}) > 1


def _check_prompt(model: GPT, prompt_ids: Any) -> Tuple[Any, bool]:
    """-> (int32 array (B,T), or for a ragged batch a list of B int32 arrays (T_b,); whether the
    prompt was 1-D)."""
    if _ragged(prompt_ids):
        rows = []
        for i, r in enumerate(prompt_ids):
            if len(r) == 0:
                raise ValueError(f"prompt_ids[{i}] is empty: every prompt of a ragged batch "
                                 f"needs at least one token id")
            try:
                rows.append(_check_prompt(model, np.asarray(r))[0][0])
            except ValueError as e:
                raise ValueError(f"prompt_ids[{i}]: {e}") from None
        return rows, False
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


def _number(name: str, v: Any, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number {what}, got {v!r}") from None


def _token_ids(name: str, v: Any, V: int) -> Optional[Tuple[int, ...]]:
    """None, or a token id / non-empty sequence of ids in [0, V) as a tuple."""
    if v is None:
        return None
    try:
        ids = [v] if _is_int(v) else list(v)
    except TypeError:
        ids = [None]
    if not ids or any(not _is_int(s) or not 0 <= s < V for s in ids):
        raise ValueError(f"{name} must be a token id or a non-empty sequence of token ids "
                         f"in [0, {V}), got {v!r}")
    return tuple(int(s) for s in ids)


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
    - min_p: then keep the tokens whose probability is >= min_p times the most likely one's
      (in [0, 1]; None or 0 keeps all).
    - repetition_penalty: > 0 (None or 1: none); before anything else, the logit of every id
      already in the row (prompt and generated, each id once) is divided by it where > 0 and
      multiplied by it otherwise (the CTRL rule), in float64; it applies to greedy too.
    - eos_token_id: a token id or ids, an alias of ``stop`` (the checked copy's ``stop`` holds
      both, stop's ids first).
    - num_return_sequences: >= 1; n > 1 samples n continuations of one prompt (1-D or one row)
      in one batch of n rows, each row with its own draws.
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
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    eos_token_id: Any = None
    num_return_sequences: int = 1

    def checked(self, vocab_size: int) -> "SamplingParams":
        """A validated copy for a vocabulary of ``vocab_size``: numbers as Python floats/ints,
        top_k clipped to the vocabulary, stop (with eos_token_id's ids) as a tuple of ids, min_p
        0.0 and repetition_penalty 1.0 where not set. ValueError names the field."""
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
        stop = _token_ids("stop", self.stop, V)
        eos = _token_ids("eos_token_id", self.eos_token_id, V)
        if eos is not None:
            stop = tuple(dict.fromkeys((stop or ()) + eos))
        min_p = 0.0 if self.min_p is None else _number("min_p", self.min_p, "in [0, 1]")
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"min_p must lie in [0, 1], got {self.min_p!r}")
        rp = 1.0 if self.repetition_penalty is None else \
            _number("repetition_penalty", self.repetition_penalty, "> 0")
        if not (math.isfinite(rp) and rp > 0.0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got "
                             f"{self.repetition_penalty!r}")
        nrs = self.num_return_sequences
        if not _is_int(nrs) or nrs < 1:
            raise ValueError(f"num_return_sequences must be an int >= 1, got {nrs!r}")
        seed = self.seed
        if not (seed is None or isinstance(seed, np.random.Generator)
                or (_is_int(seed) and seed >= 0)):
            raise ValueError(f"seed must be None, an int >= 0 or a numpy Generator, got {seed!r}")
        return SamplingParams(temperature, top_k, top_p, stop, seed, int(n), min_p, rp, eos,
                              int(nrs))

    @property
    def stop_ids(self) -> Optional[np.ndarray]:
        return None if self.stop is None else np.asarray(self.stop, dtype=np.int64)

    def rng(self) -> np.random.Generator:
        """The generator the draws come from (the seed's own when it is a Generator)."""
        return self.seed if isinstance(self.seed, np.random.Generator) \
            else np.random.default_rng(self.seed)


# ---------------------------------------------------------------------------------- token choice
def pick_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
                seen: Any = None) -> np.ndarray:
    """Choose one token per row of logits (B,V) -> int64 (B,) by the rule of ``params`` (a
    checked :class:`SamplingParams`). With a repetition_penalty p != 1, ``seen`` (B,V), true at
    the ids row b already holds (prompt and generated), is required: those logits, in float64,
    are divided by p where > 0 and multiplied by p otherwise, before anything else. Then:
    temperature 0 = argmax; else softmax(logits / temperature) restricted to the top_k largest
    (ties at the k-th value all kept), then to the smallest set of most likely tokens whose
    probability reaches top_p (the most likely one always kept), then to the tokens whose
    probability is >= min_p times the largest. One ``rng.random(B)`` draw u per call; a row takes
    the first candidate, in token-id order, whose cumulative probability exceeds u (so a
    zero-probability token is never chosen). Only the candidates are exponentiated and summed.
    Non-finite logits raise ValueError."""
    temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
    min_p = params.min_p or 0.0
    rp = 1.0 if params.repetition_penalty is None else params.repetition_penalty
    raw = np.asarray(logits)
    B: int
    V: int
    B, V = raw.shape
    if not np.isfinite(raw).all():
        raise ValueError("logits must be finite: the model produced NaN or inf (diverged weights?)")
    pen = None
    if rp != 1.0:
        if seen is None:
            raise ValueError("pick_tokens needs seen (B, V) with a repetition_penalty")
        mask = np.asarray(seen, dtype=bool)
        if mask.shape != (B, V):
            raise ValueError(f"seen must have the shape of logits {(B, V)}, got {mask.shape}")
        r64 = np.asarray(raw, dtype=np.float64)
        pen = np.where(mask, np.where(r64 > 0.0, r64 / rp, r64 * rp), r64)
    if temperature == 0.0:
        greedy: np.ndarray = (raw if pen is None else pen).argmax(axis=1).astype(np.int64)
        return greedy
    u = rng.random(B)
    out = np.empty(B, dtype=np.int64)
    # With top_k, the candidates can be chosen on float32 logits directly: float32 -> float64 is
    # exact and dividing by a temperature in [1e-30, 1e30] keeps every float32 value's order and
    # ties without overflow or underflow, so the candidate set and their z are the same as from
    # the float64 division of all V logits (which this skips).
    direct = (pen is None and top_k is not None and top_k < V and raw.dtype == np.float32
              and 1e-30 <= temperature <= 1e30)
    if direct:
        z = None
    elif pen is None:
        z = np.asarray(raw, dtype=np.float64) / temperature
    else:
        z = pen / temperature
    for b in range(B):
        if direct:
            assert top_k is not None  # direct is computed only with a top_k
            rb = raw[b]
            kth = np.partition(rb, V - top_k)[V - top_k]
            cand = np.flatnonzero(rb >= kth)          # ascending token ids
            zc = rb[cand].astype(np.float64) / temperature
        elif top_k is not None and top_k < V:
            assert z is not None  # computed above whenever not direct
            zb = z[b]
            kth = np.partition(zb, V - top_k)[V - top_k]
            cand = np.flatnonzero(zb >= kth)          # ascending token ids
            zc = zb[cand]
        else:
            assert z is not None  # computed above whenever not direct
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
        if min_p > 0.0:
            probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
        cdf = np.cumsum(probs)
        i = min(int(np.count_nonzero(cdf <= u[b] * cdf[-1])), cdf.size - 1)
        out[b] = i if cand is None else cand[i]
    return out


# ---------------------------------------------------------------------------------- decoding
class _Window:
    """Decoding state of B rows of equal length: the sequence so far (prompt, then the chosen
    tokens) and, with the cache, the KV cache over its last window."""

    def __init__(self, model: GPT, tokens: np.ndarray, n_steps: int, use_cache: bool,
                 weights: str = "fp32"):
        B, T0 = tokens.shape
        self.model = model
        self.seq = np.empty((B, T0 + n_steps), np.int32)
        self.seq[:, :T0] = tokens
        self.end = T0
        self.kv = model.kv_cache(B, weights) if use_cache else None
        self.n_cached = 0

    def logits(self) -> np.ndarray:
        """The next token's logits (B,V), a fresh host numpy copy in the model's dtype."""
        model, seq, end = self.model, self.seq, self.end
        maxT = model.config.block_size
        if self.kv is None:
            logits = model.next_logits(seq[:, max(0, end - maxT):end])
        elif self.n_cached in (0, maxT):  # first step or the window slides: (re)build the cache
            window = np.ascontiguousarray(seq[:, max(0, end - maxT):end])
            logits = model.prefill(self.kv, window)
            self.n_cached = window.shape[1]
        else:
            logits = model.decode_step(self.kv, seq[:, end - 1], self.n_cached)
            self.n_cached += 1
        return np.array(model.backend.to_numpy(logits))

    def push(self, nxt: np.ndarray) -> None:
        self.seq[:, self.end] = nxt
        self.end += 1


def _logit_steps(model: GPT, tokens: np.ndarray, n_steps: int, choose: Callable[[np.ndarray], Any],
                 use_cache: bool = True, weights: str = "fp32"
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Core loop over a validated prompt (B,T) int32: yields (logits (B,V), a fresh host numpy
    copy in the model's dtype; chosen tokens (B,) int32) per step, where ``choose(logits)`` picks
    the tokens. When the sequence reaches block_size the window slides and the cache is rebuilt
    from the last block_size tokens."""
    st = _Window(model, tokens, n_steps, use_cache, weights)
    for _ in range(n_steps):
        host = st.logits()
        nxt = np.asarray(choose(host), dtype=np.int32)
        st.push(nxt)
        yield host, nxt


def _ragged_logit_steps(model: GPT, rows: List[np.ndarray], n_steps: int,
                        choose: Callable[[np.ndarray], Any], use_cache: bool,
                        done: np.ndarray, weights: str = "fp32"
                        ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """_logit_steps for a ragged batch: B prompts of different lengths. The rows' logits are
    stacked (B,V) for one ``choose`` per step; every row's logits are exactly those of that row
    alone. With the KV cache and a fused decoder for B rows (native backend, B <= 16), the rows
    decode together (_ragged_batched_steps); otherwise row by row (_ragged_rowwise_steps)."""
    if use_cache and n_steps > 0:
        kv = model.kv_cache(len(rows), weights)
        if kv.fused is not None:
            return _ragged_batched_steps(model, kv, rows, n_steps, choose, done)
    return _ragged_rowwise_steps(model, rows, n_steps, choose, use_cache, done, weights)


def _ragged_batched_steps(model: GPT, kv: KVCache, rows: List[np.ndarray], n_steps: int,
                          choose: Callable[[np.ndarray], Any], done: np.ndarray
                          ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """A ragged batch through one fused decoder of B rows (kv: its KVCache), one decoding step
    for all rows at a time. Row b's cache holds its own positions from 0 at its first token
    (the per-row offset that left padding gives, without the padded slots): each step embeds
    row b's token at row b's own position (learned positions and rotary angles alike), writes
    its cache there and attends to that row's positions only (its mask: its own length), so the
    decoder's row b computes exactly what the row alone does (its rows are bitwise the rows
    alone). A row's prompt, and its window each time the row reaches block_size, is prefilled
    alone (batch 1, as the row alone does) and copied into its rows of the caches. Rows marked
    in ``done`` keep their last logits (the caller repeats their last token); the step still
    computes them, at a position whose cache slot they never read again."""
    B, maxT = len(rows), model.config.block_size
    seqs = [np.empty(len(r) + n_steps, np.int32) for r in rows]
    for sq, r in zip(seqs, rows):
        sq[:len(r)] = r
    ends = [len(r) for r in rows]
    n_cached = np.zeros(B, np.int64)
    one = model.kv_cache(1)  # the prefills (float32 whatever the decoding steps read)
    host: Optional[np.ndarray] = None

    def refill(b: int) -> np.ndarray:  # prefill row b's window alone, into row b of the caches
        window = np.ascontiguousarray(seqs[b][max(0, ends[b] - maxT):ends[b]][None])
        T = window.shape[1]
        lg = np.asarray(model.backend.to_numpy(model.prefill(one, window)))
        for (k, v), (k1, v1) in zip(kv.caches, one.caches):
            k[b, :, :T] = k1[0, :, :T]
            v[b, :, :T] = v1[0, :, :T]
        n_cached[b] = T
        row: np.ndarray = lg[0]
        return row

    for _ in range(n_steps):
        if host is None:
            first = [refill(b) for b in range(B)]
            host = np.empty((B, first[0].shape[0]), first[0].dtype)
            host[...] = first
        else:
            # rows whose window is full rebuild it alone (as the row alone does); the others take
            # one batched step
            step = np.zeros(B, bool)
            for b in range(B):
                if done[b]:
                    continue
                if n_cached[b] == maxT:
                    host[b] = refill(b)
                else:
                    step[b] = True
            if step.any():
                tok = np.array([sq[e - 1] for sq, e in zip(seqs, ends)], np.int32)
                # rows not stepped write a slot they never read again before rewriting it
                pos = np.where(step, n_cached, np.minimum(n_cached, maxT - 1)).astype(np.int64)
                lg = np.asarray(model.backend.to_numpy(model.decode_step(kv, tok, pos)))
                host[step] = lg[step]
                n_cached[step] += 1
        nxt = np.asarray(choose(host.copy()), dtype=np.int32)
        for b in range(B):
            if not done[b]:
                seqs[b][ends[b]] = nxt[b]
                ends[b] += 1
        yield host.copy(), nxt


def _ragged_rowwise_steps(model: GPT, rows: List[np.ndarray], n_steps: int,
                          choose: Callable[[np.ndarray], Any], use_cache: bool,
                          done: np.ndarray, weights: str = "fp32"
                          ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """_logit_steps for a ragged batch, row by row: each row keeps its own positions and its own
    KV cache (batch 1), so every row's logits are computed exactly as for that row alone. Rows
    marked in ``done`` are not computed again (their last logits are passed on; the caller
    repeats their last token)."""
    states = [_Window(model, r[None], n_steps, use_cache, weights) for r in rows]
    host = None
    for _ in range(n_steps):
        for b, st in enumerate(states):
            if host is None or not done[b]:
                lg = st.logits()
                if host is None:
                    host = np.empty((len(rows), lg.shape[1]), lg.dtype)
                host[b] = lg[0]
        assert host is not None  # allocated by the first row's step above
        nxt = np.asarray(choose(host.copy()), dtype=np.int32)
        for b, st in enumerate(states):
            if not done[b]:
                st.push(nxt[b:b + 1])
        yield host.copy(), nxt


def _penalised(sp: SamplingParams) -> bool:
    return sp.repetition_penalty is not None and sp.repetition_penalty != 1.0


def _seen(tokens: Any, V: int, dtype: Any = bool) -> np.ndarray:
    """(B, V): true at the ids each prompt row holds (the repetition penalty's start)."""
    seen = np.zeros((len(tokens), V), dtype)
    for b, row in enumerate(tokens):
        seen[b, row] = 1
    return seen


def _weights(weights: Any, use_cache: bool) -> str:
    """The checked ``weights=`` format (kernelgpt.quant); a quantized one needs the KV cache."""
    from .quant import check_format
    w = check_format(weights)
    if w != "fp32" and not use_cache:
        raise ValueError(f"weights={w!r} needs use_cache=True: the quantized matrices serve the "
                         f"cached decoding steps")
    return w


def _params(model: GPT, max_new_tokens: int, temperature: float, top_k: Optional[int],
            top_p: Optional[float], seed: Any, stop: Any, **more: Any) -> SamplingParams:
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, seed=seed,
                          max_new_tokens=max_new_tokens, **more).checked(model.config.vocab_size)


def _expand(tokens: Any, one_d: bool, sp: SamplingParams) -> Tuple[Any, bool]:
    """num_return_sequences n > 1: the one prompt row repeated n times (each row draws its own)."""
    n = sp.num_return_sequences
    if n == 1:
        return tokens, one_d
    if isinstance(tokens, list) or tokens.shape[0] != 1:
        raise ValueError(f"num_return_sequences={n} needs one prompt (1-D, or 2-D with one row), "
                         f"got {len(tokens)} prompts")
    return np.repeat(tokens, n, axis=0), False


def generate_stream(model: GPT, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Any = None,
                    stop: Any = None, use_cache: bool = True, *, min_p: Optional[float] = None,
                    repetition_penalty: Optional[float] = None, eos_token_id: Any = None,
                    num_return_sequences: int = 1, weights: str = "fp32") -> Iterator[Any]:
    """Yield new tokens one step at a time: an int for a 1-D prompt, an int32 array (B,) for a
    2-D one (B prompts of equal length), for a ragged batch (a list of B prompts of different
    lengths) and for num_return_sequences > 1 (B = n). ``stop`` (or its alias
    ``eos_token_id``): a token id or a sequence of token ids; a row ends when it emits any of
    them (the stop token is yielded). Rows that ended are padded with their stop token until
    every row has ended. Arguments are validated before the first yield (see
    :class:`SamplingParams`). ``weights``: "fp32" (default, exact), "bf16" or "int8": the format
    the decoding steps read the matrices in (see :mod:`kernelgpt.quant`; the prompt's prefill
    stays float32)."""
    tokens, one_d = _check_prompt(model, prompt_ids)
    wfmt = _weights(weights, use_cache)
    sp = _params(model, max_new_tokens, temperature, top_k, top_p, seed, stop, min_p=min_p,
                 repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                 num_return_sequences=num_return_sequences)
    tokens, one_d = _expand(tokens, one_d, sp)
    return _stream(model, tokens, one_d, sp, sp.rng(), use_cache, wfmt)


def _stream(model: GPT, tokens: Any, one_d: bool, sp: SamplingParams,
            rng: np.random.Generator, use_cache: bool, weights: str = "fp32") -> Iterator[Any]:
    """tokens: (B,T) int32, or a list of B int32 rows (a ragged batch). ``rng`` only needs
    ``random(B)``: one call per step, row b takes the b-th draw."""
    ragged = isinstance(tokens, list)
    B = len(tokens)
    stop_ids = sp.stop_ids
    done = np.zeros(B, dtype=bool)
    last = np.zeros(B, dtype=np.int32)
    seen = _seen(tokens, model.config.vocab_size) if _penalised(sp) else None
    rows = np.arange(B)

    def choose(logits: np.ndarray) -> np.ndarray:
        t = pick_tokens(logits, sp, rng, seen).astype(np.int32)
        if stop_ids is not None:
            t = np.where(done, last, t)
        if seen is not None:
            seen[rows, t] = True
        return t

    steps = (_ragged_logit_steps(model, tokens, sp.max_new_tokens, choose, use_cache, done,
                                 weights)
             if ragged else _logit_steps(model, tokens, sp.max_new_tokens, choose, use_cache,
                                         weights))
    for _, nxt in steps:
        if stop_ids is not None:
            done |= np.isin(nxt, stop_ids)
            last[...] = nxt
        yield int(nxt[0]) if one_d else nxt.copy()
        if done.all():
            return


def _cached_decoder(model: GPT, B: int, weights: str = "fp32") -> Optional[KVCache]:
    """generate()'s KVCache for batch size B, kept on the model between calls: building one
    allocates and zero-fills every layer's KV cache (about 1 ms on S, 1% of a 96-token call).
    None (and nothing kept) where its fused decoder cannot sample (the backend has none for this
    model or batch). Only generate(), which runs to completion, reuses it; generate_stream()
    iterators build their own, so several can be interleaved. The prefill rewrites every cache
    position read. With quantized ``weights`` it is also replaced when its copy is not the
    model's current one (kernelgpt.quant.quantized: the weights changed)."""
    dec = model.generate_cache
    q = None
    if weights != "fp32":
        from .quant import quantized
        q = quantized(model, weights)
    if dec is None or dec.B != B or dec.weights != weights or dec.qweights is not q:
        model.generate_cache = None  # free the old caches before allocating new ones
        dec = model.kv_cache(B, weights)
        if dec.fused is None or not hasattr(dec.fused, "sample"):
            return None
        model.generate_cache = dec
    return dec


_LM_FILTER_MIN_STEPS = 8


def _generate_fused(model: GPT, tokens: np.ndarray, sp: SamplingParams,
                    rng: np.random.Generator, weights: str = "fp32") -> Optional[np.ndarray]:
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
    dec = _cached_decoder(model, B, weights)
    if dec is None:
        return None
    seq = np.empty((B, T0 + n), np.int32)
    seq[:, :T0] = tokens
    end, n_cached = T0, 0
    done = np.zeros(B, np.uint8)
    stop_ids = sp.stop_ids
    stop = np.asarray(sp.stop if sp.stop is not None else [], np.int32)
    # the repetition penalty's ids per row, updated by sample() and by push()
    seen = _seen(tokens, model.config.vocab_size, np.uint8) if _penalised(sp) else None
    rows = np.arange(B)

    # one token chosen in Python; True when every row has stopped
    def push(logits: np.ndarray) -> bool:
        nonlocal end
        t = pick_tokens(logits, sp, rng, seen).astype(np.int32)
        if stop_ids is not None:
            t = np.where(done.astype(bool), seq[:, end - 1], t)
            done[np.isin(t, stop)] = 1
        if seen is not None:
            seen[rows, t] = 1
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
        # Decoder.sample does not use it with a repetition penalty (which changes the logits
        # after the lm_head, outside the filter's bound), nor with quantized weights (the filter
        # bounds the float32 lm_head).
        assert dec.fused is not None  # _cached_decoder returns a KVCache whose decoder samples
        got, bad = dec.fused.sample(out, tok, n_cached, u, sp, stop, done, dec.logits,
                                    lm_filter=k >= _LM_FILTER_MIN_STEPS and weights == "fp32",
                                    seen=seen)
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


def generate(model: GPT, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Any = None,
             stop: Any = None, use_cache: bool = True, *, min_p: Optional[float] = None,
             repetition_penalty: Optional[float] = None, eos_token_id: Any = None,
             num_return_sequences: int = 1, weights: str = "fp32") -> Any:
    """Prompt plus up to ``max_new_tokens`` sampled tokens, as an int32 numpy array of shape
    (B, T + n), B = 1 for a 1-D prompt and B = num_return_sequences for n > 1 copies of one
    prompt (n < max_new_tokens when every row hit ``stop``/``eos_token_id``).
    temperature 0 is greedy; ``seed`` (int, Generator, or None for fresh entropy) makes sampling
    reproducible: each step draws ``rng.random(B)`` once and row b takes the b-th draw. See
    :func:`generate_stream` for ``stop`` and :class:`SamplingParams` for every option. With the
    KV cache on a backend whose fused decoder samples in its own loop (native), the whole loop
    runs there.

    Ragged batch: ``prompt_ids`` a list of B prompts of different lengths. Each row is decoded
    at its own positions with its own KV cache (nothing padded is attended to) and the tokens
    are chosen together, one ``rng.random(B)`` per step, row b taking the b-th draw: row b gives
    exactly the tokens it gives alone when its own draws are those numbers (for greedy: exactly
    its tokens alone). Returns a list of B int32 arrays, row b = its prompt and its new tokens,
    ending at its own stop token.

    ``weights``: "fp32" (default: the model's float32 weights, exact), "bf16" or "int8" (Q8_0):
    the decoding steps read the matrices (qkv, projections, MLP, lm_head) in that format, from
    copies made once and kept on the model until its weights change; the prompt's prefill, the
    embeddings, norms, biases and the KV cache stay float32. See :mod:`kernelgpt.quant`."""
    tokens, one_d = _check_prompt(model, prompt_ids)
    wfmt = _weights(weights, use_cache)
    sp = _params(model, max_new_tokens, temperature, top_k, top_p, seed, stop, min_p=min_p,
                 repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                 num_return_sequences=num_return_sequences)
    tokens, _ = _expand(tokens, one_d, sp)
    with model.lock:  # the KV cache kept on the model serves one call at a time
        return _generate(model, tokens, sp, use_cache, wfmt)


def _generate(model: GPT, tokens: Any, sp: SamplingParams, use_cache: bool,
              weights: str = "fp32") -> Any:
    rng = sp.rng()
    if isinstance(tokens, list):
        return _generate_ragged(model, tokens, sp, rng, use_cache, weights)
    if use_cache and sp.max_new_tokens > 0:
        fast = _generate_fused(model, tokens, sp, rng, weights)
        if fast is not None:
            return fast
    steps: List[Any] = list(_stream(model, tokens, False, sp, rng, use_cache, weights))
    new = np.stack(steps, axis=1) if steps else np.zeros((tokens.shape[0], 0), np.int32)
    return np.concatenate([tokens, new.astype(np.int32)], axis=1)


def _generate_ragged(model: GPT, rows: List[np.ndarray], sp: SamplingParams, rng: Any,
                     use_cache: bool, weights: str = "fp32") -> List[np.ndarray]:
    steps: List[Any] = list(_stream(model, rows, False, sp, rng, use_cache, weights))
    new = np.stack(steps, axis=1) if steps else np.zeros((len(rows), 0), np.int32)
    out = []
    stop_ids = sp.stop_ids  # None exactly when sp.stop is
    for row, nb in zip(rows, new.astype(np.int32)):
        if stop_ids is not None:
            hit = np.flatnonzero(np.isin(nb, stop_ids))
            if hit.size:
                nb = nb[:hit[0] + 1]
        out.append(np.concatenate([row, nb]))
    return out
