"""The GPT model, written once over the op interface of :mod:`kernelgpt.backends.base`.

Forward and backward are explicit (as in llm.c): no autograd, every op is a backend call, and the
activations and activation gradients live in buffers allocated once per (B, T). Parameters and
gradients are each ONE flat array (decayed matrices first, then the rest) with named views into
it. ``model.backward()`` accumulates (+=) into ``model.grads``; ``zero_grad()`` clears it.

The architecture is stated once:
- the parameter table (:func:`param_table`): every parameter's name, shape as a function of the
  config, whether it gets weight decay and its init. ``param_shapes``, the initialisation, the
  flat layout and the native fused decoder's weight list all come from it;
- one block: :meth:`GPT.block_forward`, :meth:`GPT.block_backward` and :meth:`GPT.block_decode`
  (one position over the KV cache), used by the forward, the backward and
  :meth:`GPT.decode_step`.
Sampling (:mod:`kernelgpt.sample`) asks the model for logits (:meth:`GPT.next_logits`,
:meth:`GPT.prefill`, :meth:`GPT.decode_step`); the optimizer lives in :mod:`kernelgpt.optim`.
See docs/ARCHITECTURE.md for the op contract and how to add a variant.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar,
                    Union)

import numpy as np

if TYPE_CHECKING:
    from .backends.base import Array
    from .quant import QuantizedWeights


# ---------------------------------------------------------------------------------- config
@dataclass
class GPTConfig:
    """The model's shape and architecture. The five size fields are required; every field added
    after 0.1.0 has a default that reproduces 0.1.0's GPT-2, so configs saved by older releases
    keep loading (:meth:`from_dict` fills the defaults) while an unknown field is still an error.

    - n_kv_head: key/value heads (grouped-query attention); None = n_head. Must divide n_head.
    - norm: "layernorm" (GPT-2) or "rmsnorm" (Llama: no mean, no bias); norm_eps its epsilon.
    - pos_emb: "learned" (a wpe table, GPT-2) or "rope" (rotary positions on q and k, with
      rope_theta; needs an even head size).
    - mlp: "gelu" (tanh GELU, GPT-2) or "swiglu" (silu(x W_gate) * (x W_up), Llama).
      mlp_hidden: its hidden width; None = 4 * n_embd for gelu, and for swiglu the Llama rule:
      2/3 of 4 * n_embd rounded up to a multiple of 64.
    - bias: biases in the linear layers (and the layernorms' shift).
    - tie_embeddings: the lm_head is wte (GPT-2); False adds an lm_head matrix.
    """
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    norm_eps: float = 1e-5   # the norm epsilon (0.1.0 fixed it at 1e-5)
    n_kv_head: Optional[int] = None
    norm: str = "layernorm"
    pos_emb: str = "learned"
    rope_theta: float = 10000.0
    mlp: str = "gelu"
    mlp_hidden: Optional[int] = None
    bias: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        from .backends.base import check_norm_eps
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"GPTConfig.{field} must be a positive int, got {v!r}")
            setattr(self, field, int(v))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")
        self.norm_eps = check_norm_eps(self.norm_eps, "GPTConfig.norm_eps")
        kv = self.n_kv_head
        if kv is not None:
            if isinstance(kv, bool) or not isinstance(kv, (int, np.integer)) or kv < 1 \
                    or self.n_head % kv:
                raise ValueError(f"GPTConfig.n_kv_head must be a positive divisor of n_head "
                                 f"({self.n_head}) or None, got {kv!r}")
            self.n_kv_head = int(kv)
        for field, choices in (("norm", ("layernorm", "rmsnorm")), ("pos_emb", ("learned", "rope")),
                               ("mlp", ("gelu", "swiglu"))):
            if getattr(self, field) not in choices:
                raise ValueError(f"GPTConfig.{field} must be one of {', '.join(choices)}, got "
                                 f"{getattr(self, field)!r}")
        try:
            theta = float(self.rope_theta)
        except (TypeError, ValueError):
            theta = float("nan")
        if isinstance(self.rope_theta, bool) or not (math.isfinite(theta) and theta > 0):
            raise ValueError(f"GPTConfig.rope_theta must be a finite number > 0, got "
                             f"{self.rope_theta!r}")
        self.rope_theta = theta
        if self.pos_emb == "rope" and self.head_size % 2:
            raise ValueError(f"GPTConfig.pos_emb='rope' needs an even head size (n_embd / n_head), "
                             f"got {self.head_size}")
        h = self.mlp_hidden
        if h is not None:
            if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
                raise ValueError(f"GPTConfig.mlp_hidden must be a positive int or None, got {h!r}")
            self.mlp_hidden = int(h)
        for field in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, field), (bool, np.bool_)):
                raise ValueError(f"GPTConfig.{field} must be True or False, got "
                                 f"{getattr(self, field)!r}")
            setattr(self, field, bool(getattr(self, field)))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or n_head when it is None."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden(self) -> int:
        """The MLP's hidden width (mlp_hidden, or its default for the mlp kind)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        h = -(-8 * self.n_embd // 3)          # ceil(2/3 * 4 C)
        return -(-h // 64) * 64               # up to a multiple of 64

    @property
    def qkv_width(self) -> int:
        """Columns of the fused q, k, v projection: (n_head + 2 kv_heads) * head_size."""
        return (self.n_head + 2 * self.kv_heads) * self.head_size

    @property
    def is_gpt2(self) -> bool:
        """Whether this is 0.1.0's architecture (every architecture field at its default)."""
        return (self.kv_heads == self.n_head and self.norm == "layernorm"
                and self.pos_emb == "learned" and self.mlp == "gelu" and self.hidden == 4 * self.n_embd
                and self.bias and self.tie_embeddings)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GPTConfig":
        """The config of a dict written by :meth:`to_dict` (this release or an older one): fields
        it lacks take their defaults; required fields it lacks or fields this release does not
        know are a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"GPTConfig.from_dict needs a dict, got {type(d).__name__}")
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        known = {f.name for f in fields}
        missing = [n for n in required if n not in d]
        extra = [k for k in d if k not in known]
        if missing or extra:
            raise ValueError(f"bad GPT config: missing {missing}, unknown {extra}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, vocab_size: Optional[int] = None) -> "GPTConfig":
        """A named reference config (see :data:`PRESETS`); ``vocab_size`` overrides its vocab."""
        key = name.lower() if isinstance(name, str) else name
        if key not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}")
        cfg = PRESETS[key]
        return dataclasses.replace(cfg) if vocab_size is None else \
            dataclasses.replace(cfg, vocab_size=vocab_size)


_LLAMA: Dict[str, Any] = dict(n_kv_head=2, norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False,
              tie_embeddings=False)

# The named reference configs (GPTConfig.preset returns a copy).
PRESETS: Dict[str, GPTConfig] = {
    # xs: the default of `kernelgpt train`; trains in seconds on two cores, a byte-level vocab
    # with a few hundred merges.
    "xs": GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128),
    # s: the benchmarks' main shape (about 10M parameters): small enough for CPU training runs,
    # big enough that every kernel is compute- or bandwidth-bound rather than overhead-bound.
    "s": GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384),
    # m: GPT-2 small's width and depth with a small vocab and context (about 92M parameters).
    "m": GPTConfig(vocab_size=8192, block_size=512, n_layer=12, n_head=12, n_embd=768),
    # gpt2: GPT-2 small (124M), its vocab 50257 padded up to a multiple of 64.
    "gpt2": GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    # llama-xs, llama-s, llama-m: the widths, depths and contexts of xs, s and m with the
    # architecture of today's small open models (Llama, Mistral, Qwen, SmolLM): RMSNorm, rotary
    # positions, a SwiGLU MLP, grouped-query attention with half as many key/value heads, no
    # biases, an lm_head of its own.
    "llama-xs": GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=4, n_embd=128,
                          **_LLAMA),
    "llama-s": GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384,
                         n_kv_head=3, **{k: v for k, v in _LLAMA.items() if k != "n_kv_head"}),
    "llama-m": GPTConfig(vocab_size=8192, block_size=512, n_layer=12, n_head=12, n_embd=768,
                         n_kv_head=6, **{k: v for k, v in _LLAMA.items() if k != "n_kv_head"}),
}


# ---------------------------------------------------------------------------------- parameters
_Shape = Callable[[GPTConfig], Tuple[int, ...]]   # a parameter's shape as a function of the config


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of the table: ``name`` (a block's parameters are named within the block,
    e.g. "ln_1.w", and appear as "h.<layer>.<name>"), ``shape(config)``, whether AdamW decays it,
    and its init: "normal" N(0, 0.02), "residual" N(0, 0.02/sqrt(2 n_layer)) (the projections
    that write into the residual stream), "zeros" or "ones"."""
    name: str
    shape: _Shape
    decay: bool
    init: str


@dataclass(frozen=True)
class ParamTable:
    """The model's parameters in three groups: before the blocks, in each block, after them."""
    embedding: Tuple[ParamSpec, ...]
    block: Tuple[ParamSpec, ...]
    final: Tuple[ParamSpec, ...]


def _table(cfg: GPTConfig) -> ParamTable:
    """The parameter table of an architecture (it depends on the config's architecture fields,
    never on its sizes: shapes are functions of the config)."""
    C: _Shape = lambda c: (c.n_embd,)  # noqa: E731
    ln = cfg.norm == "layernorm"          # a norm with a shift (bias); rmsnorm has none
    swiglu = cfg.mlp == "swiglu"

    def norm(name: str) -> Tuple[ParamSpec, ...]:
        w = ParamSpec(f"{name}.w", C, False, "ones")
        return (w, ParamSpec(f"{name}.b", C, False, "zeros")) if ln else (w,)

    def linear(name: str, shape: _Shape, init: str, bias_len: Callable[[GPTConfig], int]
               ) -> Tuple[ParamSpec, ...]:
        w = ParamSpec(f"{name}.w", shape, True, init)
        if not cfg.bias:
            return (w,)
        return (w, ParamSpec(f"{name}.b", lambda c: (bias_len(c),), False, "zeros"))

    up: Callable[[GPTConfig], int] = \
        (lambda c: 2 * c.hidden) if swiglu else (lambda c: c.hidden)   # swiglu: gate | up
    embedding: Tuple[ParamSpec, ...] = (
        ParamSpec("wte", lambda c: (c.vocab_size, c.n_embd), True, "normal"),)
    if cfg.pos_emb == "learned":
        embedding += (ParamSpec("wpe", lambda c: (c.block_size, c.n_embd), True, "normal"),)
    # The block's order (ln_1, attention in and out, ln_2, MLP in and out) is also the fused
    # native decoder's weight order for GPT-2.
    block = (norm("ln_1")
             + linear("attn.c_attn", lambda c: (c.qkv_width, c.n_embd), "normal",
                      lambda c: c.qkv_width)
             + linear("attn.c_proj", lambda c: (c.n_embd, c.n_embd), "residual", lambda c: c.n_embd)
             + norm("ln_2")
             + linear("mlp.c_fc", lambda c: (up(c), c.n_embd), "normal", up)
             + linear("mlp.c_proj", lambda c: (c.n_embd, c.hidden), "residual", lambda c: c.n_embd))
    final = norm("ln_f")
    if not cfg.tie_embeddings:
        final += (ParamSpec("lm_head.w", lambda c: (c.vocab_size, c.n_embd), True, "normal"),)
    return ParamTable(embedding, block, final)


_ARCH_FIELDS = ("norm", "pos_emb", "mlp", "bias", "tie_embeddings")
_TABLES: Dict[Tuple[Any, ...], ParamTable] = {}


def param_table(config: GPTConfig) -> ParamTable:
    """The parameter table of ``config``'s architecture (one object per architecture)."""
    key = tuple(getattr(config, f) for f in _ARCH_FIELDS)
    t = _TABLES.get(key)
    if t is None:
        t = _TABLES[key] = _table(config)
    return t


def _layout(config: GPTConfig) -> List[Tuple[str, Tuple[int, ...], ParamSpec]]:
    """(full name, shape, spec) of every parameter in flat-buffer order: the decayed ones first
    (in table order, layer by layer), then the rest (the same order)."""
    t = param_table(config)
    named = [(s.name, s) for s in t.embedding]
    for l in range(config.n_layer):
        named += [(f"h.{l}.{s.name}", s) for s in t.block]
    named += [(s.name, s) for s in t.final]
    ordered = [x for x in named if x[1].decay] + [x for x in named if not x[1].decay]
    return [(n, tuple(int(d) for d in s.shape(config)), s) for n, s in ordered]


def param_shapes(config: GPTConfig) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, shape) of every parameter in flat-buffer order: the weight-decayed matrices first,
    then the vectors (norm weights and biases)."""
    return [(n, shape) for n, shape, _ in _layout(config)]


def train_flops_per_step(config: GPTConfig, B: int, T: int) -> float:
    """Training FLOPs of one forward+backward over B*T tokens (docs/ARCHITECTURE.md):
    6 * (non-embedding params + lm_head params) * tokens + 12 * n_layer * T * n_embd * tokens."""
    emb = {s.name for s in param_table(config).embedding}
    n_nonemb = sum(int(np.prod(s)) for n, s in param_shapes(config) if n not in emb)
    # the tied lm_head is wte, an embedding; an untied one is already in n_nonemb
    lm_head = config.vocab_size * config.n_embd if config.tie_embeddings else 0
    tokens = B * T
    return 6.0 * (n_nonemb + lm_head) * tokens + 12.0 * config.n_layer * T * config.n_embd * tokens


def _init_params(config: GPTConfig, seed: Any) -> np.ndarray:
    """The init of every parameter in NumPy float32 from np.random.default_rng(seed), drawn in
    flat-buffer order (only the "normal"/"residual" ones draw). The same seed gives the same
    weights on every backend."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    layout = _layout(config)
    flat = np.zeros(sum(int(np.prod(s)) for _, s, _ in layout), np.float32)
    resid_std = 0.02 / math.sqrt(2 * config.n_layer)
    off = 0
    for _, shape, spec in layout:
        n = int(np.prod(shape))
        if spec.init in ("normal", "residual"):
            std = resid_std if spec.init == "residual" else 0.02
            flat[off:off + n] = rng.standard_normal(n, dtype=np.float32) * np.float32(std)
        elif spec.init == "ones":
            flat[off:off + n] = 1.0
        off += n
    return flat


def _resolve_backend(backend: Union[str, ModuleType], config: Optional[GPTConfig] = None
                     ) -> ModuleType:
    """A backend module; "auto" takes the best available backend that can run ``config``."""
    if backend == "auto" and config is not None:
        from .backends import available_backends, get_backend
        for name in available_backends():
            be = get_backend(name)
            if getattr(be, "unsupported", lambda c: None)(config) is None:
                return be
    if isinstance(backend, str):
        from .backends import get_backend
        return get_backend(backend)
    if isinstance(backend, ModuleType) and hasattr(backend, "matmul_forward"):
        return backend
    raise ValueError(f"backend must be a backend name or module, got {backend!r}")


# ---------------------------------------------------------------------------------- buffers
class _LayerActs:
    """What one block's forward saves for its backward, for one (B, T)."""

    def __init__(self, e: Callable[..., Array], B: int, T: int, cfg: GPTConfig):
        N, C, H = B * T, cfg.n_embd, cfg.hidden
        up = 2 * H if cfg.mlp == "swiglu" else H
        ln = cfg.norm == "layernorm"
        self.ln1, self.ln1_rstd = e(N, C), e(N)
        self.ln1_mean: Optional[Array] = e(N) if ln else None
        self.qkv = e(B, T, cfg.qkv_width)              # with rope: q and k rotated in place
        self.atty = e(B, T, C)
        self.att_lse = e(B, cfg.n_head, T)
        self.res2 = e(B, T, C)
        self.ln2, self.ln2_rstd = e(N, C), e(N)
        self.ln2_mean: Optional[Array] = e(N) if ln else None
        self.fch, self.fch_gelu = e(N, up), e(N, H)    # MLP input projection, its activation
        self.res3 = e(B, T, C)                         # the block's output


class _Acts:
    """Activation buffers for one (B, T); gradient buffers are added on the first backward."""

    def __init__(self, be: ModuleType, cfg: GPTConfig, B: int, T: int, dtype: str):
        C, N = cfg.n_embd, B * T
        e: Callable[..., Array] = lambda *s: be.empty(s, dtype)  # noqa: E731
        self.B, self.T, self.dtype = B, T, dtype
        self.idx = be.empty((B, T), "int32")
        self.targets = be.empty((B, T), "int32")
        self.encoded = e(B, T, C)
        self.layers = [_LayerActs(e, B, T, cfg) for _ in range(cfg.n_layer)]
        self.proj = e(N, C)              # output of each c_proj, consumed at once by the residual
        self.lnf = e(N, C)
        self.lnf_mean: Optional[Array] = e(N) if cfg.norm == "layernorm" else None
        self.lnf_rstd = e(N)
        self.losses = e(N)
        self.logits: Optional[Array] = None   # (N,V), unfused path only
        self.probs: Optional[Array] = None
        self.dlogits: Optional[Array] = None
        self.dlnf = e(N, C)              # d loss / d lnf (the fused classifier writes it in forward)
        # (V,C) fused-classifier share of dwte, until backward
        self.dwte_cls: Optional[Array] = None
        self.grads_ready = False
        self.fused = False

    def ensure_grad_buffers(self, be: ModuleType, cfg: GPTConfig) -> None:
        if hasattr(self, "dres"):
            return
        N, C = self.B * self.T, cfg.n_embd
        e: Callable[..., Array] = lambda *s: be.empty(s, self.dtype)  # noqa: E731
        H = cfg.hidden
        self.dres = e(N, C)              # gradient of the residual stream
        self.dCa, self.dCb = e(N, C), e(N, C)
        self.dqkv = e(self.B, self.T, cfg.qkv_width)
        self.d4a = e(N, H)
        self.d4b = e(N, 2 * H if cfg.mlp == "swiglu" else H)


class KVCache:
    """Per-call decoding state for one model and batch size B: each layer's key/value cache
    (B, NKV, maxT, HS) (NKV = the config's key/value heads) and the (B, *) buffers of one
    decoding step. ``fused`` is the backend's one-call decoder over these caches where the
    backend has one for this config (native, float32 model, B <= 16 in every format), else
    None: :meth:`GPT.decode_step` then runs the blocks op by op. ``weights`` ("fp32", "bf16",
    "int8"; see :mod:`kernelgpt.quant`): the format the decoding steps read the matrices in;
    ``qweights`` holds the model's quantized copies (None for fp32)."""

    def __init__(self, model: "GPT", B: int, weights: str = "fp32"):
        be, cfg = model.backend, model.config
        C, dt, H = cfg.n_embd, model.dtype, cfg.hidden
        self.B = B
        self.weights = weights
        self.qweights: Optional[QuantizedWeights] = None
        if weights != "fp32":
            from .quant import quantized
            self.qweights = quantized(model, weights)
        shape = (B, cfg.kv_heads, cfg.block_size, cfg.head_size)
        self.caches = [(be.zeros(shape, dt), be.zeros(shape, dt)) for _ in range(cfg.n_layer)]
        e: Callable[..., Array] = lambda *s: be.empty(s, dt)  # noqa: E731
        self.x, self.ln, self.q, self.atty, self.proj = e(B, C), e(B, C), e(B, C), e(B, C), e(B, C)
        self.mean, self.rstd = e(B), e(B)
        self.qkv = e(B, cfg.qkv_width)
        self.fch = e(B, 2 * H if cfg.mlp == "swiglu" else H)
        self.fch_gelu = e(B, H)
        self.logits = e(B, cfg.vocab_size)
        make = getattr(be, "make_decoder", None)
        # the backend's decoder object (kernelgpt._native.Decoder on the native backend)
        self.fused: Optional[Any]
        if make is None:
            self.fused = None
        elif self.qweights is None:
            self.fused = make(model, self.caches, B)
        else:
            self.fused = make(model, self.caches, B, qweights=self.qweights)


# ---------------------------------------------------------------------------------- the model
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _serialised(method: _Method) -> _Method:
    """Run the method under the model's lock: one GPT used from several threads runs their calls
    one at a time (they share the activation buffers and generate()'s KV cache)."""
    @functools.wraps(method)
    def locked(self: "GPT", *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]  # the same signature as method


class GPT:
    """GPT-2: learned token + position embeddings, pre-LayerNorm blocks of causal multi-head
    attention and a 4x tanh-GELU MLP, a final LayerNorm, lm_head tied to ``wte``."""

    def __init__(self, config: GPTConfig, backend: Union[str, ModuleType] = "auto", seed: int = 0,
                 dtype: str = "float32"):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.backend = _resolve_backend(backend, config)
        dt = np.dtype(dtype).name if isinstance(dtype, (str, type, np.dtype)) else None
        if dt not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if dt == "float64" and self.backend.name != "numpy":
            raise ValueError("dtype='float64' needs the numpy backend (it is for gradient checks)")
        self.dtype = dt
        from ._limits import check_model_fits
        from .backends.base import check_head_size
        check_head_size(config.head_size, self.backend.name)
        why = getattr(self.backend, "unsupported", lambda c: None)(config)
        if why is not None:
            raise ValueError(f"backend {self.backend.name!r} cannot run this model: {why}")
        # before anything is listed or allocated: the host init buffer, parameters, gradients
        check_model_fits(config, dtype_bytes=np.dtype(dt).itemsize, copies=3)
        layout = _layout(config)
        self._shapes = {n: s for n, s, _ in layout}
        self.n_decay = sum(int(np.prod(s)) for _, s, spec in layout if spec.decay)
        host = _init_params(config, seed)
        self.params = self.backend.empty(host.shape, dt)  # the backend's (aligned) allocation
        self.params[...] = self.backend.asarray(host.astype(dt))
        self.grads = self.backend.zeros(host.shape, dt)
        self.param_views: Dict[str, Any] = {}
        self.grad_views: Dict[str, Any] = {}
        off = 0
        for name, shape, _ in layout:
            n = int(np.prod(shape))
            self.param_views[name] = self.params[off:off + n].reshape(shape)
            self.grad_views[name] = self.grads[off:off + n].reshape(shape)
            off += n
        block = param_table(config).block
        # per layer: the block's parameters (and gradients) by their name within the block
        self.layer_params = [{s.name: self.param_views[f"h.{l}.{s.name}"] for s in block}
                             for l in range(config.n_layer)]
        self.layer_grads = [{s.name: self.grad_views[f"h.{l}.{s.name}"] for s in block}
                            for l in range(config.n_layer)]
        # the lm_head: wte when tied (GPT-2), else its own matrix
        head = "wte" if config.tie_embeddings else "lm_head.w"
        self.lm_head, self.lm_head_grad = self.param_views[head], self.grad_views[head]
        # grouped-query attention passes n_kv_head to the attention ops (GPT-2 keeps its call)
        self._gqa = {} if config.kv_heads == config.n_head else {"n_kv_head": config.kv_heads}
        self._acts: Optional[_Acts] = None
        self._acts_thread: Optional[int] = None   # the thread whose forward the buffers hold
        # the KVCache generate() keeps between calls (batch size B; replaced when B changes)
        self.generate_cache: Optional[KVCache] = None
        # kernelgpt.quant's copies of the matrices by format, with the weights' fingerprint
        self._quantized: Dict[str, Any] = {}
        # Held by every call that uses the shared buffers (forward, backward, the decoding
        # steps, a whole generate()): calls from several threads run one at a time.
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ parameters
    def num_params(self) -> int:
        return int(self.params.size)

    def zero_grad(self) -> None:
        self.backend.zero_(self.grads)

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the named parameters as float32 numpy arrays (wte is also the lm_head)."""
        be = self.backend
        return {n: np.array(be.to_numpy(v), dtype=np.float32, copy=True)
                for n, v in self.param_views.items()}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        if not isinstance(d, dict):
            raise ValueError(f"state dict must be a dict, got {type(d).__name__}")
        missing = [n for n in self._shapes if n not in d]
        extra = [n for n in d if n not in self._shapes]
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                             f"{'...' if len(extra) > 5 else ''}")
        arrays = {}
        for n, shape in self._shapes.items():
            a = np.asarray(self.backend.to_numpy(d[n]) if not isinstance(d[n], np.ndarray) else d[n])
            if a.shape != shape:
                raise ValueError(f"state dict entry {n!r} has shape {a.shape}, expected {shape}")
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"state dict entry {n!r} has dtype {a.dtype}, expected float")
            arrays[n] = a
        for n, a in arrays.items():  # all checked first: a bad dict leaves the model untouched
            self.param_views[n][...] = self.backend.asarray(a.astype(self.dtype))

    # ------------------------------------------------------------------ input checks
    def _check_ids(self, a: Any, argname: str) -> Any:
        """(B,T) integer ids in [0, V) with 1 <= T <= block_size -> int32 backend array."""
        xp = self.backend.xp
        if isinstance(a, (list, tuple)):
            a = np.asarray(a)
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"{argname} must be an integer array, got {type(a).__name__}")
        if a.dtype.kind not in "iu":
            raise TypeError(f"{argname} must hold integer token ids, got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{argname} must have shape (B, T), got {tuple(a.shape)}")
        B, T = a.shape
        if B < 1 or T < 1:
            raise ValueError(f"{argname} must be non-empty, got shape {tuple(a.shape)}")
        if T > self.config.block_size:
            raise ValueError(f"{argname} has sequence length T={T} > block_size="
                             f"{self.config.block_size}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"{argname} holds token ids in [{lo}, {hi}], outside [0, "
                             f"{self.config.vocab_size})")
        if isinstance(a, np.ndarray):
            return self.backend.asarray(a.astype(np.int32, copy=False))
        return xp.ascontiguousarray(a.astype(xp.int32))

    def _buffers(self, B: int, T: int) -> _Acts:
        if self._acts is None or (self._acts.B, self._acts.T) != (B, T):
            self._acts = None  # free the old set before allocating the new one
            self._acts = _Acts(self.backend, self.config, B, T, self.dtype)
        return self._acts

    # ------------------------------------------------------------------ the block
    def _norm(self, out: Any, mean: Any, rstd: Any, x: Any, w: Dict[str, Any], name: str) -> None:
        """The config's norm (layernorm or rmsnorm) with parameters ``name``.w (and .b)."""
        if self.config.norm == "layernorm":
            self.backend.layernorm_forward(out, mean, rstd, x, w[name + ".w"], w[name + ".b"],
                                           self.config.norm_eps)
        else:
            self.backend.rmsnorm_forward(out, rstd, x, w[name + ".w"], self.config.norm_eps)

    def _norm_backward(self, dx: Any, g: Dict[str, Any], dout: Any, x: Any, w: Dict[str, Any],
                       name: str, mean: Any, rstd: Any) -> None:
        if self.config.norm == "layernorm":
            self.backend.layernorm_backward(dx, g[name + ".w"], g[name + ".b"], dout, x,
                                            w[name + ".w"], mean, rstd)
        else:
            self.backend.rmsnorm_backward(dx, g[name + ".w"], dout, x, w[name + ".w"], rstd)

    def _rope(self, qkv: Any, pos0: int, backward: bool = False) -> None:
        """Rotary positions on q and k of qkv (B,T,W) in place (positions pos0...)."""
        cfg = self.config
        f = self.backend.rope_backward if backward else self.backend.rope_forward
        f(qkv, qkv, cfg.n_head, cfg.kv_heads, cfg.rope_theta, pos0)

    def block_forward(self, l: int, x: Any, la: _LayerActs, proj: Any) -> Any:
        """Block l over the residual stream x (B,T,C): saves what its backward needs in la and
        returns its output (la.res3). ``proj`` (N,C) is scratch for the two projections."""
        be, cfg, w = self.backend, self.config, self.layer_params[l]
        B, T, C = x.shape
        N = B * T
        self._norm(la.ln1, la.ln1_mean, la.ln1_rstd, x.reshape(N, C), w, "ln_1")
        be.matmul_forward(la.qkv.reshape(N, cfg.qkv_width), la.ln1, w["attn.c_attn.w"],
                          w.get("attn.c_attn.b"))
        if cfg.pos_emb == "rope":
            self._rope(la.qkv, 0)
        be.attention_forward(la.atty, la.att_lse, la.qkv, cfg.n_head, **self._gqa)
        be.matmul_forward(proj, la.atty.reshape(N, C), w["attn.c_proj.w"], w.get("attn.c_proj.b"))
        be.add(la.res2, x, proj.reshape(B, T, C))
        self._norm(la.ln2, la.ln2_mean, la.ln2_rstd, la.res2.reshape(N, C), w, "ln_2")
        be.matmul_forward(la.fch, la.ln2, w["mlp.c_fc.w"], w.get("mlp.c_fc.b"))
        if cfg.mlp == "swiglu":
            be.swiglu_forward(la.fch_gelu, la.fch)
        else:
            be.gelu_forward(la.fch_gelu, la.fch)
        be.matmul_forward(proj, la.fch_gelu, w["mlp.c_proj.w"], w.get("mlp.c_proj.b"))
        be.add(la.res3, la.res2, proj.reshape(B, T, C))
        return la.res3

    def block_backward(self, l: int, x_in: Any, la: _LayerActs, a: _Acts) -> None:
        """Backward of block l: a.dres holds d(loss)/d(block output) and becomes
        d(loss)/d(block input x_in (N,C)); the block's parameter gradients are accumulated."""
        be, cfg, w, g = self.backend, self.config, self.layer_params[l], self.layer_grads[l]
        B, T = a.B, a.T
        C, N = cfg.n_embd, a.B * a.T
        # MLP branch: res3 = res2 + c_proj(act(c_fc(norm_2(res2)))); d(branch out) = dres
        be.matmul_backward(a.d4a, g["mlp.c_proj.w"], g.get("mlp.c_proj.b"), a.dres, la.fch_gelu,
                           w["mlp.c_proj.w"])
        if cfg.mlp == "swiglu":
            be.swiglu_backward(a.d4b, a.d4a, la.fch)
        else:
            be.gelu_backward(a.d4b, a.d4a, la.fch)
        be.matmul_backward(a.dCa, g["mlp.c_fc.w"], g.get("mlp.c_fc.b"), a.d4b, la.ln2,
                           w["mlp.c_fc.w"])
        self._norm_backward(a.dCb, g, a.dCa, la.res2.reshape(N, C), w, "ln_2", la.ln2_mean,
                            la.ln2_rstd)
        be.add(a.dres, a.dres, a.dCb)                          # dres is now d res2
        # attention branch: res2 = x_in + c_proj(attn(rope(c_attn(norm_1(x_in)))))
        be.matmul_backward(a.dCa, g["attn.c_proj.w"], g.get("attn.c_proj.b"), a.dres,
                           la.atty.reshape(N, C), w["attn.c_proj.w"])
        be.attention_backward(a.dqkv, a.dCa.reshape(B, T, C), la.qkv, la.atty, la.att_lse,
                              cfg.n_head, **self._gqa)
        if cfg.pos_emb == "rope":
            self._rope(a.dqkv, 0, backward=True)
        be.matmul_backward(a.dCa, g["attn.c_attn.w"], g.get("attn.c_attn.b"),
                           a.dqkv.reshape(N, cfg.qkv_width), la.ln1, w["attn.c_attn.w"])
        self._norm_backward(a.dCb, g, a.dCa, x_in, w, "ln_1", la.ln1_mean, la.ln1_rstd)
        be.add(a.dres, a.dres, a.dCb)                          # dres is now d x_in

    def block_decode(self, l: int, st: KVCache, pos: int) -> None:
        """Block l for one new position per row over the KV cache: st.x (B,C) is the residual
        stream at position ``pos`` (updated in place); the layer's k, v are written at pos."""
        be, cfg, w = self.backend, self.config, self.layer_params[l]
        C, NKV, HS = cfg.n_embd, cfg.kv_heads, cfg.head_size
        x, kc, vc = st.x, st.caches[l][0], st.caches[l][1]
        self._norm(st.ln, st.mean, st.rstd, x, w, "ln_1")
        mm = self._decode_matmul(st, l)
        mm(st.qkv, st.ln, "attn.c_attn.w", w.get("attn.c_attn.b"))
        if cfg.pos_emb == "rope":
            self._rope(st.qkv.reshape(st.B, 1, cfg.qkv_width), pos)
        st.q[...] = st.qkv[:, :C]
        kc[:, :, pos] = st.qkv[:, C:C + NKV * HS].reshape(st.B, NKV, HS)
        vc[:, :, pos] = st.qkv[:, C + NKV * HS:].reshape(st.B, NKV, HS)
        be.attention_decode(st.atty, st.q, kc, vc, pos + 1)
        mm(st.proj, st.atty, "attn.c_proj.w", w.get("attn.c_proj.b"))
        be.add(x, x, st.proj)
        self._norm(st.ln, st.mean, st.rstd, x, w, "ln_2")
        mm(st.fch, st.ln, "mlp.c_fc.w", w.get("mlp.c_fc.b"))
        if cfg.mlp == "swiglu":
            be.swiglu_forward(st.fch_gelu, st.fch)
        else:
            be.gelu_forward(st.fch_gelu, st.fch)
        mm(st.proj, st.fch_gelu, "mlp.c_proj.w", w.get("mlp.c_proj.b"))
        be.add(x, x, st.proj)

    def _decode_matmul(self, st: KVCache, l: int) -> Callable[..., None]:
        """mm(out, x, name, bias): block l's matrix ``name`` applied as a decoding step reads it:
        the backend's matmul over the float32 weights, or kernelgpt.quant's rule over st's
        quantized copy."""
        if st.qweights is None:
            be, w = self.backend, self.layer_params[l]
            return lambda out, x, name, bias: be.matmul_forward(out, x, w[name], bias)
        from .quant import matmul
        q = st.qweights.layers[l]
        return lambda out, x, name, bias: matmul(out, x, q[name], bias)

    # ------------------------------------------------------------------ forward
    def _trunk(self, idx: Any, kv: Optional[KVCache] = None) -> _Acts:
        """Embeddings, blocks and the final layernorm over validated int32 idx (B,T) -> acts.lnf.
        With a KVCache, layer l's keys and values are also copied into its caches[:, :, :T]."""
        be, cfg, p = self.backend, self.config, self.param_views
        B, T = idx.shape
        C, N = cfg.n_embd, B * T
        a = self._buffers(B, T)
        a.grads_ready = False
        a.idx[...] = idx
        be.embedding_forward(a.encoded, a.idx, p["wte"], p.get("wpe"))
        x = a.encoded                                            # (B,T,C) residual stream
        NKV, HS = cfg.kv_heads, cfg.head_size
        for l, la in enumerate(a.layers):
            x = self.block_forward(l, x, la, a.proj)
            if kv is not None:  # keys (rotated, with rope) and values: (B,NKV,T,HS)
                kc, vc = kv.caches[l]
                kc[:, :, :T] = la.qkv[:, :, C:C + NKV * HS].reshape(B, T, NKV, HS).transpose(0, 2, 1, 3)
                vc[:, :, :T] = la.qkv[:, :, C + NKV * HS:].reshape(B, T, NKV, HS).transpose(0, 2, 1, 3)
        self._norm(a.lnf, a.lnf_mean, a.lnf_rstd, x.reshape(N, C), p, "ln_f")
        return a

    @_serialised
    def forward(self, idx: Any, targets: Any = None, return_logits: bool = True
                ) -> Tuple[Optional[Any], Optional[float]]:
        """idx (B,T) integer token ids (numpy or backend array), T <= block_size.
        Returns (logits (B,T,V) backend array, a fresh copy; or None when return_logits=False,
        loss: mean cross-entropy over B*T as a Python float; or None without targets).
        With targets and return_logits=False the backend's fused classifier is used (no (N,V)
        logits held), and it also computes the classifier's gradient for the next backward()."""
        be, cfg = self.backend, self.config
        idx = self._check_ids(idx, "idx")
        B, T = idx.shape
        N, V, C = B * T, cfg.vocab_size, cfg.n_embd
        if targets is not None:
            targets = self._check_ids(targets, "targets")
            if tuple(targets.shape) != (B, T):
                raise ValueError(f"targets must have the shape of idx {(B, T)}, got "
                                 f"{tuple(targets.shape)}")
        a = self._trunk(idx)
        wte = self.lm_head
        logits_out, loss = None, None
        if targets is not None:
            a.targets[...] = targets
        if targets is not None and not return_logits:
            if a.dwte_cls is None:
                a.dwte_cls = be.empty((V, C), self.dtype)
            be.zero_(a.dwte_cls)
            be.classifier_forward_backward(a.losses, a.dlnf, a.dwte_cls, a.lnf, wte,
                                           a.targets.reshape(N), 1.0 / N)
            a.fused = True
        else:
            if a.logits is None:
                a.logits = be.empty((N, V), self.dtype)
            be.matmul_forward(a.logits, a.lnf, wte, None)
            if targets is not None:
                if a.probs is None:
                    a.probs = be.empty((N, V), self.dtype)
                be.crossentropy_forward(a.losses, a.probs, a.logits, a.targets.reshape(N))
                a.fused = False
            if return_logits:
                logits_out = a.logits.reshape(B, T, V).copy()
        if targets is not None:
            loss = float(be.to_numpy(a.losses).astype(np.float64).mean())
            a.grads_ready = True
            self._acts_thread = threading.get_ident()
        return logits_out, loss

    __call__ = forward

    # ------------------------------------------------------------------ backward
    @_serialised
    def backward(self, loss_scale: float = 1.0) -> None:
        """Accumulate (+=) d(loss * loss_scale)/d(params) into self.grads. Must follow a forward
        with targets (once per forward), in the same thread: the activations are those of the
        model's last forward, so a forward from another thread in between is an error."""
        a = self._acts
        if a is None or not a.grads_ready:
            raise RuntimeError("backward() must follow a forward() with targets (once per forward)")
        if self._acts_thread != threading.get_ident():
            raise RuntimeError("backward() must run in the thread of its forward(): this model's "
                               "last forward() with targets ran in another thread (one model "
                               "trained from several threads needs one model per thread)")
        a.grads_ready = False
        be, cfg, p, g = self.backend, self.config, self.param_views, self.grad_views
        B, T = a.B, a.T
        C, N = cfg.n_embd, B * T
        a.ensure_grad_buffers(be, cfg)
        ls = float(loss_scale)
        # --- classifier: d loss / d lnf into a.dlnf, lm_head's share of dwte into grads["wte"]
        if a.fused:
            assert a.dwte_cls is not None  # forward() allocates it before it sets a.fused
            if ls != 1.0:
                be.scale_(a.dlnf.reshape(-1), ls)
                be.scale_(a.dwte_cls.reshape(-1), ls)
            be.add(self.lm_head_grad, self.lm_head_grad, a.dwte_cls)
        else:
            if a.dlogits is None:
                a.dlogits = be.empty((N, cfg.vocab_size), self.dtype)
            be.crossentropy_backward(a.dlogits, a.probs, a.targets.reshape(N), ls / N)
            be.matmul_backward(a.dlnf, self.lm_head_grad, None, a.dlogits, a.lnf, self.lm_head)
        x_last = a.layers[-1].res3 if a.layers else a.encoded
        self._norm_backward(a.dres, g, a.dlnf, x_last.reshape(N, C), p, "ln_f", a.lnf_mean,
                            a.lnf_rstd)
        for l in reversed(range(cfg.n_layer)):
            x_in = (a.layers[l - 1].res3 if l > 0 else a.encoded).reshape(N, C)
            self.block_backward(l, x_in, a.layers[l], a)
        be.embedding_backward(g["wte"], g.get("wpe"), a.dres.reshape(B, T, C), a.idx)

    # ------------------------------------------------------------------ inference
    def _lm_head_last(self, a: _Acts) -> Any:
        """lm_head over the last position only: (B,V) backend array (fresh)."""
        B, T, C = a.B, a.T, self.config.n_embd
        last = a.lnf.reshape(B, T, C)[:, T - 1].copy()
        out = self.backend.empty((B, self.config.vocab_size), self.dtype)
        self.backend.matmul_forward(out, last, self.lm_head, None)
        return out

    @_serialised
    def next_logits(self, idx: Any) -> Any:
        """Logits (B,V) of the token after each row of idx (B,T), without a cache (fresh array)."""
        return self._lm_head_last(self._trunk(self._check_ids(idx, "idx")))

    def kv_cache(self, batch: int, weights: str = "fp32") -> KVCache:
        """A fresh decoding state (KV caches and buffers) for ``batch`` rows, its decoding steps
        reading the matrices in ``weights`` ("fp32", "bf16" or "int8"; see kernelgpt.quant)."""
        return KVCache(self, batch, weights)

    @_serialised
    def prefill(self, kv: KVCache, idx: Any) -> Any:
        """Run the forward over idx (B,T), filling kv's caches at positions [0, T); returns the
        logits (B,V) of the next token (fresh array)."""
        return self._lm_head_last(self._trunk(self._check_ids(idx, "idx"), kv))

    @_serialised
    def decode_step(self, kv: KVCache, tok: np.ndarray, pos: Any) -> Any:
        """Append token ids tok (B,) at position pos (< block_size) and return the logits (B,V)
        of the next token (kv.logits, overwritten by the next step). The backend's fused decoder
        runs it where it has one; otherwise the blocks run op by op (the same values). ``pos``
        may also be a (B,) int64 array, row b at its own position pos[b] (a ragged batch; the
        fused decoder only: ValueError without one)."""
        # a plain bool: np.isscalar's TypeGuard would retype pos as numpy's union of scalars
        per_row = not np.isscalar(pos)
        if kv.fused is not None:
            if per_row:
                pos = np.ascontiguousarray(pos, dtype=np.int64)
            kv.fused.step(np.ascontiguousarray(tok, dtype=np.int32), pos, kv.logits)
            return kv.logits
        if per_row:
            raise ValueError("per-row positions (pos as an array) need the backend's fused "
                             "decoder; this KVCache has none")
        be, cfg, p = self.backend, self.config, self.param_views
        # the fused decoder's checks, in its words: numpy indexing would wrap a negative id or
        # position around instead of refusing it
        if (isinstance(pos, bool) or not isinstance(pos, (int, np.integer))
                or not 0 <= pos < cfg.block_size):
            raise ValueError(f"pos must be in [0, {cfg.block_size}), got {pos}")
        pos = int(pos)
        ids = np.asarray(tok)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"tok must hold integer ids, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
        if bad.size:
            raise ValueError(f"tok holds id {int(bad[0])} outside [0, {cfg.vocab_size})")
        kv.x[...] = p["wte"][be.asarray(ids.astype(np.int32))]
        if cfg.pos_emb == "learned":
            kv.x += p["wpe"][pos]
        for l in range(cfg.n_layer):
            self.block_decode(l, kv, pos)
        self._norm(kv.ln, kv.mean, kv.rstd, kv.x, p, "ln_f")
        if kv.qweights is None:
            be.matmul_forward(kv.logits, kv.ln, self.lm_head, None)
        else:
            from .quant import matmul
            assert kv.qweights.head is not None  # quant.quantized() always sets head
            matmul(kv.logits, kv.ln, kv.qweights.head)
        return kv.logits

    def generate(self, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Any = None,
                 stop: Any = None, use_cache: bool = True, *, min_p: Optional[float] = None,
                 repetition_penalty: Optional[float] = None, eos_token_id: Any = None,
                 num_return_sequences: int = 1, weights: str = "fp32") -> Any:
        """Sample continuations; see :func:`kernelgpt.sample.generate`."""
        from .sample import generate
        return generate(self, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, stop=stop, use_cache=use_cache, min_p=min_p,
                        repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                        num_return_sequences=num_return_sequences, weights=weights)

    def generate_stream(self, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                        top_k: Optional[int] = None, top_p: Optional[float] = None,
                        seed: Any = None, stop: Any = None, use_cache: bool = True, *,
                        min_p: Optional[float] = None, repetition_penalty: Optional[float] = None,
                        eos_token_id: Any = None, num_return_sequences: int = 1,
                        weights: str = "fp32") -> Iterator[Any]:
        """Yield new token ids one step at a time; see :func:`kernelgpt.sample.generate_stream`."""
        from .sample import generate_stream
        return generate_stream(self, prompt_ids, max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                               use_cache=use_cache, min_p=min_p,
                               repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                               num_return_sequences=num_return_sequences, weights=weights)

    # ------------------------------------------------------------------ files (interop)
    def save_pretrained(self, directory: Any, format: str = "hf", tokenizer: Any = None) -> None:
        """A transformers directory (GPT2LMHeadModel or LlamaForCausalLM); see
        :mod:`kernelgpt.interop_hf`."""
        from .interop_hf import save_pretrained
        save_pretrained(self, directory, tokenizer=tokenizer, format=format)

    @classmethod
    def from_pretrained(cls, directory: Any, backend: Union[str, ModuleType] = "auto") -> "GPT":
        """A new model from a transformers directory; see :mod:`kernelgpt.interop_hf`."""
        from .interop_hf import from_pretrained
        model: GPT = from_pretrained(directory, backend=backend)
        return model

    def export_gguf(self, path: Any, tokenizer: Any, dtype: str = "f32") -> None:
        """A GGUF file for llama.cpp (arch gpt2 or llama); see :mod:`kernelgpt.interop_gguf`."""
        from .interop_gguf import export_gguf
        export_gguf(self, path, tokenizer, dtype=dtype)

    def save(self, path: Any) -> None:
        """The weights and config as one safetensors file; see :mod:`kernelgpt.weights`."""
        from .weights import save_weights
        save_weights(self, path)

    @classmethod
    def load(cls, path: Any, backend: Union[str, ModuleType] = "auto") -> "GPT":
        """A new model from a file written by :meth:`save`; see :mod:`kernelgpt.weights`."""
        from .weights import load_weights
        model: GPT = load_weights(path, backend=backend)
        return model

    def evaluate(self, tokens: Any, *, batch_size: int = 8, stride: Optional[int] = None,
                 token_bytes: Any = None, progress: bool = False) -> Dict[str, Any]:
        """Loss, perplexity (and bits per byte with ``token_bytes``) over ``tokens`` in order,
        every token after the first predicted once; see :mod:`kernelgpt.evaluation`."""
        from .evaluation import evaluate_tokens
        return evaluate_tokens(self, tokens, batch_size=batch_size, stride=stride,
                               token_bytes=token_bytes, progress=progress)
