// The block classifiers of pretokenize_simd.h: AVX2 and AVX-512BW, each compiled for its ISA with a
// function target attribute and chosen at run time (no -march flags). Without either (or with
// "scalar" forced) there is no classifier and the exact matcher splits everything.
#include "tokenizer/pretokenize_simd.h"

#include <atomic>
#include <cstring>

#include "common/isa.h"

namespace kgpt { namespace tok { namespace detail {
namespace {

// The bytes of the Hangul syllables U+AC00..U+D79F (3 bytes: EA B0..BF, EB/EC 80..BF, ED 80..9D,
// then one continuation byte): letters, like ASCII ones. (U+D7A0..U+D7A3 are left to the exact
// matcher.) Bit i of each argument: byte i is EB or EC, EA, ED, B0..BF, 80..9D, 80..BF.
inline uint64_t hangul(uint64_t ebec, uint64_t ea, uint64_t ed, uint64_t geb0, uint64_t lt9e, uint64_t cont) {
  const uint64_t lead = ((ebec & (cont >> 1)) | (ea & (geb0 >> 1)) | (ed & (lt9e >> 1))) & (cont >> 2);
  return lead | (lead << 1) | (lead << 2);
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
  return nullptr;
}

std::atomic<bool> g_chosen{false};
std::atomic<ClassifyFn> g_classify{nullptr};

}  // namespace

ClassifyFn classifier() {
  if (!g_chosen.load(std::memory_order_acquire)) {
    g_classify.store(best(), std::memory_order_relaxed);
    g_chosen.store(true, std::memory_order_release);
  }
  return g_classify.load(std::memory_order_relaxed);
}

}  // namespace detail

bool set_pretokenize_isa(const char* name) {
  using namespace detail;
  ClassifyFn f = nullptr;
  if (std::strcmp(name, "auto") == 0) f = best();
  else if (std::strcmp(name, "scalar") == 0) f = nullptr;
#if KGPT_X86
  else if (std::strcmp(name, "avx2") == 0 && has_avx2()) f = classify_avx2;
  else if (std::strcmp(name, "avx512") == 0 && has_avx512bw()) f = classify_avx512;
#endif
  else return false;
  g_classify.store(f, std::memory_order_relaxed);
  g_chosen.store(true, std::memory_order_release);
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
