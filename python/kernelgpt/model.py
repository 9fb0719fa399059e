"""The GPT-2 model, written once over the op interface of :mod:`kernelgpt.backends.base`.

Forward and backward are explicit (as in llm.c): no autograd, every op is a backend call, and the
activations and activation gradients live in buffers allocated once per (B, T). Parameters and
gradients are each ONE flat array (matrices first, then vectors) with named views into it.
``model.backward()`` accumulates (+=) into ``model.grads``; ``zero_grad()`` clears it.
Sampling lives in :mod:`kernelgpt.sample`; the optimizer in :mod:`kernelgpt.optim`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

# Benchmark batch sizes of the named presets (DESIGN.md "Reference configs").
PRESET_BATCH_SIZE = {"xs": 8, "s": 8, "m": 4, "gpt2": 8}
_PRESETS = {  # name: (vocab, block, layers, heads, dims)
    "xs": (512, 64, 2, 4, 128),
    "s": (8192, 256, 6, 6, 384),
    "m": (8192, 512, 12, 12, 768),
    "gpt2": (50304, 1024, 12, 12, 768),  # GPT-2 small, vocab padded to a multiple of 64
}


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int

    def __post_init__(self) -> None:
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"GPTConfig.{field} must be a positive int, got {v!r}")
            setattr(self, field, int(v))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"n_head ({self.n_head})")

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GPTConfig":
        names = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        if not isinstance(d, dict):
            raise ValueError(f"GPTConfig.from_dict needs a dict, got {type(d).__name__}")
        missing = [n for n in names if n not in d]
        extra = [k for k in d if k not in names]
        if missing or extra:
            raise ValueError(f"bad GPT config: missing {missing}, unknown {extra}")
        return cls(**{n: d[n] for n in names})

    @classmethod
    def preset(cls, name: str, vocab_size: Optional[int] = None) -> "GPTConfig":
        """Named reference config: "xs", "s", "m" or "gpt2"; ``vocab_size`` overrides the vocab."""
        key = name.lower() if isinstance(name, str) else name
        if key not in _PRESETS:
            raise ValueError(f"unknown model preset {name!r}: choose one of {', '.join(_PRESETS)}")
        v, block, nl, nh, c = _PRESETS[key]
        return cls(vocab_size=v if vocab_size is None else vocab_size, block_size=block,
                   n_layer=nl, n_head=nh, n_embd=c)


def param_shapes(config: GPTConfig) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, shape) of every parameter in flat-buffer order: all 2-D matrices first (these get
    weight decay), then all 1-D vectors (layernorm weights/biases, linear biases)."""
    V, maxT, L, C = config.vocab_size, config.block_size, config.n_layer, config.n_embd
    mats: List[Tuple[str, Tuple[int, ...]]] = [("wte", (V, C)), ("wpe", (maxT, C))]
    vecs: List[Tuple[str, Tuple[int, ...]]] = []
    for i in range(L):
        h = f"h.{i}."
        mats += [(h + "attn.c_attn.w", (3 * C, C)), (h + "attn.c_proj.w", (C, C)),
                 (h + "mlp.c_fc.w", (4 * C, C)), (h + "mlp.c_proj.w", (C, 4 * C))]
        vecs += [(h + "ln_1.w", (C,)), (h + "ln_1.b", (C,)), (h + "attn.c_attn.b", (3 * C,)),
                 (h + "attn.c_proj.b", (C,)), (h + "ln_2.w", (C,)), (h + "ln_2.b", (C,)),
                 (h + "mlp.c_fc.b", (4 * C,)), (h + "mlp.c_proj.b", (C,))]
    vecs += [("ln_f.w", (C,)), ("ln_f.b", (C,))]
    return mats + vecs


def train_flops_per_step(config: GPTConfig, B: int, T: int) -> float:
    """Training FLOPs of one forward+backward over B*T tokens, DESIGN.md's formula:
    6 * (non-embedding params + lm_head params) * tokens + 12 * n_layer * T * n_embd * tokens."""
    n_nonemb = sum(int(np.prod(s)) for n, s in param_shapes(config) if n not in ("wte", "wpe"))
    lm_head = config.vocab_size * config.n_embd
    tokens = B * T
    return 6.0 * (n_nonemb + lm_head) * tokens + 12.0 * config.n_layer * T * config.n_embd * tokens


def _resolve_backend(backend: Union[str, ModuleType]) -> ModuleType:
    if isinstance(backend, str):
        from .backends import get_backend
        return get_backend(backend)
    if isinstance(backend, ModuleType) and hasattr(backend, "matmul_forward"):
        return backend
    raise ValueError(f"backend must be a backend name or module, got {backend!r}")


class _Acts:
    """Activation buffers for one (B, T); gradient buffers are added on the first backward."""

    def __init__(self, be: ModuleType, cfg: GPTConfig, B: int, T: int, dtype: str):
        C, NH, N = cfg.n_embd, cfg.n_head, B * T
        e = lambda *s: be.empty(s, dtype)  # noqa: E731
        self.B, self.T, self.dtype = B, T, dtype
        self.idx = be.empty((B, T), "int32")
        self.targets = be.empty((B, T), "int32")
        self.encoded = e(B, T, C)
        self.ln1 = [e(N, C) for _ in range(cfg.n_layer)]
        self.ln1_mean = [e(N) for _ in range(cfg.n_layer)]
        self.ln1_rstd = [e(N) for _ in range(cfg.n_layer)]
        self.qkv = [e(B, T, 3 * C) for _ in range(cfg.n_layer)]
        self.atty = [e(B, T, C) for _ in range(cfg.n_layer)]
        self.att_lse = [e(B, NH, T) for _ in range(cfg.n_layer)]
        self.res2 = [e(B, T, C) for _ in range(cfg.n_layer)]
        self.ln2 = [e(N, C) for _ in range(cfg.n_layer)]
        self.ln2_mean = [e(N) for _ in range(cfg.n_layer)]
        self.ln2_rstd = [e(N) for _ in range(cfg.n_layer)]
        self.fch = [e(N, 4 * C) for _ in range(cfg.n_layer)]
        self.fch_gelu = [e(N, 4 * C) for _ in range(cfg.n_layer)]
        self.res3 = [e(B, T, C) for _ in range(cfg.n_layer)]
        self.proj = e(N, C)              # output of each c_proj, consumed at once by the residual
        self.lnf = e(N, C)
        self.lnf_mean = e(N)
        self.lnf_rstd = e(N)
        self.losses = e(N)
        self.logits = None               # (N,V), unfused path only
        self.probs = None
        self.dlogits = None
        self.dlnf = e(N, C)              # d loss / d lnf (the fused classifier writes it in forward)
        self.dwte_cls = None             # (V,C) fused-classifier share of dwte, until backward
        self.grads_ready = False
        self.fused = False

    def ensure_grad_buffers(self, be: ModuleType, cfg: GPTConfig) -> None:
        if hasattr(self, "dres"):
            return
        N, C = self.B * self.T, cfg.n_embd
        e = lambda *s: be.empty(s, self.dtype)  # noqa: E731
        self.dres = e(N, C)              # gradient of the residual stream
        self.dCa, self.dCb = e(N, C), e(N, C)
        self.dqkv = e(self.B, self.T, 3 * C)
        self.d4a, self.d4b = e(N, 4 * C), e(N, 4 * C)


class GPT:
    """GPT-2: learned token + position embeddings, pre-LayerNorm blocks of causal multi-head
    attention and a 4x tanh-GELU MLP, a final LayerNorm, lm_head tied to ``wte``."""

    def __init__(self, config: GPTConfig, backend: Union[str, ModuleType] = "auto", seed: int = 0,
                 dtype: str = "float32"):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.backend = _resolve_backend(backend)
        dt = np.dtype(dtype).name if isinstance(dtype, (str, type, np.dtype)) else None
        if dt not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if dt == "float64" and self.backend.name != "numpy":
            raise ValueError("dtype='float64' needs the numpy backend (it is for gradient checks)")
        self.dtype = dt
        shapes = param_shapes(config)
        self._shapes = dict(shapes)
        self.n_decay = sum(int(np.prod(s)) for _, s in shapes if len(s) == 2)
        host = self._init_params(shapes, seed)
        self.params = self.backend.empty(host.shape, dt)  # the backend's (aligned) allocation
        self.params[...] = self.backend.asarray(host.astype(dt))
        self.grads = self.backend.zeros(host.shape, dt)
        self.param_views: Dict[str, Any] = {}
        self.grad_views: Dict[str, Any] = {}
        off = 0
        for name, shape in shapes:
            n = int(np.prod(shape))
            self.param_views[name] = self.params[off:off + n].reshape(shape)
            self.grad_views[name] = self.grads[off:off + n].reshape(shape)
            off += n
        self._acts: Optional[_Acts] = None

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _init_params(shapes, seed) -> np.ndarray:
        """GPT-2 init in NumPy float32 from np.random.default_rng(seed), drawn in layout order:
        matrices ~ N(0, 0.02) (residual projections c_proj: 0.02/sqrt(2*n_layer)), biases 0,
        layernorm weights 1. The same seed gives the same weights on every backend."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        n_layer = sum(1 for n, _ in shapes if n.endswith("ln_1.w"))
        total = sum(int(np.prod(s)) for _, s in shapes)
        flat = np.zeros(total, np.float32)
        off = 0
        for name, shape in shapes:
            n = int(np.prod(shape))
            if len(shape) == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.w") else 0.02
                flat[off:off + n] = rng.standard_normal(n, dtype=np.float32) * np.float32(std)
            elif name.endswith((".ln_1.w", ".ln_2.w")) or name == "ln_f.w":
                flat[off:off + n] = 1.0
            off += n
        return flat

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

    # ------------------------------------------------------------------ forward
    def _forward_trunk(self, idx: Any, kv_caches: Optional[List[Tuple[Any, Any]]] = None) -> _Acts:
        """Embeddings, blocks and the final layernorm over validated int32 idx (B,T) -> acts.lnf.
        When kv_caches is given, layer l's k and v are copied into kv_caches[l][0/1][:, :, :T]."""
        be, cfg, p = self.backend, self.config, self.param_views
        B, T = idx.shape
        C, NH, N = cfg.n_embd, cfg.n_head, B * T
        a = self._buffers(B, T)
        a.grads_ready = False
        a.idx[...] = idx
        be.embedding_forward(a.encoded, a.idx, p["wte"], p["wpe"])
        x = a.encoded                                            # (B,T,C) residual stream
        for l in range(cfg.n_layer):
            h = f"h.{l}."
            be.layernorm_forward(a.ln1[l], a.ln1_mean[l], a.ln1_rstd[l], x.reshape(N, C),
                                 p[h + "ln_1.w"], p[h + "ln_1.b"])
            be.matmul_forward(a.qkv[l].reshape(N, 3 * C), a.ln1[l], p[h + "attn.c_attn.w"],
                              p[h + "attn.c_attn.b"])
            be.attention_forward(a.atty[l], a.att_lse[l], a.qkv[l], NH)
            if kv_caches is not None:
                hs = C // NH
                kc, vc = kv_caches[l]
                kv = a.qkv[l].reshape(B, T, 3, NH, hs)
                kc[:, :, :T] = kv[:, :, 1].transpose(0, 2, 1, 3)   # (B,NH,T,HS)
                vc[:, :, :T] = kv[:, :, 2].transpose(0, 2, 1, 3)
            be.matmul_forward(a.proj, a.atty[l].reshape(N, C), p[h + "attn.c_proj.w"],
                              p[h + "attn.c_proj.b"])
            be.residual_forward(a.res2[l], x, a.proj.reshape(B, T, C))
            be.layernorm_forward(a.ln2[l], a.ln2_mean[l], a.ln2_rstd[l], a.res2[l].reshape(N, C),
                                 p[h + "ln_2.w"], p[h + "ln_2.b"])
            be.matmul_forward(a.fch[l], a.ln2[l], p[h + "mlp.c_fc.w"], p[h + "mlp.c_fc.b"])
            be.gelu_forward(a.fch_gelu[l], a.fch[l])
            be.matmul_forward(a.proj, a.fch_gelu[l], p[h + "mlp.c_proj.w"], p[h + "mlp.c_proj.b"])
            be.residual_forward(a.res3[l], a.res2[l], a.proj.reshape(B, T, C))
            x = a.res3[l]
        be.layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x.reshape(N, C), p["ln_f.w"],
                             p["ln_f.b"])
        return a

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
        a = self._forward_trunk(idx)
        wte = self.param_views["wte"]
        logits_out, loss = None, None
        if targets is not None:
            a.targets[...] = targets
        if targets is not None and not return_logits:
            if a.dwte_cls is None:
                a.dwte_cls = be.empty((V, C), self.dtype)
            be.zero_(a.dwte_cls)
            be.classifier_forward(a.losses, a.dlnf, a.dwte_cls, a.lnf, wte, a.targets.reshape(N),
                                  1.0 / N)
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
        return logits_out, loss

    __call__ = forward

    # ------------------------------------------------------------------ backward
    def backward(self, loss_scale: float = 1.0) -> None:
        """Accumulate (+=) d(loss * loss_scale)/d(params) into self.grads. Must follow a forward
        with targets (once per forward)."""
        a = self._acts
        if a is None or not a.grads_ready:
            raise RuntimeError("backward() must follow a forward() with targets (once per forward)")
        a.grads_ready = False
        be, cfg, p, g = self.backend, self.config, self.param_views, self.grad_views
        B, T = a.B, a.T
        C, NH, N = cfg.n_embd, cfg.n_head, B * T
        a.ensure_grad_buffers(be, cfg)
        ls = float(loss_scale)
        # --- classifier: d loss / d lnf into a.dlnf, lm_head's share of dwte into grads["wte"]
        if a.fused:
            if ls != 1.0:
                be.scale_(a.dlnf.reshape(-1), ls)
                be.scale_(a.dwte_cls.reshape(-1), ls)
            be.residual_forward(g["wte"], g["wte"], a.dwte_cls)  # the backend's threaded add
        else:
            if a.dlogits is None:
                a.dlogits = be.empty((N, cfg.vocab_size), self.dtype)
            be.crossentropy_backward(a.dlogits, a.probs, a.targets.reshape(N), ls / N)
            be.matmul_backward(a.dlnf, g["wte"], None, a.dlogits, a.lnf, p["wte"])
        x_last = a.res3[-1] if cfg.n_layer else a.encoded
        be.layernorm_backward(a.dres, g["ln_f.w"], g["ln_f.b"], a.dlnf, x_last.reshape(N, C),
                              p["ln_f.w"], a.lnf_mean, a.lnf_rstd)
        for l in reversed(range(cfg.n_layer)):
            h = f"h.{l}."
            x_in = (a.res3[l - 1] if l > 0 else a.encoded).reshape(N, C)
            # MLP branch: res3 = res2 + c_proj(gelu(c_fc(ln_2(res2)))); d(branch out) = dres
            be.matmul_backward(a.d4a, g[h + "mlp.c_proj.w"], g[h + "mlp.c_proj.b"], a.dres,
                               a.fch_gelu[l], p[h + "mlp.c_proj.w"])
            be.gelu_backward(a.d4b, a.d4a, a.fch[l])
            be.matmul_backward(a.dCa, g[h + "mlp.c_fc.w"], g[h + "mlp.c_fc.b"], a.d4b, a.ln2[l],
                               p[h + "mlp.c_fc.w"])
            be.layernorm_backward(a.dCb, g[h + "ln_2.w"], g[h + "ln_2.b"], a.dCa,
                                  a.res2[l].reshape(N, C), p[h + "ln_2.w"], a.ln2_mean[l],
                                  a.ln2_rstd[l])
            be.residual_forward(a.dres, a.dres, a.dCb)           # dres is now d res2
            # attention branch: res2 = x_in + c_proj(attn(c_attn(ln_1(x_in))))
            be.matmul_backward(a.dCa, g[h + "attn.c_proj.w"], g[h + "attn.c_proj.b"], a.dres,
                               a.atty[l].reshape(N, C), p[h + "attn.c_proj.w"])
            be.attention_backward(a.dqkv, a.dCa.reshape(B, T, C), a.qkv[l], a.atty[l],
                                  a.att_lse[l], NH)
            be.matmul_backward(a.dCa, g[h + "attn.c_attn.w"], g[h + "attn.c_attn.b"],
                               a.dqkv.reshape(N, 3 * C), a.ln1[l], p[h + "attn.c_attn.w"])
            be.layernorm_backward(a.dCb, g[h + "ln_1.w"], g[h + "ln_1.b"], a.dCa, x_in,
                                  p[h + "ln_1.w"], a.ln1_mean[l], a.ln1_rstd[l])
            be.residual_forward(a.dres, a.dres, a.dCb)           # dres is now d x_in
        be.embedding_backward(g["wte"], g["wpe"], a.dres.reshape(B, T, C), a.idx)

    # ------------------------------------------------------------------ inference helpers
    def _last_logits(self, a: _Acts) -> Any:
        """lm_head over the last position only: (B,V) backend array (fresh)."""
        B, T, C = a.B, a.T, self.config.n_embd
        last = a.lnf.reshape(B, T, C)[:, T - 1].copy()
        out = self.backend.empty((B, self.config.vocab_size), self.dtype)
        self.backend.matmul_forward(out, last, self.param_views["wte"], None)
        return out

    def generate(self, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Any = None,
                 stop: Any = None, use_cache: bool = True) -> np.ndarray:
        """Sample continuations; see :func:`kernelgpt.sample.generate`."""
        from .sample import generate
        return generate(self, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, stop=stop, use_cache=use_cache)

    def generate_stream(self, prompt_ids: Any, max_new_tokens: int, temperature: float = 1.0,
                        top_k: Optional[int] = None, top_p: Optional[float] = None,
                        seed: Any = None, stop: Any = None, use_cache: bool = True) -> Iterator:
        """Yield new token ids one step at a time; see :func:`kernelgpt.sample.generate_stream`."""
        from .sample import generate_stream
        return generate_stream(self, prompt_ids, max_new_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, stop=stop,
                               use_cache=use_cache)
