"""GGUF export for llama.cpp (architectures "gpt2" and "llama"), written through the ``gguf``
package (``pip install kernelgpt[gguf]``).

The file holds:
- the hyperparameters under llama.cpp's keys for the architecture. gpt2: context_length,
  embedding_length, feed_forward_length, block_count, attention.head_count,
  attention.layer_norm_epsilon. llama: the same (less the layernorm epsilon) plus
  attention.head_count_kv, attention.layer_norm_rms_epsilon, rope.freq_base,
  rope.dimension_count and vocab_size;
- the tensors under llama.cpp's names. gpt2: token_embd, position_embd, blk.N.attn_norm,
  attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down, output_norm. llama: token_embd,
  blk.N.attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down,
  output_norm and output (untied lm_head only); biases, where the config has them, as
  ".bias" tensors of the same names. A tied lm_head writes no "output" tensor and llama.cpp
  reuses token_embd. Our matrices are (out, in) in NumPy order, which is ggml's {in, out}: they
  are written as they are, except for llama's attn_q and attn_k (and their biases): llama.cpp
  runs the llama architecture with its "normal" rope (GGML_ROPE_TYPE_NORMAL, rotating the
  adjacent pairs (2i, 2i+1) of a head), while ours (and Hugging Face's) rotates the pairs
  (i, i + head_size/2). The rows of each q and k head are therefore interleaved on export (row
  2i+p of a head in the file is our row p*head_size/2 + i), which is the permutation llama.cpp's
  own convert_hf_to_gguf.py applies to Llama checkpoints; the attention scores are unchanged;
- the tokenizer as GGUF's byte-level BPE ("gpt2" model): one token string per id of the model's
  vocabulary (GPT-2's byte-to-unicode spelling; special tokens as their text, type CONTROL; ids
  the tokenizer does not use as "[PAD<id>]", type UNUSED), the merges as "left right" strings
  in rank order, the pre-tokenizer name for our split pattern (:data:`PRE_TOKENIZERS`) and
  <|endoftext|> as BOS/EOS when the tokenizer has it (no BOS is added to prompts).

dtype "f32" writes every tensor as F32; "f16" the matrices as F16 (vectors stay F32, as
llama.cpp's converter does); "q8_0" the matrices whose rows are a multiple of 32 as Q8_0 (the
others F16), vectors F32.
"""
from __future__ import annotations

import os
import secrets
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

# Our split pattern -> llama.cpp's tokenizer.ggml.pre name whose regex splits the same way.
# gpt4 (minbpe's cl100k-style pattern) splits like the regex llama.cpp runs for "llama-bpe"
# (LLaMA 3's pattern; tests/test_interop_gguf.py checks the two on random text). tiktoken's cl100k string differs
# from LLaMA 3's on runs of whitespace at the end of a text, and llama.cpp has no name for it.
PRE_TOKENIZERS: Dict[str, str] = {"gpt2": "gpt-2", "gpt4": "llama-bpe", "o200k": "gpt-4o"}
DTYPES = ("f32", "f16", "q8_0")


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise RuntimeError("GGUF export needs the gguf package: pip install 'kernelgpt[gguf]' "
                           "(or pip install gguf)") from None
    return gguf


def _gpt2_tensors(gguf: Any, n_layer: int) -> Dict[str, str]:
    """Our parameter name -> GGUF tensor name, for llama.cpp's gpt2 architecture."""
    T, names = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES

    def wb(t: Any, ours: str, **k: Any) -> Dict[str, str]:
        return {f"{ours}.w": names[t].format(**k) + ".weight",
                f"{ours}.b": names[t].format(**k) + ".bias"}

    out = {"wte": names[T.TOKEN_EMBD] + ".weight", "wpe": names[T.POS_EMBD] + ".weight"}
    out.update(wb(T.OUTPUT_NORM, "ln_f"))
    block = [(T.ATTN_NORM, "ln_1"), (T.ATTN_QKV, "attn.c_attn"), (T.ATTN_OUT, "attn.c_proj"),
             (T.FFN_NORM, "ln_2"), (T.FFN_UP, "mlp.c_fc"), (T.FFN_DOWN, "mlp.c_proj")]
    for l in range(n_layer):
        for t, ours in block:
            out.update(wb(t, f"h.{l}.{ours}", bid=l))
    return out


def _gpt2_hparams(w: Any, cfg: Any) -> None:
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(float(cfg.norm_eps))


def rope_interleave(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of ``n_heads`` heads (a q or k projection's weight (n_heads*hs, in) or bias) from
    the rotate-half layout (pairs (i, i + hs/2)) to llama.cpp's interleaved one (pairs (2i,
    2i+1)): row 2i+p of a head is row p*hs/2 + i."""
    hs = w.shape[0] // n_heads
    return (w.reshape(n_heads, 2, hs // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _llama_tensors(gguf: Any, cfg: Any, state: Dict[str, np.ndarray]
                   ) -> List[Tuple[str, np.ndarray]]:
    """(GGUF name, array) of every tensor of llama.cpp's llama architecture, in our order."""
    T, names = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
    C, kv, H = cfg.n_embd, cfg.kv_heads * cfg.head_size, cfg.hidden
    out: List[Tuple[str, np.ndarray]] = [(names[T.TOKEN_EMBD] + ".weight", state["wte"])]
    kinds = (("w", "weight"), ("b", "bias")) if cfg.bias else (("w", "weight"),)
    for l in range(cfg.n_layer):

        def n(t: Any, l: int = l) -> str:
            return str(names[t].format(bid=l))

        p = f"h.{l}."
        out.append((n(T.ATTN_NORM) + ".weight", state[p + "ln_1.w"]))
        for k, suffix in kinds:
            qkv = state[p + "attn.c_attn." + k]
            out += [(n(T.ATTN_Q) + "." + suffix, rope_interleave(qkv[:C], cfg.n_head)),
                    (n(T.ATTN_K) + "." + suffix, rope_interleave(qkv[C:C + kv], cfg.kv_heads)),
                    (n(T.ATTN_V) + "." + suffix, qkv[C + kv:])]
        for k, suffix in kinds:
            out.append((n(T.ATTN_OUT) + "." + suffix, state[p + "attn.c_proj." + k]))
        out.append((n(T.FFN_NORM) + ".weight", state[p + "ln_2.w"]))
        for k, suffix in kinds:
            fc = state[p + "mlp.c_fc." + k]
            out += [(n(T.FFN_GATE) + "." + suffix, fc[:H]), (n(T.FFN_UP) + "." + suffix, fc[H:]),
                    (n(T.FFN_DOWN) + "." + suffix, state[p + "mlp.c_proj." + k])]
    out.append((names[T.OUTPUT_NORM] + ".weight", state["ln_f.w"]))
    if not cfg.tie_embeddings:
        out.append((names[T.OUTPUT] + ".weight", state["lm_head.w"]))
    return [(name, np.ascontiguousarray(a)) for name, a in out]


def _llama_hparams(w: Any, cfg: Any) -> None:
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.hidden)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_layer_norm_rms_eps(float(cfg.norm_eps))
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_rope_dimension_count(cfg.head_size)


def _byte_level(tb: bytes) -> str:
    from .tokenizer import _byte_to_unicode
    u = _byte_level.table if hasattr(_byte_level, "table") else None
    if u is None:
        u = _byte_level.table = _byte_to_unicode()  # type: ignore[attr-defined]
    return "".join(u[b] for b in tb)


def gguf_vocab(tokenizer: Any, n_vocab: int, gguf: Any) -> Tuple[List[str], List[int], List[str]]:
    """(tokens, token types, merges) of ``tokenizer`` padded to ``n_vocab`` ids."""
    if tokenizer.vocab_size > n_vocab:
        raise ValueError(f"the tokenizer's vocab ({tokenizer.vocab_size}) is larger than the "
                         f"model's ({n_vocab})")
    TT = gguf.TokenType
    specials = {sid: s for s, sid in tokenizer.special_tokens.items()}
    n_ord = 256 + len(tokenizer.merges)
    idmap = tokenizer.id_map
    ext = list(range(n_ord)) if idmap is None else [int(x) for x in idmap[:n_ord]]
    tokens: List[Optional[str]] = [None] * n_vocab
    types = [int(TT.UNUSED)] * n_vocab
    seen: Dict[str, int] = {}
    for i in ext:
        t = _byte_level(tokenizer.token_bytes(i))
        if t in seen:
            raise ValueError(f"tokens {seen[t]} and {i} have the same bytes; GGUF's vocabulary "
                             f"needs unique tokens")
        seen[t] = i
        tokens[i], types[i] = t, int(TT.NORMAL)
    for sid, s in specials.items():
        tokens[sid], types[sid] = s, int(TT.CONTROL)
    for i in range(n_vocab):
        if tokens[i] is None:
            tokens[i] = f"[PAD{i}]"
    tstr = {k: tokens[ext[k]] for k in range(n_ord)}
    merges = [f"{tstr[a]} {tstr[b]}" for a, b in tokenizer.merges]
    return tokens, types, merges  # type: ignore[return-value]


def export_gguf(model: Any, path: PathLike, tokenizer: Any, dtype: str = "f32",
                pre_tokenizer: Optional[str] = None) -> None:
    """Write ``model`` and ``tokenizer`` as a GGUF file at ``path`` (atomically: a temporary
    file in the same folder, renamed). ``pre_tokenizer`` overrides llama.cpp's pre-tokenizer
    name (default: :data:`PRE_TOKENIZERS` of the tokenizer's pattern)."""
    gguf = _gguf()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if tokenizer is None:
        raise ValueError("export_gguf needs the model's tokenizer (llama.cpp reads the vocabulary "
                         "from the file)")
    pre = pre_tokenizer or PRE_TOKENIZERS.get(tokenizer.pattern)
    if pre is None:
        raise ValueError(f"no llama.cpp pre-tokenizer splits like the pattern "
                         f"{tokenizer.pattern!r}; pass pre_tokenizer= to choose one")
    cfg = model.config
    from .interop_hf import arch_name_of_config
    arch = arch_name_of_config(cfg, "GGUF export")
    tokens, types, merges = gguf_vocab(tokenizer, cfg.vocab_size, gguf)
    state = model.state_dict()
    if arch == "gpt2":
        names = _gpt2_tensors(gguf, cfg.n_layer)
        named = [(names[ours], arr) for ours, arr in state.items()]
    else:
        named = _llama_tensors(gguf, cfg, state)
    Q = gguf.GGMLQuantizationType
    tensors: List[Tuple[str, np.ndarray, Optional[Any]]] = []
    for name, arr in named:
        if arr.ndim == 1 or dtype == "f32":
            tensors.append((name, arr.astype(np.float32), None))
        elif dtype == "q8_0" and arr.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
            tensors.append((name, gguf.quants.quantize(arr, Q.Q8_0), Q.Q8_0))
        else:
            tensors.append((name, arr.astype(np.float16), None))
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    p = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(p))
    tmp = os.path.join(folder, f".{os.path.basename(p)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    w = gguf.GGUFWriter(tmp, arch)
    try:
        w.add_name("kernelgpt")
        (_gpt2_hparams if arch == "gpt2" else _llama_hparams)(w, cfg)
        w.add_file_type(int(ftype))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        eot = tokenizer.special_tokens.get("<|endoftext|>")
        if eot is not None:
            w.add_bos_token_id(eot)
            w.add_eos_token_id(eot)
        w.add_add_bos_token(False)
        for name, arr, raw in tensors:
            w.add_tensor(name, arr, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, p)
    except BaseException:
        try:
            w.close()
        except Exception:
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
