"""`kernelgpt tokenizer train|encode`: the command-line front end of tokenizer.py.

`encode` writes the package's token file (data.py: magic b"KGPTTOK1", version, id width,
vocab_size = the tokenizer's vocab size, count, then the ids), written atomically; it feeds
`kernelgpt train --data FILE` and ``TokenDataset.from_file`` directly. ``read_ids(path)`` returns
the ids of such a file, and still reads the ids.bin this command wrote before (legacy format,
little-endian, no vocab_size):
    bytes 0-7    magic b"KGPTIDS\\0"
    bytes 8-11   uint32 version = 1
    bytes 12-15  uint32 bytes per id: 2 (uint16) or 4 (uint32)
    bytes 16-23  uint64 number of ids
    bytes 24-    the ids
"""
from __future__ import annotations

import argparse
import logging
import os
import struct
import sys
from pathlib import Path
from typing import TypeVar

import numpy as np

from .data import LEGACY_IDS_MAGIC, PathLike, read_token_file, write_token_file

IDS_MAGIC = LEGACY_IDS_MAGIC  # the legacy format's magic and version, read by read_ids only
IDS_VERSION = 1
_HEADER = struct.Struct("<8sIIQ")  # legacy header: magic, version, id width, count

log = logging.getLogger(__name__)

_P = TypeVar("_P", bound=argparse.ArgumentParser)


def add_tokenizer_parser(subparsers: argparse._SubParsersAction[_P]) -> _P:
    """Register `tokenizer` with its `train` and `encode` subcommands (parsers of the class
    ``subparsers`` makes)."""
    p = subparsers.add_parser("tokenizer", help="train a BPE tokenizer or encode a file with one")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="{train,encode}")
    sub.required = True
    t = sub.add_parser("train", help="learn BPE merges from text files")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files (streamed)")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="256 byte tokens + merges + special tokens")
    t.add_argument("--out", required=True, metavar="TOK_JSON", help="where to write the tokenizer")
    t.add_argument("--pattern", choices=["gpt4", "gpt2", "cl100k", "o200k", "r50k", "p50k"], default="gpt4",
                   help="pre-split pattern (r50k and p50k are names of gpt2)")
    t.add_argument("--special", nargs="*", default=[], metavar="TOKEN", help="special tokens (ids after the merges)")
    t.add_argument("--threads", type=int, default=None, help="threads (default: OpenMP's default)")
    e = sub.add_parser("encode", help="encode a text file to a token file (what `train --data` "
                                      "also takes)")
    e.add_argument("--tokenizer", required=True, metavar="TOK_JSON")
    e.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text file")
    e.add_argument("--out", required=True, metavar="IDS_BIN",
                   help="output token file (KGPTTOK1 format, see kernelgpt/data.py)")
    e.add_argument("--allow-special", action="store_true",
                   help="encode special token strings in the text as special tokens (default: error)")
    p.set_defaults(func=run_tokenizer)
    return p


def write_ids(path: PathLike, ids: np.ndarray, vocab_size: int) -> None:
    """Write ``ids`` (all in [0, vocab_size)) as a token file (data.write_token_file)."""
    write_token_file(path, ids, vocab_size)


def read_ids(path: PathLike) -> np.ndarray:
    """Ids of a token file, or of a legacy KGPTIDS ids.bin, as uint16/uint32 (a memory map).
    ValueError naming the file if it is neither, or is truncated."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(IDS_MAGIC))
    except OSError as e:
        raise ValueError(f"cannot read ids file {path}: {e.strerror or e}") from None
    if magic != IDS_MAGIC:
        return read_token_file(path)[0]
    return _read_legacy_ids(path)


def _read_legacy_ids(path: PathLike) -> np.ndarray:
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise ValueError(f"{path}: too short for an ids file header ({len(head)} bytes, need "
                         f"{_HEADER.size})")
    _, version, width, n = _HEADER.unpack(head)
    if version != IDS_VERSION or width not in (2, 4):
        raise ValueError(f"{path}: unsupported KGPTIDS ids file (version {version}, id width "
                         f"{width})")
    expected = _HEADER.size + n * width
    size = os.path.getsize(path)
    if size != expected:
        raise ValueError(f"{path}: truncated or padded ids file (size {size} != header's "
                         f"{expected} bytes)")
    dtype = np.dtype("<u2") if width == 2 else np.dtype("<u4")
    if n == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=_HEADER.size, shape=(n,))


def run_tokenizer(args: argparse.Namespace) -> int:
    """Run `tokenizer train|encode`; prints one line; returns the exit code (errors: one line on
    stderr, exit code 1)."""
    from .tokenizer import Tokenizer
    try:
        if args.tokenizer_command == "train":
            for f in args.input:
                if not os.path.isfile(f):
                    raise FileNotFoundError(f"input file not found: {f}")
            tok = Tokenizer.train([Path(f) for f in args.input], args.vocab_size, pattern=args.pattern,
                                  special_tokens=args.special, num_threads=args.threads)
            tok.save(args.out)
            print(f"wrote {args.out}: vocab_size {tok.vocab_size} ({len(tok.merges)} merges, "
                  f"{len(tok.special_tokens)} special tokens, pattern {tok.pattern})")
            return 0
        if args.tokenizer_command == "encode":
            tok = Tokenizer.load(args.tokenizer)
            with open(args.input, "r", encoding="utf-8") as f:
                text = f.read()
            ids = tok.encode_to_numpy(text, allowed_special="all" if args.allow_special else "none_raise")
            write_ids(args.out, ids, tok.vocab_size)
            print(f"wrote {args.out}: {len(ids)} ids from {len(text.encode('utf-8'))} bytes "
                  f"(vocab_size {tok.vocab_size})")
            return 0
        raise ValueError(f"unknown tokenizer command {args.tokenizer_command!r}")
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:
        print(f"kernelgpt tokenizer: error: {e}", file=sys.stderr)
        return 1
