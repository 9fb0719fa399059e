"""Hugging Face transformers directories in and out (GPT-2 and Llama architectures).

:func:`save_pretrained` writes a directory that ``transformers.AutoModelForCausalLM
.from_pretrained(dir)`` loads with no code of ours: config.json (GPT2LMHeadModel for a GPT-2
config, LlamaForCausalLM for a Llama-style one: rmsnorm, rope, swiglu), model.safetensors under
the Hugging Face names, generation_config.json and, with a tokenizer, tokenizer.json /
tokenizer_config.json (written by ``Tokenizer.save_hf``) and special_tokens_map.json.

:func:`from_pretrained` reads such a directory back, whether we or transformers wrote it:
model.safetensors, or shards named by model.safetensors.index.json. A config with a feature this
package does not run is refused with one line naming the field; pickle checkpoints (.bin) are
refused (convert them to safetensors). Every tensor is read and checked before a model is built.

The mapping between our parameter names and an architecture's Hugging Face names is one table
per architecture (:data:`_ARCHS`): a function from each of our names (from the model's parameter
table) to one or more of theirs. Llama's q/k/v and gate/up projections are separate matrices in
transformers and row blocks of our fused c_attn / c_fc: they are split on export and stacked on
import. Our rotary positions rotate the pairs (i, i + head_size/2) with the angles
pos * theta^(-2i/head_size), exactly transformers' Llama ("rotate_half"), so q and k are stored
as they are (tests/test_interop_hf.py compares the logits).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

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
LM_HEAD = "lm_head.weight"
_MAX_JSON = 64 << 20


@dataclass(frozen=True)
class HFArch:
    """How one architecture is stored by transformers.
    ``model_type``/``class_name``: config.json's names; ``rename``: one of our full parameter
    names ("wte", "h.3.attn.c_attn.w") -> their full tensor name(s); several names are row
    blocks of ours, of the sizes ``rows(config, our in-block name)``; ``transposed``: our
    in-block names stored transposed (GPT-2's Conv1D keeps (in, out)); ``ignored``: suffixes of
    their non-parameter buffers; ``to_hf`` / ``from_hf``: config conversions (``from_hf``
    refuses what we do not run)."""
    model_type: str
    class_name: str
    rename: Callable[[str], Tuple[str, ...]]
    rows: Callable[[Any, str], Optional[Tuple[int, ...]]]
    transposed: Tuple[str, ...]
    ignored: Tuple[str, ...]
    to_hf: Callable[[Any, Optional[int]], Dict[str, Any]]
    from_hf: Callable[[Dict[str, Any], str], Any]


def _refuse(src: str, field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{src}: unsupported config: {field}={value!r} ({why})")


def _make_config(d: Dict[str, Any], src: str) -> Any:
    from .model import GPTConfig
    try:
        return GPTConfig(**d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{src}: bad config ({e})") from None


def _split_block(name: str) -> Tuple[Optional[int], str]:
    """"h.3.attn.c_attn.w" -> (3, "attn.c_attn.w"); "wte" -> (None, "wte")."""
    if name.startswith("h."):
        _, l, rest = name.split(".", 2)
        return int(l), rest
    return None, name


# ---------------------------------------------------------------------------------- GPT-2
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
    return _make_config({"vocab_size": c.get("vocab_size"),
                         "block_size": c.get("n_positions", c.get("n_ctx")),
                         "n_layer": c.get("n_layer"), "n_head": c.get("n_head"), "n_embd": n_embd,
                         "norm_eps": c.get("layer_norm_epsilon", 1e-5)}, src)


def _gpt2_rename(name: str) -> Tuple[str, ...]:
    # "ln_1.w" -> "ln_1.weight", "attn.c_attn.b" -> "attn.c_attn.bias", "wte" -> "wte.weight"
    l, n = _split_block(name)
    stem, _, kind = n.rpartition(".")
    hf = f"{stem}.{'weight' if kind == 'w' else 'bias'}" if stem else f"{n}.weight"
    return (f"transformer.h.{l}.{hf}" if l is not None else f"transformer.{hf}",)


def _gpt2_arch() -> HFArch:
    return HFArch(model_type="gpt2", class_name="GPT2LMHeadModel", rename=_gpt2_rename,
                  rows=lambda cfg, n: None,
                  # Conv1D: every block matrix is stored (in, out)
                  transposed=("attn.c_attn.w", "attn.c_proj.w", "mlp.c_fc.w", "mlp.c_proj.w"),
                  ignored=(".attn.bias", ".attn.masked_bias"),
                  to_hf=_gpt2_to_hf, from_hf=_gpt2_from_hf)


# ---------------------------------------------------------------------------------- Llama
_LLAMA_TOP = {"wte": "model.embed_tokens.weight", "ln_f.w": "model.norm.weight",
              "lm_head.w": LM_HEAD}
_LLAMA_BLOCK = {"ln_1": ("input_layernorm",), "ln_2": ("post_attention_layernorm",),
                "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "attn.c_proj": ("self_attn.o_proj",),
                "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"), "mlp.c_proj": ("mlp.down_proj",)}


def _llama_rename(name: str) -> Tuple[str, ...]:
    l, n = _split_block(name)
    if l is None:
        return (_LLAMA_TOP[n],)
    stem, _, kind = n.rpartition(".")
    suffix = "weight" if kind == "w" else "bias"
    return tuple(f"model.layers.{l}.{t}.{suffix}" for t in _LLAMA_BLOCK[stem])


def _llama_rows(cfg: Any, n: str) -> Optional[Tuple[int, ...]]:
    stem = n.rpartition(".")[0]
    if stem == "attn.c_attn":
        kv = cfg.kv_heads * cfg.head_size
        return (cfg.n_embd, kv, kv)
    if stem == "mlp.c_fc":
        return (cfg.hidden, cfg.hidden)
    return None


def _llama_to_hf(cfg: Any, eot: Optional[int]) -> Dict[str, Any]:
    from . import __version__
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.block_size,
            "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_size,
            "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
            # rope_theta/rope_scaling: transformers 4.x; rope_parameters: 5.x
            "rope_theta": cfg.rope_theta, "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias,
            "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
            "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
            "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": None,
            "torch_dtype": "float32", "kernelgpt_version": __version__}


def _default_rope(rp: Any) -> bool:
    return rp is None or (isinstance(rp, dict) and rp.get("rope_type", rp.get("type", "default"))
                          == "default" and set(rp) <= {"rope_type", "type", "rope_theta"})


def _llama_from_hf(c: Dict[str, Any], src: str) -> Any:
    archs = c.get("architectures")
    if archs is not None and archs != ["LlamaForCausalLM"]:
        raise _refuse(src, "architectures", archs, "model_type 'llama' is read as "
                      "LlamaForCausalLM only")
    act = c.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _refuse(src, "hidden_act", act, "only silu (SwiGLU) is supported")
    for field in ("rope_scaling", "rope_parameters"):
        if not _default_rope(c.get(field)):
            raise _refuse(src, field, c[field], "only the default rope (no scaling) is supported")
    checks: Tuple[Tuple[str, Callable[[Any], bool]], ...] = (
                     ("partial_rotary_factor", lambda v: v in (None, 1, 1.0)),
                      ("sliding_window", lambda v: v is None),
                      ("use_sliding_window", lambda v: not v),
                      ("num_local_experts", lambda v: not v), ("num_experts", lambda v: not v),
                      ("n_routed_experts", lambda v: not v),
                      ("quantization_config", lambda v: v is None))
    for field, ok in checks:
        if field in c and not ok(c[field]):
            raise _refuse(src, field, c[field], "not supported by this package")
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    hd = c.get("head_dim")
    if hd is not None and not (isinstance(hidden, int) and isinstance(heads, int) and heads > 0
                               and hd * heads == hidden):
        raise _refuse(src, "head_dim", hd, f"must be hidden_size / num_attention_heads "
                      f"({hidden}/{heads})")
    ab, mb = c.get("attention_bias", False), c.get("mlp_bias", False)
    if ab != mb:
        raise _refuse(src, "mlp_bias", mb, f"with attention_bias={ab!r}: biases are supported "
                      f"in every linear layer or in none")
    rp = c.get("rope_parameters")
    theta = (rp or {}).get("rope_theta", c.get("rope_theta", 10000.0))
    kv = c.get("num_key_value_heads")
    inter = c.get("intermediate_size")
    cfg = _make_config({"vocab_size": c.get("vocab_size"),
                        "block_size": c.get("max_position_embeddings"),
                        "n_layer": c.get("num_hidden_layers"), "n_head": heads,
                        "n_embd": hidden, "norm_eps": c.get("rms_norm_eps", 1e-6),
                        "n_kv_head": kv, "norm": "rmsnorm", "pos_emb": "rope",
                        "rope_theta": theta, "mlp": "swiglu", "mlp_hidden": inter,
                        "bias": ab, "tie_embeddings": c.get("tie_word_embeddings", False)}, src)
    # the defaults written back as None, so that a config round-trips equal
    import dataclasses
    if cfg.n_kv_head == cfg.n_head:
        cfg = dataclasses.replace(cfg, n_kv_head=None)
    if cfg.mlp_hidden == dataclasses.replace(cfg, mlp_hidden=None).hidden:
        cfg = dataclasses.replace(cfg, mlp_hidden=None)
    return cfg


def _llama_arch() -> HFArch:
    return HFArch(model_type="llama", class_name="LlamaForCausalLM", rename=_llama_rename,
                  rows=_llama_rows, transposed=(), ignored=(".rotary_emb.inv_freq",),
                  to_hf=_llama_to_hf, from_hf=_llama_from_hf)


_ARCHS: Dict[str, HFArch] = {}


def arch(model_type: str) -> HFArch:
    """The table of ``model_type`` (KeyError for one we do not know)."""
    if not _ARCHS:
        _ARCHS["gpt2"] = _gpt2_arch()
        _ARCHS["llama"] = _llama_arch()
    if model_type not in _ARCHS:
        raise KeyError(model_type)
    return _ARCHS[model_type]


_SIZE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "norm_eps")
_SAME_AS = {"n_kv_head": lambda c: c.n_head, "mlp_hidden": lambda c: 4 * c.n_embd}
# Llama: these three fixed; n_kv_head, rope_theta, mlp_hidden, bias and tie_embeddings free
_LLAMA_FIXED = (("norm", "rmsnorm"), ("pos_emb", "rope"), ("mlp", "swiglu"))


def check_gpt2(cfg: Any, what: str) -> None:
    """ValueError (one line naming the field) unless ``cfg`` is the GPT-2 architecture: every
    GPTConfig field other than the sizes and norm_eps at its default (or its equivalent: n_kv_head
    = n_head, mlp_hidden = 4 * n_embd)."""
    import dataclasses
    for f in dataclasses.fields(cfg):
        if f.name in _SIZE_FIELDS or f.default is dataclasses.MISSING:
            continue
        v = getattr(cfg, f.name)
        if v == f.default or (f.name in _SAME_AS and v == _SAME_AS[f.name](cfg)):
            continue
        raise ValueError(f"{what} supports the GPT-2 architecture only: GPTConfig.{f.name}="
                         f"{v!r} (GPT-2: {f.default!r})")


def check_llama(cfg: Any, what: str) -> None:
    """ValueError (one line naming the field) unless ``cfg`` is a Llama-style config: rmsnorm,
    rope and swiglu (any n_kv_head, rope_theta, mlp_hidden, bias and tie_embeddings)."""
    for field, want in _LLAMA_FIXED:
        v = getattr(cfg, field)
        if v != want:
            raise ValueError(f"{what} supports the GPT-2 and Llama architectures: GPTConfig."
                             f"{field}={v!r} (Llama: {want!r})")


def arch_name_of_config(cfg: Any, what: str) -> str:
    """"gpt2" or "llama" for a GPTConfig; ValueError (one line naming a field) for a mix of the
    two. A config closer to GPT-2 (two or more of norm, pos_emb, mlp at GPT-2's values) gets
    GPT-2's message, the others Llama's."""
    gpt2_like = sum(getattr(cfg, f) != want for f, want in _LLAMA_FIXED) >= 2
    if gpt2_like:
        check_gpt2(cfg, what)
        return "gpt2"
    check_llama(cfg, what)
    return "llama"


def arch_of_config(cfg: Any) -> HFArch:
    """The table of a GPTConfig (ValueError for an architecture with no transformers class)."""
    return arch(arch_name_of_config(cfg, "Hugging Face export"))


def tensor_map(a: HFArch, cfg: Any) -> Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...],
                                                        Optional[Tuple[int, ...]], bool]]:
    """our full name -> (their names, our shape, row blocks or None, transposed)."""
    from .model import param_shapes
    out = {}
    for n, shape in param_shapes(cfg):
        inner = _split_block(n)[1]
        theirs = a.rename(n)
        rows = a.rows(cfg, inner) if len(theirs) > 1 else None
        out[n] = (theirs, shape, rows, inner in a.transposed)
    return out


def hf_state_dict(a: HFArch, state: Dict[str, np.ndarray], cfg: Any) -> Dict[str, np.ndarray]:
    """Our state dict -> Hugging Face names (and layouts)."""
    out = {}
    for ours, (theirs, _, rows, tr) in tensor_map(a, cfg).items():
        v = state[ours]
        if rows is None:
            out[theirs[0]] = v.T if tr else v
            continue
        off = 0
        for t, r in zip(theirs, rows):
            out[t] = v[off:off + r]
            off += r
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


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
                      hf_state_dict(a, model.state_dict(), cfg), {"format": "pt"})

    def dump(obj: Any) -> bytes:
        return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()

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
        raise _refuse(p, "model_type", mt, "supported: gpt2, llama")
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
    from .weights import SafetensorsFile
    d = os.fspath(directory)
    a, cfg = read_config(d)
    tmap = tensor_map(a, cfg)
    part_of: Dict[str, Tuple[str, int]] = {}          # their name -> (our name, block index)
    for ours, (theirs, _, _, _) in tmap.items():
        for i, t in enumerate(theirs):
            part_of[t] = (ours, i)
    files = _weight_files(d)
    handles = {fn: SafetensorsFile(os.path.join(d, fn)) for fn in files}   # headers checked
    where: Dict[str, str] = {}                        # their name -> file
    tied_head: Optional[Tuple[str, str]] = None
    for fn, st in handles.items():
        for full in files[fn] or list(st.entries):
            if full not in st.entries:
                raise ValueError(f"{os.path.join(d, fn)}: has no tensor {full!r} (the index "
                                 f"names it)")
            if full.endswith(a.ignored):
                continue
            if full in (LM_HEAD, "output.weight") and full not in part_of:
                tied_head = (fn, full)        # a copy of the tied embedding: checked below
                continue
            if full not in part_of:
                raise ValueError(f"{os.path.join(d, fn)}: unexpected tensor {full!r}")
            where[full] = fn
    missing = [t for t in part_of if t not in where]
    if missing:
        raise ValueError(f"{d}: missing tensor {missing[0]}")
    for full, fn in where.items():
        ours, i = part_of[full]
        _, shape, rows, tr = tmap[ours]
        want = shape[::-1] if tr else shape
        if rows is not None:
            want = (rows[i],) + tuple(shape[1:])
        got = handles[fn].shape(full)
        if got != want:
            raise ValueError(f"{os.path.join(d, fn)}: tensor {full!r} has shape {got}, the "
                             f"config says {want}")
        if handles[fn].entries[full][0] not in ("F32", "F16", "BF16", "F64"):
            raise ValueError(f"{os.path.join(d, fn)}: tensor {full!r} is not floating point")
    from ._limits import check_model_fits
    check_model_fits(cfg, batch=(1, cfg.block_size), training=False)
    state = {}
    for ours, (theirs, _, rows, tr) in tmap.items():
        parts = [handles[where[t]].read(t) for t in theirs]
        v = parts[0] if rows is None else np.concatenate(parts, axis=0)
        state[ours] = np.ascontiguousarray(v.T) if tr else v
    if tied_head is not None:
        fn, full = tied_head
        head = handles[fn].read(full)
        if head.shape != state["wte"].shape or not np.array_equal(head, state["wte"]):
            raise _refuse(os.path.join(d, fn), full, "untied",
                          "the config ties the embeddings, so lm_head must equal the token "
                          "embedding")
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
