"""The command line: ``python -m kernelgpt train|sample|eval|export|tokenizer|bench`` (also the
``kernelgpt`` script).

``train`` with no arguments trains a BPE tokenizer and the XS model on the embedded default corpus
(the standard library's source, see corpus.py) into runs/<timestamp>/ and prints a sample;
``train --data TOKEN_FILE [--tokenizer TOK_JSON]`` trains on ids from ``tokenizer encode`` instead.
``sample`` streams text from a run folder; ``eval`` scores whole files with a run's model (loss,
perplexity, bits per byte; kernelgpt.evaluation). ``tokenizer`` (alias ``tokenize``) is the tokenizer's
own command line (cli_tokenizer.py). ``bench [--quick]`` times kernelgpt against its NumPy
backend and the installed peers (kernelgpt.bench). ``train --quick`` is a run of a few seconds.
Errors a user can make print one line on stderr and exit with status 1 (2 for a bad option);
so does any other exception (one line naming it as an internal error, MemoryError as "out of
memory"); KERNELGPT_DEBUG=1 shows the traceback instead. `train`
holds the run folder's lock (checkpoint.run_lock) from before its first write there to the end.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, NoReturn,
                    Optional, Type)

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

# Defaults of `kernelgpt train` with no --model: the model, tokenizer vocabulary and step count
# that reached the lowest validation bits per byte in about a minute on 2 CPU cores
# (benchmarks/default_run_study.py; its table is in benchmarks/README.md, "The default run").
DEFAULT_MODEL = "xs"          # 2 layers, 4 heads, 128 dims, block 64
DEFAULT_VOCAB = 1024          # the default model's vocabulary (a --model preset keeps its own)
DEFAULT_MAX_STEPS = 7000      # the default model's steps (a --model preset: PRESET_MAX_STEPS)
DEFAULT_SEED = 0
# `train --quick`: a run of a few seconds for tests and demos (its sample is still noisy)
QUICK: Dict[str, Any] = {"model": "xs", "vocab_size": 512, "max_steps": 200}
# The other training defaults are TrainConfig's (kernelgpt.train), stated there once.
from .train import TrainConfig as _TrainConfig  # noqa: E402

_TC = _TrainConfig()
PRESET_MAX_STEPS, DEFAULT_LR = _TC.max_steps, _TC.lr
DEFAULT_EVAL_EVERY, DEFAULT_SAVE_EVERY = _TC.eval_every, _TC.save_every
SAMPLE_PROMPT = "def "        # the default corpus is Python source
RESUME_FIXED = ("data", "tokenizer", "model", "n_layer", "n_head", "n_embd", "vocab_size",
                "block_size", "batch_size", "lr", "seed", "grad_accum")


class UserError(Exception):
    """A mistake on the command line: reported as one line, no traceback."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def _float_in(lo: float, hi: float = float("inf"),
              lo_open: bool = False) -> Callable[[str], float]:
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not (lo < v if lo_open else lo <= v) or not v <= hi:
            raise argparse.ArgumentTypeError(f"must be in {'(' if lo_open else '['}{lo}, {hi}], "
                                             f"got {s}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kernelgpt", description="Train a BPE tokenizer and a small GPT; sample it.")
    from . import __version__
    p.add_argument("--version", action="version", version=f"kernelgpt {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{train,sample,eval,export,tokenizer,bench}",
                           parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a tokenizer and a model (no arguments: the default "
                                     "corpus, about a minute on 2 cores)")
    t.add_argument("--quick", action="store_true",
                   help=f"a run of a few seconds (model {QUICK['model']}, vocab "
                        f"{QUICK['vocab_size']}, {QUICK['max_steps']} steps; options given "
                        f"override these): for trying the commands, not for a good model")
    t.add_argument("--data", nargs="+", metavar="FILE_OR_DIR",
                   help="text files or folders (default: the Python standard library's source), "
                        "or one token file from `kernelgpt tokenizer encode` (no tokenizer is "
                        "trained then; the model's vocab defaults to the file's)")
    t.add_argument("--data-dtype", choices=("uint16", "uint32"),
                   help="the id type of a raw token file in --data (nanoGPT's train.bin: "
                        "uint16); .npy and kernelgpt token files need none")
    t.add_argument("--special", action="append", metavar="TOKEN", default=None,
                   help="a special token of the trained tokenizer, recognised in the text "
                        "(repeatable); text --data always gets <|endoftext|>, put between files")
    t.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="threads of the native kernels (default: OMP_NUM_THREADS or all cores)")
    t.add_argument("--tokenizer", metavar="TOK_JSON",
                   help="with a token file in --data: the tokenizer that encoded it, kept in "
                        "the run so that `sample` can turn text into tokens")
    t.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<timestamp>)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (bit-exact)")
    t.add_argument("--max-steps", type=_int_at_least(1),
                   help=f"optimizer steps in total (default {DEFAULT_MAX_STEPS} for the "
                        f"default model, {PRESET_MAX_STEPS} with --model)")
    t.add_argument("--batch-size", type=_int_at_least(1), help="sequences per step (default: "
                   "the preset's, 8 for xs)")
    t.add_argument("--block-size", type=_int_at_least(1), help="context length (default: the "
                   "preset's, 64 for xs)")
    t.add_argument("--model", choices=("xs", "s", "m", "llama-xs", "llama-s", "llama-m"),
                   help=f"preset (default {DEFAULT_MODEL}); llama-*: the same sizes with RMSNorm, "
                        f"rotary positions, SwiGLU, grouped-query attention, no biases, untied "
                        f"lm_head")
    t.add_argument("--norm", choices=("layernorm", "rmsnorm"), help="override the preset's norm")
    t.add_argument("--pos-emb", choices=("learned", "rope"),
                   help="override the preset's positions (a learned table or rotary)")
    t.add_argument("--mlp", choices=("gelu", "swiglu"), help="override the preset's MLP")
    t.add_argument("--n-kv-head", type=_int_at_least(1),
                   help="key/value heads (grouped-query attention; must divide the heads)")
    t.add_argument("--no-bias", dest="bias", action="store_const", const=False, default=None,
                   help="no biases in the linear layers")
    t.add_argument("--untie", dest="tie_embeddings", action="store_const", const=False,
                   default=None, help="an lm_head of its own instead of the token embedding")
    t.add_argument("--n-layer", type=_int_at_least(1), help="override the preset's layers")
    t.add_argument("--n-head", type=_int_at_least(1), help="override the preset's heads")
    t.add_argument("--n-embd", type=_int_at_least(1), help="override the preset's width")
    t.add_argument("--vocab-size", type=_int_at_least(257), help=f"tokenizer vocabulary "
                   f"(default {DEFAULT_VOCAB} for the default model; with --model, the "
                   f"preset's); with a token file in --data, the model's (default: the file's "
                   f"vocab_size)")
    t.add_argument("--lr", type=_float_in(0.0, 10.0, lo_open=True),
                   help=f"peak learning rate (default {DEFAULT_LR})")
    t.add_argument("--grad-accum", type=_int_at_least(1), help="micro-batches per step "
                   "(default 1)")
    t.add_argument("--backend", choices=("numpy", "native", "cuda", "auto"), default="auto",
                   help="op backend (default auto: cuda, else native, else numpy)")
    t.add_argument("--seed", type=_int_at_least(0), help=f"seed of init and data order "
                   f"(default {DEFAULT_SEED})")
    t.add_argument("--eval-every", type=_int_at_least(0),
                   help="validation every N steps, 0 = only at the end (default: max-steps / 5)")
    t.add_argument("--save-every", type=_int_at_least(0),
                   help=f"checkpoint every N steps, 0 = only at the end (default "
                        f"{DEFAULT_SAVE_EVERY})")
    # [distributed]
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training under `mpirun -np N` (MPI on the CPU, NCCL for "
                        "--backend cuda); global batch = N x batch size x grad accum, the "
                        "learning rate is not scaled")
    t.add_argument("--dist-timeout", type=_float_in(0.0, lo_open=True), metavar="SECONDS",
                   help="with --distributed: end the whole job when one collective waits longer "
                        "than this (a rank stuck or dead); default: wait forever")

    s = sub.add_parser("sample", help="stream text from a trained run")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="RUN", help="run folder (or checkpoint folder)")
    src.add_argument("--model", metavar="DIR", help="a Hugging Face model directory (GPT-2, "
                     "safetensors), a run folder, or a weights file written by GPT.save "
                     "(with --tokenizer)")
    s.add_argument("--tokenizer", metavar="PATH", help="tokenizer file, for a --model that has "
                   "none")
    s.add_argument("--prompt", default=SAMPLE_PROMPT, help=f"text to continue (default "
                   f"{SAMPLE_PROMPT!r})")
    s.add_argument("--max-new-tokens", type=_int_at_least(1), default=200)
    s.add_argument("--temperature", type=_float_in(0.0, 100.0), default=0.8,
                   help="0 = greedy (default 0.8)")
    s.add_argument("--top-k", type=_int_at_least(1), default=None)
    s.add_argument("--top-p", type=_float_in(0.0, 1.0, lo_open=True), default=None)
    s.add_argument("--min-p", type=_float_in(0.0, 1.0), default=None,
                   help="keep tokens at least this times as likely as the most likely one")
    s.add_argument("--repetition-penalty", type=_float_in(0.0, 1e30, lo_open=True),
                   default=None, help="> 1 discourages ids already in the text (1 = none)")
    s.add_argument("--num-return-sequences", type=_int_at_least(1), default=1,
                   help="how many continuations of the prompt to sample (default 1)")
    s.add_argument("--seed", type=_int_at_least(0), default=None, help="sampling seed")
    s.add_argument("--weights", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="the format decoding reads the matrices in (default fp32: exact; bf16 "
                   "and int8 read fewer bytes per token)")
    s.add_argument("--backend", choices=("numpy", "native", "cuda", "auto"), default="auto")
    s.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="threads of the native kernels (default: OMP_NUM_THREADS or all cores)")

    e = sub.add_parser("eval", help="loss, perplexity and bits per byte of a run on whole files")
    e.add_argument("--run", required=True, metavar="RUN", help="run folder (or checkpoint folder)")
    e.add_argument("--data", required=True, nargs="+", metavar="FILE_OR_DIR",
                   help="UTF-8 text files or folders, or token files (kernelgpt, .npy, raw "
                        "with --data-dtype); each scored on its own, in order")
    e.add_argument("--data-dtype", choices=("uint16", "uint32"),
                   help="the id type of raw token files in --data")
    e.add_argument("--stride", type=_int_at_least(1), default=None,
                   help="sliding window step (default: the block size, i.e. consecutive "
                        "windows; smaller gives each token more context and costs more)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=8,
                   help="windows per forward pass (default 8)")
    e.add_argument("--backend", choices=("numpy", "native", "cuda", "auto"), default="auto")
    e.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="threads of the native kernels (default: OMP_NUM_THREADS or all cores)")
    e.add_argument("--json", action="store_true", help="print one JSON object per file")

    x = sub.add_parser("export", help="write a run's model as a Hugging Face directory, a GGUF "
                       "file for llama.cpp, or one weights file")
    x.add_argument("--run", required=True, metavar="RUN", help="run folder (or checkpoint folder)")
    x.add_argument("--format", required=True, choices=("hf", "gguf", "weights"))
    x.add_argument("--out", required=True, metavar="PATH", help="output directory (hf) or file")
    x.add_argument("--dtype", choices=("f32", "f16", "q8_0"), default="f32",
                   help="gguf only: tensor type of the matrices (default f32)")

    b = sub.add_parser("bench", help="time kernelgpt against its NumPy backend and the peers "
                       "installed here (PyTorch, tiktoken, HF tokenizers, rustbpe); a table, a "
                       "JSON file and a PNG chart")
    b.add_argument("--quick", action="store_true",
                   help="XS sizes, a few seconds: checks the suite runs (figures not to quote)")
    b.add_argument("--out", metavar="PATH", help="a .json file (the PNG beside it) or a folder "
                   "(bench.json, bench.png in it); default: bench.json here")
    b.add_argument("--threads", type=_int_at_least(1), metavar="N",
                   help="threads of every engine (default: OMP_NUM_THREADS or all cores)")
    b.add_argument("--rounds", type=_int_at_least(1), metavar="N",
                   help="timed repeats per figure, after one warm-up (default 5; 3 with --quick)")
    b.add_argument("--no-peers", action="store_true",
                   help="kernelgpt, its NumPy backend and the Python reference only")

    try:
        from .cli_tokenizer import add_tokenizer_parser
    except ImportError:
        k = sub.add_parser("tokenizer", help="train / use a BPE tokenizer")
        k.add_argument("rest", nargs=argparse.REMAINDER)
        k.set_defaults(_tokenizer_missing=True)
    else:
        add_tokenizer_parser(sub)
    return p


# ---------------------------------------------------------------------------------- helpers
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_tokenizer_class() -> "Type[Tokenizer]":
    try:
        from .tokenizer import Tokenizer
    except ImportError as e:
        raise UserError(f"the tokenizer module is not available in this build ({e})") from None
    return Tokenizer


def _load_tokenizer(path: Any, what: str = "--tokenizer") -> Any:
    """Tokenizer.load with one-line errors for a path that is not a regular file or holds JSON
    nested too deeply."""
    Tokenizer = _load_tokenizer_class()
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what}: no such file: {p}")
    if not p.is_file():
        from .data import not_a_regular_file
        raise UserError(f"{what}: {p}: {not_a_regular_file(p)}")
    try:
        return Tokenizer.load(os.fspath(p))
    except RecursionError:
        raise UserError(f"{p}: not a kernelgpt tokenizer file (JSON nested too deeply)") from None


def _stream_text(tokenizer: Any, ids: Iterable[Any]) -> Iterator[str]:
    """Yield printable text for a stream of token ids, holding back incomplete UTF-8."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        i = int(i)
        if hasattr(tokenizer, "decode_bytes"):
            b = tokenizer.decode_bytes([i])
        else:
            b = tokenizer.decode([i]).encode("utf-8")
        yield dec.decode(b)
    yield dec.decode(b"", final=True)


def _eos_ids(model: Any, tokenizer: Any) -> Optional[List[int]]:
    """The tokenizer's end-of-text special token id (``<|endoftext|>``), where the model's
    vocabulary holds it: sampling ends there (the token itself is not printed)."""
    specials = getattr(tokenizer, "special_tokens", None) or {}
    i = specials.get(EOS_TOKEN)
    return [int(i)] if i is not None and 0 <= int(i) < model.config.vocab_size else None


EOS_TOKEN = "<|endoftext|>"


def _print_sample(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int,
                  temperature: float, top_k: Optional[int], top_p: Optional[float],
                  seed: Optional[int], *, min_p: Optional[float] = None,
                  repetition_penalty: Optional[float] = None, num_return_sequences: int = 1,
                  eos_token_id: Optional[List[int]] = None, weights: str = "fp32") -> None:
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise UserError("the prompt is empty: give at least one character with --prompt")
    bs = model.config.block_size
    if len(ids) > bs:
        raise UserError(f"the prompt is {len(ids)} tokens, longer than the model's block size "
                        f"{bs}")
    import numpy as np
    out = sys.stdout
    out.write(prompt)
    out.flush()
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, min_p=min_p,
              repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, weights=weights)
    eos = set(eos_token_id or ())
    if num_return_sequences > 1:  # sampled together (one batch), printed one after the other
        rows = model.generate(np.asarray(ids, np.int32), max_new_tokens,
                              num_return_sequences=num_return_sequences, **kw)
        for r, row in enumerate(rows):
            if r:
                out.write(f"--- sample {r + 1} ---\n{prompt}")
            new = [int(t) for t in row[len(ids):]]
            cut = next((k for k, t in enumerate(new) if t in eos), len(new))
            out.write("".join(_stream_text(tokenizer, new[:cut])) + "\n")
        out.flush()
        return
    stream = model.generate_stream(np.asarray(ids, np.int32), max_new_tokens, **kw)
    for piece in _stream_text(tokenizer, (t for t in stream if t not in eos)):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()


# ---------------------------------------------------------------------------------- train
def _token_file_arg(args: argparse.Namespace) -> Optional[Path]:
    """The token file given as --data (it must be the only --data path), else None."""
    from .data import token_format
    paths = [Path(p) for p in (args.data or [])]
    tokens = [p for p in paths if p.is_file() and token_format(p, args.data_dtype)]
    if not tokens:
        if args.data_dtype is not None:
            raise UserError("--data-dtype goes with a raw token file in --data (a file of "
                            "uint16/uint32 ids, e.g. nanoGPT's train.bin)")
        if args.tokenizer is not None:
            raise UserError("--tokenizer goes with a token file in --data (from `kernelgpt "
                            "tokenizer encode`); text data trains its own tokenizer")
        return None
    if len(paths) > 1:
        raise UserError(f"a token file must be the only --data path: {tokens[0]} was given "
                        f"with {len(paths) - 1} other path(s)")
    return tokens[0]


def _tokenizer_for_token_file(args: argparse.Namespace, token_file: Path, data_vocab: int,
                              model_vocab: int) -> Any:
    """Check the vocabularies of the token file, the model and --tokenizer; load the latter."""
    if data_vocab > model_vocab:
        raise UserError(f"{token_file} holds ids of a {data_vocab}-token vocabulary, more than "
                        f"the model's --vocab-size {model_vocab}")
    if args.tokenizer is None:
        return None
    tokenizer = _load_tokenizer(args.tokenizer)
    if tokenizer.vocab_size != data_vocab:
        raise UserError(f"{args.tokenizer} has vocab_size {tokenizer.vocab_size} but "
                        f"{token_file} records {data_vocab}: it was not encoded with this "
                        f"tokenizer")
    if model_vocab != data_vocab:
        raise UserError(f"--vocab-size {model_vocab} differs from the tokenizer's "
                        f"{tokenizer.vocab_size}: a model that samples text needs them equal")
    return tokenizer


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        from . import set_num_threads
        set_num_threads(args.threads)


def _train(args: argparse.Namespace) -> int:
    _set_threads(args)
    # [distributed] every rank runs _train_ranks; one rank's error ends the whole job
    if args.dist_timeout is not None and not args.distributed:
        raise UserError("--dist-timeout needs --distributed")
    if not args.distributed:
        return _train_ranks(args, None)
    from .distributed import init_distributed, run_ranks
    comm = init_distributed(args.backend, timeout=args.dist_timeout)
    return run_ranks(_train_ranks, comm, args, comm)  # under comm.fail_fast()


def _train_ranks(args: argparse.Namespace, comm: Any) -> int:
    main_rank = comm is None or comm.rank == 0  # [distributed] rank 0 alone talks and writes
    say = _say if main_rank else (lambda msg: None)
    from .backends import get_backend
    get_backend(args.backend)  # a backend that cannot run here fails now, in one line
    # "auto" stays a name: the model takes the best backend that can run its config
    backend = args.backend
    with contextlib.ExitStack() as stack:
        # [distributed] rank 0 alone locks the run folder (checkpoint.run_lock): before its
        # first write there (or at once when the folder exists), held until training ends, so a
        # second `train` on the same --out stops with "run folder in use by pid N", touching
        # nothing
        lock = _RunLock(stack, main_rank)
        return _train_locked(args, comm, backend, lock, say, main_rank)


class _RunLock:
    """Takes checkpoint.run_lock on the run folder once (main rank only), kept by ``stack``."""

    def __init__(self, stack: contextlib.ExitStack, main_rank: bool):
        self.stack, self.main_rank, self.held = stack, main_rank, False

    def __call__(self, out: Path) -> None:
        if self.main_rank and not self.held:
            from .checkpoint import run_lock
            self.stack.enter_context(run_lock(out))
            self.held = True


def run_defaults(args: argparse.Namespace) -> "tuple[str, int, int]":
    """(model preset, tokenizer vocabulary, max steps) of a new `train` run: the options given,
    else --quick's (QUICK), else the default model's (DEFAULT_*), else (with --model) the
    preset's vocabulary and TrainConfig's steps. A token file's vocabulary is decided elsewhere."""
    from .model import GPTConfig
    quick = bool(getattr(args, "quick", False))
    name = args.model or (QUICK["model"] if quick else DEFAULT_MODEL)
    vocab = args.vocab_size or (QUICK["vocab_size"] if quick else DEFAULT_VOCAB
                                if args.model is None else GPTConfig.preset(name).vocab_size)
    steps = args.max_steps or (QUICK["max_steps"] if quick else DEFAULT_MAX_STEPS
                               if args.model is None else PRESET_MAX_STEPS)
    return str(name), int(vocab), int(steps)


def _train_locked(args: argparse.Namespace, comm: Any, backend: Any, lock: _RunLock,
                  say: Any, main_rank: bool) -> int:
    from .checkpoint import latest_checkpoint
    from .data import (EOT, TokenDataset, encode_texts, list_text_files, read_texts,
                       read_token_array, read_token_header, token_format, write_token_file)
    from .model import GPT, GPTConfig
    from .train import TrainConfig, Trainer
    from ._limits import check_model_fits

    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        fixed = [f"--{n.replace('_', '-')}" for n in RESUME_FIXED if getattr(args, n) is not None]
        fixed += ["--quick"] if args.quick else []
        if fixed:
            raise UserError(f"{', '.join(fixed)} cannot change when resuming (the run keeps its "
                            f"own); only --max-steps, --eval-every, --save-every, --backend can")
        if Path(args.out).is_dir():
            lock(Path(args.out))
        overrides = {k: getattr(args, k) for k in ("max_steps", "eval_every", "save_every")
                     if getattr(args, k) is not None}
        trainer = Trainer.resume(args.out, backend=backend, progress=True, comm=comm,
                                 **overrides)
        model, out = trainer.model, Path(args.out)
        assert trainer.last_checkpoint is not None  # Trainer.resume loaded it (load_state)
        tok_path = trainer.last_checkpoint / "tokenizer.json"
        tokenizer = _load_tokenizer(tok_path, "the run's tokenizer") if tok_path.is_file() \
            else None
        say(f"resuming {out} at step {trainer.step} of {trainer.config.max_steps} "
            f"({trainer.model.backend.name} backend)")
    else:
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        if comm is not None:  # [distributed] rank 0's folder (its clock names the default)
            out = Path(comm.bcast_object(os.fspath(out)))
        if out.is_dir():
            lock(out)
        if out.exists() and latest_checkpoint(out) is not None:
            raise UserError(f"{out} already holds a trained run: continue it with --resume or "
                            f"choose another --out")
        model_name, default_vocab, max_steps = run_defaults(args)
        preset = GPTConfig.preset(model_name)
        from .train import PRESET_BATCH_SIZE
        token_file = _token_file_arg(args)
        if token_file is not None:  # pre-tokenized data: checked now, used as it is
            if token_format(token_file, args.data_dtype) == "kgpt":
                # ValueError naming a foreign/damaged file
                header = read_token_header(token_file)
            else:  # .npy or raw ids: no vocabulary recorded (the tokenizer's, or max id + 1)
                tv = _load_tokenizer(args.tokenizer).vocab_size if args.tokenizer else None
                ids, dv, _ = read_token_array(token_file, args.data_dtype,
                                              tv or args.vocab_size)
                header = {"vocab_size": dv, "n_tokens": int(ids.size)}
                del ids
            vocab = args.vocab_size or header["vocab_size"]
        else:
            vocab = args.vocab_size or default_vocab
        seed = DEFAULT_SEED if args.seed is None else args.seed
        shape = dict(preset.to_dict(), vocab_size=vocab,
                     block_size=args.block_size or preset.block_size,
                     n_layer=args.n_layer or preset.n_layer, n_head=args.n_head or preset.n_head,
                     n_embd=args.n_embd or preset.n_embd)
        for field in ("norm", "pos_emb", "mlp", "n_kv_head", "bias", "tie_embeddings"):
            if getattr(args, field) is not None:
                shape[field] = getattr(args, field)
        if args.n_head is not None and args.n_kv_head is None and preset.n_kv_head is not None \
                and args.n_head % preset.n_kv_head:
            shape["n_kv_head"] = None  # the preset's key/value heads do not divide the new count
        GPTConfig(**shape)  # a bad shape fails now, before the tokenizer is trained
        batch_size = args.batch_size or PRESET_BATCH_SIZE[model_name]
        # and so does a size this machine cannot hold (one line naming it, nothing allocated)
        check_model_fits(shape, batch=(batch_size, shape["block_size"]))
        if token_file is not None:
            tokenizer = _tokenizer_for_token_file(args, token_file, header["vocab_size"], vocab)
            if main_rank and tokenizer is not None:
                lock(out)  # creates the folder
                tokenizer.save(os.fspath(out / "tokenizer.json"))
            say(f"training on the token file {token_file}: {header['n_tokens']} tokens of a "
                f"{header['vocab_size']}-token vocabulary"
                + ("" if tokenizer is not None else " (no --tokenizer: the run cannot sample)"))
        elif main_rank:  # [distributed] rank 0 trains the tokenizer, writes the token file
            specials = list(dict.fromkeys(args.special or []))
            if args.data:
                files = list_text_files(args.data)
                what = f"{len(files)} file(s) from --data"
                # every file must be UTF-8 text (a token file of an unknown kind is not)
                texts = read_texts(files, strict=True)
                # documents separated by <|endoftext|>, a special token of the tokenizer
                specials = [EOT] + [t for t in specials if t != EOT]
            else:
                # the default corpus is tokenized as 0.1.0 did (no separator), so the default
                # run's figures stay those of the README
                from .corpus import default_corpus_files
                files = default_corpus_files()
                what = f"the default corpus ({len(files)} standard-library files)"
                texts = read_texts(files)
            n_bytes = sum(len(t.encode("utf-8")) for t in texts)
            if not texts:
                raise UserError("the training data is empty")
            lock(out)  # creates the folder
            Tokenizer = _load_tokenizer_class()
            t0 = time.perf_counter()
            _say(f"training a BPE tokenizer (vocab {vocab}) on {what}, "
                 f"{n_bytes / 1e6:.1f} MB ...")
            tokenizer = Tokenizer.train(texts, vocab, special_tokens=specials)
            tokenizer.save(os.fspath(out / "tokenizer.json"))
            sep = tokenizer.special_tokens.get(EOT) if args.data else None
            ids = encode_texts(tokenizer, texts, separator=sep,
                               allowed_special="all" if specials else None)
            write_token_file(out / "tokens.bin", ids, tokenizer.vocab_size)
            _say(f"  {ids.size} tokens ({n_bytes / max(ids.size, 1):.2f} bytes/token) in "
                 f"{time.perf_counter() - t0:.1f}s -> {out / 'tokens.bin'}")
        if comm is not None and token_file is None:  # [distributed] the others wait for it,
            with comm.unbounded():                      # then read both files
                comm.barrier()
            if not main_rank:
                tokenizer = _load_tokenizer(out / "tokenizer.json", "the run's tokenizer")
        if token_file is not None:
            cfg = GPTConfig(**shape)
            data = TokenDataset.from_file(token_file, val_fraction=0.1, seed=seed,
                                          data_dtype=args.data_dtype,
                                          vocab_size=header["vocab_size"])
        else:
            # rank 0 trained it; the others (comm is not None) loaded it after the barrier
            assert tokenizer is not None
            cfg = GPTConfig(**dict(shape, vocab_size=tokenizer.vocab_size))
            data = TokenDataset.from_file(out / "tokens.bin", val_fraction=0.1, seed=seed)
        tcfg = TrainConfig(
            batch_size=batch_size,
            max_steps=max_steps, lr=args.lr or DEFAULT_LR,
            grad_accum=args.grad_accum or 1,
            eval_every=args.eval_every,  # None: TrainConfig scales it with max_steps
            save_every=DEFAULT_SAVE_EVERY if args.save_every is None else args.save_every,
            seed=seed)
        lock(out)  # at the latest here (the token file case with no tokenizer)
        model = GPT(cfg, backend=backend, seed=seed)
        trainer = Trainer(model, data, tcfg, out_dir=out, tokenizer=tokenizer, progress=True,
                          comm=comm)
        say(f"training {cfg.n_layer} layers x {cfg.n_embd} dims ({model.num_params() / 1e6:.2f}M "
            f"params, block {cfg.block_size}, batch {tcfg.batch_size}) for {tcfg.max_steps} "
            f"steps on the {model.backend.name} backend -> {out}")
    summary = trainer.fit()
    if not main_rank:  # [distributed] rank 0 reports and samples
        return 0
    val = summary["val_loss"]

    def bpb(key: str) -> str:
        return "" if summary.get(key) is None else f" ({summary[key]:.4f} bits/byte)"
    _say(f"step {summary['step']}: train loss {summary['loss'] if summary['loss'] is None else round(summary['loss'], 4)}"
         f"{bpb('bpb')}, val loss {val if val is None else round(val, 4)}{bpb('val_bpb')}, "
         f"{summary['tokens_per_s']:.0f} tokens/s; checkpoint {summary['checkpoint']}")
    if summary["interrupted"]:
        _say(f"interrupted: continue with  python -m kernelgpt train --out {out} --resume")
        return 130
    if tokenizer is not None:
        _say("sample:")
        _print_sample(model, tokenizer, SAMPLE_PROMPT, 120, 0.8, 40, None, 0)
        _say(f"more samples:  python -m kernelgpt sample --run {out} --prompt 'def '")
    return 0


# ---------------------------------------------------------------------------------- sample
def _sample(args: argparse.Namespace) -> int:
    _set_threads(args)
    src = args.run if args.run is not None else args.model
    if args.run is None and Path(args.model).is_file():          # a GPT.save weights file
        from .model import GPT
        model, tokenizer = GPT.load(args.model, backend=args.backend), None
    elif args.run is None and _is_hf_dir(args.model):
        from .interop_hf import load_pretrained
        model, tokenizer = load_pretrained(args.model, backend=args.backend)
    else:
        from .checkpoint import load_model
        model, tokenizer, _ = load_model(src, backend=args.backend)
    if args.tokenizer is not None:
        tokenizer = _load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise UserError(f"{src} has no tokenizer: cannot turn text into tokens (pass --tokenizer)")
    _print_sample(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature,
                  args.top_k, args.top_p, args.seed, min_p=args.min_p,
                  repetition_penalty=args.repetition_penalty,
                  num_return_sequences=args.num_return_sequences,
                  eos_token_id=_eos_ids(model, tokenizer), weights=args.weights)
    return 0


def _is_hf_dir(path: str) -> bool:
    from .interop_hf import is_hf_directory
    return is_hf_directory(path)


# ---------------------------------------------------------------------------------- eval
def _eval(args: argparse.Namespace) -> int:
    """Score each --data file in order with a run's model (kernelgpt.evaluation)."""
    import json
    import math
    from .checkpoint import load_model
    from .data import list_text_files, read_texts, read_token_array, token_format
    from .evaluation import evaluate_tokens, token_byte_lengths, LN2
    import numpy as np
    _set_threads(args)
    model, tokenizer, _ = load_model(args.run, backend=args.backend)
    V, T = model.config.vocab_size, model.config.block_size
    if args.stride is not None and args.stride > T:
        raise UserError(f"--stride {args.stride} exceeds the model's block size {T}")
    nbytes = token_byte_lengths(tokenizer, V) if tokenizer is not None else None
    files = []
    for p in args.data:
        p = Path(p)
        files += [p] if p.is_file() else list_text_files(p)
    if not files:
        raise UserError("no files to evaluate in --data")
    total = {"n_tokens": 0, "total_nats": 0.0, "n_bytes": 0}
    for f in files:
        fmt = token_format(f, args.data_dtype)
        if fmt is not None:
            ids, fv, _ = read_token_array(f, args.data_dtype, V if fmt != "kgpt" else None)
            if fv > V:
                raise UserError(f"{f} holds ids of a {fv}-token vocabulary, more than the "
                                f"model's {V}")
        else:
            if tokenizer is None:
                raise UserError(f"{args.run} has no tokenizer: it can only evaluate token files")
            text = read_texts([f], strict=True)
            if not text:
                raise UserError(f"{f} is empty")
            ids = np.asarray(tokenizer.encode(text[0], allowed_special="none"), np.int64)
            eot = tokenizer.special_tokens.get(EOS_TOKEN)
            if eot is not None and eot < V:  # a document start: every token is predicted
                ids = np.concatenate([np.array([eot], np.int64), ids])
        r = evaluate_tokens(model, ids, batch_size=args.batch_size, stride=args.stride,
                            token_bytes=nbytes, progress=True)
        total["n_tokens"] += r["n_tokens"]
        total["total_nats"] += r["total_nats"]
        total["n_bytes"] += r.get("n_bytes", 0)
        _print_eval(os.fspath(f), r, args.json)
    if len(files) > 1:
        n = total["n_tokens"]
        t = dict(total, loss=total["total_nats"] / n,
                 perplexity=math.exp(min(total["total_nats"] / n, 700.0)))
        if nbytes is not None and total["n_bytes"]:
            t["bits_per_byte"] = total["total_nats"] / (LN2 * total["n_bytes"])
        _print_eval("total", t, args.json)
    return 0


def _print_eval(name: str, r: Dict[str, Any], as_json: bool) -> None:
    import json
    if as_json:
        print(json.dumps(dict(r, file=name)), flush=True)
        return
    line = (f"{name}: {r['n_tokens']} tokens, loss {r['loss']:.4f} nats/token, perplexity "
            f"{r['perplexity']:.2f}")
    if r.get("bits_per_byte") is not None:
        line += f", {r['bits_per_byte']:.4f} bits/byte ({r['n_bytes']} bytes)"
    print(line, flush=True)


# ---------------------------------------------------------------------------------- export
def _export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    model, tokenizer, _ = load_model(args.run, backend="numpy")
    if args.format != "gguf" and args.dtype != "f32":
        raise UserError("--dtype applies to --format gguf only")
    if args.format == "hf":
        model.save_pretrained(args.out, tokenizer=tokenizer)
    elif args.format == "gguf":
        if tokenizer is None:
            raise UserError(f"{args.run} has no tokenizer.json: a GGUF file needs one")
        model.export_gguf(args.out, tokenizer, dtype=args.dtype)
    else:
        model.save(args.out)
    _say(f"wrote {args.out} ({args.format})")
    return 0


# ---------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tokenize":  # an alias of the tokenizer command
        argv[0] = "tokenizer"
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        _say("kernelgpt: interrupted")
        return 130
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "export":
            return _export(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "bench":
            from .bench import main as bench_main
            return bench_main(quick=args.quick, out=args.out, threads=args.threads,
                              rounds=args.rounds, peers=not args.no_peers)
        if getattr(args, "_tokenizer_missing", False):
            raise UserError("the tokenizer command is not available in this build")
        from .cli_tokenizer import run_tokenizer
        return int(run_tokenizer(args) or 0)
    except KeyboardInterrupt:
        _say("kernelgpt: interrupted")
        return 130
    except BrokenPipeError:  # e.g. `kernelgpt sample ... | head`
        return 0
    except Exception as e:
        if os.environ.get("KERNELGPT_DEBUG"):
            raise
        _say(f"kernelgpt {args.command}: error: {_one_line(e)}")
        return 1


def _one_line(e: BaseException) -> str:
    """The one line an exception reaching the command line prints."""
    from ._limits import ModelTooLargeError
    msg = " ".join(str(e).split())
    if isinstance(e, (UserError, ValueError, TypeError, OSError, ModelTooLargeError)) or (
            isinstance(e, RuntimeError) and not isinstance(e, (RecursionError,
                                                                NotImplementedError))):
        # CheckpointError, RunFolderInUse, TrainingDivergedError, FileNotFoundError, sizes
        # too large for this machine, unavailable backends, ...
        return msg or type(e).__name__
    if isinstance(e, MemoryError):
        return f"out of memory{': ' + msg if msg else ''} (try smaller sizes)"
    if isinstance(e, RecursionError):
        return (f"input nested too deeply (RecursionError: {msg}); set KERNELGPT_DEBUG=1 for "
                f"the traceback")
    # not an error a user can make: say what it was, in one line, and how to see more
    return (f"internal error: {type(e).__name__}: {msg or '(no message)'}; set "
            f"KERNELGPT_DEBUG=1 for the traceback")


if __name__ == "__main__":
    sys.exit(main())
