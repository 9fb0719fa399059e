"""Training data: text files -> token ids -> a token file on disk -> random (x, y) batches.

The token file is the package's one on-disk format for token ids: the command line's run folder
(RUN/tokens.bin), ``kernelgpt tokenizer encode`` and ``train --data TOKEN_FILE`` all use it.
Format (version 1), all integers little-endian:
    offset  size  field
    0       8     magic b"KGPTTOK1"
    8       4     uint32 format version (1)
    12      4     uint32 bytes per id: 2 (uint16 ids, vocab <= 65536) or 4 (uint32 ids)
    16      8     uint64 vocab_size (every id is < vocab_size)
    24      8     uint64 n_tokens
    32      ...   n_tokens ids, little-endian, of the width above
The file is written atomically (temporary file in the same folder, fsync, os.replace) and read
back with np.memmap, so a corpus larger than memory costs no RAM. The older b"KGPTIDS\0" ids file
of the tokenizer command (no vocab_size) is read only by cli_tokenizer.read_ids; here it gets a
ValueError saying so. Batches come from one seeded
np.random.Generator whose state is saved in checkpoints, so a resumed run draws the same batches
as the uninterrupted one. Not here: tokenizer training (tokenizer.py), the default corpus (corpus.py).
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

MAGIC = b"KGPTTOK1"
VERSION = 1
LEGACY_IDS_MAGIC = b"KGPTIDS\0"  # the tokenizer command's former ids.bin (cli_tokenizer.read_ids)
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, id width, vocab_size, n_tokens
HEADER_SIZE = _HEADER.size          # 32 bytes
_DTYPES: Dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}

PathLike = Union[str, "os.PathLike[str]"]

# Suffixes taken when a directory is given to ``--data`` (explicit file paths are always taken).
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".c", ".h", ".cpp", ".hpp", ".js", ".ts", ".json",
                 ".html", ".css", ".tex", ".csv", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh")


# ---------------------------------------------------------------------------------- atomic files
# One helper for every file the package writes (checkpoint.py: umask permissions, fsync of the
# file and of its folder); re-exported here, where 0.1.0 defined them.
from .checkpoint import atomic_write, atomic_write_bytes, fsync_dir  # noqa: E402,F401


# ---------------------------------------------------------------------------------- token files
def id_dtype(vocab_size: int) -> np.dtype[Any]:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    if vocab_size < 1 or vocab_size > 2**32:
        raise ValueError(f"vocab_size must be in [1, 2**32], got {vocab_size}")
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def write_token_file(path: PathLike, ids: Any, vocab_size: int) -> Path:
    """Write 1-D integer ids (all in [0, vocab_size)) to ``path`` in the format above, atomically."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    dt = id_dtype(int(vocab_size))
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids lie in [{int(ids.min())}, {int(ids.max())}], outside "
                         f"[0, {vocab_size})")
    header = _HEADER.pack(MAGIC, VERSION, dt.itemsize, int(vocab_size), int(ids.size))
    body = ids.astype(dt, copy=False)

    def write(f: BinaryIO) -> None:
        f.write(header)
        f.write(np.ascontiguousarray(body).data.cast("B"))
    atomic_write(path, write)
    return Path(path)


def read_token_header(path: PathLike) -> Dict[str, int]:
    """Parse and validate a token file's header -> {"version", "width", "vocab_size", "n_tokens"}.
    A foreign, truncated or inconsistent file raises ValueError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
    except OSError as e:
        raise ValueError(f"cannot read token file {path}: {e.strerror or e}") from None
    if head[:8] == LEGACY_IDS_MAGIC:
        raise ValueError(f"{path} is a legacy KGPTIDS ids file, which records no vocab_size: "
                         f"read it with kernelgpt.cli_tokenizer.read_ids, or re-encode the text "
                         f"with `kernelgpt tokenizer encode`")
    if head[:8] != MAGIC:
        raise ValueError(f"{path} is not a kernelgpt token file (magic {head[:8]!r}, expected "
                         f"{MAGIC!r})")
    if len(head) < HEADER_SIZE:
        raise ValueError(f"{path}: truncated token file header ({len(head)} bytes, need "
                         f"{HEADER_SIZE})")
    _, version, width, vocab, n = _HEADER.unpack(head)
    if version != VERSION:
        raise ValueError(f"{path}: unsupported token file version {version} (expected {VERSION})")
    if width not in _DTYPES:
        raise ValueError(f"{path}: bad id width {width} (expected 2 or 4)")
    if vocab < 1 or (width == 2 and vocab > 2**16):
        raise ValueError(f"{path}: vocab_size {vocab} does not fit {width}-byte ids")
    want = HEADER_SIZE + n * width
    if size != want:
        raise ValueError(f"{path}: truncated or padded token file ({size} bytes, header says "
                         f"{want})")
    return {"version": version, "width": width, "vocab_size": vocab, "n_tokens": n}


def looks_like_token_file(path: PathLike) -> bool:
    """True when ``path`` is a file starting with a token file's magic (or the legacy KGPTIDS
    magic, which read_token_header then rejects with a message saying what to do)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) in (MAGIC, LEGACY_IDS_MAGIC)
    except OSError:
        return False


# Foreign token formats taken by ``--data`` (besides the package's own KGPTTOK1 file):
# NumPy .npy files (recognised by their magic, opened with np.load(mmap_mode="r")) and raw
# nanoGPT-style .bin files of little-endian ids, which carry no header and so need their id type
# named (``data_dtype``, the command line's --data-dtype).
NPY_MAGIC = b"\x93NUMPY"
RAW_DTYPES: Dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"),
                                         "uint32": np.dtype("<u4")}


def token_format(path: PathLike, data_dtype: Optional[str] = None) -> Optional[str]:
    """What kind of token file ``path`` is: "kgpt" (KGPTTOK1, or the legacy KGPTIDS file, which
    read_token_header refuses saying what to do), "npy" (NumPy magic), "raw" (any other file when
    ``data_dtype`` names the id type), or None (not a token file: text, or nothing we know)."""
    if data_dtype is not None and data_dtype not in RAW_DTYPES:
        raise ValueError(f"data_dtype must be one of {sorted(RAW_DTYPES)}, got {data_dtype!r}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head in (MAGIC, LEGACY_IDS_MAGIC):
        return "kgpt"
    if head.startswith(NPY_MAGIC):
        return "npy"
    return "raw" if data_dtype is not None else None


def check_utf8_text(path: PathLike, block: int = 1 << 24) -> None:
    """ValueError (one line) unless ``path`` holds valid UTF-8 text without NUL bytes. A file that is neither text
    nor a known token format must not be trained on as text (a nanoGPT train.bin decoded with
    errors="replace" is mostly U+FFFD)."""
    import codecs
    dec = codecs.getincrementaldecoder("utf-8")(errors="strict")
    done = 0

    def refuse(what: str, offset: int) -> ValueError:
        return ValueError(
            f"{path}: not UTF-8 text ({what} at offset {offset}) and not a known token file "
            f"(KGPTTOK1, .npy); a raw nanoGPT-style .bin of token ids needs --data-dtype "
            f"uint16|uint32")
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            nul = chunk.find(b"\0")  # valid UTF-8, but no text holds one (small uint16 ids do)
            if nul >= 0:
                raise refuse("a NUL byte", done + nul)
            try:
                dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise refuse("an invalid byte", done + max(e.start, 0)) from None
            if not chunk:
                return
            done += len(chunk)


def read_token_array(path: PathLike, data_dtype: Optional[str] = None,
                     vocab_size: Optional[int] = None) -> Tuple[np.ndarray, int, str]:
    """Any token file ``--data`` takes -> (read-only ids, vocab_size, format).

    KGPTTOK1: as read_token_file (its header's vocab_size; ``vocab_size`` is not used). .npy: a
    1-D integer array, memory-mapped. Raw (``data_dtype`` "uint16"/"uint32"): the file's bytes as
    little-endian ids, memory-mapped. The last two record no vocabulary: ``vocab_size`` when
    given (every id must be below it), else the largest id + 1 (one pass over the ids)."""
    path = Path(path)
    fmt = token_format(path, data_dtype)
    if fmt is None or fmt == "kgpt":  # (a foreign file gets read_token_header's message)
        ids, vocab = read_token_file(path)  # raises unless the file is KGPTTOK1
        return ids, vocab, "kgpt"
    if fmt == "npy":
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable .npy file ({' '.join(str(e).split())})"
                             ) from None
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(f"{path}: a .npy token file must hold a 1-D integer array, got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} "
                             f"{getattr(ids, 'shape', '')}")
    else:
        assert data_dtype is not None  # token_format gives "raw" only with a data_dtype
        dt = RAW_DTYPES[data_dtype]
        size = path.stat().st_size
        if size % dt.itemsize:
            raise ValueError(f"{path}: {size} bytes is not a whole number of {data_dtype} ids")
        ids = (np.zeros(0, dt) if size == 0 else
               np.memmap(path, dtype=dt, mode="r", shape=(size // dt.itemsize,)))
    lo = int(ids.min()) if ids.size else 0
    hi = int(ids.max()) if ids.size else -1
    if lo < 0:
        raise ValueError(f"{path}: negative token id {lo}")
    if vocab_size is None:
        vocab_size = max(hi + 1, 1)
    elif hi >= int(vocab_size):
        raise ValueError(f"{path}: token id {hi} is outside the vocabulary of {vocab_size}")
    if int(vocab_size) > 2**32:
        raise ValueError(f"{path}: vocab_size {vocab_size} exceeds 2**32")
    return ids, int(vocab_size), fmt


def read_token_file(path: PathLike) -> Tuple[np.ndarray, int]:
    """(ids as a read-only np.memmap (uint16/uint32), vocab_size). Validates the header."""
    h = read_token_header(path)
    if h["n_tokens"] == 0:
        return np.zeros(0, _DTYPES[h["width"]]), h["vocab_size"]
    ids = np.memmap(path, dtype=_DTYPES[h["width"]], mode="r", offset=HEADER_SIZE,
                    shape=(h["n_tokens"],))
    return ids, h["vocab_size"]


# ---------------------------------------------------------------------------------- text -> ids
def list_text_files(paths: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Expand files and directories into a sorted, de-duplicated list of files. A directory
    contributes its files (recursively, hidden entries skipped) whose suffix is in TEXT_SUFFIXES;
    a file given by name is always taken. A missing path raises FileNotFoundError."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [Path(root, f) for f in files
                          if not f.startswith(".") and f.lower().endswith(TEXT_SUFFIXES)]
            out += sorted(found)
        elif p.is_file():
            out.append(p)
        elif os.path.lexists(p):
            raise ValueError(f"{p}: {not_a_regular_file(p)}")
        else:
            raise FileNotFoundError(f"data path not found: {p}")
    seen, uniq = set(), []
    for p in out:
        k = os.path.abspath(p)
        if k not in seen:
            seen.add(k)
            uniq.append(p)
    return uniq


def not_a_regular_file(path: PathLike) -> str:
    """What is wrong with an existing path that is neither a regular file nor a folder, e.g.
    "not a regular file (a character device)"."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return f"not a regular file ({what})"
    return "not a regular file"


def read_texts(files: Iterable[PathLike], strict: bool = False) -> List[str]:
    """File contents as str, empty files dropped. UTF-8; undecodable bytes become U+FFFD, or with
    ``strict`` a file that is not valid UTF-8 raises ValueError in one line (see
    check_utf8_text)."""
    texts = []
    for f in files:
        with open(f, "rb") as fh:
            raw = fh.read()
        if strict:
            try:
                t = raw.decode("utf-8")
                if "\0" in t:
                    raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL")
            except UnicodeDecodeError:
                check_utf8_text(f)  # raises, naming the offset
                raise  # pragma: no cover
        else:
            t = raw.decode("utf-8", errors="replace")
        if t:
            texts.append(t)
    return texts


# The document separator: a special token of the tokenizer trained on ``--data`` files, put
# between documents so that no document's text seems to continue into the next.
EOT = "<|endoftext|>"


def encode_texts(tokenizer: Any, texts: Sequence[str], separator: Optional[int] = None,
                 allowed_special: Any = None) -> np.ndarray:
    """Concatenate the token ids of every document (``encode_batch`` when the tokenizer has it,
    which encodes documents in parallel) -> 1-D int64 array. ``separator``: a token id put
    between consecutive documents (e.g. the tokenizer's ``<|endoftext|>``; None: none).
    ``allowed_special``: passed on to the tokenizer (None: its default)."""
    if not texts:
        return np.zeros(0, np.int64)
    kw = {} if allowed_special is None else {"allowed_special": allowed_special}
    if hasattr(tokenizer, "encode_batch"):
        parts = tokenizer.encode_batch(list(texts), **kw)
    else:
        parts = [tokenizer.encode(t, **kw) for t in texts]
    parts = [np.asarray(p, dtype=np.int64).ravel() for p in parts]
    if separator is not None and len(parts) > 1:
        sep = np.array([int(separator)], np.int64)
        parts = [x for k, p in enumerate(parts) for x in ((sep, p) if k else (p,))]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def tokenize_files(tokenizer: Any, paths: Union[PathLike, Sequence[PathLike]],
                   out_path: PathLike, separator: Optional[Union[int, str]] = None) -> Path:
    """Text files/dirs -> one token file at ``out_path`` (documents concatenated in sorted order).
    ``separator``: a token id, or the text of one of the tokenizer's special tokens (e.g.
    ``"<|endoftext|>"``), put between documents; None: documents are joined directly (0.1.0)."""
    files = list_text_files(paths)
    sep_id: Optional[int]
    if isinstance(separator, str):
        specials = getattr(tokenizer, "special_tokens", None) or {}
        if separator not in specials:
            raise ValueError(f"separator {separator!r} is not a special token of the tokenizer")
        sep_id = specials[separator]
    else:
        sep_id = separator
    ids = encode_texts(tokenizer, read_texts(files), separator=sep_id)
    return write_token_file(out_path, ids, int(tokenizer.vocab_size))


# ---------------------------------------------------------------------------------- batches
_HASH_CHUNK = 1 << 24  # tokens per hashed chunk (32-64 MiB)


def hash_tokens(tokens: Any, vocab_size: int) -> str:
    """BLAKE2b-256 (hex) of every token, as the little-endian ids of the width a token file of
    this vocab_size uses (2 bytes up to 65,536, else 4): the same digest for a token file's
    memmap and for an in-memory array of any integer dtype holding the same ids."""
    dt = id_dtype(vocab_size) if vocab_size <= 2**32 else np.dtype("<u8")
    h = hashlib.blake2b(digest_size=32)
    n = int(tokens.size)
    for i in range(0, n, _HASH_CHUNK):
        chunk = tokens[i:i + _HASH_CHUNK]
        if chunk.dtype != dt or not chunk.flags.c_contiguous:
            chunk = np.ascontiguousarray(chunk, dtype=dt)
        h.update(memoryview(chunk).cast("B"))
    return h.hexdigest()


def _check_batch_memory(B: int, T: int, world: int) -> None:
    """MemoryError naming the batch when its arrays cannot fit (checked for big batches only)."""
    need = B * world * 8 + B * (T + 1) * 8 + 2 * B * T * 4 + B * 112  # offsets, rows, x, y
    if need < (64 << 20):
        return
    from ._limits import check_bytes_fit
    check_bytes_fit(need, f"a batch of {B} x {T} tokens")


class TokenDataset:
    """Train/validation split of one token stream with seeded random batches.

    The last ``val_fraction`` of the tokens is the validation split. ``get_batch("train")`` draws
    batch offsets from ``self.rng`` (np.random.Generator(PCG64(seed))); its state and the number of
    batches drawn are the data position saved in checkpoints (``state_dict``). Validation batches
    come from a fresh generator seeded from ``seed`` at each :meth:`val_batches` call, so every
    evaluation sees the same batches and never disturbs the training stream.

    ``shard(rank, world)`` gives data-parallel rank ``rank`` its share of every global batch: all
    ranks draw the same ``world * B`` offsets and rank r keeps rows [r*B, (r+1)*B), so ``world``
    ranks with batch B see exactly the batches of one rank with batch ``world * B``.
    """

    def __init__(self, tokens: Any, vocab_size: int, val_fraction: float = 0.1, seed: int = 0,
                 source: Optional[str] = None):
        tokens = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
        if tokens.ndim != 1 or (tokens.size and tokens.dtype.kind not in "iu"):
            raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} "
                             f"{tokens.shape}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.tokens = tokens
        self.vocab_size = int(vocab_size)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.source = source
        n_val = int(round(tokens.size * self.val_fraction))
        self.train = tokens[:tokens.size - n_val]
        self.val = tokens[tokens.size - n_val:]
        self.data_dtype: Optional[str] = None  # a raw token file's id type (from_file)
        self.rank, self.world = 0, 1
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.batches_drawn = 0
        self._fingerprint: Optional[Dict[str, Any]] = None

    @classmethod
    def from_file(cls, path: PathLike, val_fraction: float = 0.1, seed: int = 0,
                  data_dtype: Optional[str] = None, vocab_size: Optional[int] = None
                  ) -> "TokenDataset":
        """A token file: KGPTTOK1, a .npy array, or raw ids with ``data_dtype`` (see
        read_token_array; ``vocab_size`` is used for the last two only)."""
        ids, vocab, fmt = read_token_array(path, data_dtype, vocab_size)
        ds = cls(ids, vocab, val_fraction=val_fraction, seed=seed, source=os.fspath(path))
        ds.data_dtype = data_dtype if fmt == "raw" else None
        return ds

    def __len__(self) -> int:
        return int(self.tokens.size)

    def shard(self, rank: int, world: int) -> "TokenDataset":
        """This dataset as seen by data-parallel rank ``rank`` of ``world`` (see class doc)."""
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int)
                and 0 <= rank < world):
            raise ValueError(f"need 0 <= rank < world, got rank={rank!r} world={world!r}")
        ds = TokenDataset(self.tokens, self.vocab_size, self.val_fraction, self.seed, self.source)
        ds.rank, ds.world, ds.data_dtype = rank, world, self.data_dtype
        ds._fingerprint = self._fingerprint  # the same tokens: no second pass over them
        return ds

    def fingerprint(self) -> Dict[str, Any]:
        """What a checkpoint records to recognise the same data on resume: the token count,
        vocab_size, val_fraction and a BLAKE2b hash of every token (:func:`hash_tokens`).
        Computed once per dataset (the tokens are not expected to change under it)."""
        if self._fingerprint is None:
            self._fingerprint = {"n_tokens": int(self.tokens.size),
                                 "vocab_size": self.vocab_size,
                                 "val_fraction": self.val_fraction,
                                 "blake2b": hash_tokens(self.tokens, self.vocab_size)}
        return dict(self._fingerprint)

    def legacy_fingerprint(self) -> Dict[str, Any]:
        """The fingerprint kernelgpt 0.1.0 recorded: the count and a checksum of the first and
        last 4,096 tokens only (still accepted from its checkpoints)."""
        head = np.asarray(self.tokens[:4096], dtype=np.int64)
        tail = np.asarray(self.tokens[-4096:], dtype=np.int64)
        return {"n_tokens": int(self.tokens.size), "vocab_size": self.vocab_size,
                "val_fraction": self.val_fraction,
                "checksum": int((head * 31 + 7).sum() ^ (tail * 17 + 3).sum()) & 0xFFFFFFFF}

    def matches_fingerprint(self, fp: Any) -> bool:
        """Whether ``fp`` (from a checkpoint) describes this data: a whole-file hash is compared
        with :meth:`fingerprint`; 0.1.0's form (a "checksum" of the ends) with
        :meth:`legacy_fingerprint`."""
        if not isinstance(fp, dict):
            return False
        if "blake2b" in fp:
            return fp == self.fingerprint()
        if "checksum" in fp:
            return fp == self.legacy_fingerprint()
        return False

    def _check(self, split: np.ndarray, name: str, T: int) -> None:
        if split.size < T + 1:
            raise ValueError(f"the {name} split has {split.size} tokens, too few for one "
                             f"sequence of block_size {T} (+1); give more data or a smaller "
                             f"block size / val fraction")

    @staticmethod
    def _rows(split: np.ndarray, offsets: np.ndarray, T: int) -> Tuple[np.ndarray, np.ndarray]:
        rows = np.stack([np.asarray(split[o:o + T + 1], dtype=np.int32) for o in offsets])
        return np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])

    def get_batch(self, batch_size: int, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """A random training batch: (x, y) int32 (B, T) with y = x shifted by one token."""
        B, T = int(batch_size), int(block_size)
        if B < 1 or T < 1:
            raise ValueError(f"batch_size and block_size must be >= 1, got {B}, {T}")
        self._check(self.train, "train", T)
        _check_batch_memory(B, T, self.world)
        offsets = self.rng.integers(0, self.train.size - T, size=B * self.world)
        self.batches_drawn += 1
        return self._rows(self.train, offsets[self.rank * B:(self.rank + 1) * B], T)

    def val_batches(self, n_batches: int, batch_size: int,
                    block_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yield ``n_batches`` validation batches, the same ones at every call."""
        B, T = int(batch_size), int(block_size)
        self._check(self.val, "validation", T)
        _check_batch_memory(B, T, self.world)
        rng = np.random.Generator(np.random.PCG64([self.seed, 0x7A1]))
        for _ in range(int(n_batches)):
            offsets = rng.integers(0, self.val.size - T, size=B * self.world)
            yield self._rows(self.val, offsets[self.rank * B:(self.rank + 1) * B], T)

    def state_dict(self) -> Dict[str, Any]:
        """JSON-able data position: the batch generator's state and batches drawn so far."""
        return {"rng": self.rng.bit_generator.state, "batches_drawn": self.batches_drawn,
                "seed": self.seed, "rank": self.rank, "world": self.world}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        try:
            state = d["rng"]
            if state.get("bit_generator") != "PCG64":
                raise ValueError(f"unexpected bit generator {state.get('bit_generator')!r}")
            rng = np.random.Generator(np.random.PCG64())
            rng.bit_generator.state = state
            drawn = int(d["batches_drawn"])
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"bad data state: {e}") from None
        self.rng, self.batches_drawn = rng, drawn
