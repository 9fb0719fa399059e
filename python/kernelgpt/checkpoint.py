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

Every file of a run folder is written by :func:`atomic_write` (temporary file in the same folder,
created with the usual 0666 & ~umask permissions, fsynced, renamed, then the folder fsynced); the
token file writer (data.py) and the tokenizer's ``save`` use it too. One trainer at a time: a
trainer holds :func:`run_lock` (an exclusive ``fcntl.flock`` on ``RUN/.lock``) for the whole
run; a second one gets RunFolderInUse ("run folder in use by pid N") before touching anything.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from .model import GPT
    from .tokenizer import Tokenizer

FORMAT = "kernelgpt-checkpoint"
VERSION = 1
LATEST = "LATEST"
LOCK_FILE = ".lock"
MODEL_FILE, OPTIM_FILE = "model.safetensors", "optimizer.safetensors"
CONFIG_FILE, STATE_FILE = "config.json", "trainer_state.json"
TOKENIZER_FILE, MANIFEST_FILE = "tokenizer.json", "manifest.json"
_REQUIRED = (MODEL_FILE, OPTIM_FILE, CONFIG_FILE, STATE_FILE)

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A checkpoint or run folder is missing, incomplete, corrupt or not ours."""


class RunFolderInUse(RuntimeError):
    """Another process is training in this run folder."""


# ---------------------------------------------------------------------------------- atomic files
def fsync_dir(path: PathLike) -> None:
    """Flush a directory entry (after a rename) where the platform allows it."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write_fn: Callable[[Any], Any]) -> None:
    """Write ``path`` atomically: ``write_fn(f)`` fills a new temporary file in the same folder
    (opened "wb", mode 0666 & ~umask like any new file), which is flushed, fsynced and renamed
    over ``path``; then the folder is fsynced. On any error the temporary file is removed and
    ``path`` keeps its previous content. The one helper for every file the package writes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------- run lock
_held_locks: Dict[Tuple[int, int], List[int]] = {}  # (st_dev, st_ino) of the folder -> [fd, depth]
_held_guard = threading.Lock()


def _lock_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def run_lock(run_dir: PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder ``run_dir`` (created if missing) for the block:
    ``fcntl.flock`` on ``run_dir/.lock``, which records the holder's pid. Raises RunFolderInUse
    ("run folder in use by pid N") at once when another process holds it; the same process may
    nest it (the command line holds it around Trainer.fit, which takes it too). Released when the
    block ends or the process dies. Where fcntl is missing (Windows) nothing is locked."""
    run_dir = Path(run_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield run_dir
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    st = run_dir.stat()
    key = (st.st_dev, st.st_ino)
    with _held_guard:
        held = _held_locks.get(key)
        if held is not None:
            held[1] += 1
        else:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                who = _lock_holder(fd)
                os.close(fd)
                raise RunFolderInUse(f"run folder in use by {who}: {run_dir}") from None
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                pass
            held = _held_locks[key] = [fd, 1]
    try:
        yield run_dir
    finally:
        with _held_guard:
            held[1] -= 1
            if held[1] == 0:
                del _held_locks[key]
                os.close(held[0])  # closing the descriptor releases the flock


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


MAX_JSON_BYTES = 256 << 20  # a run's JSON files are kilobytes (a big tokenizer: a few MB)


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: too large for a run file (over "
                                  f"{MAX_JSON_BYTES >> 20} MiB)")
        return json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable JSON (nested too deeply)") from None


def latest_checkpoint(run_dir: PathLike) -> Optional[Path]:
    """The folder LATEST names in ``run_dir``, or None when the run has no checkpoint yet."""
    run_dir = Path(run_dir)
    p = run_dir / LATEST
    if not p.is_file():
        return None
    with open(p, "rb") as f:  # one short line; never read a huge file whole
        name = f.read(256).decode("utf-8", errors="replace").strip()
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
def verify_checkpoint(ckpt_dir: PathLike, optional: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Check the manifest against the files on disk; return the manifest. Files named in
    ``optional`` may be absent (checked when present)."""
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
        if name in optional and not p.exists():
            continue
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


def _check_trainer_state(state: Any, path: Path) -> None:
    """The types of trainer_state.json's fields (as save_checkpoint writes them); CheckpointError
    naming the file and the field otherwise."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: bad trainer state: {what}")

    def kind(v: Any) -> str:
        return type(v).__name__

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(state, dict):
        raise bad(f"expected an object, got {kind(state)}")
    if not is_int(state.get("step")) or state["step"] < 0:
        raise bad(f"\"step\" must be an int >= 0, got {state.get('step')!r}")
    for k in ("tokens_seen", "block_size"):
        if k in state and not (is_int(state[k]) and state[k] >= 0):
            raise bad(f"\"{k}\" must be an int >= 0, got {state[k]!r}")
    for k in ("elapsed_s", "best_val_loss", "last_val_loss"):
        if state.get(k) is not None and not is_num(state[k]):
            raise bad(f"\"{k}\" must be a number, got {kind(state[k])}")
    if state.get("optimizer") is not None and not isinstance(state["optimizer"], dict):
        raise bad(f"\"optimizer\" must be an object, got {kind(state['optimizer'])}")
    data = state.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        raise bad(f"\"data\" must be an object, got {kind(data)}")
    checks = {"rng": dict, "fingerprint": dict, "source": str}
    for k, t in checks.items():
        if data.get(k) is not None and not isinstance(data[k], t):
            raise bad(f"\"data.{k}\" must be {'an object' if t is dict else 'a string'}, got "
                      f"{kind(data[k])}")
    for k in ("batches_drawn", "seed", "rank", "world"):
        if k in data and not (is_int(data[k]) and data[k] >= 0):
            raise bad(f"\"data.{k}\" must be an int >= 0, got {data[k]!r}")
    if "val_fraction" in data and not (is_num(data["val_fraction"])
                                       and 0 <= data["val_fraction"] < 1):
        raise bad(f"\"data.val_fraction\" must be a number in [0, 1), got "
                  f"{data['val_fraction']!r}")


def load_checkpoint(path: PathLike, *, optimizer: bool = True) -> Checkpoint:
    """Load and validate the checkpoint at ``path`` (a run folder or a ckpt-<step> folder).
    ``optimizer=False`` (inference): the optimizer file is neither needed nor read
    (``optimizer_state`` is then empty)."""
    ck = resolve_checkpoint(path)
    verify_checkpoint(ck, optional=() if optimizer else (OPTIM_FILE,))
    config = _load_json(ck / CONFIG_FILE)
    if not isinstance(config, dict) or config.get("format") != FORMAT \
            or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{ck / CONFIG_FILE}: not a kernelgpt run config")
    if not isinstance(config.get("train", {}), (dict, type(None))):
        raise CheckpointError(f"{ck / CONFIG_FILE}: \"train\" must be an object, got "
                              f"{type(config['train']).__name__}")
    state = _load_json(ck / STATE_FILE)
    _check_trainer_state(state, ck / STATE_FILE)
    from ._limits import check_bytes_fit
    check_bytes_fit(sum((ck / n).stat().st_size
                        for n in ((MODEL_FILE, OPTIM_FILE) if optimizer else (MODEL_FILE,))),
                    f"loading the checkpoint {ck}")
    model_state = _load_safetensors(ck / MODEL_FILE)
    opt_state: Dict[str, Any] = {}
    if optimizer:
        opt = _load_safetensors(ck / OPTIM_FILE)
        if set(opt) != {"m", "v"}:
            raise CheckpointError(f"{ck / OPTIM_FILE}: expected tensors m and v, got "
                                  f"{sorted(opt)}")
        opt_state = dict(state.get("optimizer") or {})
        opt_state.update(m=opt["m"], v=opt["v"])
        opt_state.setdefault("step", state["step"])
    tok = ck / TOKENIZER_FILE
    return Checkpoint(path=ck, model_config=config["model"],
                      train_config=dict(config.get("train") or {}), model_state=model_state,
                      optimizer_state=opt_state, trainer_state=state,
                      tokenizer_path=tok if tok.is_file() else None)


def load_model(path: PathLike, backend: Any = "auto"
               ) -> Tuple[GPT, Optional[Tokenizer], Checkpoint]:
    """(GPT with the checkpoint's weights, Tokenizer or None, Checkpoint) from a run folder, for
    inference: the optimizer file is not read and may be absent (``ck.optimizer_state`` is
    empty)."""
    from .model import GPT, GPTConfig
    ck = load_checkpoint(path, optimizer=False)
    try:
        cfg = GPTConfig.from_dict(ck.model_config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{ck.path / CONFIG_FILE}: bad model config ({e})") from None
    from ._limits import check_model_fits
    check_model_fits(cfg, batch=(1, cfg.block_size), training=False)  # before any allocation
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
        except RecursionError:
            raise CheckpointError(f"{ck.tokenizer_path}: unreadable tokenizer (JSON nested too "
                                  f"deeply)") from None
    return model, tok, ck
