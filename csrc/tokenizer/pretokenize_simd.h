// Block classifier and bitmask fast path of the pre-tokenizer (internal; see pretokenize.h for the
// contract). 64 bytes at a time are classified into bitmasks (bit i = byte i of the window: ASCII
// upper / lower case letter, digit, \s, CR/LF, '/', non-ASCII) by an AVX-512BW, AVX2 or portable
// classifier chosen at run time; a chunk that starts at an ASCII byte is then found with a few
// shifts and trailing-zero counts. Without AVX2 (or with the test hook's "scalar") there is no
// classifier and every chunk is found by the exact matcher, as before the classifier existed. Whenever a non-ASCII byte could change the chunk (it stops a run,
// or it may be a prefix/letter), or a contraction may start, the fast path answers 0 and the caller
// runs the exact matcher (pretokenize_inline.h) from the same position, so the chunks are always the
// matcher's.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tokenizer/pretokenize_inline.h"

namespace kgpt { namespace tok { namespace detail {

struct BlockMasks {
  uint64_t up, low, dig, sp, crlf, slash, hi, spc, apos;  // spc: U+0020 only
  uint64_t hang;  // the bytes of whole Hangul syllables (a subset of hi)
};

// Classifies exactly 64 readable bytes at s.
using ClassifyFn = void (*)(const uint8_t* s, BlockMasks* m);

// The classifier in use: AVX-512BW if the CPU has it, else AVX2, else none (nullptr: the exact
// matcher only), unless a test forced one with set_pretokenize_isa.
ClassifyFn classifier();

}  // namespace detail

// Test hook (process-wide): "auto" (the default: the best the CPU has), "avx512", "avx2" or
// "scalar". Returns false (and changes nothing) for an unknown name or an ISA this CPU lacks.
bool set_pretokenize_isa(const char* name);
// The classifier in use: "avx512", "avx2" or "scalar".
const char* pretokenize_isa();

namespace detail {

KGPT_ALWAYS_INLINE unsigned ones_from(uint64_t m, unsigned i) {  // i < 64
  const uint64_t t = ~(m >> i);
  return t ? unsigned(__builtin_ctzll(t)) : 64u;
}
KGPT_ALWAYS_INLINE bool bit(uint64_t m, unsigned i) { return (m >> i) & 1u; }

// Walks one text chunk by chunk: next_end(p) is the end of the chunk that starts at p (p < n, p a
// chunk boundary), equal to end_at(s, n, p, P, wtf8). Positions must be visited in increasing order
// for the window to be reused (any order is still correct).
template <Pattern P>
class ChunkCursor {
  static_assert(P != Pattern::GPT2, "gpt2 splits with the exact matcher (Gpt2Cursor)");

 public:
  ChunkCursor(const uint8_t* s, size_t n, bool wtf8)
      : s_(s), n_(n), wtf8_(wtf8), classify_(classifier()) {}

  KGPT_ALWAYS_INLINE size_t next_end(size_t p) {
    if (size_t e = fast_end(p)) return e;
    return exact(p);
  }

  // The bitmask answer, or 0 when the exact matcher must decide.
  KGPT_ALWAYS_INLINE size_t fast_end(size_t p) {
    // A non-ASCII byte first or second decides the chunk: the exact matcher, without classifying.
    if (!classify_ || s_[p] >= 0x80 || (p + 1 < n_ && s_[p + 1] >= 0x80)) return 0;
    if (p + 16 > lim_ || p < w_) load(p);
    size_t e = try_end(p);
    if (e == kRetry) {
      if (p == w_) return 0;
      load(p);
      e = try_end(p);
      if (e == kRetry) return 0;
    }
    return e;
  }

  // The exact matcher (wtf8 passed as a constant: the compiler specializes the out-of-line matcher
  // for the ordinary case).
  size_t exact(size_t p) const { return wtf8_ ? exact_as<true>(p) : exact_as<false>(p); }
  template <bool kWtf8>
  size_t exact_as(size_t p) const {
    if constexpr (P == Pattern::GPT4) return gpt4_end(s_, n_, p, kWtf8);
    else if constexpr (P == Pattern::CL100K) return gpt4_end(s_, n_, p, kWtf8, true);
    else return o200k_end(s_, n_, p, kWtf8);
  }

 private:
  static constexpr size_t kRetry = ~size_t(0);

  void load(size_t p) {
    w_ = p;
    if (n_ - p > 64) {
      classify_(s_ + p, &m_);
      lim_ = p + 64;
      valid_ = ~uint64_t(0);
    } else {  // the window reaches the end of the text: classify a zero-padded copy
      alignas(64) uint8_t buf[64] = {};
      const size_t k = n_ - p;
      std::memcpy(buf, s_ + p, k);
      classify_(buf, &m_);
      valid_ = k == 64 ? ~uint64_t(0) : (uint64_t(1) << k) - 1;
      m_.up &= valid_; m_.low &= valid_; m_.dig &= valid_; m_.sp &= valid_;
      m_.crlf &= valid_; m_.slash &= valid_; m_.hi &= valid_; m_.spc &= valid_; m_.apos &= valid_; m_.hang &= valid_;
      lim_ = ~size_t(0);  // never reloaded for lack of lookahead
    }
  }

  // A run ended at window offset j: the chunk ends there unless the byte there is non-ASCII (it
  // might continue the run) or outside the window.
  KGPT_ALWAYS_INLINE size_t stop_at(unsigned j) const {
    if (w_ + j == n_) return n_;
    if (j >= 64) return kRetry;
    if (bit(m_.hi, j)) return 0;
    return w_ + j;
  }

  // Letters from window offset k (k < 64 and the byte at k is an ASCII letter or the caller has
  // checked it). gpt4/cl100k: [A-Za-z]+. o200k: [A-Z]*[a-z]*, then the contraction suffix.
  KGPT_ALWAYS_INLINE size_t letters(unsigned k) const {
    if constexpr (P == Pattern::O200K) {
      unsigned j = k + ones_from(m_.up, k);
      if (j < 64) j += ones_from(m_.low, j);
      const size_t e = stop_at(j);
      if (e == 0 || e == kRetry || e == n_) return e;
      if (s_[e] == '\'') return o200k_suffix(s_, n_, e);
      return e;
    } else {
      return stop_at(k + ones_from(m_.up | m_.low, k));
    }
  }

  size_t try_end(size_t p) const {
    const unsigned i = unsigned(p - w_);
    const uint8_t c = s_[p];
    const uint64_t let = m_.up | m_.low;
    const uint64_t other = valid_ & ~(let | m_.dig | m_.sp | m_.hi);
    if (bit(let, i)) return letters(i);
    if (P != Pattern::O200K && c == '\'') return 0;  // a contraction may start here
    if (bit(m_.dig, i)) {  // \p{N}{1,3}
      const unsigned len = ones_from(m_.dig, i);
      if (len >= 3) return p + 3;
      return stop_at(i + len);
    }
    // [^\r\n\p{L}\p{N}]\p{L}+ : the prefix, then letters.
    if (!bit(m_.crlf, i) && p + 1 < n_) {
      if (i + 1 >= 64) return kRetry;
      if (bit(m_.hi, i + 1)) return 0;
      if (bit(let, i + 1)) return letters(i + 1);
    }
    //  ?[^\s\p{L}\p{N}]++[\r\n]*  (o200k: [\r\n/]*)
    unsigned r = i;
    if (c == ' ' && p + 1 < n_ && bit(other, i + 1)) r = i + 1;  // i + 1 < 64: see fast_end
    if (bit(other, r)) {
      unsigned j = r + ones_from(other, r);
      const size_t e = stop_at(j);
      if (e == 0 || e == kRetry || e == n_) return e;
      const uint64_t tail = P == Pattern::O200K ? (m_.crlf | m_.slash) : m_.crlf;
      j += ones_from(tail, j);
      if (w_ + j == n_) return n_;
      if (j >= 64) return kRetry;
      return w_ + j;
    }
    // Whitespace: \s*[\r\n] up to the last CR/LF of the run, else \s+(?!\S), else \s+.
    const unsigned len = ones_from(m_.sp, i);
    const size_t e = stop_at(i + len);
    if (e == 0 || e == kRetry) return e;
    if (P == Pattern::CL100K && e == n_) return n_;
    const uint64_t run = len >= 64 ? ~uint64_t(0) : (uint64_t(1) << len) - 1;
    const uint64_t cr = (m_.crlf >> i) & run;
    if (cr) return p + unsigned(63 - __builtin_clzll(cr)) + 1;
    if (e == n_) return n_;
    return len >= 2 ? e - 1 : e;
  }

  const uint8_t* s_;
  size_t n_;
  bool wtf8_;
  ClassifyFn classify_;
  size_t w_ = 0;        // window start
  size_t lim_ = 0;      // window end when the text goes on past it, else SIZE_MAX
  uint64_t valid_ = 0;  // bytes of the window inside the text
  BlockMasks m_{};
};


// gpt4 / cl100k / o200k: all the chunk starts of a 64-byte window at once. From a chunk boundary p, the
// window's bytes up to the first non-ASCII byte (or the window's end) are classified, the starts
// found with shifts and carries (rules below), and the chunks that end before the last class run of
// the window (whose end is not known yet) are handed out one by one with a trailing-zero count.
// Anything else (non-ASCII near p, the last bytes of the text, a window that is one run) takes the
// per-chunk path of ChunkCursor.
template <Pattern P>
class BlockCursor {
  static_assert(P != Pattern::GPT2, "gpt2 splits with the exact matcher (Gpt2Cursor)");
  static constexpr bool kO200k = P == Pattern::O200K;

 public:
  BlockCursor(const uint8_t* s, size_t n, bool wtf8) : s_(s), n_(n), one_(s, n, wtf8), classify_(classifier()) {}

  KGPT_ALWAYS_INLINE size_t next_end(size_t p) {
    if (!(pending_ && p == next_)) {
      if (!classify_ || p + 64 >= n_ || p < retry_at_ || !fill(p)) {
        if (classify_ && p >= retry_at_) retry_at_ = p + 16;  // no whole chunk: a few one by one
        return one_.next_end(p);
      }
    }
    const size_t e = w_ + unsigned(__builtin_ctzll(pending_));
    pending_ &= pending_ - 1;
    next_ = e;
    return e;
  }

 private:
  // Computes the starts of the window at p; false when it yields no whole chunk.
  bool fill(size_t p) {
    BlockMasks m;
    classify_(s_ + p, &m);
    // Known bytes: those before the first non-ASCII one that is not part of a Hangul syllable.
    // o200k: a Hangul syllable (Lo: in both letter classes) next to an ASCII letter is left to the
    // exact matcher (a run of Hangul alone is one word), and so is '/' right after CR/LF
    // (" ?[^\s\p{L}\p{N}]+[\r\n/]*" may take it).
    const uint64_t ascii_let = m.up | m.low;
    const uint64_t unknown =
        (m.hi & ~m.hang) |
        (kO200k ? (m.slash & (m.crlf << 1)) | (m.hang & ((ascii_let << 1) | (ascii_let >> 1))) : 0);
    const uint64_t known = unknown ? (uint64_t(1) << __builtin_ctzll(unknown)) - 1 : ~uint64_t(0);
    if (!(known & 1)) return false;
    const uint64_t L = (ascii_let | m.hang) & known, N = m.dig & known, S = m.sp & known;
    const uint64_t C = m.crlf & known, T = S & ~C, SP = m.spc & known;
    const uint64_t O = known & ~(L | N | S);
    // Runs (bit 0 follows a chunk boundary: "no class" before it).
    const uint64_t Lst = L & ~(L << 1), Nst = N & ~(N << 1), Ost = O & ~(O << 1), Sst = S & ~(S << 1);
    const uint64_t runs = Lst | Nst | Ost | Sst;
    // The last run of the known bytes goes on past them (or its end is not known): only starts
    // before it are final.
    const unsigned last = 63u - unsigned(__builtin_clzll(runs));  // runs has bit 0
    if (last == 0) return false;
    const uint64_t before = (uint64_t(1) << last) - 1;
    // Digits: \p{N}{1,3} from each run start, every third digit.
    uint64_t st = Nst;
    const uint64_t N3 = N & (N << 1) & (N << 2) & (N << 3);
    for (uint64_t t = (st << 3) & N3; t & ~st; t = (st << 3) & N3) st |= t;
    // Letters: [^\r\n\p{L}\p{N}]?+\p{L}+ takes the byte x before the run when x starts a chunk and
    // is \s but not CR/LF (the last of a whitespace run always starts one), or a lone punctuation
    // byte (not after another or after U+0020, which " ?[^\s\p{L}\p{N}]" takes along).
    const uint64_t attach = Lst & ((T << 1) | ((O << 1) & ~(O << 2) & ~(SP << 2)));
    st |= (Lst & ~attach) | (attach >> 1);
    if constexpr (!kO200k) {
      // Contractions: an apostrophe that starts a chunk before letters may be '(?i:[sdmt]|ll|ve|re).
      for (uint64_t a = (attach >> 1) & m.apos & before; a; a &= a - 1) {
        const size_t x = p + unsigned(__builtin_ctzll(a));
        if (const size_t e = contraction_gpt4(s_, n_, x)) {
          if (e - p < 64) st |= uint64_t(1) << (e - p);
        }
      }
    } else {
      // [A-Z]*[a-z]+ | [A-Z]+[a-z]* : a letter run splits before each upper-case letter that
      // follows a lower-case one.
      st |= m.up & (m.low << 1) & L;
    }
    // Punctuation runs: a start unless U+0020 is just before them.
    st |= Ost & ~(SP << 1);
    // Whitespace runs: the run start unless it is CR/LF after punctuation (" ?[^\s..]++[\r\n]*"
    // took those CR/LFs: then the first byte after them); after the last CR/LF of the run
    // (\s*[\r\n]); the run's last byte unless CR/LF (\s+(?!\S) stops one short).
    st |= Sst & (T | ~(O << 1));
    st |= (C + (C & (O << 1))) & ~C & T;
    st |= T & ~(S >> 1);
    for (uint64_t a = T & (C << 1) & ~(T << 1) & before; a; a &= a - 1) {
      const unsigned i = unsigned(__builtin_ctzll(a));
      const unsigned j = i + ones_from(T, i);
      if (j < 64 && !bit(C, j)) st |= uint64_t(1) << i;
    }
    if constexpr (kO200k) {
      // (?i:'s|'t|'re|'ve|'m|'ll|'d)? after the letters: an apostrophe right after a letter run
      // that starts one of those joins the word; the next chunk starts after it. (Not right after
      // such a suffix: its letters are no word, so "x'll're" is "x'll", "'re".)
      unsigned after = 0;
      for (uint64_t a = m.apos & (L << 1) & before; a; a &= a - 1) {
        const unsigned i = unsigned(__builtin_ctzll(a));
        if (i == after) continue;
        if (const size_t e = contraction_gpt4(s_, n_, p + i)) {
          const unsigned j = unsigned(e - p);  // i + 2 or i + 3
          st &= ~(((uint64_t(1) << (j - i)) - 1) << i);
          if (j < 64) st |= uint64_t(1) << j;
          after = j;
        }
      }
    }
    st &= before;
    // Hand out the chunks between the starts: the first is at p (bit 0), the last only begins one.
    const uint64_t ends = st & ~uint64_t(1);
    if (!ends) return false;
    w_ = p;
    pending_ = ends;
    next_ = p;
    return true;
  }

  const uint8_t* s_;
  size_t n_;
  ChunkCursor<P> one_;
  ClassifyFn classify_;
  size_t w_ = 0, next_ = 0, retry_at_ = 0;
  uint64_t pending_ = 0;
};

// gpt2: the exact matcher (its per-chunk mask path measured slower).
class Gpt2Cursor {
 public:
  Gpt2Cursor(const uint8_t* s, size_t n, bool wtf8) : s_(s), n_(n), wtf8_(wtf8) {}
  KGPT_ALWAYS_INLINE size_t next_end(size_t p) {
    return wtf8_ ? gpt2_end(s_, n_, p, true) : gpt2_end(s_, n_, p, false);
  }

 private:
  const uint8_t* s_;
  size_t n_;
  bool wtf8_;
};

// The fastest cursor for a pattern.
template <Pattern P>
using CursorFor = std::conditional_t<
    P == Pattern::GPT4 || P == Pattern::CL100K, BlockCursor<P>,
    std::conditional_t<P == Pattern::O200K, BlockCursor<P>, Gpt2Cursor>>;

// Calls f(begin, end) for each chunk that starts in [begin, end) (begin a chunk boundary), in order.
template <Pattern P, class F>
void for_each_chunk_as(const uint8_t* s, size_t n, size_t begin, size_t end, bool wtf8, F& f) {
  CursorFor<P> cur(s, n, wtf8);
  for (size_t p = begin; p < end;) {
    const size_t e = cur.next_end(p);
    f(p, e);
    p = e;
  }
}
template <class F>
void for_each_chunk(const uint8_t* s, size_t n, size_t begin, size_t end, Pattern pattern, bool wtf8, F&& f) {
  switch (pattern) {
    case Pattern::GPT4: for_each_chunk_as<Pattern::GPT4>(s, n, begin, end, wtf8, f); return;
    case Pattern::GPT2: for_each_chunk_as<Pattern::GPT2>(s, n, begin, end, wtf8, f); return;
    case Pattern::O200K: for_each_chunk_as<Pattern::O200K>(s, n, begin, end, wtf8, f); return;
    case Pattern::CL100K: for_each_chunk_as<Pattern::CL100K>(s, n, begin, end, wtf8, f); return;
  }
}

}}}  // namespace kgpt::tok::detail
