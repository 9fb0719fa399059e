"""Byte-level BPE tokenizer: train, encode, decode, save/load, tiktoken ranks and Hugging Face
tokenizer.json import/export.

Text is pre-split by a pattern (_bpe_reference.PATTERNS: "gpt4" (minbpe's cl100k, default),
"gpt2", tiktoken's "cl100k" and "o200k"; "r50k" and "p50k" name "gpt2", which splits like
tiktoken's r50k string), each chunk's UTF-8 bytes are merged by the learned merges. Internally byte
tokens have ids 0-255 (the byte value), merge i creates id 256 + i, special tokens take the ids after
the merges, in the order given; a trained tokenizer shows exactly these ids. A vocabulary read from
elsewhere (from_tiktoken, from_hf) keeps its own ids: an id map (C++) turns internal ids into them
after encoding and back before decoding, so encoding costs the same. The work is done by the
C++ module (kernelgpt._native); ``backend="python"`` trains with the pure-Python reference
(_bpe_reference.py), which is the specification.

Saved format (JSON, UTF-8), version 1::

    {"format": "kernelgpt-bpe", "version": 1, "pattern": "gpt4",
     "vocab_size": 1027, "merges": [[97, 97], [256, 97], ...],
     "special_tokens": {"<|endoftext|>": 1026}}

``merges[i]`` creates id 256 + i and may refer only to ids below that; special token ids must be
256 + len(merges) + k in the listed order; vocab_size = 256 + len(merges) + len(special_tokens).

Version 2 (written only for a vocabulary with its own ids, or without the whole-chunk lookup)::

    {"format": "kernelgpt-bpe", "version": 2, "pattern": "o200k", "vocab_size": 200019,
     "merges": [[..], ..],            # internal ids, as in version 1
     "ids": [188, 189, ...],          # the id of internal id i, for the 256 + len(merges) tokens
     "special_tokens": {"<|endoftext|>": 199999, ...},   # their ids (any not taken)
     "whole_token_lookup": true}      # false: pure merging (Hugging Face BPE without ignore_merges)

vocab_size = 1 + the largest id.

Both versions may hold "unicode": "17.0.0", the Unicode version of the pre-tokenizer's character
tables that wrote the file (written on save since 0.1.1; optional on load, so 0.1.0 files load).
Loading a file whose version differs from this kernelgpt's (_bpe_reference.UNICODE_VERSION) logs a
WARNING: characters whose category changed between the two versions split (and so encode)
differently from when the tokenizer was trained.
"""
from __future__ import annotations

import base64
import binascii
import io
import gzip
import json
import logging
import operator
import os
import pathlib
from typing import (TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, Iterator, List,
                    Literal, Mapping, Optional, Sequence, Set, Tuple, Type, Union, cast, overload)

import numpy as np

if TYPE_CHECKING:
    from types import ModuleType

    from numpy.typing import NDArray

    from ._native import BpeEncoder, BpeTrainer

from . import _bpe_reference as _ref

__all__ = ["Tokenizer", "FORMAT", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT = "kernelgpt-bpe"
FORMAT_VERSION = 2  # the newest version this reads; version 1 is written whenever it can hold the tokenizer
PATTERNS = tuple(_ref.PATTERNS)
_BATCH_BYTES = 8 << 20  # texts are handed to the native trainer in batches of about this size
_FILE_BLOCK_BYTES = 0  # bytes the native trainer reads from a file per round (0: its 16 MiB); tests set it small
_MAX_VOCAB = 2**31  # ids are int32
_MAX_THREADS = 2**31 - 1

PathLike = Union[str, "os.PathLike[str]"]
AllowedSpecial = Union[str, Set[str], FrozenSet[str]]
# Training data: a str (text), a path (os.PathLike: a file), or an iterable mixing them.
TrainData = Union[str, "os.PathLike[str]", Iterable[Union[str, "os.PathLike[str]"]]]
# Token ids to decode: a sequence (any iterable) of ints or an integer array.
TokenIds = Union[Iterable[int], "NDArray[np.integer[Any]]"]


def _native() -> ModuleType:
    from . import _native as m  # imported on first use: keeps `import kernelgpt` fast
    return m


def _check_pattern(pattern: str) -> str:
    """The splitter's name: "gpt4", "gpt2", "cl100k", "o200k", or an alias ("r50k", "p50k": "gpt2")."""
    if isinstance(pattern, str) and pattern in _ref.PATTERN_ALIASES:
        return _ref.PATTERN_ALIASES[pattern]
    if not isinstance(pattern, str) or pattern not in _ref.PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS + tuple(_ref.PATTERN_ALIASES)}, got {pattern!r}")
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


def _iter_data(data: TrainData) -> Iterator[Tuple[str, PathLike]]:
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


def _short(value: object, limit: int = 60) -> str:
    """repr of a value from a file, cut to one short line."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit] + "..."


def _read_utf8_file(path: PathLike) -> str:
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
    """A trained byte-level BPE tokenizer. Build one with ``Tokenizer.train`` / ``train_files``,
    ``Tokenizer.load``, ``Tokenizer.from_tiktoken`` or ``Tokenizer.from_hf``. Picklable; tiktoken's
    names (encode_ordinary, decode_batch, n_vocab, eot_token, decode_single_token_bytes) work.

    >>> tok = Tokenizer.train("aaabdaaabac", vocab_size=259)
    >>> tok.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]
    """

    _enc: BpeEncoder  # the C++ encoder (kernelgpt._native), built by __init__

    def __init__(self, merges: Union[Sequence[Tuple[int, int]], np.ndarray], pattern: str = "gpt4",
                 special_tokens: Sequence[str] = (), *, ids: Optional[Sequence[int]] = None,
                 whole_token_lookup: bool = True):
        """``merges`` (pairs, or an (n, 2) integer array) and ``special_tokens`` in internal ids
        (see the module docstring). ``ids``:
        the id shown for each internal id (256 + len(merges) + len(special_tokens) of them; None:
        the internal ids themselves). ``whole_token_lookup``: a chunk that spells a whole token
        is that token (tiktoken's rule; False: pure merging)."""
        self.pattern = _check_pattern(pattern)
        specials = _check_specials(special_tokens)
        merges_arr = np.asarray(merges, dtype=np.int64).reshape(-1, 2)
        _validate_merges(merges_arr)
        self.merges: List[Tuple[int, int]] = list(zip(merges_arr[:, 0].tolist(), merges_arr[:, 1].tolist()))
        base = 256 + len(self.merges)
        id_arr = None
        if ids is not None:
            id_arr = np.asarray(ids)
            if id_arr.ndim != 1 or id_arr.size != base + len(specials) or (id_arr.size and id_arr.dtype.kind not in "iu"):
                raise ValueError(f"ids must be {base + len(specials)} ints (one per token), got {id_arr.shape} {id_arr.dtype}")
            id_arr = id_arr.astype(np.int64)
            if id_arr.size and (id_arr.min() < 0 or id_arr.max() >= 2**31 - 1):
                raise ValueError("ids must be in [0, 2**31 - 1)")
            if np.array_equal(id_arr, np.arange(id_arr.size)):
                id_arr = None
        self._ids: Optional[np.ndarray] = id_arr
        self._whole = bool(whole_token_lookup)
        self._specials: Dict[str, int] = {
            s: (base + k if id_arr is None else int(id_arr[base + k])) for k, s in enumerate(specials)}
        self._special_list = specials
        try:
            self._enc = _native().BpeEncoder(merges_arr.astype(np.int32), specials, self.pattern,
                                             [] if id_arr is None else id_arr.tolist(), self._whole)
        except ValueError as e:
            raise ValueError(str(e)) from None

    # ---- properties
    @property
    def vocab_size(self) -> int:
        """1 + the largest id (tiktoken's n_vocab)."""
        return int(self._enc.vocab_size)

    @property
    def n_vocab(self) -> int:
        """tiktoken's name of vocab_size."""
        return self.vocab_size

    @property
    def max_token_value(self) -> int:
        return self.vocab_size - 1

    @property
    def eot_token(self) -> int:
        """The id of the special token "<|endoftext|>" (AttributeError if it is not one)."""
        if "<|endoftext|>" not in self._specials:
            raise AttributeError("this tokenizer has no '<|endoftext|>' special token")
        return self._specials["<|endoftext|>"]

    @property
    def special_tokens_set(self) -> Set[str]:
        return set(self._specials)

    @property
    def id_map(self) -> Optional[np.ndarray]:
        """The id of each internal id (bytes 0-255, merges, specials), or None when they are equal."""
        return None if self._ids is None else self._ids.copy()

    def _ordinary_ids(self) -> List[int]:
        """The ids of the ordinary (non-special) tokens, ascending, each once."""
        n = 256 + len(self.merges)
        if self._ids is None:
            return list(range(n))
        return sorted(set(self._ids[:n].tolist()))

    def __reduce__(self) -> Tuple[Callable[[Any], Tokenizer], Tuple[Dict[str, Any]]]:
        # pickle / copy.deepcopy: rebuilt from the saved form (the C++ encoder is not picklable)
        return (type(self).from_dict, (self.to_dict(),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def special_tokens(self) -> Dict[str, int]:
        return dict(self._specials)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pattern={self.pattern!r}, "
                f"special_tokens={len(self._specials)})")

    # ---- training
    @classmethod
    def train(cls, data: TrainData, vocab_size: int, pattern: str = "gpt4",
              special_tokens: Sequence[str] = (), backend: str = "auto",
              num_threads: Optional[int] = None) -> "Tokenizer":
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
        _warn_if_paths(data)
        if backend == "python":
            texts = []
            for kind, item in _iter_data(data):
                if kind == "file":
                    texts.append(_read_utf8_file(item))
                else:
                    texts.append(cast(str, item))  # kind "text": a str
            merges = _ref.train(texts, num_merges, pattern)
        else:
            merges = _train_native(data, num_merges, pattern, nt)
        if len(merges) < num_merges:
            log.info("BPE training stopped after %d of %d merges: no pair left", len(merges), num_merges)
        return cls(merges, pattern, specials)

    @classmethod
    def train_files(cls, paths: Union[PathLike, Iterable[PathLike]], vocab_size: int,
                    **kwargs: Any) -> "Tokenizer":
        """``train`` on files: ``paths`` is one path or an iterable of paths (str or os.PathLike),
        each a UTF-8 file streamed as one document. Other keyword arguments as ``train``."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files = []
        for p in paths:
            if not isinstance(p, (str, os.PathLike)):
                raise TypeError(f"paths must be str or os.PathLike, got {type(p).__name__}")
            if not os.path.isfile(p):
                raise FileNotFoundError(f"no such file: {os.fspath(p)}")
            files.append(pathlib.Path(os.fspath(p)))
        return cls.train(files, vocab_size, **kwargs)

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

    @overload
    def _encode(self, text: str, allowed_special: AllowedSpecial,
                as_list: Literal[True]) -> List[int]: ...
    @overload
    def _encode(self, text: str, allowed_special: AllowedSpecial,
                as_list: Literal[False]) -> NDArray[np.int32]: ...
    def _encode(self, text: str, allowed_special: AllowedSpecial,
                as_list: bool) -> Union[List[int], NDArray[np.int32]]:
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        allowed = self._allowed((text,), allowed_special)
        try:
            return self._enc.encode(text, allowed, as_list)
        except UnicodeEncodeError:
            return self._enc.encode(_clean(text), allowed, as_list)

    def encode_to_numpy(self, text: str, allowed_special: AllowedSpecial = "none_raise"
                        ) -> NDArray[np.int32]:
        """Like ``encode`` but returns an int32 array that owns the C++ result (no copy)."""
        return self._encode(text, allowed_special, False)

    def encode(self, text: str, allowed_special: AllowedSpecial = "none_raise") -> List[int]:
        """Token ids of ``text``. Special token strings in ``text`` raise ValueError unless
        allowed (tiktoken's rule): ``allowed_special`` is "none_raise" (default: none allowed,
        any occurrence raises), "all", a set of special strings (the others still raise), or
        "none" (special strings are encoded as ordinary text). Lone surrogates become U+FFFD."""
        return self._encode(text, allowed_special, True)

    def encode_ordinary(self, text: str) -> List[int]:
        """tiktoken's name: ``encode(text, allowed_special="none")`` (special strings are text)."""
        return self._encode(text, "none", True)

    @overload
    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = ...,
                     num_threads: Optional[int] = ...,
                     as_numpy: Literal[False] = ...) -> List[List[int]]: ...
    @overload
    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial,
                     num_threads: Optional[int],
                     as_numpy: Literal[True]) -> List[NDArray[np.int32]]: ...
    @overload
    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = ...,
                     num_threads: Optional[int] = ..., *,
                     as_numpy: Literal[True]) -> List[NDArray[np.int32]]: ...
    @overload
    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = ...,
                     num_threads: Optional[int] = ..., as_numpy: bool = ...
                     ) -> Union[List[List[int]], List[NDArray[np.int32]]]: ...
    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = "none_raise",
                     num_threads: Optional[int] = None, as_numpy: bool = False
                     ) -> Union[List[List[int]], List[NDArray[np.int32]]]:
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
        as_lists = not as_numpy  # lists are built in C++: as fast as the arrays
        try:
            return self._enc.encode_batch(texts, allowed, nt, as_lists)
        except UnicodeEncodeError:
            return self._enc.encode_batch([_clean(t) for t in texts], allowed, nt, as_lists)

    # ---- decoding
    def decode_bytes(self, ids: TokenIds) -> bytes:
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

    def decode(self, ids: TokenIds, errors: str = "replace") -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD (``errors="replace"``)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 string for special ids)."""
        return self._enc.token_bytes(token_id)

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        """tiktoken's name of ``token_bytes``."""
        return self.token_bytes(token_id)

    def decode_tokens_bytes(self, ids: Iterable[int]) -> List[bytes]:
        """The bytes of each id (tiktoken's name)."""
        return [self.token_bytes(i) for i in ids]

    def decode_batch(self, batch: Iterable[TokenIds], errors: str = "replace") -> List[str]:
        """``decode`` of each sequence of ids (tiktoken's name)."""
        return [self.decode(ids, errors=errors) for ids in batch]

    # ---- save / load
    def to_dict(self) -> Dict[str, Any]:
        if self._ids is None and self._whole:
            return {"format": FORMAT, "version": 1, "pattern": self.pattern,
                    "vocab_size": self.vocab_size, "merges": [list(m) for m in self.merges],
                    "special_tokens": dict(self._specials), "unicode": _ref.UNICODE_VERSION}
        n = 256 + len(self.merges)
        ids = list(range(n)) if self._ids is None else self._ids[:n].tolist()
        return {"format": FORMAT, "version": 2, "pattern": self.pattern,
                "vocab_size": self.vocab_size, "merges": [list(m) for m in self.merges],
                "ids": ids, "special_tokens": dict(self._specials),
                "whole_token_lookup": self._whole, "unicode": _ref.UNICODE_VERSION}

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
        if isinstance(obj, dict) and "format" not in obj and isinstance(obj.get("model"), dict):
            raise ValueError(f"{os.fspath(path)}: a Hugging Face tokenizer.json, not a kernelgpt "
                             "tokenizer file: read it with Tokenizer.from_hf")
        return cls.from_dict(obj, source=os.fspath(path))

    @classmethod
    def from_dict(cls, obj: Any, source: str = "tokenizer") -> "Tokenizer":
        def bad(msg: str) -> ValueError:
            return ValueError(f"{source}: {msg}")
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise bad(f"not a kernelgpt tokenizer file (expected \"format\": \"{FORMAT}\")")
        version = obj.get("version")
        if version not in (1, 2) or isinstance(version, bool):
            raise bad(f"unsupported version {version!r} (this kernelgpt reads versions 1 and {FORMAT_VERSION})")
        unicode_version = obj.get("unicode")
        if unicode_version is not None:
            if not isinstance(unicode_version, str):
                raise bad(f"unicode must be a version string such as \"{_ref.UNICODE_VERSION}\", "
                          f"got {_short(unicode_version)}")
            if unicode_version != _ref.UNICODE_VERSION:
                log.warning("%s: written with Unicode %s character tables, this kernelgpt splits "
                            "text with Unicode %s: characters whose category changed between them "
                            "split (and encode) differently than at training time",
                            source, _short(unicode_version), _ref.UNICODE_VERSION)
        for key in ("pattern", "vocab_size", "merges", "special_tokens") + (("ids",) if version == 2 else ()):
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
        if version == 2:
            return cls._from_dict_v2(obj, merges, specials, bad)
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

    @classmethod
    def _from_dict_v2(cls, obj: Dict[str, Any], merges: List[Any], specials: Dict[Any, Any],
                      bad: Callable[[str], ValueError]) -> "Tokenizer":
        ids = obj["ids"]
        def is_int(x: object) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)
        if not isinstance(ids, list) or len(ids) != 256 + len(merges) or not all(is_int(x) for x in ids):
            raise bad(f"ids must be a list of {256 + len(merges)} ints (one per byte and merge)")
        for s, sid in specials.items():
            if not s:
                raise bad("special tokens must not be empty strings")
            if not is_int(sid):
                raise bad(f"special token {s!r} has id {sid!r}, not an int")
        whole = obj.get("whole_token_lookup", True)
        if not isinstance(whole, bool):
            raise bad("whole_token_lookup must be true or false")
        all_ids = ids + list(specials.values())
        vocab = max(all_ids) + 1
        if obj["vocab_size"] != vocab:
            raise bad(f"vocab_size {obj['vocab_size']!r} does not match 1 + the largest id = {vocab}")
        try:
            return cls([tuple(m) for m in merges], obj["pattern"], list(specials), ids=all_ids,
                       whole_token_lookup=whole)
        except ValueError as e:
            raise bad(str(e)) from None

    # ---- Hugging Face tokenizer.json
    def save_hf(self, directory: PathLike) -> None:
        """Write ``directory``/tokenizer.json (+ tokenizer_config.json) for Hugging Face:
        ``tokenizers.Tokenizer.from_file`` and ``transformers.PreTrainedTokenizerFast`` load it
        and encode to the same ids as ``encode(text, allowed_special="all")`` (byte-level BPE, the
        split pattern as a Split pre-tokenizer, special tokens as added tokens, ignore_merges
        for the whole-token lookup). ValueError if two ids spell the same bytes (a tokenizer.json
        vocabulary maps each string to one id)."""
        to_u = _byte_to_unicode()
        ordinary = self._ordinary_ids()
        vocab: Dict[str, int] = {}
        for i in ordinary:
            t = "".join(to_u[b] for b in self.token_bytes(i))
            if t in vocab:
                raise ValueError(f"tokens {vocab[t]} and {i} have the same bytes {self.token_bytes(i)!r}; "
                                 "a tokenizer.json vocabulary needs unique token bytes")
            vocab[t] = i
        n = 256 + len(self.merges)
        ext = list(range(n)) if self._ids is None else self._ids[:n].tolist()
        tstr = {}  # internal id -> byte-level string
        for i in range(n):
            tstr[i] = "".join(to_u[b] for b in self.token_bytes(ext[i]))
        merges = [[tstr[a], tstr[b]] for a, b in self.merges]
        for sp, sid in self._specials.items():
            # in the vocabulary too (as GPT-2's <|endoftext|>): tokenizers takes an added token's
            # id from there, and gives one that is not there the next free id
            t = "".join(to_u[b] for b in sp.encode("utf-8"))
            if t in vocab:
                raise ValueError(f"special token {sp!r} spells the same bytes as token {vocab[t]}; "
                                 "a tokenizer.json vocabulary cannot hold both")
            vocab[t] = sid
        added = [{"id": sid, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": True} for s, sid in self._specials.items()]
        obj = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": _ref.PATTERNS[self.pattern]},
                 "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": self._whole,
                      "vocab": vocab, "merges": merges},
        }
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "model_max_length": 1 << 30,
                  "added_tokens_decoder": {str(sid): {k: v for k, v in a.items() if k != "id"}
                                           for a, sid in zip(added, self._specials.values())}}
        if "<|endoftext|>" in self._specials:
            config["eos_token"] = "<|endoftext|>"
        d = os.fspath(directory)
        os.makedirs(d, exist_ok=True)
        _atomic_write(os.path.join(d, "tokenizer.json"),
                      json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8"))
        _atomic_write(os.path.join(d, "tokenizer_config.json"),
                      json.dumps(config, ensure_ascii=False, indent=1).encode("utf-8"))

    @classmethod
    def from_hf(cls, path: PathLike, pattern: Optional[str] = None) -> "Tokenizer":
        """Read a Hugging Face byte-level BPE tokenizer: a tokenizer.json (or a directory holding
        one), or GPT-2's vocab.json + merges.txt (the vocab.json path, or a directory holding both;
        ``pattern`` defaults to "gpt2" there). Ids are kept. Added tokens become special tokens
        (encode them with ``allowed_special``). Refused with ValueError, one line: a model other
        than BPE, a normalizer, a pre-tokenizer other than byte-level with a known split pattern
        (gpt2, gpt4, cl100k, o200k, Llama 3's), add_prefix_space, byte_fallback, subword prefixes or
        suffixes, dropout, a token that is not made of bytes. A post-processor's added tokens
        (BOS/EOS templates) are not added by ``encode`` (logged)."""
        p = os.fspath(path)
        if os.path.isdir(p):
            if os.path.isfile(os.path.join(p, "tokenizer.json")):
                p = os.path.join(p, "tokenizer.json")
            elif os.path.isfile(os.path.join(p, "vocab.json")):
                p = os.path.join(p, "vocab.json")
            else:
                raise ValueError(f"{p}: no tokenizer.json or vocab.json + merges.txt in this directory")
        try:
            with open(p, "rb") as f:
                obj = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: not a Hugging Face tokenizer file (invalid JSON: {e})") from None
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            return _from_hf_json(cls, obj, p, pattern)
        merges_path = os.path.join(os.path.dirname(p) or ".", "merges.txt")
        if not isinstance(obj, dict) or not os.path.isfile(merges_path):
            raise ValueError(f"{p}: neither a tokenizer.json nor a vocab.json with merges.txt beside it")
        with open(merges_path, "r", encoding="utf-8") as f:
            lines = [ln.rstrip("\r\n") for ln in f]
        merges = [ln.split(" ") for ln in lines if ln and not ln.startswith("#version")]
        return _build_hf(cls, obj, merges, {}, _check_pattern(pattern or "gpt2"), False, p, gpt2_files=True)

    # ---- tiktoken ranks format
    def export_tiktoken(self, path: PathLike) -> None:
        """Write the ordinary tokens as tiktoken ranks: one "<base64 bytes> <rank>" line per id
        (rank = id). Special tokens are not part of that format (pass ``special_tokens`` to
        ``tiktoken.Encoding`` / ``from_tiktoken``). ValueError if two ids spell the same bytes,
        which the format cannot hold."""
        lines = []
        seen: Dict[bytes, int] = {}
        for i in self._ordinary_ids():
            tb = self.token_bytes(i)
            if tb in seen:
                raise ValueError(f"tokens {seen[tb]} and {i} have the same bytes {tb!r}; "
                                 "the tiktoken format needs unique token bytes")
            seen[tb] = i
            lines.append(f"{base64.b64encode(tb).decode('ascii')} {i}\n")
        _atomic_write(path, "".join(lines).encode("ascii"))

    def mergeable_ranks(self) -> Dict[bytes, int]:
        """{token bytes: rank} for tiktoken.Encoding(mergeable_ranks=...)."""
        return {self.token_bytes(i): i for i in self._ordinary_ids()}

    @classmethod
    def from_tiktoken(cls, path: PathLike, pattern: str = "gpt4",
                      special_tokens: Union[Sequence[str], Mapping[str, int]] = ()) -> "Tokenizer":
        """Read a tiktoken ranks file ("<base64 bytes> <rank>" lines; gzip if it ends in .gz),
        e.g. OpenAI's r50k/p50k/cl100k/o200k_base.tiktoken, keeping the ranks as the ids: encoding
        then gives tiktoken's ids with the same ranks and pattern (pattern="r50k", "cl100k",
        "o200k"). ``special_tokens``: {token: id} (OpenAI's ids, e.g. {"<|endoftext|>": 100257}
        for cl100k), or a sequence of tokens given the ids after the largest rank. Each token
        longer than a byte is recovered as a merge: the two parts that BPE with the lower ranks
        leaves of its bytes (tiktoken's own rule); a file with a token that is not two
        lower-ranked tokens joined is refused."""
        pattern = _check_pattern(pattern)
        src = os.fspath(path)
        opener = gzip.open if src.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
        # The C++ reader takes well-formed files (nearly all); it answers None for anything else,
        # and the Python reader, the reference, then reads the file or says what is wrong.
        fast = getattr(_native(), "tiktoken_ranks_to_merges", None) if _FAST_TIKTOKEN else None
        res = fast(data) if fast is not None else None
        merges: Union[np.ndarray, List[Tuple[int, int]]]
        if res is not None:
            byte_ranks, merges, mranks = res
            ids: List[int] = byte_ranks.tolist() + mranks.tolist()
        else:
            merges, ids = _tiktoken_merges_py(data, src)
        top = max(ids) + 1
        if isinstance(special_tokens, Mapping):
            names = _check_specials(list(special_tokens))
            sids = [special_tokens[n] for n in names]
            if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in sids):
                raise ValueError("special_tokens ids must be non-negative ints")
            taken = set(ids)
            clash = [n for n, x in zip(names, sids) if x in taken]
            if clash:
                raise ValueError(f"special token {clash[0]!r} has id {special_tokens[clash[0]]}, "
                                 "which is an ordinary token's rank")
            if len(set(sids)) != len(sids):
                raise ValueError("two special tokens have the same id")
        else:
            names = _check_specials(special_tokens)
            sids = [top + k for k in range(len(names))]
        return cls(merges, pattern, names, ids=ids + sids)


def _byte_to_unicode() -> List[str]:
    """GPT-2's byte-level alphabet: byte b -> one printable character (the printable Latin-1
    bytes stand for themselves, the others are moved to U+0100 onwards, in order)."""
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


# Split patterns seen in tokenizer.json files that split exactly like one of ours (tested).
_LLAMA3 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_R50K = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_HF_SPLITS = {**{v: k for k, v in _ref.PATTERNS.items()}, _LLAMA3: "gpt4", _R50K: "gpt2"}


def _from_hf_json(cls: Type[Tokenizer], obj: Dict[str, Any], src: str,
                  pattern: Optional[str]) -> "Tokenizer":
    def refuse(msg: str) -> ValueError:
        return ValueError(f"{src}: cannot be represented: {msg}")
    model = obj["model"]
    if model.get("type") != "BPE":
        raise refuse(f"the model is {model.get('type')!r}, not a byte-level BPE")
    norm = obj.get("normalizer")
    if norm is not None and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        raise refuse(f"it has a normalizer ({norm.get('type')})")
    if model.get("byte_fallback"):
        raise refuse("byte_fallback BPE (not byte-level)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise refuse("it uses continuing_subword_prefix / end_of_word_suffix")
    if model.get("dropout") not in (None, 0, 0.0):
        raise refuse("BPE dropout")
    found = _hf_pattern(obj.get("pre_tokenizer"), refuse)
    if pattern is not None and _check_pattern(pattern) != found:
        raise refuse(f"its split pattern is {found!r}, not {pattern!r}")
    post = obj.get("post_processor")
    if post is not None and post.get("type") not in ("ByteLevel",):
        log.warning("%s: the post-processor %s is not applied: encode adds no BOS/EOS tokens",
                    src, post.get("type"))
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise refuse("model.merges is not a list")
    merges = [m.split(" ") if isinstance(m, str) else m for m in merges]
    added = {}
    for a in obj.get("added_tokens") or []:
        if not isinstance(a, dict) or not isinstance(a.get("content"), str) or not isinstance(a.get("id"), int):
            raise refuse(f"bad added token {a!r}")
        if a.get("single_word") or a.get("lstrip") or a.get("rstrip"):
            raise refuse(f"added token {a['content']!r} uses single_word / lstrip / rstrip matching")
        added[a["content"]] = a["id"]
    return _build_hf(cls, model.get("vocab"), merges, added, found,
                     bool(model.get("ignore_merges", False)), src)


def _hf_pattern(pre: Any, refuse: Callable[[str], ValueError]) -> str:
    """Our pattern name for a tokenizer.json pre_tokenizer (byte-level only)."""
    def byte_level(p: Any, use_regex: bool) -> bool:
        if p.get("type") != "ByteLevel":
            return False
        if p.get("add_prefix_space"):
            raise refuse("the ByteLevel pre-tokenizer adds a prefix space")
        return bool(p.get("use_regex", True)) == use_regex
    if isinstance(pre, dict) and byte_level(pre, True):
        return "gpt2"  # ByteLevel's own regex is GPT-2's pattern
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (len(steps) == 2 and steps[0].get("type") == "Split" and byte_level(steps[1], False)
                and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")):
            pat = (steps[0].get("pattern") or {}).get("Regex")
            if pat in _HF_SPLITS:
                return _HF_SPLITS[pat]
            raise refuse(f"unknown split pattern {pat!r}")
    raise refuse("the pre-tokenizer is not byte-level (ByteLevel, or Split by a known pattern + ByteLevel)")


def _build_hf(cls: Type[Tokenizer], vocab: Any, merges: Iterable[Any], added: Dict[str, int],
              pattern: str, whole: bool, src: str, gpt2_files: bool = False) -> "Tokenizer":
    def refuse(msg: str) -> ValueError:
        return ValueError(f"{src}: cannot be represented: {msg}")
    if not isinstance(vocab, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in vocab.values()):
        raise refuse("the vocabulary is not {token: id}")
    from_u = {c: b for b, c in enumerate(_byte_to_unicode())}

    def to_bytes(t: str) -> bytes:
        try:
            return bytes(from_u[c] for c in t)
        except KeyError:
            raise refuse(f"token {t!r} is not byte-level") from None
    ids = []
    internal: Dict[str, int] = {}
    for b, c in enumerate(_byte_to_unicode()):
        if c not in vocab:
            raise refuse(f"the vocabulary has no token for byte {b:#04x}")
        internal[c] = b
        ids.append(vocab[c])
    pairs: List[Tuple[int, int]] = []
    for k, m in enumerate(merges):
        if not (isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(x, str) for x in m)):
            raise refuse(f"merge {k} is not a pair of tokens: {m!r}")
        a, b = m
        if a not in internal or b not in internal:
            raise refuse(f"merge {k} {a!r} + {b!r} uses a token no earlier merge makes")
        t = a + b
        if t not in vocab:
            raise refuse(f"merge {k} makes {t!r}, which is not in the vocabulary")
        internal.setdefault(t, 256 + len(pairs))
        pairs.append((internal[a], internal[b]))
        ids.append(vocab[t])
    specials, sids = [], []
    added_ids = set(added.values())
    for t, i in vocab.items():
        if t not in internal:
            if i in added_ids:
                continue  # an added token's entry (save_hf writes one, as GPT-2's files have)
            if gpt2_files and t.startswith("<|") and t.endswith("|>"):
                specials.append(to_bytes(t).decode("utf-8", errors="replace"))  # GPT-2's <|endoftext|>
                sids.append(i)
                continue
            to_bytes(t)
            raise refuse(f"token {t!r} (id {i}) is neither a byte nor made by a merge")
    for t, i in added.items():
        if t in internal and vocab.get(t) == i:
            raise refuse(f"added token {t!r} is also an ordinary token")
        specials.append(t)
        sids.append(i)
    try:
        return cls(pairs, pattern, specials, ids=ids + sids, whole_token_lookup=whole)
    except ValueError as e:
        raise refuse(str(e)) from None


# Tokenizer.from_tiktoken's C++ reader (tiktoken_ranks_to_merges) is used when True; tests set it
# to False to run the Python reader, the reference both must agree with.
_FAST_TIKTOKEN = True


def _tiktoken_merges_py(data: bytes, src: str) -> Tuple[List[Tuple[int, int]], List[int]]:
    """A ranks file's text -> (merges, ids): the reference rules of Tokenizer.from_tiktoken."""
    ranks: Dict[bytes, int] = {}
    rank_line: Dict[int, int] = {}
    for lineno, line in enumerate(io.BytesIO(data), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{src}:{lineno}: expected '<base64> <rank>'")
        try:
            tb = base64.b64decode(parts[0], validate=True)
            r = int(parts[1])
        except (ValueError, binascii.Error):
            raise ValueError(f"{src}:{lineno}: expected '<base64> <rank>'") from None
        if not tb or r < 0 or r >= 2**31 - 1:
            raise ValueError(f"{src}:{lineno}: expected '<base64> <rank>' with a non-empty token and a rank in [0, 2**31 - 1)")
        if tb in ranks:
            raise ValueError(f"{src}:{lineno}: token {tb!r} appears twice")
        if r in rank_line:
            raise ValueError(f"{src}:{lineno}: rank {r} appears twice (also on line "
                             f"{rank_line[r]})")
        rank_line[r] = lineno
        ranks[tb] = r
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{src}: a ranks file needs the 256 byte tokens; byte {missing[0]:#04x} "
                         f"is missing ({len(missing)} missing)")
    internal: Dict[bytes, int] = {bytes([b]): b for b in range(256)}
    ids = [ranks[bytes([b])] for b in range(256)]
    merges: List[Tuple[int, int]] = []
    for r, tb in sorted((r, tb) for tb, r in ranks.items() if len(tb) > 1):
        # Splits into two lower-ranked tokens (`internal` holds exactly those). With one, it is
        # the merge. With several, BPE of the bytes with the lower ranks decides (in any text,
        # the bytes of a token made by merging went through exactly that). If BPE leaves more
        # than two parts, no text makes the token by merging (tiktoken reaches it only as a
        # whole chunk, as the encoder here does): any split serves, as a merge that never fires.
        cands = [i for i in range(1, len(tb)) if tb[:i] in internal and tb[i:] in internal]
        if not cands:
            raise ValueError(f"{src}: token of rank {r} ({tb!r}) is not two lower-ranked tokens joined")
        cut = cands[0]
        if len(cands) > 1:
            parts = _bpe_parts(tb, ranks, r)
            if len(parts) == 2:
                cut = len(parts[0])
        internal[tb] = 256 + len(merges)
        merges.append((internal[tb[:cut]], internal[tb[cut:]]))
        ids.append(r)
    return merges, ids


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
    limit = 256 + np.arange(len(merges), dtype=np.int64)
    bad = np.flatnonzero((merges < 0).any(axis=1) | (merges[:, 0] >= limit) | (merges[:, 1] >= limit))
    if bad.size:
        i = int(bad[0])
        a, b = (int(x) for x in merges[i])
        raise ValueError(f"merge {i} ({a}, {b}) refers to an id that does not exist before id {256 + i}")


def _warn_if_paths(data: object) -> None:
    """Log a warning when ``data`` is a list of str that are all names of existing files: str is
    text, so those names would be trained on, not the files."""
    if not isinstance(data, (list, tuple)) or not data:
        return
    if not isinstance(data[0], str):
        return
    for item in data:
        if (not isinstance(item, str) or len(item) > 4096
                or "\n" in item or not os.path.isfile(item)):
            return
    log.warning("Tokenizer.train: every one of the %d str items names an existing file (e.g. %r), "
                "but str items are trained on as text; pass pathlib.Path objects or use "
                "Tokenizer.train_files to train on the files' contents", len(data), data[0])


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


def _train_native(data: TrainData, num_merges: int, pattern: str, nt: int) -> List[Tuple[int, int]]:
    """nt: a checked thread count (_threads), 0 for the default."""
    trainer: BpeTrainer = _native().BpeTrainer(pattern)
    batch: List[str] = []
    size = 0

    def flush() -> None:
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
            trainer.add_file(path, nt, _FILE_BLOCK_BYTES)
        else:
            batch.append(cast(str, item))  # kind "text": a str
            size += len(cast(str, item))
            if size >= _BATCH_BYTES:
                flush()
    flush()
    merges = trainer.train(num_merges)
    return [(int(a), int(b)) for a, b in merges.tolist()]


def _atomic_write(path: PathLike, data: bytes) -> None:
    # the package's one atomic write (umask permissions, fsync of the file and of its folder)
    from .checkpoint import atomic_write_bytes
    atomic_write_bytes(path, data)
