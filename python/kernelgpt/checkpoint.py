"""Checkpoints in a run folder: safetensors + JSON, written atomically, validated on load.

Layout of a run folder:
    RUN/LATEST                    one line: the name of the newest complete checkpoint folder
    RUN/ckpt-00000100/            one checkpoint (step 100):
        model.safetensors         named parameters (float32), wte doubles as the lm_head
        optimizer.safetensors     AdamW moments m, v (flat float32)
        config.json               {"format", "version", "model": GPTConfig, "train": TrainConfig}
        trainer_state.json        step, optimizer step, data position (batch RNG state), best
                                  validation loss, tokens seen, elapsed time, data fingerprint
        tokenizer.json            the tokenizer file (when the run has a tokenizer)
        manifest.json             size and sha256 of every file above; written last
    RUN/metrics.jsonl, RUN/loss.png, RUN/tokens.bin   (written by the trainer / command line)
A save writes a fresh hidden folder (each file fsynced), renames it to ckpt-<step>, then replaces
LATEST atomically, then deletes the older checkpoint folders: a crash at any point leaves LATEST
naming a whole checkpoint. Loading checks the manifest (missing, truncated, edited or foreign
files raise CheckpointError naming the file); nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from .data import atomic_write_bytes, fsync_dir

FORMAT = "kernelgpt-checkpoint"
VERSION = 1
LATEST = "LATEST"
MODEL_FILE, OPTIM_FILE = "model.safetensors", "optimizer.safetensors"
CONFIG_FILE, STATE_FILE = "config.json", "trainer_state.json"
TOKENIZER_FILE, MANIFEST_FILE = "tokenizer.json", "manifest.json"
_REQUIRED = (MODEL_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE)

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint or run folder is missing, incomplete, corrupt or not ours."""


@dataclass
class Checkpoint:
    path: Path                          # the ckpt-<step> folder
    model_config: Dict[str, Any]        # GPTConfig.to_dict()
    train_config: Dict[str, Any]        # TrainConfig as a dict
    model_state: Dict[str, np.ndarray]  # name -> float32 array
    optimizer_state: Dict[str, Any]     # {"m", "v", "step", hyperparameters}
    trainer_state: Dict[str, Any]
    tokenizer_path: Optional[Path]

    @property
    def step(self) -> int:
        return int(self.trainer_state.get("step", 0))


# ---------------------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode()


def _save_safetensors(path: Path, tensors: Dict[str, np.ndarray], meta: Dict[str, str]) -> None:
    from safetensors.numpy import save  # the bytes, so the write itself stays atomic
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def _load_safetensors(path: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(os.fspath(path))
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None


def latest_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The folder LATEST names in ``run_dir``, or None when the run has no checkpoint yet."""
    run_dir = Path(run_dir)
    p = run_dir / LATEST
    if not p.is_file():
        return None
    name = p.read_text(encoding="utf-8", errors="replace").strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(f"{p}: does not name a checkpoint folder")
    return run_dir / name


def resolve_checkpoint(path: PathLike) -> Path:
    """A run folder (follows LATEST) or a checkpoint folder (has manifest.json) -> the
    checkpoint folder. Raises CheckpointError when there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"run folder not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"not a run folder: {path}")
    if (path / MANIFEST_FILE).is_file():
        return path
    ck = latest_checkpoint(path)
    if ck is None:
        raise CheckpointError(f"{path} holds no checkpoint (no {LATEST} file)")
    if not ck.is_dir():
        raise CheckpointError(f"{path / LATEST} names {ck.name}, which is missing")
    return ck


# ---------------------------------------------------------------------------------- save
def save_checkpoint(run_dir: PathLike, *, model: Any, optimizer: Any,
                    train_config: Dict[str, Any], trainer_state: Dict[str, Any],
                    tokenizer: Any = None, keep: int = 1) -> Path:
    """Write a checkpoint of ``model``/``optimizer`` into ``run_dir`` (see module doc) and return
    its folder. ``tokenizer`` (optional) is an object saved with its ``save(path)``, or the bytes of
    a tokenizer file. The ``keep`` newest checkpoints are kept."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = int(trainer_state["step"])
    name = f"ckpt-{step:08d}"
    final = run_dir / name
    try:
        current = latest_checkpoint(run_dir)
    except CheckpointError:  # a garbled LATEST is replaced by this save
        current = None
    tmp = run_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _save_safetensors(tmp / MODEL_FILE, model.state_dict(),
                          {"format": FORMAT, "kind": "model", "step": str(step)})
        opt = optimizer.state_dict()
        _save_safetensors(tmp / OPTIM_FILE, {"m": opt["m"], "v": opt["v"]},
                          {"format": FORMAT, "kind": "optimizer", "step": str(opt["step"])})
        hyper = {k: v for k, v in opt.items() if k not in ("m", "v")}
        config = {"format": FORMAT, "version": VERSION, "model": model.config.to_dict(),
                  "train": train_config}
        atomic_write_bytes(tmp / CONFIG_FILE, _json_bytes(config))
        state = dict(trainer_state, format=FORMAT, version=VERSION, optimizer=hyper)
        atomic_write_bytes(tmp / STATE_FILE, _json_bytes(state))
        if isinstance(tokenizer, (bytes, bytearray)):
            atomic_write_bytes(tmp / TOKENIZER_FILE, bytes(tokenizer))
        elif tokenizer is not None:
            tokenizer.save(os.fspath(tmp / TOKENIZER_FILE))
        if (tmp / TOKENIZER_FILE).exists():  # tokenizer.save may not fsync: do it here
            with open(tmp / TOKENIZER_FILE, "rb+") as f:
                os.fsync(f.fileno())
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {"format": FORMAT, "version": VERSION, "step": step,
                    "files": {n: {"size": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)}
                              for n in files}}
        atomic_write_bytes(tmp / MANIFEST_FILE, _json_bytes(manifest))
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a final save right after a periodic one)
            if current is not None and current.name == name:
                shutil.rmtree(tmp)
                return final
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(run_dir)
        atomic_write_bytes(run_dir / LATEST, (name + "\n").encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Only now, with LATEST durable, drop older checkpoints and leftovers of crashed saves.
    ckpts = sorted(p for p in run_dir.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-max(1, int(keep))] if keep else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    for junk in run_dir.glob(".tmp-ckpt-*"):
        shutil.rmtree(junk, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------------- load
def verify_checkpoint(ckpt_dir: PathLike) -> Dict[str, Any]:
    """Check the manifest against the files on disk; return the manifest."""
    ckpt_dir = Path(ckpt_dir)
    mpath = ckpt_dir / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointError(f"{mpath}: missing (incomplete or foreign checkpoint)")
    manifest = _load_json(mpath)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: not a kernelgpt checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{mpath}: unsupported checkpoint version "
                              f"{manifest.get('version')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{mpath}: has no file list")
    for req in _REQUIRED:
        if req not in files:
            raise CheckpointError(f"{mpath}: does not list {req}")
    for name, info in files.items():
        p = ckpt_dir / name
        if not p.is_file():
            raise CheckpointError(f"{p}: missing")
        try:
            size, digest = int(info["size"]), str(info["sha256"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{mpath}: bad entry for {name}") from None
        if p.stat().st_size != size:
            raise CheckpointError(f"{p}: truncated or modified ({p.stat().st_size} bytes, "
                                  f"manifest says {size})")
        if _sha256(p) != digest:
            raise CheckpointError(f"{p}: corrupt (checksum mismatch)")
    return manifest


def load_checkpoint(path: PathLike) -> Checkpoint:
    """Load and validate the checkpoint at ``path`` (a run folder or a ckpt-<step> folder)."""
    ck = resolve_checkpoint(path)
    verify_checkpoint(ck)
    config = _load_json(ck / CONFIG_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT \
            or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{ck / CONFIG_FILE}: not a kernelgpt run config")
    state = _load_json(ck / STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{ck / STATE_FILE}: bad trainer state")
    model_state = _load_safetensors(ck / MODEL_FILE)
    opt = _load_safetensors(ck / OPTIM_FILE)
    if set(opt) != {"m", "v"}:
        raise CheckpointError(f"{ck / OPTIM_FILE}: expected tensors m and v, got {sorted(opt)}")
    opt_state: Dict[str, Any] = dict(state.get("optimizer") or {})
    opt_state.update(m=opt["m"], v=opt["v"])
    opt_state.setdefault("step", state["step"])
    tok = ck / TOKENIZER_FILE
    return Checkpoint(path=ck, model_config=config["model"],
                      train_config=dict(config.get("train") or {}), model_state=model_state,
                      optimizer_state=opt_state, trainer_state=state,
                      tokenizer_path=tok if tok.is_file() else None)


def load_model(path: PathLike, backend: Any = "auto") -> Tuple[Any, Any, Checkpoint]:
    """(GPT with the checkpoint's weights, Tokenizer or None, Checkpoint) from a run folder."""
    from .model import GPT, GPTConfig
    ck = load_checkpoint(path)
    try:
        cfg = GPTConfig.from_dict(ck.model_config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{ck.path / CONFIG_FILE}: bad model config ({e})") from None
    model = GPT(cfg, backend=backend)
    try:
        model.load_state_dict(ck.model_state)
    except ValueError as e:
        raise CheckpointError(f"{ck.path / MODEL_FILE}: {e}") from None
    tok = None
    if ck.tokenizer_path is not None:
        from .tokenizer import Tokenizer
        try:
            tok = Tokenizer.load(os.fspath(ck.tokenizer_path))
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise CheckpointError(f"{ck.tokenizer_path}: unreadable tokenizer ({e})") from None
    return model, tok, ck
