"""Byte-level BPE tokenizer: train, encode, decode, save/load, tiktoken ranks import/export.

Text is pre-split by the "gpt4" (cl100k, default) or "gpt2" pattern, each chunk's UTF-8 bytes are
merged by the learned merges. Byte tokens have ids 0-255 (the byte value), merge i creates id
256 + i, special tokens take the ids after the merges, in the order given. The work is done by the
C++ module (kernelgpt._native); ``backend="python"`` trains with the pure-Python reference
(_bpe_reference.py), which is the specification.

Saved format (JSON, UTF-8), version 1::

    {"format": "kernelgpt-bpe", "version": 1, "pattern": "gpt4",
     "vocab_size": 1027, "merges": [[97, 97], [256, 97], ...],
     "special_tokens": {"<|endoftext|>": 1026}}

``merges[i]`` creates id 256 + i and may refer only to ids below that; special token ids must be
256 + len(merges) + k in the listed order; vocab_size = 256 + len(merges) + len(special_tokens).
"""
from __future__ import annotations

import base64
import json
import logging
import operator
import os
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from . import _bpe_reference as _ref

__all__ = ["Tokenizer", "FORMAT", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT = "kernelgpt-bpe"
FORMAT_VERSION = 1
PATTERNS = tuple(_ref.PATTERNS)
_BATCH_BYTES = 8 << 20  # texts are handed to the native trainer in batches of about this size
_MAX_VOCAB = 2**31  # ids are int32
_MAX_THREADS = 2**31 - 1

PathLike = Union[str, "os.PathLike[str]"]
AllowedSpecial = Union[str, Set[str], frozenset]


def _native():
    from . import _native as m  # imported on first use: keeps `import kernelgpt` fast
    return m


def _check_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or pattern not in _ref.PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    return pattern


def _check_specials(special_tokens: Iterable[str]) -> List[str]:
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a sequence of str, not one str")
    specials = list(special_tokens)
    seen: Set[str] = set()
    for s in specials:
        if not isinstance(s, str):
            raise TypeError(f"special tokens must be str, got {type(s).__name__}")
        if not s:
            raise ValueError("special tokens must not be empty strings")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"special token {s!r} is not valid Unicode text (it holds a lone "
                             "surrogate)") from None
        if s in seen:
            raise ValueError(f"duplicate special token {s!r}")
        seen.add(s)
    return specials


def _iter_data(data) -> Iterable[Tuple[str, Union[str, os.PathLike]]]:
    """Yields ("text", str) or ("file", path) items. A str is text; os.PathLike items are files."""
    if isinstance(data, str):
        yield ("text", data)
        return
    if isinstance(data, os.PathLike):
        yield ("file", data)
        return
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be str, an iterable of str, or file paths (os.PathLike); got bytes")
    try:
        it = iter(data)
    except TypeError:
        raise TypeError(f"data must be str, an iterable of str, or file paths (os.PathLike); "
                        f"got {type(data).__name__}") from None
    for item in it:
        if isinstance(item, str):
            yield ("text", item)
        elif isinstance(item, os.PathLike):
            yield ("file", item)
        else:
            raise TypeError(f"data items must be str or os.PathLike, got {type(item).__name__}")


def _clean(text: str) -> str:
    return _ref.clean_text(text)


def _short(value, limit: int = 60) -> str:
    """repr of a value from a file, cut to one short line."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def _read_utf8_file(path) -> str:
    """A file's text; ValueError naming the first byte that is not UTF-8 and its offset (the
    native trainer's add_file says the same)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset "
                         f"{e.start})") from None


class Tokenizer:
    """A trained byte-level BPE tokenizer. Build one with ``Tokenizer.train``, ``Tokenizer.load``
    or ``Tokenizer.from_tiktoken``.

    >>> tok = Tokenizer.train("aaabdaaabac", vocab_size=259)
    >>> tok.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]
    """

    def __init__(self, merges: Sequence[Tuple[int, int]], pattern: str = "gpt4",
                 special_tokens: Sequence[str] = ()):
        self.pattern = _check_pattern(pattern)
        specials = _check_specials(special_tokens)
        merges_arr = np.asarray(merges, dtype=np.int64).reshape(-1, 2)
        _validate_merges(merges_arr)
        self.merges: List[Tuple[int, int]] = [(int(a), int(b)) for a, b in merges_arr]
        base = 256 + len(self.merges)
        self._specials: Dict[str, int] = {s: base + k for k, s in enumerate(specials)}
        self._special_list = specials
        self._enc = _native().BpeEncoder(merges_arr.astype(np.int32), specials, pattern)

    # ---- properties
    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self._specials)

    @property
    def special_tokens(self) -> Dict[str, int]:
        return dict(self._specials)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pattern={self.pattern!r}, "
                f"special_tokens={len(self._specials)})")

    # ---- training
    @classmethod
    def train(cls, data, vocab_size: int, pattern: str = "gpt4", special_tokens: Sequence[str] = (),
              backend: str = "auto", num_threads: Optional[int] = None) -> "Tokenizer":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``data``: a str, an
        iterable of str (each split on its own), or file paths given as ``os.PathLike``
        (``pathlib.Path``; UTF-8, streamed in blocks), or an iterable mixing them. Stops early, with
        a smaller vocabulary, when no adjacent pair is left. Files must be well-formed UTF-8, as
        ``tokenizer encode`` requires: both backends raise ValueError naming the file and the byte
        offset of the first bad byte (a str's lone surrogates are trained as U+FFFD instead).
        ``backend``: "native" (C++), "python" (the reference: slow) or "auto" (= native)."""
        pattern = _check_pattern(pattern)
        specials = _check_specials(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be >= 256 + {len(specials)} special tokens = "
                             f"{256 + len(specials)}, got {vocab_size}")
        if vocab_size > _MAX_VOCAB:
            raise ValueError(f"vocab_size must be <= 2**31 (ids are int32), got {vocab_size}")
        nt = _threads(num_threads)
        if backend not in ("auto", "native", "python"):
            raise ValueError(f"backend must be 'auto', 'native' or 'python', got {backend!r}")
        num_merges = int(vocab_size) - 256 - len(specials)
        if backend == "python":
            texts = []
            for kind, item in _iter_data(data):
                if kind == "file":
                    texts.append(_read_utf8_file(item))
                else:
                    texts.append(item)
            merges = _ref.train(texts, num_merges, pattern)
        else:
            merges = _train_native(data, num_merges, pattern, nt)
        if len(merges) < num_merges:
            log.info("BPE training stopped after %d of %d merges: no pair left", len(merges), num_merges)
        return cls(merges, pattern, specials)

    # ---- encoding
    def _allowed(self, texts: Sequence[str], allowed_special: AllowedSpecial) -> List[int]:
        """Indices of the special tokens to recognise; raises if a disallowed one occurs in texts."""
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return list(range(len(self._special_list)))
            if allowed_special == "none":
                return []
            if allowed_special != "none_raise":
                raise ValueError("allowed_special must be 'none_raise', 'all', 'none' or a set of "
                                 f"special tokens, got {allowed_special!r}")
            allowed: Set[str] = set()
        elif isinstance(allowed_special, (set, frozenset)):
            unknown = [s for s in allowed_special if s not in self._specials]
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens: {sorted(unknown)!r}")
            allowed = set(allowed_special)
        else:
            raise ValueError("allowed_special must be 'none_raise', 'all', 'none' or a set of special "
                             f"tokens, got {allowed_special!r}")
        for s in self._special_list:
            if s in allowed:
                continue
            for text in texts:
                if s in text:
                    raise ValueError(f"text contains the special token {s!r}, which is not allowed; "
                                     f"pass allowed_special={{{s!r}}} (or 'all') to encode it as a "
                                     "special token, or allowed_special='none' to encode it as "
                                     "ordinary text")
        return [k for k, s in enumerate(self._special_list) if s in allowed]

    def encode_to_numpy(self, text: str, allowed_special: AllowedSpecial = "none_raise") -> np.ndarray:
        """Like ``encode`` but returns an int32 array that owns the C++ result (no copy)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        allowed = self._allowed((text,), allowed_special)
        try:
            return self._enc.encode(text, allowed)
        except UnicodeEncodeError:
            return self._enc.encode(_clean(text), allowed)

    def encode(self, text: str, allowed_special: AllowedSpecial = "none_raise") -> List[int]:
        """Token ids of ``text``. Special token strings in ``text`` raise ValueError unless
        allowed (tiktoken's rule): ``allowed_special`` is "none_raise" (default: none allowed,
        any occurrence raises), "all", a set of special strings (the others still raise), or
        "none" (special strings are encoded as ordinary text). Lone surrogates become U+FFFD."""
        return self.encode_to_numpy(text, allowed_special).tolist()

    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = "none_raise",
                     num_threads: Optional[int] = None, as_numpy: bool = False):
        """Encode many texts on ``num_threads`` threads (default: OpenMP's default, i.e. all cores
        or OMP_NUM_THREADS) with the GIL released. Returns a list of lists (or of int32 arrays)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not one str")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must hold str, got {type(t).__name__}")
        nt = _threads(num_threads)
        allowed = self._allowed(texts, allowed_special)
        try:
            out = self._enc.encode_batch(texts, allowed, nt)
        except UnicodeEncodeError:
            out = self._enc.encode_batch([_clean(t) for t in texts], allowed, nt)
        return out if as_numpy else [a.tolist() for a in out]

    # ---- decoding
    def decode_bytes(self, ids) -> bytes:
        """The bytes of ``ids`` (a sequence of ints or an integer array). ValueError for an id
        outside [0, vocab_size)."""
        if isinstance(ids, (list, tuple)):
            return self._enc.decode(ids)
        if isinstance(ids, np.ndarray):
            if ids.dtype.kind not in "iu":
                raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
            arr = ids.ravel()
            if arr.dtype.kind == "u" and arr.dtype.itemsize == 8:
                # Values >= 2**63 would wrap to negative ids: check them on a private copy (the
                # caller's array may change meanwhile), named as they are.
                arr = arr.astype(np.uint64, copy=True)
                over = np.flatnonzero(arr >= self.vocab_size)
                if over.size:
                    i = int(over[0])
                    raise ValueError(f"token id {int(arr[i])} at position {i} is out of range "
                                     f"[0, {self.vocab_size})")
                arr = arr.astype(np.int64)
            elif arr.dtype not in (np.int32, np.int64):
                arr = arr.astype(np.int64)
        else:  # any other iterable: its items checked as a list's are (no float truncated)
            if isinstance(ids, (str, bytes, bytearray)):
                raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
            try:
                items = list(ids)
            except TypeError:
                raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}") from None
            return self._enc.decode(items)
        return self._enc.decode(np.ascontiguousarray(arr))

    def decode(self, ids, errors: str = "replace") -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD (``errors="replace"``)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 string for special ids)."""
        return self._enc.token_bytes(token_id)

    # ---- save / load
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "pattern": self.pattern,
                "vocab_size": self.vocab_size, "merges": [list(m) for m in self.merges],
                "special_tokens": dict(self._specials)}

    def save(self, path: PathLike) -> None:
        """Write the JSON format above atomically (temporary file, fsync, rename)."""
        _atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8"))

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        """Read a file written by ``save``; ValueError naming the problem if it is not one."""
        try:
            with open(path, "rb") as f:
                raw = f.read()
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{os.fspath(path)}: not a kernelgpt tokenizer file (invalid JSON: {e})") from None
        except RecursionError:
            raise ValueError(f"{os.fspath(path)}: not a kernelgpt tokenizer file (JSON nested too "
                             "deeply)") from None
        return cls.from_dict(obj, source=os.fspath(path))

    @classmethod
    def from_dict(cls, obj, source: str = "tokenizer") -> "Tokenizer":
        def bad(msg: str) -> ValueError:
            return ValueError(f"{source}: {msg}")
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise bad(f"not a kernelgpt tokenizer file (expected \"format\": \"{FORMAT}\")")
        if obj.get("version") != FORMAT_VERSION:
            raise bad(f"unsupported version {obj.get('version')!r} (this kernelgpt reads version {FORMAT_VERSION})")
        for key in ("pattern", "vocab_size", "merges", "special_tokens"):
            if key not in obj:
                raise bad(f"missing field {key!r}")
        pattern = obj["pattern"]
        if not isinstance(pattern, str) or pattern not in _ref.PATTERNS:
            raise bad(f"unknown pattern {_short(pattern)} (expected one of {PATTERNS})")
        merges = obj["merges"]
        if not isinstance(merges, list):
            raise bad("merges must be a list of [left, right] pairs")
        for i, m in enumerate(merges):
            if (not isinstance(m, list) or len(m) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in m)):
                raise bad(f"merge {i} is not a [left, right] pair of ints: {m!r}")
            if not (0 <= m[0] < 256 + i and 0 <= m[1] < 256 + i):
                raise bad(f"merge {i} {m!r} refers to an id that does not exist before id {256 + i}")
        if len({tuple(m) for m in merges}) != len(merges):
            raise bad("merges repeat a pair")
        specials = obj["special_tokens"]
        if not isinstance(specials, dict):
            raise bad("special_tokens must be an object {token: id}")
        order = sorted(specials.items(), key=lambda kv: kv[1] if isinstance(kv[1], int) else -1)
        for k, (s, sid) in enumerate(order):
            if not s:
                raise bad("special tokens must not be empty strings")
            if sid != 256 + len(merges) + k:
                raise bad(f"special token {s!r} has id {sid!r}, expected {256 + len(merges) + k} "
                          "(special ids follow the merges without gaps)")
        vocab = 256 + len(merges) + len(specials)
        if obj["vocab_size"] != vocab:
            raise bad(f"vocab_size {obj['vocab_size']!r} does not match 256 + {len(merges)} merges + "
                      f"{len(specials)} special tokens = {vocab}")
        try:
            return cls([tuple(m) for m in merges], pattern, [s for s, _ in order])
        except ValueError as e:  # e.g. a special token with a lone surrogate (a JSON \ud800 escape)
            raise bad(str(e)) from None

    # ---- tiktoken ranks format
    def export_tiktoken(self, path: PathLike) -> None:
        """Write the ordinary tokens as tiktoken ranks: one "<base64 bytes> <rank>" line per id
        (rank = id). Special tokens are not part of that format (pass ``special_tokens`` to
        ``tiktoken.Encoding`` / ``from_tiktoken``). ValueError if two ids spell the same bytes,
        which the format cannot hold."""
        lines = []
        seen: Dict[bytes, int] = {}
        for i in range(256 + len(self.merges)):
            tb = self.token_bytes(i)
            if tb in seen:
                raise ValueError(f"tokens {seen[tb]} and {i} have the same bytes {tb!r}; "
                                 "the tiktoken format needs unique token bytes")
            seen[tb] = i
            lines.append(f"{base64.b64encode(tb).decode('ascii')} {i}\n")
        _atomic_write(path, "".join(lines).encode("ascii"))

    def mergeable_ranks(self) -> Dict[bytes, int]:
        """{token bytes: rank} for tiktoken.Encoding(mergeable_ranks=...)."""
        return {self.token_bytes(i): i for i in range(256 + len(self.merges))}

    @classmethod
    def from_tiktoken(cls, path: PathLike, pattern: str = "gpt4",
                      special_tokens: Sequence[str] = ()) -> "Tokenizer":
        """Read a tiktoken ranks file whose ranks are 0..n-1 with rank b the single byte b (the
        layout ``export_tiktoken`` writes). Each merge is recovered as the two parts that BPE with
        the lower ranks leaves of the token's bytes (tiktoken's own recovery rule)."""
        pattern = _check_pattern(pattern)
        ranks: Dict[bytes, int] = {}
        rank_line: Dict[int, int] = {}
        src = os.fspath(path)
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{src}:{lineno}: expected '<base64> <rank>'")
                try:
                    tb = base64.b64decode(parts[0], validate=True)
                    r = int(parts[1])
                except (ValueError, base64.binascii.Error):
                    raise ValueError(f"{src}:{lineno}: expected '<base64> <rank>'") from None
                if tb in ranks:
                    raise ValueError(f"{src}:{lineno}: token {tb!r} appears twice")
                if r < 0:
                    raise ValueError(f"{src}:{lineno}: rank {r} is negative")
                if r in rank_line:
                    raise ValueError(f"{src}:{lineno}: rank {r} appears twice (also on line "
                                     f"{rank_line[r]})")
                rank_line[r] = lineno
                ranks[tb] = r
        by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
        for i, (tb, r) in enumerate(by_rank):
            if r != i:
                raise ValueError(f"{src}: ranks must be 0..{len(by_rank) - 1} without gaps; rank {i} is missing")
            if i < 256 and tb != bytes([i]):
                raise ValueError(f"{src}: rank {i} must be the single byte {bytes([i])!r}, got {tb!r} "
                                 "(only byte-ordered rank files are supported)")
        if len(by_rank) < 256:
            raise ValueError(f"{src}: a ranks file needs the 256 byte tokens, found {len(by_rank)} tokens")
        merges = []
        for tb, r in by_rank[256:]:
            parts = _bpe_parts(tb, ranks, r)
            if len(parts) != 2:
                raise ValueError(f"{src}: token of rank {r} ({tb!r}) is not the merge of two lower-ranked tokens")
            merges.append((ranks[parts[0]], ranks[parts[1]]))
        return cls(merges, pattern, special_tokens)


def _bpe_parts(tb: bytes, ranks: Dict[bytes, int], max_rank: int) -> List[bytes]:
    parts = [bytes([b]) for b in tb]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def _validate_merges(merges: np.ndarray) -> None:
    for i, (a, b) in enumerate(merges.tolist()):
        if not (0 <= a < 256 + i and 0 <= b < 256 + i):
            raise ValueError(f"merge {i} ({a}, {b}) refers to an id that does not exist before id {256 + i}")


def _threads(num_threads: Optional[int]) -> int:
    if num_threads is None:
        return 0  # OpenMP's default
    n = None
    if not isinstance(num_threads, (bool, np.bool_)):
        try:
            n = operator.index(num_threads)  # int or a NumPy integer
        except TypeError:
            pass
    if n is None or not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"num_threads must be a positive int (at most {_MAX_THREADS}) or None, "
                         f"got {_short(num_threads)}")
    return n


def _train_native(data, num_merges: int, pattern: str, nt: int) -> List[Tuple[int, int]]:
    """nt: a checked thread count (_threads), 0 for the default."""
    trainer = _native().BpeTrainer(pattern)
    batch: List[str] = []
    size = 0

    def flush():
        nonlocal batch, size
        if not batch:
            return
        try:
            trainer.add_documents(batch, nt)
        except UnicodeEncodeError:
            trainer.add_documents([_clean(t) for t in batch], nt)
        batch, size = [], 0

    for kind, item in _iter_data(data):
        if kind == "file":
            flush()
            path = os.fspath(item)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
            trainer.add_file(path, nt)
        else:
            batch.append(item)
            size += len(item)
            if size >= _BATCH_BYTES:
                flush()
    flush()
    merges = trainer.train(num_merges)
    return [(int(a), int(b)) for a, b in merges.tolist()]


def _atomic_write(path: PathLike, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename. The temporary file is created with mode
    0o666 less the umask, as open() makes files (and the run's other files are made): mkstemp's
    0o600 would survive the rename."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(d, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"could not create a temporary file in {d}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
