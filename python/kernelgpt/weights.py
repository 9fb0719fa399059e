"""Weights-only files and the safetensors reader shared by the interop modules.

``save_weights(model, path)`` writes ONE safetensors file: the named float32 parameters (the
names of :func:`kernelgpt.model.param_shapes`) with the config in the file's metadata
(``{"format": "kernelgpt-weights", "version": "1", "config": <GPTConfig JSON>}``).
``load_weights(path)`` reads it back into a new :class:`GPT` (``GPT.save`` / ``GPT.load``).

:func:`read_safetensors` reads a safetensors file itself (an 8-byte header length, a JSON
header, the raw tensors): every entry is checked against the file's size before anything is
read, so a truncated or garbled file is one ``ValueError`` naming the file; F16 and BF16 become
float32. Nothing is unpickled anywhere.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

WEIGHTS_FORMAT = "kernelgpt-weights"
WEIGHTS_VERSION = "1"
MAX_HEADER_BYTES = 100 << 20   # safetensors' own limit for the JSON header

_DTYPES: Dict[str, "np.dtype[Any]"] = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
           "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
           "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
           "BOOL": np.dtype("?")}


class SafetensorsFile:
    """The checked header of one safetensors file: ``entries`` {name: (dtype, shape, begin,
    end)} (offsets into the data section), ``metadata`` {str: str}. :meth:`read` returns one
    tensor (floats as float32)."""

    def __init__(self, path: PathLike):
        self.path = os.fspath(path)
        p = self.path
        try:
            size = os.path.getsize(p)
            with open(p, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError(f"{p}: not a safetensors file (shorter than its 8-byte "
                                     f"header length)")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER_BYTES or 8 + n > size:
                    raise ValueError(f"{p}: truncated or not a safetensors file (header of {n} "
                                     f"bytes, file of {size})")
                raw = f.read(n)
        except OSError as e:
            raise ValueError(f"{p}: cannot read ({e.strerror or e})") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise ValueError(f"{p}: not a safetensors file (unreadable JSON header)") from None
        if not isinstance(header, dict):
            raise ValueError(f"{p}: not a safetensors file (header is not an object)")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{p}: bad __metadata__ (not an object)")
        self.metadata: Dict[str, str] = {str(k): str(v) for k, v in meta.items()}
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{p}: bad entry for tensor {name!r}")
            dt, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if dt not in _DTYPES:
                raise ValueError(f"{p}: tensor {name!r} has unsupported dtype {dt!r}")
            if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0
                                                       for d in shape)
                    or not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) for o in offs)):
                raise ValueError(f"{p}: bad shape or offsets for tensor {name!r}")
            b, en = offs
            nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dt].itemsize
            if not 0 <= b <= en or en - b != nbytes:
                raise ValueError(f"{p}: tensor {name!r}: offsets {offs} do not hold "
                                 f"{dt}{shape}")
            if en > data_len:
                raise ValueError(f"{p}: truncated (tensor {name!r} ends at byte {en} of a "
                                 f"{data_len}-byte data section)")
            self.entries[name] = (dt, tuple(shape), b, en)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.entries[name][1]

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name``; F16/BF16/F64 as float32, integers as they are."""
        dt, shape, b, en = self.entries[name]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + b)
            buf = f.read(en - b)
        if len(buf) != en - b:
            raise ValueError(f"{self.path}: truncated while reading tensor {name!r}")
        a: np.ndarray = np.frombuffer(buf, dtype=_DTYPES[dt]).reshape(shape)
        out: np.ndarray
        if dt == "BF16":
            out = (a.astype(np.uint32) << 16).view(np.float32)
        elif dt in ("F16", "F64", "F32"):
            out = a.astype(np.float32)
        else:
            out = a.copy()
        return out


def read_safetensors(path: PathLike, names: Optional[Iterable[str]] = None
                     ) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """({name: array}, metadata) of a safetensors file (``names``: only those; a missing one
    is a ValueError). Floats come back as float32."""
    st = SafetensorsFile(path)
    want = list(st.entries) if names is None else list(names)
    missing = [n for n in want if n not in st.entries]
    if missing:
        raise ValueError(f"{st.path}: has no tensor {missing[0]!r}")
    return {n: st.read(n) for n in want}, st.metadata


def write_safetensors(path: PathLike, tensors: Dict[str, np.ndarray],
                      metadata: Optional[Dict[str, str]] = None) -> None:
    """Write ``tensors`` (C-contiguous copies) atomically (temporary file, fsync, rename)."""
    from safetensors.numpy import save
    from .checkpoint import atomic_write_bytes
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


# ---------------------------------------------------------------------------------- weights-only
def save_weights(model: Any, path: PathLike) -> None:
    """One safetensors file: the model's parameters (float32) and its config (metadata)."""
    meta = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION,
            "config": json.dumps(model.config.to_dict(), sort_keys=True)}
    write_safetensors(path, model.state_dict(), meta)


def load_weights(path: PathLike, backend: Any = "auto") -> Any:
    """A new GPT from a file written by :func:`save_weights`. ValueError (one line naming the
    file) for a file that is not one, or whose tensors do not match its config; nothing is
    built until every tensor is read and checked."""
    from .model import GPT, GPTConfig, param_shapes
    p = os.fspath(path)
    st = SafetensorsFile(p)
    if st.metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{p}: not a kernelgpt weights file (no \"format\": "
                         f"\"{WEIGHTS_FORMAT}\" in its metadata)")
    if st.metadata.get("version") != WEIGHTS_VERSION:
        raise ValueError(f"{p}: unsupported weights version {st.metadata.get('version')!r}")
    try:
        cfg = GPTConfig.from_dict(json.loads(st.metadata.get("config", "")))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{p}: bad model config in metadata ({e})") from None
    shapes = dict(param_shapes(cfg))
    missing = [n for n in shapes if n not in st.entries]
    extra = [n for n in st.entries if n not in shapes]
    if missing or extra:
        raise ValueError(f"{p}: tensors do not match the config: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    for n, s in shapes.items():
        if st.shape(n) != s:
            raise ValueError(f"{p}: tensor {n!r} has shape {st.shape(n)}, config says {s}")
        if st.entries[n][0] not in ("F32", "F16", "BF16", "F64"):
            raise ValueError(f"{p}: tensor {n!r} is {st.entries[n][0]}, not a float")
    from ._limits import check_model_fits
    check_model_fits(cfg, batch=(1, cfg.block_size), training=False)
    state = {n: st.read(n) for n in shapes}
    model = GPT(cfg, backend=backend)
    model.load_state_dict(state)
    return model
