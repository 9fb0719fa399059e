"""Pure-Python byte-level BPE: the specification the C++ trainer and encoder are tested against.

Readable and unoptimised on purpose (minbpe semantics): training re-counts every adjacent pair
of every chunk before each merge, so it takes minutes on a megabyte. Leaves out: special tokens
(tokenizer.py splits them off before calling encode_ordinary), file I/O, threads.

The one tie-break rule (shared with csrc/tokenizer/bpe_train.cpp): merge the pair with the highest
count; among equal counts, the smallest (left_id, right_id). Byte tokens have ids 0-255 equal to the
byte value; the i-th merge creates token 256 + i.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Sequence, Tuple

from . import _unicode_data

# To the character: the patterns of minbpe / rustbpe ("gpt4", the first cl100k pattern) and
# GPT-2; "cl100k" and "o200k" are tiktoken's current cl100k_base and o200k_base strings ("cl100k"
# adds \s++$, so a whitespace run ending the text is one chunk: it is not "gpt4"). tiktoken's
# r50k_base / p50k_base string is written differently from "gpt2" but splits the same (tested), so
# tokenizer.py accepts "r50k" and "p50k" as names of "gpt2".
PATTERNS: Dict[str, str] = {
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "cl100k": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
}
# Other names of the splitters above (same chunks on every text; see tests/test_tokenizer_patterns.py).
PATTERN_ALIASES: Dict[str, str] = {"r50k": "gpt2", "p50k": "gpt2"}

Pair = Tuple[int, int]


# The Unicode the splitter uses: the same pinned data the native tables are generated from
# (kernelgpt._unicode_data, scripts/gen_unicode_tables.py), NOT the `regex` package's own Unicode
# (which depends on its version) nor Python's unicodedata (Unicode 14 on Python 3.11).
UNICODE_VERSION: str = _unicode_data.UNICODE_VERSION

_CLASS_GROUPS = {  # the property classes the patterns use -> _unicode_data group letters
    "L": "ulo", "N": "n", "Lu": "u", "Lt": "u", "Ll": "l", "Lm": "o", "Lo": "o", "M": "m",
}
_compiled: Dict[str, Any] = {}  # name -> compiled `regex` pattern (regex ships no types)


def _class_body(groups: str) -> str:
    """Character-class body (no brackets) of the code points whose group is in `groups`."""
    spans: List[List[int]] = []
    for a, b, g in _unicode_data.runs():
        if g not in groups:
            continue
        if spans and spans[-1][1] + 1 == a:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    return "".join("\\U%08X" % a if a == b else "\\U%08X-\\U%08X" % (a, b) for a, b in spans)


def _pinned(pattern: str) -> str:
    r"""`pattern` with \p{..}, \s and \S replaced by explicit classes from _unicode_data, so the
    `regex` engine matches with the pinned Unicode. The patterns use \p{L} \p{N} \p{Lu} \p{Lt}
    \p{Ll} \p{Lm} \p{Lo} \p{M} and \s inside or outside [...], \S outside (asserted)."""
    ws = "".join("\\U%08X" % cp for cp in _unicode_data.white_space())
    out: List[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1]
            if nxt == "p":
                end = pattern.index("}", i)
                body = _class_body("".join(_CLASS_GROUPS[n] for n in pattern[i + 3:end].split(",")))
                out.append(body if in_class else "[" + body + "]")
                i = end + 1
                continue
            if nxt == "s":
                out.append(ws if in_class else "[" + ws + "]")
            elif nxt == "S":
                assert not in_class, "\\S inside a class"
                out.append("[^" + ws + "]")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


def compiled_pattern(pattern: str = "gpt4") -> Any:
    """The compiled `regex` pattern for a pattern name, with the pinned Unicode classes (cached)."""
    name = PATTERN_ALIASES.get(pattern, pattern)
    c = _compiled.get(name)
    if c is None:
        import regex  # the `regex` package (possessive quantifiers, (?i:..)); imported on first use
        c = _compiled[name] = regex.compile(_pinned(PATTERNS[name]))
    return c


def split_text(text: str, pattern: str = "gpt4") -> List[str]:
    """Pre-split `text` into chunks with the named pattern: regex.findall with the pattern string,
    its Unicode property classes taken from the pinned data (UNICODE_VERSION)."""
    chunks: List[str] = compiled_pattern(pattern).findall(text)
    return chunks


def clean_text(text: str) -> str:
    """`text` with lone surrogates (they have no UTF-8 form) replaced by U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def to_utf8(text: str) -> bytes:
    return text.encode("utf-8")


def get_stats(words: List[List[int]]) -> Dict[Pair, int]:
    """Count every adjacent pair in every word. Example: [[1, 2, 3, 1, 2]] -> {(1,2): 2, (2,3): 1, (3,1): 1}."""
    counts: Dict[Pair, int] = {}
    for ids in words:
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: List[int], pair: Pair, new_id: int) -> List[int]:
    """Replace every occurrence of `pair`, left to right without overlap, by `new_id`.
    Example: merge([1, 1, 1, 2], (1, 1), 9) -> [9, 1, 2]."""
    out: List[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def best_pair(stats: Dict[Pair, int]) -> Pair:
    """The tie-break rule: highest count, then smallest (left_id, right_id)."""
    return max(stats, key=lambda p: (stats[p], -p[0], -p[1]))


def train(texts: Iterable[str], num_merges: int, pattern: str = "gpt4") -> List[Pair]:
    """Learn up to `num_merges` merges from `texts` (each str is split on its own; chunks never
    span two texts). Stops early when no pair is left. Returns the merges in creation order."""
    words: List[List[int]] = []
    for text in texts:
        words.extend(list(to_utf8(chunk)) for chunk in split_text(clean_text(text), pattern))
    merges: List[Pair] = []
    for i in range(num_merges):
        stats = get_stats(words)
        if not stats:
            break
        pair = best_pair(stats)
        new_id = 256 + i
        words = [merge(ids, pair, new_id) for ids in words]
        merges.append(pair)
    return merges


def token_bytes_table(merges: Sequence[Pair]) -> List[bytes]:
    """id -> bytes for the 256 byte tokens and every merged token."""
    table = [bytes([b]) for b in range(256)]
    for a, b in merges:
        table.append(table[a] + table[b])
    return table


def encode_chunk(chunk: bytes, ranks: Dict[Pair, int], whole: Dict[bytes, int]) -> List[int]:
    """Encode one pre-split chunk: a chunk that is itself a token is that token (tiktoken's
    whole-chunk lookup); otherwise merge the lowest-ranked adjacent pair (the leftmost one among
    equals) until no adjacent pair is a merge. The rank of a merge is the id it creates."""
    if chunk in whole:
        return [whole[chunk]]
    ids = list(chunk)
    while len(ids) >= 2:
        pairs = list(zip(ids, ids[1:]))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        ids = merge(ids, best, ranks[best])
    return ids


def encode_ordinary(text: str, merges: Sequence[Pair], pattern: str = "gpt4") -> List[int]:
    """Encode `text` with no special-token handling."""
    ranks = {pair: 256 + i for i, pair in enumerate(merges)}
    whole: Dict[bytes, int] = {}
    for i, tb in enumerate(token_bytes_table(merges)):
        whole.setdefault(tb, i)  # several merges may spell the same bytes: the lowest id wins
    out: List[int] = []
    for chunk in split_text(clean_text(text), pattern):
        out.extend(encode_chunk(to_utf8(chunk), ranks, whole))
    return out


def decode_bytes(ids: Iterable[int], merges: Sequence[Pair]) -> bytes:
    table = token_bytes_table(merges)
    return b"".join(table[i] for i in ids)
