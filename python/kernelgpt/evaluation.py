"""Evaluation over a whole token stream, in order: loss, perplexity and bits per byte.

``evaluate_tokens(model, tokens)`` (also ``GPT.evaluate``) scores every token after the first
exactly once, left to right. Windows (``stride``, default ``block_size``):

- ``stride == block_size`` (default): consecutive, non-overlapping windows. Window k reads tokens
  [k*T, k*T + T) and predicts tokens [k*T + 1, k*T + T + 1); the last window is shorter when the
  stream does not divide evenly. A token at the start of a window sees no context from the
  previous window, so this is the cheapest and most pessimistic figure. Full windows are scored
  ``batch_size`` at a time by the model's fused classifier (the loss training reports).
- ``stride < block_size``: a sliding window. The first window predicts targets 1..T; each next
  window ends ``stride`` targets further and reads the ``block_size`` tokens before its end
  (fewer at the start), scoring only its last ``stride`` new targets, so every scored token (past
  the first window) sees at least ``block_size - stride`` tokens of context. It costs
  ``block_size / stride`` times as much and reads logits, so it needs B*T*V floats per batch.

Bits per byte: total nats / (ln 2 * total UTF-8 bytes of the predicted tokens), where a token's
bytes are its decoded bytes and a special token (a document separator) counts 0 bytes: its cost
is charged to the text around it. It is the one figure comparable across tokenizers (a larger
vocabulary gives fewer, harder tokens; the nats per byte of the text do not depend on that).
``kernelgpt.evaluate(model, tokenizer, text)`` encodes the text and, where the tokenizer has an
``<|endoftext|>`` token in the model's vocabulary, puts it first (as a document start), so every
token of the text is predicted and the byte count is exactly ``len(text.encode())``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

LN2 = math.log(2.0)


def token_byte_lengths(tokenizer: Any, vocab_size: Optional[int] = None) -> np.ndarray:
    """int64 array: the UTF-8 byte length of each token id (0 for special tokens and for ids
    the tokenizer does not know), of length ``vocab_size`` (default the tokenizer's)."""
    n_tok = int(tokenizer.vocab_size)
    V = n_tok if vocab_size is None else int(vocab_size)
    out = np.zeros(V, np.int64)
    specials = set((getattr(tokenizer, "special_tokens", None) or {}).values())
    for i in range(min(V, n_tok)):
        if i in specials:
            continue
        try:
            out[i] = len(tokenizer.token_bytes(i))
        except (ValueError, KeyError, IndexError):
            out[i] = 0  # an id with no token (gaps in a foreign vocabulary)
    return out


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="tok", unit_scale=total >= 10_000, dynamic_ncols=True, desc="eval")


def evaluate_tokens(model: Any, tokens: Any, *, batch_size: int = 8,
                    block_size: Optional[int] = None, stride: Optional[int] = None,
                    token_bytes: Optional[np.ndarray] = None,
                    progress: bool = False) -> Dict[str, Any]:
    """Score ``tokens`` (1-D ids) with ``model``; see the module docstring for the windows.

    Returns a dict: ``n_tokens`` (tokens predicted: len(tokens) - 1), ``total_nats``, ``loss``
    (mean nats per predicted token), ``perplexity`` (exp(loss)), ``block_size``, ``stride``, and
    with ``token_bytes`` (one byte length per id, e.g. :func:`token_byte_lengths`) ``n_bytes`` and
    ``bits_per_byte``. ``progress`` shows a bar (tokens scored) on stderr."""
    cfg = model.config
    T = int(block_size or cfg.block_size)
    if not 1 <= T <= cfg.block_size:
        raise ValueError(f"block_size must be in [1, {cfg.block_size}], got {block_size}")
    S = T if stride is None else int(stride)
    if not 1 <= S <= T:
        raise ValueError(f"stride must be in [1, block_size={T}], got {stride}")
    B = int(batch_size)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
    if tokens.ndim != 1 or (tokens.size and tokens.dtype.kind not in "iu"):
        raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} "
                         f"{tokens.shape}")
    N = int(tokens.size)
    if N < 2:
        raise ValueError(f"need at least 2 tokens to predict one, got {N}")
    if token_bytes is not None:
        token_bytes = np.asarray(token_bytes, np.int64)
    be = model.backend
    nats = 0.0
    n_pred = 0
    n_bytes = 0
    bar = _progress_bar(N - 1, progress)

    def count_bytes(y: np.ndarray) -> int:
        if token_bytes is None:
            return 0
        if int(y.max()) >= token_bytes.size:
            raise ValueError(f"token id {int(y.max())} has no byte length (token_bytes holds "
                             f"{token_bytes.size})")
        return int(token_bytes[y].sum())

    def score(rows: np.ndarray) -> None:
        """Every target of the windows rows (k, L + 1): inputs rows[:, :-1], targets rows[:, 1:]."""
        nonlocal nats, n_pred, n_bytes
        x, y = np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
        _, loss = model.forward(x, y, return_logits=False)
        nats += float(loss) * y.size
        n_pred += y.size
        n_bytes += count_bytes(y)
        if bar is not None:
            bar.update(y.size)

    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if S == T:
                # consecutive windows; full ones batched, the short tail alone
                n_full = (N - 1) // T
                for k0 in range(0, n_full, B):
                    k1 = min(n_full, k0 + B)
                    rows = np.stack([np.asarray(tokens[k * T:k * T + T + 1], np.int32)
                                     for k in range(k0, k1)])
                    score(rows)
                rest = (N - 1) - n_full * T
                if rest:
                    score(np.asarray(tokens[n_full * T:], np.int32)[None])
            else:
                # sliding windows: (end, number of new targets) for each window
                wins = []
                end = min(T, N - 1)
                wins.append((end, end))
                while end < N - 1:
                    new_end = min(end + S, N - 1)
                    wins.append((new_end, new_end - end))
                    end = new_end
                # group windows of equal length into batches
                i = 0
                while i < len(wins):
                    L = min(T, wins[i][0])
                    j = i
                    while j < len(wins) and j - i < B and min(T, wins[j][0]) == L:
                        j += 1
                    group = wins[i:j]
                    rows = np.stack([np.asarray(tokens[e - L:e + 1], np.int32)
                                     for e, _ in group])
                    x, y = np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
                    logits, _ = model.forward(x)
                    logits = np.asarray(be.to_numpy(logits), np.float64)
                    for r, (_, n_new) in enumerate(group):
                        lg = logits[r, L - n_new:]
                        tg = y[r, L - n_new:]
                        m = lg.max(axis=1)
                        lse = m + np.log(np.exp(lg - m[:, None]).sum(axis=1))
                        nats += float((lse - lg[np.arange(n_new), tg]).sum())
                        n_pred += n_new
                        n_bytes += count_bytes(tg)
                        if bar is not None:
                            bar.update(n_new)
                    i = j
    finally:
        if bar is not None:
            bar.close()
    assert n_pred == N - 1, (n_pred, N)
    loss = nats / n_pred
    if not math.isfinite(loss):
        raise ValueError(f"the loss is {loss}: the model's outputs are not finite")
    out: Dict[str, Any] = {"n_tokens": n_pred, "total_nats": nats, "loss": loss,
                           "perplexity": math.exp(min(loss, 700.0)), "block_size": T,
                           "stride": S}
    if token_bytes is not None:
        out["n_bytes"] = n_bytes
        out["bits_per_byte"] = nats / (LN2 * n_bytes) if n_bytes else float("nan")
    return out


def evaluate(model: Any, tokenizer: Any, text: str, *, batch_size: int = 8,
             stride: Optional[int] = None, progress: bool = False,
             allowed_special: Any = "none") -> Dict[str, Any]:
    """Loss, perplexity and bits per byte of ``model`` on ``text`` (a str), encoded with
    ``tokenizer``. The tokenizer's ``<|endoftext|>`` (when the model's vocabulary holds it) is put
    first, so every token of the text is predicted and ``n_bytes == len(text.encode())``; without
    one the first token is context only. ``allowed_special`` is passed to the encoder ("none":
    special tokens' text in ``text`` is ordinary text). See :func:`evaluate_tokens`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = np.asarray(tokenizer.encode(text, allowed_special=allowed_special), np.int64)
    V = int(model.config.vocab_size)
    eot = (getattr(tokenizer, "special_tokens", None) or {}).get("<|endoftext|>")
    if eot is not None and 0 <= int(eot) < V:
        ids = np.concatenate([np.array([int(eot)], np.int64), ids])
    if ids.size and int(ids.max()) >= V:
        raise ValueError(f"the tokenizer gives id {int(ids.max())}, outside the model's "
                         f"vocabulary of {V}")
    return evaluate_tokens(model, ids, batch_size=batch_size, stride=stride,
                           token_bytes=token_byte_lengths(tokenizer, V), progress=progress)
