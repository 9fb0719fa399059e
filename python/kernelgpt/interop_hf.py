"""Hugging Face transformers directories in and out (GPT-2 architecture).

:func:`save_pretrained` writes a directory that ``transformers.AutoModelForCausalLM
.from_pretrained(dir)`` loads with no code of ours: config.json (GPT2LMHeadModel, model_type
gpt2), model.safetensors under the Hugging Face names, generation_config.json and, with a
tokenizer, tokenizer.json / tokenizer_config.json (written by ``Tokenizer.save_hf``) and
special_tokens_map.json.

:func:`from_pretrained` reads such a directory back, whether we or transformers wrote it:
model.safetensors, or shards named by model.safetensors.index.json. A config with a feature this
package does not run is refused with one line naming the field; pickle checkpoints (.bin) are
refused (convert them to safetensors). Every tensor is read and checked before a model is built.

The mapping between our parameter names and an architecture's Hugging Face names is one table
per architecture (:data:`ARCHS`), made from the model's parameter table; adding an architecture
(e.g. Llama) is one more entry.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from .model import GPT
    from .tokenizer import Tokenizer

PathLike = Union[str, "os.PathLike[str]"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GENERATION_FILE = "generation_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
_MAX_JSON = 64 << 20


@dataclass(frozen=True)
class HFArch:
    """How one architecture is stored by transformers.
    ``model_type``/``class_name``: config.json's names; ``prefix``: the base model's prefix of
    every tensor name ("transformer."); ``names``: our name -> theirs for the parameters before
    and after the blocks; ``block``: our in-block name -> their in-block name (under
    "<prefix>h.<l>."); ``transposed``: our names stored transposed (GPT-2's Conv1D keeps
    (in, out)); ``ignored``: suffixes of their non-parameter buffers; ``to_hf`` / ``from_hf``:
    config conversions (``from_hf`` refuses what we do not run)."""
    model_type: str
    class_name: str
    prefix: str
    block_prefix: str
    names: Dict[str, str]
    block: Dict[str, str]
    transposed: FrozenSet[str]
    ignored: Tuple[str, ...]
    to_hf: Callable[[Any, Optional[int]], Dict[str, Any]]
    from_hf: Callable[[Dict[str, Any], str], Any]


def _refuse(src: str, field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{src}: unsupported config: {field}={value!r} ({why})")


def _gpt2_to_hf(cfg: Any, eot: Optional[int]) -> Dict[str, Any]:
    from . import __version__
    d = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
         "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
         "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
         "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
         "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
         "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
         "reorder_and_upcast_attn": False, "add_cross_attention": False,
         "tie_word_embeddings": True, "use_cache": True, "torch_dtype": "float32",
         "kernelgpt_version": __version__}
    if eot is not None:
        d["bos_token_id"] = d["eos_token_id"] = eot
    return d


def _gpt2_from_hf(c: Dict[str, Any], src: str) -> Any:
    from .model import GPTConfig
    archs = c.get("architectures")
    if archs is not None and archs not in (["GPT2LMHeadModel"], ["GPT2Model"]):
        raise _refuse(src, "architectures", archs, "only GPT2LMHeadModel is supported")
    act = c.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _refuse(src, "activation_function", act, "only the tanh GELU (gelu_new) is supported")
    n_embd = c.get("n_embd")
    n_inner = c.get("n_inner")
    if n_inner is not None and (not isinstance(n_embd, int) or n_inner != 4 * n_embd):
        raise _refuse(src, "n_inner", n_inner, "the MLP width must be 4 * n_embd")
    for field, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if field in c and c[field] != want:
            why = ("untied embeddings: lm_head must be wte" if field == "tie_word_embeddings"
                   else f"only {field}={want} is supported")
            raise _refuse(src, field, c[field], why)
    # reorder_and_upcast_attn only changes float16 rounding: we compute in float32 anyway
    d = {"vocab_size": c.get("vocab_size"), "block_size": c.get("n_positions", c.get("n_ctx")),
         "n_layer": c.get("n_layer"), "n_head": c.get("n_head"), "n_embd": n_embd,
         "norm_eps": c.get("layer_norm_epsilon", 1e-5)}
    try:
        return GPTConfig(**d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{src}: bad config ({e})") from None


def _gpt2_arch() -> HFArch:
    from .model import param_table
    t = param_table(_probe_config())       # GPT-2: every architecture field at its default

    def hf(n: str) -> str:   # "ln_1.w" -> "ln_1.weight", "attn.c_attn.b" -> "attn.c_attn.bias"
        stem, _, kind = n.rpartition(".")
        return f"{stem}.{'weight' if kind == 'w' else 'bias'}" if stem else f"{n}.weight"
    names = {s.name: hf(s.name) for s in t.embedding + t.final}
    block = {s.name: hf(s.name) for s in t.block}
    conv1d = frozenset(s.name for s in t.block if s.name.endswith(".w") and len(
        s.shape(_probe_config())) == 2)
    return HFArch(model_type="gpt2", class_name="GPT2LMHeadModel", prefix="transformer.",
                  block_prefix="h.", names=names, block=block, transposed=conv1d,
                  ignored=(".attn.bias", ".attn.masked_bias"),
                  to_hf=_gpt2_to_hf, from_hf=_gpt2_from_hf)


def _probe_config() -> Any:
    from .model import GPTConfig
    return GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4)


_ARCHS: Dict[str, HFArch] = {}


def arch(model_type: str) -> HFArch:
    """The table of ``model_type`` (ValueError for one we do not know)."""
    if not _ARCHS:
        _ARCHS["gpt2"] = _gpt2_arch()
    if model_type not in _ARCHS:
        raise KeyError(model_type)
    return _ARCHS[model_type]


_SIZE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "norm_eps")
_SAME_AS = {"n_kv_head": lambda c: c.n_head, "mlp_hidden": lambda c: 4 * c.n_embd}


def check_gpt2(cfg: Any, what: str) -> None:
    """ValueError (one line naming the field) unless ``cfg`` is the GPT-2 architecture: every
    GPTConfig field other than the sizes and norm_eps at its default (or its equivalent: n_kv_head
    = n_head, mlp_hidden = 4 * n_embd). A Llama-style config needs its own mapping table."""
    import dataclasses
    for f in dataclasses.fields(cfg):
        if f.name in _SIZE_FIELDS or f.default is dataclasses.MISSING:
            continue
        v = getattr(cfg, f.name)
        if v == f.default or (f.name in _SAME_AS and v == _SAME_AS[f.name](cfg)):
            continue
        raise ValueError(f"{what} supports the GPT-2 architecture only: GPTConfig.{f.name}="
                         f"{v!r} (GPT-2: {f.default!r})")


def arch_of_config(cfg: Any) -> HFArch:
    """The table of a GPTConfig (GPT-2 only for now; ValueError for another architecture)."""
    check_gpt2(cfg, "Hugging Face export")
    return arch("gpt2")


def hf_state_dict(a: HFArch, state: Dict[str, np.ndarray], n_layer: int) -> Dict[str, np.ndarray]:
    """Our state dict -> Hugging Face names (and layouts)."""
    out = {}
    for ours, theirs in a.names.items():
        out[a.prefix + theirs] = state[ours]
    for l in range(n_layer):
        for ours, theirs in a.block.items():
            v = state[f"h.{l}.{ours}"]
            out[f"{a.prefix}{a.block_prefix}{l}.{theirs}"] = v.T if ours in a.transposed else v
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _name_map(a: HFArch, n_layer: int) -> Dict[str, Tuple[str, bool]]:
    """Their name (without prefix) -> (our full name, transposed)."""
    m = {theirs: (ours, False) for ours, theirs in a.names.items()}
    for l in range(n_layer):
        for ours, theirs in a.block.items():
            m[f"{a.block_prefix}{l}.{theirs}"] = (f"h.{l}.{ours}", ours in a.transposed)
    return m


# ---------------------------------------------------------------------------------- save
def save_pretrained(model: Any, directory: PathLike, tokenizer: Any = None,
                    format: str = "hf") -> None:
    """Write ``model`` (and ``tokenizer``) as a transformers directory (see module doc)."""
    if format != "hf":
        raise ValueError(f"save_pretrained: format must be 'hf', got {format!r} (GGUF: "
                         f"export_gguf; one file of weights: save)")
    from .checkpoint import atomic_write_bytes
    from .weights import write_safetensors
    d = os.fspath(directory)
    cfg = model.config
    a = arch_of_config(cfg)
    eot = None
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"the tokenizer's vocab ({tokenizer.vocab_size}) is larger than the "
                             f"model's ({cfg.vocab_size})")
        eot = tokenizer.special_tokens.get("<|endoftext|>")
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, WEIGHTS_FILE),
                      hf_state_dict(a, model.state_dict(), cfg.n_layer), {"format": "pt"})
    dump = lambda obj: (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()  # noqa: E731
    atomic_write_bytes(os.path.join(d, CONFIG_FILE), dump(a.to_hf(cfg, eot)))
    gen = {"_from_model_config": True}
    if eot is not None:
        gen.update(bos_token_id=eot, eos_token_id=eot)
    atomic_write_bytes(os.path.join(d, GENERATION_FILE), dump(gen))
    if tokenizer is not None:
        tokenizer.save_hf(d)
        specials = {}
        if eot is not None:
            specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                        "unk_token": "<|endoftext|>"}
        atomic_write_bytes(os.path.join(d, SPECIAL_MAP_FILE), dump(specials))


# ---------------------------------------------------------------------------------- load
def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_JSON + 1)
        if len(raw) > _MAX_JSON:
            raise ValueError(f"{path}: too large for a JSON config")
        return json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from None


def read_config(directory: PathLike) -> Tuple[HFArch, Any]:
    """(architecture table, GPTConfig) of a transformers directory's config.json."""
    d = os.fspath(directory)
    p = os.path.join(d, CONFIG_FILE)
    if not os.path.isdir(d):
        raise ValueError(f"{d}: not a directory")
    if not os.path.isfile(p):
        raise ValueError(f"{d}: no {CONFIG_FILE} (not a Hugging Face model directory)")
    c = _read_json(p)
    if not isinstance(c, dict):
        raise ValueError(f"{p}: not a model config (not an object)")
    mt = c.get("model_type")
    try:
        a = arch(mt) if isinstance(mt, str) else None
    except KeyError:
        a = None
    if a is None:
        raise _refuse(p, "model_type", mt, "supported: gpt2")
    return a, a.from_hf(c, p)


def _weight_files(d: str) -> Dict[str, List[str]]:
    """file -> the tensor names it should hold (None: all of them)."""
    single, index = os.path.join(d, WEIGHTS_FILE), os.path.join(d, INDEX_FILE)
    if os.path.isfile(index):
        idx = _read_json(index)
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in wm.items()):
            raise ValueError(f"{index}: no weight_map {{tensor: file}}")
        files: Dict[str, List[str]] = {}
        for name, fn in wm.items():
            if os.path.basename(fn) != fn or fn in ("", ".", ".."):
                raise ValueError(f"{index}: shard name {fn!r} is not a file name in {d}")
            files.setdefault(fn, []).append(name)
        for fn in files:
            if not os.path.isfile(os.path.join(d, fn)):
                raise ValueError(f"{index}: names shard {fn!r}, which is missing")
        return files
    if os.path.isfile(single):
        return {WEIGHTS_FILE: []}
    pickles = sorted(f for f in os.listdir(d) if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if pickles:
        raise ValueError(f"{d}: only pickle weights ({pickles[0]}); they are never unpickled: "
                         f"convert them to safetensors first (e.g. transformers' "
                         f"save_pretrained(..., safe_serialization=True))")
    raise ValueError(f"{d}: no {WEIGHTS_FILE} or {INDEX_FILE}")


def read_pretrained(directory: PathLike) -> Tuple[Any, Dict[str, np.ndarray]]:
    """(GPTConfig, our state dict) of a transformers directory, every tensor checked."""
    from .model import param_shapes
    from .weights import SafetensorsFile
    d = os.fspath(directory)
    a, cfg = read_config(d)
    shapes = dict(param_shapes(cfg))
    nmap = _name_map(a, cfg.n_layer)
    files = _weight_files(d)
    handles = {fn: SafetensorsFile(os.path.join(d, fn)) for fn in files}   # headers checked
    where: Dict[str, Tuple[str, str]] = {}   # their short name -> (file, full name)
    lm_head: Optional[Tuple[str, str]] = None
    for fn, st in handles.items():
        for full in files[fn] or list(st.entries):
            if full not in st.entries:
                raise ValueError(f"{os.path.join(d, fn)}: has no tensor {full!r} (the index "
                                 f"names it)")
            if full.endswith(a.ignored):
                continue
            if full in ("lm_head.weight", "output.weight"):
                lm_head = (fn, full)
                continue
            short = full[len(a.prefix):] if full.startswith(a.prefix) else full
            if short not in nmap:
                raise ValueError(f"{os.path.join(d, fn)}: unexpected tensor {full!r}")
            where[short] = (fn, full)
    missing = [s for s in nmap if s not in where]
    if missing:
        raise ValueError(f"{d}: missing tensor {a.prefix}{missing[0]}")
    for short, (fn, full) in where.items():
        ours, tr = nmap[short]
        shape = handles[fn].shape(full)
        want = shapes[ours][::-1] if tr else shapes[ours]
        if shape != want:
            raise ValueError(f"{os.path.join(d, fn)}: tensor {full!r} has shape {shape}, the "
                             f"config says {want}")
        if handles[fn].entries[full][0] not in ("F32", "F16", "BF16", "F64"):
            raise ValueError(f"{os.path.join(d, fn)}: tensor {full!r} is not floating point")
    from ._limits import check_model_fits
    check_model_fits(cfg, batch=(1, cfg.block_size), training=False)
    state = {}
    for short, (fn, full) in where.items():
        ours, tr = nmap[short]
        v = handles[fn].read(full)
        state[ours] = np.ascontiguousarray(v.T) if tr else v
    if lm_head is not None:
        fn, full = lm_head
        head = handles[fn].read(full)
        if head.shape != state["wte"].shape or not np.array_equal(head, state["wte"]):
            raise _refuse(os.path.join(d, fn), "lm_head.weight", "untied",
                          "lm_head must equal wte (tied embeddings)")
    return cfg, state


def from_pretrained(directory: PathLike, backend: Any = "auto") -> Any:
    """A new GPT from a transformers directory (see module doc)."""
    from .model import GPT
    cfg, state = read_pretrained(directory)
    model = GPT(cfg, backend=backend)
    model.load_state_dict(state)
    return model


def load_pretrained(directory: PathLike, backend: Any = "auto"
                    ) -> Tuple[GPT, Optional[Tokenizer]]:
    """(GPT, Tokenizer or None) from a transformers directory; the tokenizer is read with
    ``Tokenizer.from_hf`` when the directory has tokenizer.json (or vocab.json + merges.txt)."""
    from .model import GPT
    d = os.fspath(directory)
    cfg, state = read_pretrained(d)
    tok = None
    if any(os.path.isfile(os.path.join(d, f)) for f in ("tokenizer.json", "vocab.json")):
        from .tokenizer import Tokenizer
        tok = Tokenizer.from_hf(d)
        if tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"{d}: the tokenizer's vocab ({tok.vocab_size}) is larger than the "
                             f"model's ({cfg.vocab_size})")
    model = GPT(cfg, backend=backend)       # built only once everything has been read
    model.load_state_dict(state)
    return model, tok


def is_hf_directory(path: PathLike) -> bool:
    """True for a folder with a config.json holding a "model_type" (a transformers directory)."""
    p = os.path.join(os.fspath(path), CONFIG_FILE)
    if not os.path.isfile(p):
        return False
    try:
        c = _read_json(p)
    except ValueError:
        return False
    return isinstance(c, dict) and "model_type" in c
