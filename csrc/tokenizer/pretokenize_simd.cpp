// The block classifiers of pretokenize_simd.h: portable, AVX2 and AVX-512BW, each compiled for its
// ISA with a function target attribute and chosen at run time (no -march flags).
#include "tokenizer/pretokenize_simd.h"

#include <atomic>
#include <cstring>

#include "common/isa.h"

namespace kgpt { namespace tok { namespace detail {
namespace {

enum : uint16_t { kUp = 1, kLow = 2, kDig = 4, kSp = 8, kCrlf = 16, kSlash = 32, kHi = 64, kSpc = 128, kApos = 256 };

struct ByteClasses {
  uint16_t c[256];
  constexpr ByteClasses() : c() {
    for (int b = 0; b < 256; ++b) {
      uint16_t v = 0;
      if (b >= 'A' && b <= 'Z') v |= kUp;
      if (b >= 'a' && b <= 'z') v |= kLow;
      if (b >= '0' && b <= '9') v |= kDig;
      if ((b >= 0x09 && b <= 0x0D) || b == ' ') v |= kSp;  // as kAscii: 0x1C..0x1F are not \s
      if (b == '\r' || b == '\n') v |= kCrlf;
      if (b == '/') v |= kSlash;
      if (b >= 0x80) v |= kHi;
      if (b == ' ') v |= kSpc;
      if (b == '\'') v |= kApos;
      c[b] = v;
    }
  }
};
constexpr ByteClasses kByte;

// The bytes of the Hangul syllables U+AC00..U+D79F (3 bytes: EA B0..BF, EB/EC 80..BF, ED 80..9D,
// then one continuation byte): letters, like ASCII ones. (U+D7A0..U+D7A3 are left to the exact
// matcher.) Bit i of each argument: byte i is EB or EC, EA, ED, B0..BF, 80..9D, 80..BF.
inline uint64_t hangul(uint64_t ebec, uint64_t ea, uint64_t ed, uint64_t geb0, uint64_t lt9e, uint64_t cont) {
  const uint64_t lead = ((ebec & (cont >> 1)) | (ea & (geb0 >> 1)) | (ed & (lt9e >> 1))) & (cont >> 2);
  return lead | (lead << 1) | (lead << 2);
}

void classify_scalar(const uint8_t* s, BlockMasks* m) {
  uint64_t up = 0, low = 0, dig = 0, sp = 0, crlf = 0, slash = 0, hi = 0, spc = 0, apos = 0;
  for (unsigned i = 0; i < 64; ++i) {
    const uint64_t v = kByte.c[s[i]];
    up |= (v & 1u) << i;
    low |= ((v >> 1) & 1u) << i;
    dig |= ((v >> 2) & 1u) << i;
    sp |= ((v >> 3) & 1u) << i;
    crlf |= ((v >> 4) & 1u) << i;
    slash |= ((v >> 5) & 1u) << i;
    hi |= ((v >> 6) & 1u) << i;
    spc |= ((v >> 7) & 1u) << i;
    apos |= ((v >> 8) & 1u) << i;
  }
  uint64_t ebec = 0, ea = 0, ed = 0, geb0 = 0, lt9e = 0, cont = 0;
  for (unsigned i = 0; i < 64; ++i) {
    const uint8_t b = s[i];
    ebec |= uint64_t(b == 0xEB || b == 0xEC) << i;
    ea |= uint64_t(b == 0xEA) << i;
    ed |= uint64_t(b == 0xED) << i;
    geb0 |= uint64_t(b >= 0xB0 && b <= 0xBF) << i;
    lt9e |= uint64_t(b >= 0x80 && b < 0x9E) << i;
    cont |= uint64_t(b >= 0x80 && b <= 0xBF) << i;
  }
  *m = BlockMasks{up, low, dig, sp, crlf, slash, hi, spc, apos, hangul(ebec, ea, ed, geb0, lt9e, cont)};
}

#if KGPT_X86
// x in [lo, lo + len) for unsigned bytes: min(x - lo, len - 1) == x - lo.
KGPT_TARGET_AVX2 inline uint32_t range32(__m256i v, uint8_t lo, uint8_t len) {
  const __m256i t = _mm256_sub_epi8(v, _mm256_set1_epi8(static_cast<char>(lo)));
  const __m256i in = _mm256_cmpeq_epi8(_mm256_min_epu8(t, _mm256_set1_epi8(static_cast<char>(len - 1))), t);
  return static_cast<uint32_t>(_mm256_movemask_epi8(in));
}
KGPT_TARGET_AVX2 inline uint32_t eq32(__m256i v, uint8_t b) {
  return static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(static_cast<char>(b)))));
}

KGPT_TARGET_AVX2 void classify_avx2(const uint8_t* s, BlockMasks* m) {
  uint64_t r[15];
  for (int h = 0; h < 2; ++h) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 32 * h));
    const uint32_t spc = eq32(v, ' ');
    const uint64_t x[15] = {range32(v, 'A', 26), range32(v, 'a', 26), range32(v, '0', 10),
                           range32(v, 0x09, 5) | spc, eq32(v, '\r') | eq32(v, '\n'),
                           eq32(v, '/'), static_cast<uint32_t>(_mm256_movemask_epi8(v)), spc,
                           eq32(v, '\''), range32(v, 0xEB, 2), eq32(v, 0xEA), eq32(v, 0xED),
                           range32(v, 0xB0, 16), range32(v, 0x80, 0x1E), range32(v, 0x80, 64)};
    for (int k = 0; k < 15; ++k) r[k] = h ? (r[k] | (x[k] << 32)) : x[k];
  }
  *m = BlockMasks{r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                  hangul(r[9], r[10], r[11], r[12], r[13], r[14])};
}

#define KGPT_TARGET_AVX512BW __attribute__((target("avx512f,avx512bw,avx2")))
KGPT_TARGET_AVX512BW void classify_avx512(const uint8_t* s, BlockMasks* m) {
  const __m512i v = _mm512_loadu_si512(s);
  auto range = [&](uint8_t lo, uint8_t len) KGPT_TARGET_AVX512BW {
    return static_cast<uint64_t>(_mm512_cmplt_epu8_mask(
        _mm512_sub_epi8(v, _mm512_set1_epi8(static_cast<char>(lo))), _mm512_set1_epi8(static_cast<char>(len))));
  };
  auto eq = [&](uint8_t b) KGPT_TARGET_AVX512BW {
    return static_cast<uint64_t>(_mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(static_cast<char>(b))));
  };
  const uint64_t spc = eq(' ');
  *m = BlockMasks{range('A', 26), range('a', 26), range('0', 10), range(0x09, 5) | spc,
                  eq('\r') | eq('\n'), eq('/'), static_cast<uint64_t>(_mm512_movepi8_mask(v)), spc,
                  eq('\''), hangul(range(0xEB, 2), eq(0xEA), eq(0xED), range(0xB0, 16), range(0x80, 0x1E), range(0x80, 64))};
}

bool has_avx2() { return __builtin_cpu_supports("avx2"); }
bool has_avx512bw() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && has_avx2();
}
#endif

ClassifyFn best() {
#if KGPT_X86
  if (has_avx512bw()) return classify_avx512;
  if (has_avx2()) return classify_avx2;
#endif
  return classify_scalar;
}

std::atomic<ClassifyFn> g_classify{nullptr};

}  // namespace

ClassifyFn classifier() {
  ClassifyFn f = g_classify.load(std::memory_order_relaxed);
  if (!f) {
    f = best();
    g_classify.store(f, std::memory_order_relaxed);
  }
  return f;
}

}  // namespace detail

bool set_pretokenize_isa(const char* name) {
  using namespace detail;
  ClassifyFn f = nullptr;
  if (std::strcmp(name, "auto") == 0) f = best();
  else if (std::strcmp(name, "scalar") == 0) f = classify_scalar;
#if KGPT_X86
  else if (std::strcmp(name, "avx2") == 0 && has_avx2()) f = classify_avx2;
  else if (std::strcmp(name, "avx512") == 0 && has_avx512bw()) f = classify_avx512;
#endif
  if (!f) return false;
  g_classify.store(f, std::memory_order_relaxed);
  return true;
}

const char* pretokenize_isa() {
  using namespace detail;
  const ClassifyFn f = classifier();
#if KGPT_X86
  if (f == classify_avx512) return "avx512";
  if (f == classify_avx2) return "avx2";
#endif
  (void)f;
  return "scalar";
}

}}  // namespace kgpt::tok
