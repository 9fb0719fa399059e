"""``kernelgpt bench [--quick]``: kernelgpt against its NumPy backend and the peers installed here.

Workloads (sizes in :data:`SIZES`): BPE tokenizer training and encoding (the C++ tokenizer
against the pure-Python reference, ``kernelgpt._bpe_reference``, and rustbpe / HF tokenizers /
tiktoken where installed), a training step (forward + backward + AdamW) of the XS and S models,
and batch-1 sampling (top-k 50, KV cache) on the native backend against the NumPy backend and
PyTorch eager (where installed). Each engine runs in its own subprocess, one after the other in
the same run (so no two thread pools spin against each other), with the same thread count; every
figure is the median of several repeats after one untimed warm-up, and every ratio compares two
figures of the same run: ``ratio = engine's median / kernelgpt's median`` (above 1: kernelgpt is
faster).

The results go to a JSON file (``--out``; default ``bench.json``) and, when matplotlib is
installed, a PNG next to it with grouped bars per workload. ``--quick`` runs the XS sizes in a
few seconds (a smoke test of the whole suite, not figures to quote).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

OURS = "kernelgpt"

# Sizes per mode. Tokenizer workloads: bytes of the default corpus (the standard library's
# source) and the vocabulary; model workloads: presets, sampled tokens; repeats per figure.
SIZES: Dict[str, Dict[str, Any]] = {
    "quick": {"tok_train": (16_000, 300), "tok_train_big": None, "tok_encode": (16_000, 512),
              "tok_encode_big": None, "steps": ("xs",), "sample": ("xs", 32), "rounds": 3},
    "full": {"tok_train": (64_000, 512), "tok_train_big": (4_000_000, 4096),
             "tok_encode": (64_000, 4096), "tok_encode_big": (2_000_000, 4096),
             "steps": ("xs", "s"), "sample": ("s", 96), "rounds": 5},
}

# engine -> (module that must import, how to install it); "numpy" and "reference" need nothing
PEERS: Dict[str, Tuple[str, str]] = {
    "torch": ("torch", "pip install torch"),
    "rustbpe": ("rustbpe", "pip install rustbpe"),
    "tokenizers": ("tokenizers", "pip install tokenizers"),
    "tiktoken": ("tiktoken", "pip install tiktoken"),
}


# ------------------------------------------------------------------------------ the workloads
def workloads(mode: str) -> List[Dict[str, Any]]:
    """The workloads of a mode: name, description, unit of work, and the engines that run it."""
    z = SIZES[mode]
    out: List[Dict[str, Any]] = []
    nb, v = z["tok_train"]
    out.append({"name": "tokenizer_train", "what": f"BPE training, {nb // 1000} KB, vocab {v}",
                "args": [nb, v], "engines": [OURS, "reference", "rustbpe", "tokenizers"]})
    if z["tok_train_big"]:
        nb, v = z["tok_train_big"]
        out.append({"name": "tokenizer_train_big",
                    "what": f"BPE training, {nb / 1e6:g} MB, vocab {v}", "args": [nb, v],
                    "engines": [OURS, "rustbpe", "tokenizers"]})
    nb, v = z["tok_encode"]
    out.append({"name": "tokenizer_encode", "what": f"encode {nb // 1000} KB, vocab {v}",
                "args": [nb, v], "engines": [OURS, "reference", "tiktoken"]})
    if z["tok_encode_big"]:
        nb, v = z["tok_encode_big"]
        out.append({"name": "tokenizer_encode_big",
                    "what": f"encode {nb / 1e6:g} MB, vocab {v}", "args": [nb, v],
                    "engines": [OURS, "tiktoken"]})
    from .train import PRESET_BATCH_SIZE
    from .model import GPTConfig
    for p in z["steps"]:
        c = GPTConfig.preset(p)
        out.append({"name": f"train_step_{p}",
                    "what": f"training step {p.upper()} (batch {PRESET_BATCH_SIZE[p]} x "
                            f"{c.block_size}, forward + backward + AdamW)",
                    "args": [p], "engines": [OURS, "numpy", "torch"]})
    p, n = z["sample"]
    out.append({"name": f"sample_{p}",
                "what": f"sampling {p.upper()}, batch 1, {n} tokens, top-k 50",
                "args": [p, n], "engines": [OURS, "numpy", "torch"]})
    return out


def _corpus_text(n_bytes: int) -> str:
    """The first ``n_bytes`` (about) of the default corpus, one string."""
    from .corpus import default_corpus_texts
    text = "".join(default_corpus_texts(int(n_bytes)))
    return text.encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")


def _median_time(fn: Callable[[], object], rounds: int) -> Tuple[float, List[float]]:
    fn()  # warm-up: buffers, caches, thread pools
    times: List[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _tokenizer_for(n_vocab: int, text: str) -> Any:
    from .tokenizer import Tokenizer
    return Tokenizer.train([text], n_vocab)


def _job(engine: str, name: str, args: List[Any], threads: int) -> Tuple[Callable[[], object], str]:
    """(the timed function, the engine's label with its version) of one workload on one engine."""
    if name.startswith("tokenizer_train"):
        nb, vocab = args
        text = _corpus_text(nb)
        if engine == OURS:
            from .tokenizer import Tokenizer
            return (lambda: Tokenizer.train([text], vocab)), OURS
        if engine == "reference":
            from . import _bpe_reference as ref
            return (lambda: ref.train([text], vocab - 256)), "pure-Python reference"
        if engine == "rustbpe":
            rustbpe = _peer("rustbpe")
            from ._bpe_reference import PATTERNS

            def rb() -> object:
                t = rustbpe.Tokenizer()
                t.train_from_iterator(iter([text]), vocab, pattern=PATTERNS["gpt4"])
                return t
            return rb, f"rustbpe {_version('rustbpe')}"
        if engine == "tokenizers":
            _peer("tokenizers")
            return (lambda: hf_train_bpe([text], vocab)), f"HF tokenizers {_version('tokenizers')}"
    if name.startswith("tokenizer_encode"):
        nb, vocab = args
        text = _corpus_text(nb)
        # the same ranks for every engine: ours trained on the first 256 KB of the corpus
        tok = _tokenizer_for(vocab, _corpus_text(max(nb, 256_000)))
        if engine == OURS:
            return (lambda: tok.encode_to_numpy(text)), OURS
        if engine == "reference":
            from . import _bpe_reference as ref
            merges = tok.merges
            return (lambda: ref.encode_ordinary(text, merges)), "pure-Python reference"
        if engine == "tiktoken":
            tiktoken = _peer("tiktoken")
            from ._bpe_reference import PATTERNS
            enc = tiktoken.Encoding(name="kernelgpt-bench", pat_str=PATTERNS["gpt4"],
                                    mergeable_ranks=tok.mergeable_ranks(), special_tokens={})
            return (lambda: enc.encode_ordinary(text)), f"tiktoken {_version('tiktoken')}"
    if name.startswith("train_step_"):
        return _step_job(engine, args[0], threads)
    if name.startswith("sample_"):
        return _sample_job(engine, args[0], args[1], threads)
    raise ValueError(f"no engine {engine!r} for workload {name!r}")


def _peer(module: str) -> Any:
    """An optional peer package (typed Any: none of them is a dependency)."""
    return importlib.import_module(module)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:
        return "?"


def _step_job(engine: str, preset: str, threads: int) -> Tuple[Callable[[], object], str]:
    import numpy as np
    from .model import GPTConfig
    from .train import PRESET_BATCH_SIZE
    cfg = GPTConfig.preset(preset)
    B, T, V = PRESET_BATCH_SIZE[preset], cfg.block_size, cfg.vocab_size
    r = np.random.default_rng(0)
    idx = r.integers(0, V, (B, T)).astype(np.int32)
    tgt = r.integers(0, V, (B, T)).astype(np.int32)
    if engine == "torch":
        return _torch_step(cfg, idx, tgt, threads)
    from .model import GPT
    from .optim import AdamW
    model = GPT(cfg, backend="native" if engine == OURS else "numpy", seed=0)
    opt = AdamW(model, lr=1e-4, weight_decay=0.1)

    def step() -> object:
        model.zero_grad()
        _, loss = model.forward(idx, tgt, return_logits=False)
        model.backward()
        opt.step()
        return loss
    return step, OURS if engine == OURS else "NumPy backend"


def _sample_job(engine: str, preset: str, n_new: int,
                threads: int) -> Tuple[Callable[[], object], str]:
    import numpy as np
    from .model import GPTConfig
    cfg = GPTConfig.preset(preset)
    if engine == "torch":
        return _torch_sample(cfg, n_new, threads)
    from .model import GPT
    model = GPT(cfg, backend="native" if engine == OURS else "numpy", seed=0)
    prompt = np.array([1, 2, 3, 4], np.int32)
    return ((lambda: model.generate(prompt, n_new, temperature=1.0, top_k=50, seed=0)),
            OURS if engine == OURS else "NumPy backend")


def hf_train_bpe(texts: Any, vocab: int) -> Any:
    """A Hugging Face `tokenizers` byte-level BPE trained on ``texts`` to ``vocab`` tokens with
    the GPT-4 pre-tokenizer pattern: what a user of that library would train to compare with us.
    Also the HF trainer of benchmarks/compare_tokenizers.py."""
    hft = _peer("tokenizers")
    from ._bpe_reference import PATTERNS
    pre = hft.pre_tokenizers
    t = hft.Tokenizer(hft.models.BPE())
    t.pre_tokenizer = pre.Sequence([
        pre.Split(hft.Regex(PATTERNS["gpt4"]), behavior="isolated"),
        pre.ByteLevel(add_prefix_space=False, use_regex=False)])
    tr = hft.trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                 initial_alphabet=pre.ByteLevel.alphabet())
    t.train_from_iterator(texts, trainer=tr)
    return t


def torch_gpt2(cfg: Any) -> Any:
    """The GPT-2 of ``cfg`` in PyTorch eager (learned positions, LayerNorm, tanh-GELU MLP, tied
    lm_head, scaled_dot_product_attention), with an optional KV cache for sampling."""
    torch, nn, F = _peer("torch"), _peer("torch.nn"), _peer("torch.nn.functional")
    Module: Any = nn.Module
    C, NH, V, T = cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.block_size

    class Block(Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x: Any, cache: Any = None, pos: int = 0) -> Any:
            Bx, Tx, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(Bx, Tx, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                kc, vc = cache
                kc[:, :, pos:pos + Tx] = k
                vc[:, :, pos:pos + Tx] = v
                k, v = kc[:, :, :pos + Tx], vc[:, :, :pos + Tx]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=Tx > 1)
            x = x + self.c_proj(y.transpose(1, 2).reshape(Bx, Tx, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx: Any, caches: Any = None, pos: int = 0) -> Any:
            x = self.wte(idx) + self.wpe(torch.arange(pos, pos + idx.shape[1]))
            for i, blk in enumerate(self.h):
                x = blk(x, None if caches is None else caches[i], pos)
            return self.ln_f(x) @ self.wte.weight.T

    torch.manual_seed(0)
    return GPT2()


def _torch_step(cfg: Any, idx: Any, tgt: Any, threads: int) -> Tuple[Callable[[], object], str]:
    torch, F = _peer("torch"), _peer("torch.nn.functional")
    if not cfg.is_gpt2:
        raise ValueError("the PyTorch peer is written for the GPT-2 presets")
    torch.set_num_threads(threads)
    model = torch_gpt2(cfg)
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95))
    ti, tt = torch.from_numpy(idx.astype("int64")), torch.from_numpy(tgt.astype("int64"))
    V = cfg.vocab_size

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(ti).view(-1, V), tt.view(-1))
        loss.backward()
        opt.step()
        return loss.item()
    return step, f"PyTorch {torch.__version__} eager"


def torch_sampler(model: Any, cfg: Any, n_new: int) -> Callable[[], object]:
    """Batch-1 sampling of a PyTorch model of ``cfg`` (called as model(ids, caches, pos), with
    caches of cfg.kv_heads heads per layer): a 4-token prompt, then n_new tokens, top-k 50 at
    temperature 1, a seeded generator. Also the PyTorch sampler of benchmarks/bench_native_step.py."""
    torch, F = _peer("torch"), _peer("torch.nn.functional")
    hs, T, KV = cfg.n_embd // cfg.n_head, cfg.block_size, cfg.kv_heads

    def sample() -> object:
        with torch.inference_mode():
            caches = [(torch.zeros(1, KV, T, hs), torch.zeros(1, KV, T, hs))
                      for _ in range(cfg.n_layer)]
            ids = torch.tensor([[1, 2, 3, 4]])
            logits = model(ids, caches, 0)[:, -1]
            pos, gen, out = ids.shape[1], torch.Generator().manual_seed(0), []
            for _ in range(n_new):
                v, ix = torch.topk(logits, 50)
                nxt = ix.gather(1, torch.multinomial(F.softmax(v, -1), 1, generator=gen))
                out.append(int(nxt))
                logits = model(nxt, caches, pos)[:, -1]
                pos += 1
            return out
    return sample


def _torch_sample(cfg: Any, n_new: int, threads: int) -> Tuple[Callable[[], object], str]:
    torch = _peer("torch")
    if not cfg.is_gpt2:
        raise ValueError("the PyTorch peer is written for the GPT-2 presets")
    torch.set_num_threads(threads)
    return torch_sampler(torch_gpt2(cfg), cfg, n_new), f"PyTorch {torch.__version__} eager"


# ------------------------------------------------------------------------------ the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model name")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> Dict[str, Any]:
    """What kernelgpt's run-time dispatch chose on this CPU (GEMM micro-kernel, the ISA of the
    other native kernels) and the CPU's own SIMD flags."""
    feats: Dict[str, Any] = {}
    try:
        from . import _native as nat
        feats["gemm_kernel"] = nat.gemm_kernel_name()
        feats["ops_isa"] = ("avx512" if nat.ops_use_avx512() else
                            "avx2" if nat.ops_use_avx2() else "portable")
    except ImportError as e:
        feats["native"] = f"not built ({e})"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    feats["cpu_flags"] = [x for x in ("sse4_2", "avx", "avx2", "fma", "f16c",
                                                      "avx512f", "avx512bw", "avx512vl",
                                                      "avx512_bf16", "amx_tile", "asimd", "sve")
                                          if x in have]
                    break
    except OSError:
        pass
    return feats


def machine(threads: int) -> Dict[str, Any]:
    import numpy as np
    from . import __version__
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "threads": threads,
            "isa": cpu_features(), "python": platform.python_version(), "numpy": np.__version__,
            "kernelgpt": __version__, "platform": platform.platform()}


# ------------------------------------------------------------------------------ running
def _worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one engine's jobs in this process; a job that fails is reported, not raised."""
    threads = int(spec["threads"])
    if spec["engine"] in (OURS,):
        try:
            from . import set_num_threads
            set_num_threads(threads)
        except RuntimeError:
            pass
    results: Dict[str, Any] = {}
    for name, args in spec["jobs"]:
        try:
            fn, label = _job(spec["engine"], name, args, threads)
            med, times = _median_time(fn, int(spec["rounds"]))
            results[name] = {"label": label, "median_s": med, "times_s": times}
        except Exception as e:  # one line in the report: the other workloads still run
            results[name] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
    return results


def _run_engine(engine: str, jobs: List[Tuple[str, List[Any]]], rounds: int, threads: int,
                timeout: float) -> Dict[str, Any]:
    spec = {"engine": engine, "jobs": jobs, "rounds": rounds, "threads": threads}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads))
    pkg_parent = str(Path(__file__).resolve().parents[1])  # the kernelgpt this process runs
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "")
                                                        .split(os.pathsep) if p])
    try:
        r = subprocess.run([sys.executable, "-m", "kernelgpt.bench", "--worker", json.dumps(spec)],
                           env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {name: {"error": f"timed out after {timeout:g} s"} for name, _ in jobs}
    if r.returncode != 0 or not r.stdout.strip():
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return {name: {"error": last} for name, _ in jobs}
    res: Dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return res


def peer_missing(engine: str) -> Optional[str]:
    """Why a peer engine cannot run here (not installed), or None."""
    if engine not in PEERS:
        return None
    mod, how = PEERS[engine]
    try:
        found = importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"not installed ({how})"


def run(mode: str = "full", threads: Optional[int] = None, rounds: Optional[int] = None,
        peers: bool = True, timeout: float = 600.0,
        say: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Run the suite; return the report (what ``--out`` holds as JSON)."""
    if mode not in SIZES:
        raise ValueError(f"mode must be one of {sorted(SIZES)}, got {mode!r}")
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    rounds = int(rounds or SIZES[mode]["rounds"])
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    wls = workloads(mode)
    skipped: Dict[str, str] = {}
    by_engine: Dict[str, List[Tuple[str, List[Any]]]] = {}
    for w in wls:
        for e in w["engines"]:
            why = peer_missing(e) if peers else ("peers not asked for" if e in PEERS else None)
            if why is not None:
                skipped[e] = why
                continue
            by_engine.setdefault(e, []).append((w["name"], w["args"]))
    t0 = time.perf_counter()
    measured: Dict[str, Dict[str, Any]] = {}
    for e, jobs in by_engine.items():
        say(f"  {e}: {', '.join(n for n, _ in jobs)} ...")
        measured[e] = _run_engine(e, jobs, rounds, threads, timeout)
    report_wls = []
    for w in wls:
        res: Dict[str, Any] = {}
        errors: Dict[str, str] = {}
        for e in w["engines"]:
            m = measured.get(e, {}).get(w["name"])
            if m is None:
                continue
            if "error" in m:
                errors[e] = m["error"]
            else:
                res[e] = m
        ours = res.get(OURS)
        ratios = {e: r["median_s"] / ours["median_s"] for e, r in res.items()
                  if e != OURS and ours is not None and ours["median_s"] > 0}
        report_wls.append({"name": w["name"], "what": w["what"], "results": res,
                           "ratios": ratios, "errors": errors})
    return {"mode": mode, "rounds": rounds, "machine": machine(threads),
            "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall_s": time.perf_counter() - t0, "workloads": report_wls, "skipped": skipped,
            "ratio": "engine median / kernelgpt median (above 1: kernelgpt faster)"}


# ------------------------------------------------------------------------------ reporting
def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def header_lines(report: Dict[str, Any]) -> List[str]:
    m = report["machine"]
    isa = m["isa"]
    disp = (f"GEMM kernel {isa['gemm_kernel']}, other kernels {isa['ops_isa']}"
            if "gemm_kernel" in isa else isa.get("native", "?"))
    return [f"kernelgpt {m['kernelgpt']} bench ({report['mode']}): {m['cpu']}, "
            f"{m['logical_cores']} logical cores, {m['threads']} thread(s) per engine",
            f"  dispatch: {disp}; CPU flags: {' '.join(isa.get('cpu_flags', [])) or '?'}",
            f"  Python {m['python']}, NumPy {m['numpy']}; median of {report['rounds']} "
            f"repeat(s) after a warm-up; ratio = engine's median / kernelgpt's (same run)"]


def table(report: Dict[str, Any]) -> str:
    rows: List[Tuple[str, str, str, str]] = [("workload", "engine", "median", "ratio")]
    for w in report["workloads"]:
        first = True
        ours = w["results"].get(OURS)
        for e, r in w["results"].items():
            ratio = "1 (ours)" if e == OURS else f"{w['ratios'][e]:.2f}x" if e in w["ratios"] \
                else ""
            rows.append((w["what"] if first else "", r["label"], _fmt_s(r["median_s"]), ratio))
            first = False
        for e, err in w["errors"].items():
            rows.append((w["what"] if first else "", e, "failed", err[:60]))
            first = False
        if ours is None and first:
            rows.append((w["what"], "-", "-", "no result"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[i]) if i < 3 else c for i, c in enumerate(r)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for e, why in sorted(report["skipped"].items()):
        lines.append(f"skipped {e}: {why}")
    return "\n".join(lines)


def write_png(report: Dict[str, Any], path: Path) -> bool:
    """Grouped bars per workload: each engine's median relative to kernelgpt's (log scale).
    False (nothing written) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    wls = [w for w in report["workloads"] if OURS in w["results"]]
    engines: List[str] = []
    for w in wls:
        for e in w["results"]:
            if e not in engines:
                engines.append(e)
    fig = Figure(figsize=(max(6.0, 1.6 * len(wls) + 2), 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labelled = set()
    for i, w in enumerate(wls):  # one group per workload: the engines that ran it, side by side
        present = [e for e in engines if e in w["results"]]
        width = 0.8 / len(present)
        for j, e in enumerate(present):
            y = 1.0 if e == OURS else float(w["ratios"][e])
            k = engines.index(e)
            b = ax.bar([i - 0.4 + width * (j + 0.5)], [y], width, color=f"C{k % 10}",
                       label=None if e in labelled else e)[0]
            labelled.add(e)
            ax.annotate(f"{y:.2g}x" if y < 100 else f"{y:.0f}x",
                        (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=7)
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.4", lw=0.8)
    ax.set_xticks(range(len(wls)))
    ax.set_xticklabels([w["what"].replace(", ", ",\n", 1) for w in wls], fontsize=7)
    ax.set_ylabel("time / kernelgpt's time (log; above 1: kernelgpt faster)")
    m = report["machine"]
    ax.set_title(f"kernelgpt bench ({report['mode']}): {m['cpu'][:48]}, {m['threads']} thread(s)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    return True


def output_paths(out: Optional[str]) -> Tuple[Path, Path]:
    """(JSON path, PNG path) for ``--out``: a .json file (the PNG beside it), or a folder
    (bench.json and bench.png in it); default: bench.json and bench.png here."""
    p = Path(out) if out else Path("bench.json")
    if p.suffix.lower() != ".json":
        p = p / "bench.json"
    return p, p.with_suffix(".png")


def main(argv: Optional[Sequence[str]] = None, *, quick: Optional[bool] = None,
         out: Optional[str] = None, threads: Optional[int] = None,
         rounds: Optional[int] = None, peers: bool = True) -> int:
    """The ``kernelgpt bench`` command (cli.py parses its options and calls this)."""
    if argv is not None:  # `python -m kernelgpt.bench --worker SPEC` (a subprocess of run())
        argv = list(argv)
        if len(argv) == 2 and argv[0] == "--worker":
            print(json.dumps(_worker(json.loads(argv[1]))), flush=True)
            return 0
        p = argparse.ArgumentParser(prog="python -m kernelgpt.bench")
        p.add_argument("--quick", action="store_true")
        p.add_argument("--out")
        p.add_argument("--threads", type=int)
        p.add_argument("--rounds", type=int)
        p.add_argument("--no-peers", action="store_true")
        a = p.parse_args(argv)
        quick, out, threads, rounds, peers = a.quick, a.out, a.threads, a.rounds, not a.no_peers
    mode = "quick" if quick else "full"
    json_path, png_path = output_paths(out)

    def say(s: str) -> None:
        print(s, file=sys.stderr, flush=True)
    say(f"kernelgpt bench ({mode}): one subprocess per engine ...")
    report = run(mode, threads=threads, rounds=rounds, peers=peers, say=say)
    print("\n".join(header_lines(report)))
    print(table(report), flush=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report["png"] = os.fspath(png_path) if write_png(report, png_path) else None
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {json_path}" + (f" and {png_path}" if report["png"] else
                                   " (no PNG: matplotlib is not installed; pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
