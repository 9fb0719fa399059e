#!/usr/bin/env python3
"""Generate csrc/tokenizer/unicode_tables.h: the code point classes the pre-tokenizer needs.

Each code point gets one of four classes: letter (\\p{L}: Lu Ll Lt Lm Lo), number (\\p{N}: Nd Nl No),
whitespace (\\s as the `regex` package defines it for str patterns) or other. Sources:
  * letter / number: Python's `unicodedata` general categories (this script's Python: see the
    generated header for the Unicode version). Combining marks (Mn Mc Me) are NOT letters.
  * whitespace: the Unicode White_Space property, which `unicodedata` does not expose, written out
    below (WHITE_SPACE). Probing `regex` over every code point gives exactly this set: it includes
    U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 and excludes
    U+001C..U+001F (which str.isspace() accepts) and U+180E (White_Space only before Unicode 6.3).
  * the contraction group (?i:[sdmt]|ll|ve|re) of the "gpt4" pattern: `regex` (V0, no FULLCASE)
    matches each letter case-insensitively with simple case folding; probing shows the only non-ASCII
    code point any of s d m t l v e r matches is U+017F LATIN SMALL LETTER LONG S (for s). Emitted
    as a constant.
  * the "o200k" pattern's letter sub-classes (a second table): UPPER (Lu Lt: only in its
    [\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}] class), LOWER (Ll: only in [\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]), BOTH
    (Lm Lo and the marks Mn Mc Me: in both), NONE. Above LIMIT only U+E0100..U+E01EF (variation
    selectors, Mn) have one (asserted), emitted as constants. One assigned code point changed
    category after Unicode 14: U+0295 is Ll in 14, Lo in `regex` (newer Unicode); SUB_OVERRIDES
    follows the newer one, as tiktoken's regex engine does.
When `regex` is importable the script probes it for every code point and checks all of the above.
`regex` usually ships newer Unicode tables than `unicodedata` (regex 2026.5.9 calls CJK Extension J,
U+323B0.., letters, so it is at Unicode 17; Python 3.11's unicodedata is Unicode 14): code points assigned as letters/numbers after Unicode 14
are unassigned ("other") here but \\p{L}/\\p{N} in `regex`. With regex 2026.5.9 and Python 3.11
that is 13916 letters + 133 numbers = 14049 code points, all of them unassigned in unicodedata
(regex never calls an assigned-here code point by another class). The tests draw random characters
only from code points where the compiled table and `regex` agree (`agreeing_code_points()`).

Layout: two-level table over code points < LIMIT (everything above is "other": planes 4-13 are
unassigned, 14 holds only format characters and marks, 15-16 are private use; asserted).
stage1[cp >> SHIFT] names a block; stage2 holds deduplicated blocks, 2 bits per code point packed
16 to a uint32. Usage: python3 scripts/gen_unicode_tables.py [--check]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import unicodedata

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
LIMIT = 0x40000
WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
LONG_S = 0x17F
NONE, UPPER, LOWER, BOTH = 0, 1, 2, 3
SUB_OVERRIDES = {0x295: BOTH}  # Ll in Unicode 14, Lo since (regex and tiktoken use the newer)
HI_MARKS = (0xE0100, 0xE01EF)  # the only code points >= LIMIT with a sub-class (Mn)
HEADER = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "tokenizer" / "unicode_tables.h"


def unicodedata_class(cp: int) -> int:
    if cp in _WS:
        return SPACE
    cat = unicodedata.category(chr(cp))
    if cat[0] == "L":
        return LETTER
    if cat[0] == "N":
        return NUMBER
    return OTHER


_WS = frozenset(WHITE_SPACE)


def unicodedata_sub(cp: int) -> int:
    if cp in SUB_OVERRIDES:
        return SUB_OVERRIDES[cp]
    cat = unicodedata.category(chr(cp))
    if cat in ("Lu", "Lt"):
        return UPPER
    if cat == "Ll":
        return LOWER
    if cat in ("Lm", "Lo", "Mn", "Mc", "Me"):
        return BOTH
    return NONE


def regex_subs():
    """Probe `regex`: the o200k sub-class sets (UPPER, LOWER, BOTH) of code points, or None."""
    try:
        import regex
    except ImportError:
        return None
    everything = "".join(map(chr, range(0x110000)))
    probe = lambda pat: {m.start() for m in regex.finditer(pat, everything)}  # noqa: E731
    return probe(r"[\p{Lu}\p{Lt}]"), probe(r"\p{Ll}"), probe(r"[\p{Lm}\p{Lo}\p{M}]")


def build_subs() -> list[int]:
    subs = [unicodedata_sub(cp) for cp in range(0x110000)]
    hi = [cp for cp in range(LIMIT, 0x110000) if subs[cp]]
    assert hi == list(range(HI_MARKS[0], HI_MARKS[1] + 1)), "a sub-class above LIMIT moved"
    assert all(unicodedata.category(chr(cp)) == "Mn" for cp in hi)
    probed = regex_subs()
    if probed is not None:
        U, W, X = probed
        for cp in range(0x110000):
            if 0xD800 <= cp < 0xE000 or unicodedata.category(chr(cp)) == "Cn":
                continue
            want = UPPER if cp in U else LOWER if cp in W else BOTH if cp in X else NONE
            assert subs[cp] == want, f"regex sub-class of U+{cp:04X} differs"
    return subs


def regex_classes():
    """Probe the `regex` package: the sets of code points matching \\p{L}, \\p{N}, \\s, or None."""
    try:
        import regex
    except ImportError:
        return None
    everything = "".join(map(chr, range(0x110000)))
    probe = lambda pat: {m.start() for m in regex.finditer(pat, everything)}  # noqa: E731
    folds = {ch: probe(r"(?i:%s)" % ch) for ch in "sdmtlver"}
    return probe(r"\p{L}"), probe(r"\p{N}"), probe(r"\s"), folds


def agreeing_code_points(classes=None):
    """Code points (no surrogates) whose class in `classes` (default: this Python's unicodedata;
    the tests pass the compiled table's) equals the `regex` package's \\p{L} / \\p{N} / \\s class."""
    probed = regex_classes()
    if probed is None:
        raise RuntimeError("regex is not installed")
    L, N, S, _ = probed
    out = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        want = SPACE if cp in S else LETTER if cp in L else NUMBER if cp in N else OTHER
        if want == (unicodedata_class(cp) if classes is None else classes[cp]):
            out.append(cp)
    return out


def build_classes() -> list[int]:
    classes = [unicodedata_class(cp) for cp in range(0x110000)]
    assert all(c == OTHER for c in classes[LIMIT:]), "a letter/number/space above LIMIT"
    probed = regex_classes()
    if probed is not None:
        L, N, S, folds = probed
        assert S == _WS, f"regex's \\s differs from White_Space: {sorted(S ^ _WS)}"
        # Every code point unicodedata calls L/N, regex calls the same; the reverse misses only
        # code points unassigned in this unicodedata.
        uL = {cp for cp, c in enumerate(classes) if c == LETTER}
        uN = {cp for cp, c in enumerate(classes) if c == NUMBER}
        assert uL <= L and uN <= N, "regex disagrees on an assigned code point"
        for cp in (L - uL) | (N - uN):
            assert unicodedata.category(chr(cp)) == "Cn", hex(cp)
        print(f"regex: {len(L - uL)} letters + {len(N - uN)} numbers unassigned in unicodedata "
              f"{unicodedata.unidata_version}", file=sys.stderr)
        for ch, got in folds.items():
            want = {ord(ch), ord(ch.upper())} | ({LONG_S} if ch == "s" else set())
            assert got == want, (ch, sorted(map(hex, got)))
    return classes


def pack(classes: list[int], shift: int):
    size = 1 << shift
    blocks, index, stage1 = [], {}, []
    for start in range(0, LIMIT, size):
        blk = tuple(classes[start:start + size])
        if blk not in index:
            index[blk] = len(blocks)
            blocks.append(blk)
        stage1.append(index[blk])
    words = []
    for blk in blocks:
        for w in range(0, size, 16):
            words.append(sum(c << (2 * i) for i, c in enumerate(blk[w:w + 16])))
    return stage1, words


def _best_pack(classes: list[int]):
    best = None
    for shift in range(5, 10):
        stage1, words = pack(classes, shift)
        s1_bytes = len(stage1) * (1 if max(stage1) < 256 else 2)
        cost = s1_bytes + 4 * len(words)
        if best is None or cost < best[0]:
            best = (cost, shift, stage1, words)
    return best[1:]


def _table(prefix: str, classes: list[int]):
    shift, stage1, words = _best_pack(classes)
    s1_type = "uint8_t" if max(stage1) < 256 else "uint16_t"
    lines = [f"inline constexpr {s1_type} k{prefix}Stage1[{len(stage1)}] = {{"]
    for i in range(0, len(stage1), 32):
        lines.append("  " + ",".join(str(v) for v in stage1[i:i + 32]) + ",")
    lines += ["};", "", f"inline constexpr uint32_t k{prefix}Stage2[{len(words)}] = {{"]
    for i in range(0, len(words), 8):
        lines.append("  " + ",".join(f"0x{w:X}" for w in words[i:i + 8]) + ",")
    lines += ["};", ""]
    return shift, lines


def render(classes: list[int], subs: list[int]) -> str:
    shift, table = _table("", classes)
    sub_shift, sub_table = _table("Sub", subs)
    wpb = (1 << shift) // 16
    swpb = (1 << sub_shift) // 16
    lines = [
        "// GENERATED by scripts/gen_unicode_tables.py -- do not edit. Code point classes for the",
        "// pre-tokenizer: letter (\\p{L}), number (\\p{N}), whitespace (regex's \\s = White_Space),",
        f"// other; from Python {sys.version.split()[0]} unicodedata (Unicode {unicodedata.unidata_version}).",
        "// Read-only tables, no state: unicode_class(cp) looks a code point up in two steps.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace kgpt { namespace tok { namespace uni {",
        "",
        f'inline constexpr char kUnicodeVersion[] = "{unicodedata.unidata_version}";',
        "enum : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };",
        f"constexpr uint32_t kLimit = 0x{LIMIT:X};  // code points >= kLimit are all kOther",
        f"constexpr uint32_t kShift = {shift};  // block size 2^kShift code points",
        f"constexpr uint32_t kLongS = 0x{LONG_S:X};  // the one non-ASCII code point (?i:s) matches",
        "enum : uint8_t { kSubNone = 0, kSubUpper = 1, kSubLower = 2, kSubBoth = 3 };",
        f"constexpr uint32_t kSubShift = {sub_shift};",
        f"constexpr uint32_t kHiMarkFirst = 0x{HI_MARKS[0]:X}, kHiMarkLast = 0x{HI_MARKS[1]:X};  // Mn above kLimit",
        "",
        *table,
        *sub_table,
        "inline uint8_t unicode_class(uint32_t cp) {",
        "  if (cp >= kLimit) return kOther;",
        f"  const uint32_t word = kStage2[kStage1[cp >> kShift] * {wpb}u + ((cp >> 4) & {wpb - 1}u)];",
        "  return static_cast<uint8_t>((word >> ((cp & 15u) * 2u)) & 3u);",
        "}",
        "",
        "inline uint8_t o200k_sub(uint32_t cp) {",
        "  if (cp >= kLimit) return (cp >= kHiMarkFirst && cp <= kHiMarkLast) ? kSubBoth : kSubNone;",
        f"  const uint32_t word = kSubStage2[kSubStage1[cp >> kSubShift] * {swpb}u + ((cp >> 4) & {swpb - 1}u)];",
        "  return static_cast<uint8_t>((word >> ((cp & 15u) * 2u)) & 3u);",
        "}",
        "",
        "}}}  // namespace kgpt::tok::uni",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the header is out of date")
    args = ap.parse_args()
    text = render(build_classes(), build_subs())
    if args.check:
        if HEADER.read_text() != text:
            sys.exit(f"{HEADER} is out of date: rerun scripts/gen_unicode_tables.py")
        return
    HEADER.write_text(text)
    print(f"wrote {HEADER} ({len(text)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
