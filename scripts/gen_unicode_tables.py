#!/usr/bin/env python3
"""Generate the pre-tokenizer's Unicode tables from one pinned Unicode version.

Two generated files, both committed:
  * python/kernelgpt/_unicode_data.py -- the input: the Unicode version, the White_Space code
    points and the general-category runs the split patterns need, in a compact text form. The pure
    Python reference splitter (kernelgpt._bpe_reference) builds its character classes from it, so
    the reference and the native splitter see the same Unicode whatever `regex` is installed.
    Written only by `--update-data`, from the `unicodedata2` package (a backport of unicodedata
    that carries its Unicode version in unicodedata2.unidata_version; `pip install unicodedata2`;
    nothing is downloaded by this script). Category groups kept, one letter each:
        u = Lu Lt   l = Ll   o = Lm Lo   m = Mn Mc Me   n = Nd Nl No   (all others: not kept)
  * csrc/tokenizer/unicode_tables.h -- the native tables, rendered from the data module alone
    (deterministic: the same data module gives the same header byte for byte).

What the pre-tokenizer needs per code point:
  * class: letter (\\p{L} = u l o), number (\\p{N} = n), whitespace (\\s as the `regex` package
    defines it for str patterns: the White_Space property, which unicodedata does not expose;
    written out below as WHITE_SPACE: it includes U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028,
    U+2029, U+202F, U+205F, U+3000 and excludes U+001C..U+001F, which str.isspace() accepts, and
    U+180E) or other. Combining marks are NOT letters.
  * the "o200k" pattern's letter sub-class: UPPER (u: only in its [\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]
    class), LOWER (l: only in [\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]), BOTH (o and m: in both), NONE.
  * the contraction group (?i:[sdmt]|ll|ve|re): `regex` (V0, simple case folding) matches one
    non-ASCII code point with it, U+017F LATIN SMALL LETTER LONG S (for s); emitted as a constant.
Above LIMIT only U+E0100..U+E01EF (variation selectors, Mn) have a class other than "other" or a
sub-class (asserted), emitted as constants.

`--check` fails unless the header is what the data module renders to and the data module
round-trips; when the installed `regex` is the version the data module records as agreeing
(REGEX_AGREES), it also probes `regex` over every code point and requires equal classes.

Layout: two-level table over code points < LIMIT. stage1[cp >> SHIFT] names a block; stage2 holds
deduplicated blocks, 2 bits per code point packed 16 to a uint32.
Usage: python3 scripts/gen_unicode_tables.py [--check | --update-data]
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
NONE, UPPER, LOWER, BOTH = 0, 1, 2, 3
LIMIT = 0x40000
WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
LONG_S = 0x17F
HI_MARKS = (0xE0100, 0xE01EF)  # the only code points >= LIMIT with a class/sub-class (Mn)
GROUPS = {"Lu": "u", "Lt": "u", "Ll": "l", "Lm": "o", "Lo": "o", "Mn": "m", "Mc": "m", "Me": "m",
          "Nd": "n", "Nl": "n", "No": "n"}
CLASS_OF = {"u": LETTER, "l": LETTER, "o": LETTER, "m": OTHER, "n": NUMBER}
SUB_OF = {"u": UPPER, "l": LOWER, "o": BOTH, "m": BOTH, "n": NONE}
ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "csrc" / "tokenizer" / "unicode_tables.h"
DATA = ROOT / "python" / "kernelgpt" / "_unicode_data.py"


# ---- the data module
def load_data(path: pathlib.Path = DATA):
    spec = importlib.util.spec_from_file_location("_kgpt_unicode_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def group_table(runs) -> bytearray:
    """One byte per code point 0..0x10FFFF: the group letter's code, or 0 where none."""
    table = bytearray(0x110000)
    for first, last, g in runs:
        table[first:last + 1] = g.encode() * (last - first + 1)
    return table


def classes_and_subs(data):
    groups = group_table(data.runs())
    ws = set(data.white_space())
    assert ws == set(WHITE_SPACE), "White_Space differs from this script's list"
    classes = [OTHER] * 0x110000
    subs = [NONE] * 0x110000
    for cp, g in enumerate(groups):
        if g:
            classes[cp] = CLASS_OF[chr(g)]
            subs[cp] = SUB_OF[chr(g)]
    for cp in ws:
        assert classes[cp] == OTHER and subs[cp] == NONE, hex(cp)
        classes[cp] = SPACE
    hi = [cp for cp in range(LIMIT, 0x110000) if classes[cp] or subs[cp]]
    assert hi == list(range(HI_MARKS[0], HI_MARKS[1] + 1)), "a class above LIMIT moved"
    assert all(groups[cp] == ord("m") for cp in hi)
    return classes, subs


def runs_from_unicodedata(ud):
    runs, cur = [], None
    for cp in range(0x110000):
        g = None if 0xD800 <= cp < 0xE000 else GROUPS.get(ud.category(chr(cp)))
        if cur is not None and g == cur[2] and cp == cur[1] + 1:
            cur[1] = cp
            continue
        if cur is not None:
            runs.append(tuple(cur))
        cur = [cp, cp, g] if g else None
    if cur is not None:
        runs.append(tuple(cur))
    return runs


def render_data(version: str, source: str, regex_agrees, runs) -> str:
    tokens = [f"{a:X}:{g}" if a == b else f"{a:X}-{b:X}:{g}" for a, b, g in runs]
    lines, line = [], ""
    for t in tokens:
        if len(line) + len(t) + 1 > 99:
            lines.append(line)
            line = ""
        line = f"{line} {t}" if line else t
    lines.append(line)
    ws = " ".join(f"{cp:X}" for cp in WHITE_SPACE)
    return "\n".join([
        '"""GENERATED by scripts/gen_unicode_tables.py --update-data -- do not edit.',
        "",
        "The Unicode character data the pre-tokenizer needs, one pinned version, shared by the native",
        "tables (csrc/tokenizer/unicode_tables.h, rendered from this file) and the pure-Python reference",
        "splitter (kernelgpt._bpe_reference builds its character classes from it).",
        "",
        "_RUNS: general-category runs 'FIRST-LAST:g' (or 'CP:g'), hex code points, g one of",
        "u = Lu Lt, l = Ll, o = Lm Lo, m = Mn Mc Me, n = Nd Nl No; code points in no run are none of these.",
        "_WHITE_SPACE: the White_Space property (what `regex` calls \\\\s in a str pattern).",
        '"""',
        "from typing import List, Tuple",
        "",
        f"UNICODE_VERSION = {version!r}",
        f"SOURCE = {source!r}",
        "# The `regex` package version whose \\p{L} \\p{Lu} \\p{Ll} \\p{Lt} \\p{Lm} \\p{Lo} \\p{M} \\p{N} \\s",
        "# were checked equal to this data on every code point when it was generated (None: not checked).",
        f"REGEX_AGREES = {regex_agrees!r}",
        "",
        f'_WHITE_SPACE = "{ws}"',
        "",
        '_RUNS = """',
        *lines,
        '"""',
        "",
        "",
        "def runs() -> List[Tuple[int, int, str]]:",
        '    """(first, last, group) for every run, ascending."""',
        "    out = []",
        "    for tok in _RUNS.split():",
        '        span, g = tok.split(":")',
        '        a, _, b = span.partition("-")',
        "        out.append((int(a, 16), int(b or a, 16), g))",
        "    return out",
        "",
        "",
        "def white_space() -> List[int]:",
        "    return [int(t, 16) for t in _WHITE_SPACE.split()]",
        "",
    ])


# ---- probing `regex`
def regex_sets():
    """The code point sets of regex's \\p{L} \\p{Lu} ... \\s, and the (?i:x) sets of s d m t l v e r."""
    import regex
    everything = "".join(map(chr, range(0x110000)))
    probe = lambda pat: {m.start() for m in regex.finditer(pat, everything)}  # noqa: E731
    sets = {g: probe(r"\p{%s}" % g) for g in ("L", "Lu", "Lt", "Ll", "Lm", "Lo", "M", "N")}
    sets["s"] = probe(r"\s")
    folds = {ch: probe(r"(?i:%s)" % ch) for ch in "sdmtlver"}
    return sets, folds


def regex_disagreements(runs) -> list:
    """Code points where `regex`'s categories differ from `runs` (empty: they agree everywhere)."""
    sets, folds = regex_sets()
    groups = group_table(runs)
    want = {
        "L": {cp for cp, g in enumerate(groups) if g in b"ulo"},
        "Lu": None, "Lt": None,  # u = Lu | Lt, checked together below
        "Ll": {cp for cp, g in enumerate(groups) if g == ord("l")},
        "M": {cp for cp, g in enumerate(groups) if g == ord("m")},
        "N": {cp for cp, g in enumerate(groups) if g == ord("n")},
    }
    bad = set()
    bad |= (sets["Lu"] | sets["Lt"]) ^ {cp for cp, g in enumerate(groups) if g == ord("u")}
    bad |= (sets["Lm"] | sets["Lo"]) ^ {cp for cp, g in enumerate(groups) if g == ord("o")}
    for k in ("L", "Ll", "M", "N"):
        bad |= sets[k] ^ want[k]
    bad |= sets["s"] ^ set(WHITE_SPACE)
    for ch, got in folds.items():
        exp = {ord(ch), ord(ch.upper())} | ({LONG_S} if ch == "s" else set())
        assert got == exp, f"regex's (?i:{ch}) matches {sorted(map(hex, got))}"
    return sorted(bad)


# ---- the header
def pack(classes: list, shift: int):
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


def _best_pack(classes: list):
    best = None
    for shift in range(5, 10):
        stage1, words = pack(classes, shift)
        s1_bytes = len(stage1) * (1 if max(stage1) < 256 else 2)
        cost = s1_bytes + 4 * len(words)
        if best is None or cost < best[0]:
            best = (cost, shift, stage1, words)
    return best[1:]


def _table(prefix: str, classes: list):
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


def render(data) -> str:
    classes, subs = classes_and_subs(data)
    shift, table = _table("", classes)
    sub_shift, sub_table = _table("Sub", subs)
    wpb = (1 << shift) // 16
    swpb = (1 << sub_shift) // 16
    lines = [
        "// GENERATED by scripts/gen_unicode_tables.py -- do not edit. Code point classes for the",
        "// pre-tokenizer: letter (\\p{L}), number (\\p{N}), whitespace (regex's \\s = White_Space),",
        f"// other; and the o200k letter sub-classes. Unicode {data.UNICODE_VERSION}, from",
        "// python/kernelgpt/_unicode_data.py (the same data the Python reference splitter uses).",
        "// Read-only tables, no state: unicode_class(cp) looks a code point up in two steps.",
        "#pragma once",
        "#include <cstdint>",
        "",
        "namespace kgpt { namespace tok { namespace uni {",
        "",
        f'inline constexpr char kUnicodeVersion[] = "{data.UNICODE_VERSION}";',
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


def update_data() -> None:
    try:
        import unicodedata2 as ud
    except ImportError:
        sys.exit("--update-data needs the unicodedata2 package (pip install unicodedata2)")
    import importlib.metadata
    import unicodedata
    ud_version = importlib.metadata.version("unicodedata2")
    runs = runs_from_unicodedata(ud)
    agrees = None
    try:
        import regex
    except ImportError:
        regex = None
    if regex is not None:
        bad = regex_disagreements(runs)
        if bad:
            print(f"regex {regex.__version__} disagrees on {len(bad)} code points (first "
                  f"{[hex(c) for c in bad[:5]]}): it is not at Unicode {ud.unidata_version}",
                  file=sys.stderr)
        else:
            agrees = regex.__version__
    old = group_table(runs_from_unicodedata(unicodedata))
    new = group_table(runs)
    changed = sum(a != b for a, b in zip(old, new))
    print(f"Unicode {ud.unidata_version} (unicodedata2 {ud_version}); {changed} code points "
          f"differ in group from this Python's unicodedata {unicodedata.unidata_version}; "
          f"regex agrees: {agrees}", file=sys.stderr)
    source = f"unicodedata2 {ud_version}"
    DATA.write_text(render_data(ud.unidata_version, source, agrees, runs))
    print(f"wrote {DATA}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="fail if the header or the data module is out of date")
    mode.add_argument("--update-data", action="store_true",
                      help="rewrite python/kernelgpt/_unicode_data.py from unicodedata2, then the header")
    args = ap.parse_args()
    if args.update_data:
        update_data()
    data = load_data()
    text = render(data)
    if args.check:
        if DATA.read_text() != render_data(data.UNICODE_VERSION, data.SOURCE, data.REGEX_AGREES,
                                           data.runs()):
            sys.exit(f"{DATA} does not round-trip: rerun scripts/gen_unicode_tables.py --update-data")
        if HEADER.read_text() != text:
            sys.exit(f"{HEADER} is out of date: rerun scripts/gen_unicode_tables.py")
        try:
            import regex
        except ImportError:
            return
        if regex.__version__ == data.REGEX_AGREES:
            bad = regex_disagreements(data.runs())
            if bad:
                sys.exit(f"regex {regex.__version__} disagrees on {len(bad)} code points")
        return
    HEADER.write_text(text)
    print(f"wrote {HEADER} ({len(text)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
