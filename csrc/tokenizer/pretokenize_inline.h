// The pre-tokenizer's matchers (see pretokenize.h), inline so that a caller can run its own loop
// over the chunks with no call per chunk (the BPE encoder looks each chunk up as soon as it is
// found). Internal: use pretokenize.h's functions unless the loop itself is hot. Each *_end(s, n, p,
// wtf8) returns the end of the chunk that starts at p < n; nothing is written, no state kept.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>  // SSE2: runs of ASCII letters and of spaces, 16 bytes at a time
#endif

#if defined(__GNUC__)
#define KGPT_NOINLINE __attribute__((noinline))
#define KGPT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define KGPT_NOINLINE
#define KGPT_ALWAYS_INLINE inline
#endif

#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode_tables.h"

namespace kgpt { namespace tok { namespace detail {

// Class bits. Every code point has exactly one of L, N, S, O.
enum : uint8_t { L = 1, N = 2, S = 4, O = 8 };

struct AsciiTable {
  uint8_t cls[128];
  constexpr AsciiTable() : cls() {
    for (int b = 0; b < 128; ++b) {
      const bool letter = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z');
      const bool digit = b >= '0' && b <= '9';
      const bool space = (b >= 0x09 && b <= 0x0D) || b == ' ';  // 0x1C..0x1F are not \s
      cls[b] = letter ? L : digit ? N : space ? S : O;
    }
  }
};
inline constexpr AsciiTable kAscii;
inline constexpr uint8_t kFromUni[4] = {O, L, N, S};  // uni::kOther, kLetter, kNumber, kSpace

struct Cp {
  uint32_t cp;   // the code point (a raw invalid byte keeps its byte value + 0x110000)
  uint32_t len;  // bytes it takes
  uint8_t cls;   // L, N, S or O
};

inline bool cont(uint8_t b) { return (b & 0xC0) == 0x80; }

// Decodes the non-ASCII sequence at s[p] (p < n). Strict UTF-8 as Python's decoder: no overlongs,
// nothing above U+10FFFF, no surrogates unless `wtf8`. Anything else: one "other" byte. Kept out of
// line: the common 2- and 3-byte forms are decoded inline by decode() below.
KGPT_NOINLINE inline Cp decode_cold(const uint8_t* s, size_t p, size_t n, bool wtf8) {
  const uint8_t b0 = s[p];
  const size_t left = n - p;
  uint32_t cp = 0, len = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (left >= 2 && cont(s[p + 1])) { cp = ((b0 & 0x1Fu) << 6) | (s[p + 1] & 0x3Fu); len = 2; }
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left >= 3 && cont(s[p + 1]) && cont(s[p + 2])) {
      cp = ((b0 & 0x0Fu) << 12) | ((s[p + 1] & 0x3Fu) << 6) | (s[p + 2] & 0x3Fu);
      const bool surrogate = cp >= 0xD800 && cp <= 0xDFFF;
      if (cp >= 0x800 && (!surrogate || wtf8)) len = 3;
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left >= 4 && cont(s[p + 1]) && cont(s[p + 2]) && cont(s[p + 3])) {
      cp = ((b0 & 0x07u) << 18) | ((s[p + 1] & 0x3Fu) << 12) | ((s[p + 2] & 0x3Fu) << 6) |
           (s[p + 3] & 0x3Fu);
      if (cp >= 0x10000 && cp <= 0x10FFFF) len = 4;
    }
  }
  if (len == 0) return {0x110000u + b0, 1, O};
  return {cp, len, kFromUni[uni::unicode_class(cp)]};
}

// A non-ASCII code point at s[p]: well-formed 2- and 3-byte sequences (Latin, Greek, Cyrillic,
// Arabic, Indic, CJK, Hangul) inline; 4-byte sequences and anything malformed out of line.
inline Cp decode_multi(const uint8_t* s, size_t p, size_t n, bool wtf8) {
  const uint8_t b0 = s[p];
  if (b0 >= 0xC2 && b0 < 0xE0 && p + 1 < n && cont(s[p + 1])) {
    const uint32_t cp = ((b0 & 0x1Fu) << 6) | (s[p + 1] & 0x3Fu);
    return {cp, 2, kFromUni[uni::unicode_class(cp)]};
  }
  if (b0 >= 0xE0 && b0 < 0xF0 && p + 2 < n && cont(s[p + 1]) && cont(s[p + 2])) {
    const uint32_t cp = ((b0 & 0x0Fu) << 12) | ((s[p + 1] & 0x3Fu) << 6) | (s[p + 2] & 0x3Fu);
    if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) return {cp, 3, kFromUni[uni::unicode_class(cp)]};
  }
  return decode_cold(s, p, n, wtf8);
}

inline Cp decode(const uint8_t* s, size_t p, size_t n, bool wtf8) {
  const uint8_t b0 = s[p];
  if (b0 < 0x80) return {b0, 1, kAscii.cls[b0]};
  return decode_multi(s, p, n, wtf8);
}

// Number of leading ASCII letters in the 16 bytes at s (SSE2, so every x86-64); 16 if all are.
#if defined(__SSE2__)
inline unsigned ascii_letters16(const uint8_t* s) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  const __m128i lower = _mm_or_si128(v, _mm_set1_epi8(0x20));
  // (lower - 'a') < 26 unsigned  <=>  (lower - 'a' - 128) < 26 - 128 signed.
  const __m128i t = _mm_add_epi8(lower, _mm_set1_epi8(static_cast<char>(128 - 'a')));
  const __m128i letter = _mm_cmplt_epi8(t, _mm_set1_epi8(static_cast<char>(26 - 128)));
  const unsigned not_letter = ~static_cast<unsigned>(_mm_movemask_epi8(letter)) & 0xFFFFu;
  return not_letter ? static_cast<unsigned>(__builtin_ctz(not_letter)) : 16u;
}

// Number of leading U+0020 spaces in the 16 bytes at s; 16 if all are.
inline unsigned spaces16(const uint8_t* s) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
  const unsigned sp = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(' '))));
  const unsigned other = ~sp & 0xFFFFu;
  return other ? static_cast<unsigned>(__builtin_ctz(other)) : 16u;
}
#endif

// End of the run of code points whose class is in `kMask`, starting at p.
template <uint8_t kMask>
inline size_t run(const uint8_t* s, size_t n, size_t p, bool wtf8) {
  while (p < n) {
    const uint8_t b = s[p];
    if (b < 0x80) {
      if (!(kAscii.cls[b] & kMask)) break;
#if defined(__SSE2__)
      if (kMask == L && p + 16 <= n) {  // skip ASCII letters 16 at a time
        const unsigned k = ascii_letters16(s + p);
        p += k;
        if (k == 16) continue;
        if (s[p] < 0x80) break;  // stopped at an ASCII non-letter
        continue;                // stopped at a non-ASCII code point: decode it below
      }
#endif
      ++p;
    } else {
      const Cp c = decode_multi(s, p, n, wtf8);
      if (!(c.cls & kMask)) break;
      p += c.len;
    }
  }
  return p;
}

// The whitespace alternatives, at a whitespace code point p: for "gpt4" first \s*[\r\n] (up to and
// including the last CR/LF of the whitespace run), then for both \s+(?!\S) (the whole run if it
// ends the text, else all but its last code point) and finally \s+ (a run of one).
// With `trail_rule` ("cl100k": \s++$ before \s*[\r\n]) a run that ends the text is one chunk.
inline size_t whitespace_end(const uint8_t* s, size_t n, size_t p, bool crlf_rule, bool wtf8,
                             bool trail_rule = false) {
  size_t last_start = p, after_crlf = 0, q = p;
  int count = 0;
  while (q < n) {
    const uint8_t b = s[q];
    if (b < 0x80) {
      if (!(kAscii.cls[b] & S)) break;
      if (b == '\r' || b == '\n') after_crlf = q + 1;
#if defined(__SSE2__)
      if (b == ' ' && q + 16 <= n) {  // indentation: skip spaces 16 at a time
        const unsigned k = spaces16(s + q);
        q += k;
        last_start = q - 1;
        count = k >= 2 ? 2 : count + 1;
        continue;
      }
#endif
      last_start = q++;
    } else {
      const Cp c = decode_multi(s, q, n, wtf8);
      if (!(c.cls & S)) break;
      last_start = q;
      q += c.len;
    }
    if (count < 2) ++count;
  }
  if (trail_rule && q == n) return n;
  if (crlf_rule && after_crlf) return after_crlf;
  if (q == n) return n;
  return count >= 2 ? last_start : q;
}

// '(?i:[sdmt]|ll|ve|re) at the apostrophe p ("gpt4"); 0 if it does not match.
inline size_t contraction_gpt4(const uint8_t* s, size_t n, size_t p) {
  const size_t q = p + 1;
  if (q >= n) return 0;
  const uint8_t b = s[q] | 0x20;  // ASCII lower case (only compared against letters)
  const uint8_t b2 = q + 1 < n ? (s[q + 1] | 0x20) : 0;
  switch (b) {
    case 's': case 'd': case 'm': case 't': return q + 1;
    case 'l': return b2 == 'l' ? q + 2 : 0;
    case 'v': case 'r': return b2 == 'e' ? q + 2 : 0;
    default: break;
  }
  // U+017F LATIN SMALL LETTER LONG S case-folds to s (C5 BF); (b | 0x20) turned C5 into E5.
  if (s[q] == 0xC5 && q + 1 < n && s[q + 1] == 0xBF) return q + 2;
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d at the apostrophe p ("gpt2", case-sensitive); 0 if no match.
inline size_t contraction_gpt2(const uint8_t* s, size_t n, size_t p) {
  const size_t q = p + 1;
  if (q >= n) return 0;
  const uint8_t b = s[q];
  const uint8_t b2 = q + 1 < n ? s[q + 1] : 0;
  switch (b) {
    case 's': case 'd': case 'm': case 't': return q + 1;
    case 'l': return b2 == 'l' ? q + 2 : 0;
    case 'v': case 'r': return b2 == 'e' ? q + 2 : 0;
    default: return 0;
  }
}

// \p{N}{1,3} after a first digit that ends at q (gpt4, cl100k and o200k).
inline size_t digits_upto3(const uint8_t* s, size_t n, size_t q, bool wtf8) {
  size_t e = q;
  for (int k = 1; k < 3 && e < n; ++k) {
    const Cp c = decode(s, e, n, wtf8);
    if (c.cls != N) break;
    e += c.len;
  }
  return e;
}

// " ?[^\s\p{L}\p{N}]+" at p (c0 the code point there, q after it), then a run of CR/LF (and '/'
// with slash: o200k's [\r\n/]*); 0 when that alternative does not match here.
inline size_t punct_end(const uint8_t* s, size_t n, size_t p, const Cp& c0, size_t q, bool wtf8,
                        bool slash) {
  size_t r = p;
  uint8_t cls = c0.cls;
  uint32_t len = c0.len;
  if (c0.cp == ' ' && q < n) {
    const Cp c1 = decode(s, q, n, wtf8);
    r = q; cls = c1.cls; len = c1.len;
  }
  if (cls != O) return 0;
  r = run<O>(s, n, r + len, wtf8);
  while (r < n && (s[r] == '\r' || s[r] == '\n' || (slash && s[r] == '/'))) ++r;
  return r;
}

// '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+
// (`cl100k`: with tiktoken's \s++$ alternative before \s*[\r\n])
KGPT_NOINLINE inline size_t gpt4_end(const uint8_t* s, size_t n, size_t p, bool wtf8, bool cl100k = false) {
  const Cp c0 = decode(s, p, n, wtf8);
  const size_t q = p + c0.len;
  if (c0.cp == '\'') {
    if (size_t e = contraction_gpt4(s, n, p)) return e;
  }
  // [^\r\n\p{L}\p{N}]?+\p{L}+ : an optional non-letter/number/CR/LF prefix (possessive), letters.
  if (c0.cls == L) return run<L>(s, n, q, wtf8);
  if (c0.cls != N && c0.cp != '\r' && c0.cp != '\n' && q < n) {
    const Cp c1 = decode(s, q, n, wtf8);
    if (c1.cls == L) return run<L>(s, n, q + c1.len, wtf8);
  }
  // \p{N}{1,3}
  if (c0.cls == N) return digits_upto3(s, n, q, wtf8);
  //  ?[^\s\p{L}\p{N}]++[\r\n]*
  if (size_t e = punct_end(s, n, p, c0, q, wtf8, false)) return e;
  // c0 is whitespace here.
  return whitespace_end(s, n, p, true, wtf8, cl100k);
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
KGPT_NOINLINE inline size_t gpt2_end(const uint8_t* s, size_t n, size_t p, bool wtf8) {
  const Cp c0 = decode(s, p, n, wtf8);
  if (c0.cp == '\'') {
    if (size_t e = contraction_gpt2(s, n, p)) return e;
  }
  size_t r = p;
  Cp c = c0;
  if (c0.cp == ' ' && p + 1 < n) { r = p + 1; c = decode(s, r, n, wtf8); }
  if (c.cls == L) return run<L>(s, n, r + c.len, wtf8);
  if (c.cls == N) return run<N>(s, n, r + c.len, wtf8);
  if (c.cls == O) return run<O>(s, n, r + c.len, wtf8);
  return whitespace_end(s, n, p, false, wtf8);
}

// ---- "o200k" (tiktoken's o200k_base):
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//  |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//  |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Call the first letter class A, the second B. Sub-classes: UPPER (Lu Lt) is in A only, LOWER (Ll)
// in B only, BOTH (Lm Lo and the marks M, which are not \p{L} and so also in the prefix class and
// in [^\s\p{L}\p{N}]) in both. None of the quantifiers after A*/A+ can fail, so backtracking only
// matters inside A*B+: A* takes the run of A, and B+ then needs a LOWER right after it; else A*
// gives back up to its last BOTH, which B+ takes alone (the code point after it is UPPER or not in
// A, so not in B). The prefix ? is greedy: the alternative is tried with it, then without (which
// only differs when the first code point is a mark), before the next alternative.
inline uint8_t sub_at(const Cp& c) {
  if (c.cp < 0x80) return (c.cp >= 'A' && c.cp <= 'Z') ? 1 : (c.cp >= 'a' && c.cp <= 'z') ? 2 : 0;
  if (c.cp >= 0x110000 || (c.cp >= 0xD800 && c.cp <= 0xDFFF)) return 0;  // invalid byte, surrogate
  return uni::o200k_sub(c.cp);
}
constexpr uint8_t kUp = 1, kLow = 2, kBoth = 3;

// End of the run of B (LOWER or BOTH) from q.
inline size_t o200k_b_run(const uint8_t* s, size_t n, size_t q, bool wtf8) {
  while (q < n) {
    const uint8_t b = s[q];
    if (b < 0x80) {  // ASCII: only a-z is in B
      if (b >= 'a' && b <= 'z') { ++q; continue; }
      break;
    }
    const Cp c = decode_multi(s, q, n, wtf8);
    const uint8_t sub = sub_at(c);
    if (sub != kLow && sub != kBoth) break;
    q += c.len;
  }
  return q;
}

// A*B+ from q (first == true) or A+B* (first == false); 0 if it does not match.
inline size_t o200k_letters(const uint8_t* s, size_t n, size_t q, bool first, bool wtf8) {
  const size_t start = q;
  size_t last_both_end = 0;
  uint8_t next = 0;  // sub-class of the code point after the A run
  while (q < n) {
    const uint8_t b = s[q];
    if (b < 0x80) {  // ASCII: A-Z is in A only, a-z in B only, nothing else in either
      if (b >= 'A' && b <= 'Z') { ++q; continue; }
      next = (b >= 'a' && b <= 'z') ? kLow : 0;
      break;
    }
    const Cp c = decode_multi(s, q, n, wtf8);
    next = sub_at(c);
    if (next == kUp) { q += c.len; continue; }
    if (next == kBoth) { q += c.len; last_both_end = q; continue; }
    break;
  }
  if (q == n) next = 0;
  if (!first && q == start) return 0;                    // A+ needs one
  if (next == kLow) return o200k_b_run(s, n, q, wtf8);  // B run right after the A run
  if (first) return last_both_end;
  return q > start ? q : 0;
}

inline size_t o200k_suffix(const uint8_t* s, size_t n, size_t e) {
  if (e < n && s[e] == '\'') {
    if (size_t c = contraction_gpt4(s, n, e)) return c;
  }
  return e;
}

KGPT_NOINLINE inline size_t o200k_end(const uint8_t* s, size_t n, size_t p, bool wtf8) {
  const Cp c0 = decode(s, p, n, wtf8);
  const size_t q = p + c0.len;
  const uint8_t sub0 = sub_at(c0);
  const bool prefix = c0.cls != L && c0.cls != N && c0.cp != '\r' && c0.cp != '\n';
  for (int alt = 0; alt < 2; ++alt) {
    const bool first = alt == 0;
    if (prefix && q < n) {
      if (size_t e = o200k_letters(s, n, q, first, wtf8)) return o200k_suffix(s, n, e);
    }
    if (sub0) {
      if (size_t e = o200k_letters(s, n, p, first, wtf8)) return o200k_suffix(s, n, e);
    }
  }
  // \p{N}{1,3}
  if (c0.cls == N) return digits_upto3(s, n, q, wtf8);
  //  ?[^\s\p{L}\p{N}]+[\r\n/]*
  if (size_t e = punct_end(s, n, p, c0, q, wtf8, true)) return e;
  // c0 is whitespace here: \s*[\r\n]+ ends at the last CR/LF of the run, as \s*[\r\n] does.
  return whitespace_end(s, n, p, true, wtf8);
}

inline size_t end_at(const uint8_t* s, size_t n, size_t p, Pattern pattern, bool wtf8) {
  switch (pattern) {
    case Pattern::GPT4: return gpt4_end(s, n, p, wtf8);
    case Pattern::GPT2: return gpt2_end(s, n, p, wtf8);
    case Pattern::O200K: return o200k_end(s, n, p, wtf8);
    case Pattern::CL100K: return gpt4_end(s, n, p, wtf8, true);
  }
  return gpt4_end(s, n, p, wtf8);
}

}}}  // namespace kgpt::tok::detail
