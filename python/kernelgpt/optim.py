"""AdamW over the model's flat parameter buffer, the learning-rate schedule, gradient clipping.

Decoupled weight decay applies to matrices only: the model's flat layout puts every 2-D weight
first, so the optimizer makes one fused ``backend.adamw_update`` call over ``params[:n_decay]``
with weight decay and one over ``params[n_decay:]`` (biases, layernorm) without. The moments m, v
are flat backend arrays of the same length. Nothing here allocates per step.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np


def lr_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int,
                max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup from max_lr/warmup to
    max_lr over ``warmup_steps`` steps, then cosine decay to ``min_lr`` at ``max_steps``; min_lr
    after that."""
    if warmup_steps > 0 and step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    span = max(1, max_steps - warmup_steps)
    ratio = (step - warmup_steps) / span
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def clip_grad_norm(model: Any, max_norm: float) -> float:
    """Scale model.grads so its global L2 norm is at most ``max_norm`` (no-op when max_norm <= 0
    or the norm is already below). Returns the norm before clipping (inf/nan when the gradient
    is not finite; the gradient is then left as it is)."""
    be = model.backend
    norm = math.sqrt(be.global_norm_sq(model.grads))
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        be.scale_(model.grads, max_norm / (norm + 1e-6))
    return norm


class AdamW:
    """AdamW on ``model.params`` with moments in two flat backend arrays (m, v)."""

    def __init__(self, model: Any, lr: Optional[float] = None,
                 betas: Optional[Tuple[float, float]] = None, eps: Optional[float] = None,
                 weight_decay: Optional[float] = None):
        """Hyperparameters left None take TrainConfig's defaults (kernelgpt.train), the one
        place the training defaults are stated."""
        from .train import TrainConfig
        lr = TrainConfig.lr if lr is None else lr
        betas = (TrainConfig.beta1, TrainConfig.beta2) if betas is None else betas
        eps = TrainConfig.eps if eps is None else eps
        weight_decay = TrainConfig.weight_decay if weight_decay is None else weight_decay
        if not lr >= 0 or not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"bad AdamW hyperparameters lr={lr} eps={eps} "
                             f"weight_decay={weight_decay}")
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.model = model
        self.lr, self.beta1, self.beta2 = float(lr), float(b1), float(b2)
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        be = model.backend
        n = int(model.params.size)
        self.m = be.zeros((n,), model.params.dtype)
        self.v = be.zeros((n,), model.params.dtype)
        self.step_count = 0

    def step(self, lr: Optional[float] = None) -> None:
        """One update from model.grads (call after backward / clipping)."""
        lr = self.lr if lr is None else float(lr)
        self.step_count += 1
        be, p, g, k = self.model.backend, self.model.params, self.model.grads, self.model.n_decay
        common = dict(lr=lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                      step=self.step_count)
        if k > 0:
            be.adamw_update(p[:k], g[:k], self.m[:k], self.v[:k],
                            weight_decay=self.weight_decay, **common)
        if k < p.size:
            be.adamw_update(p[k:], g[k:], self.m[k:], self.v[k:], weight_decay=0.0, **common)

    def state_dict(self) -> Dict[str, Any]:
        """{"m", "v": float32 numpy copies, "step": int, plus the hyperparameters}."""
        be = self.model.backend
        return {"m": np.array(be.to_numpy(self.m), dtype=np.float32, copy=True),
                "v": np.array(be.to_numpy(self.v), dtype=np.float32, copy=True),
                "step": self.step_count, "lr": self.lr, "beta1": self.beta1,
                "beta2": self.beta2, "eps": self.eps, "weight_decay": self.weight_decay}

    def load_state_dict(self, d: Dict[str, Any]) -> None:
        n = int(self.model.params.size)
        for key in ("m", "v"):
            if key not in d:
                raise ValueError(f"optimizer state lacks {key!r}")
            a = np.asarray(d[key])
            if a.shape != (n,):
                raise ValueError(f"optimizer state {key!r} has shape {a.shape}, expected ({n},)")
        step = d.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"optimizer state has a bad step {step!r}")
        be, dt = self.model.backend, self.model.params.dtype
        self.m[...] = be.asarray(np.asarray(d["m"]).astype(dt))
        self.v[...] = be.asarray(np.asarray(d["v"]).astype(dt))
        self.step_count = int(step)
        for key in ("lr", "beta1", "beta2", "eps", "weight_decay"):
            if key in d:
                setattr(self, key, float(d[key]))
