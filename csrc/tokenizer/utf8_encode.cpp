#include "tokenizer/utf8_encode.h"

#include <atomic>
#include <cstring>

#include "common/isa.h"
#include "tokenizer/isa_switch.h"
#if KGPT_X86
#include <immintrin.h>
#endif

namespace kgpt::tok {
namespace {

template <class T>
size_t utf8_scalar(const T* __restrict s, size_t n, unsigned char* __restrict o, bool* ok) {
  unsigned char* const o0 = o;
  size_t i = 0;
  bool bad = false;
  while (i < n) {
    // ASCII runs: 4 code units checked at once; once a run is under way, 16 at once (fixed-length
    // loops the compiler turns into a few vector ORs, a compare and narrowing packs).
    while (i + 4 <= n && ((s[i] | s[i + 1] | s[i + 2] | s[i + 3]) < 0x80)) {
      o[0] = static_cast<unsigned char>(s[i]); o[1] = static_cast<unsigned char>(s[i + 1]);
      o[2] = static_cast<unsigned char>(s[i + 2]); o[3] = static_cast<unsigned char>(s[i + 3]);
      o += 4;
      i += 4;
      while (i + 16 <= n) {
        uint32_t any = 0;
        for (size_t k = 0; k < 16; ++k) any |= uint32_t(s[i + k]);
        if (any >= 0x80) break;
        for (size_t k = 0; k < 16; ++k) o[k] = static_cast<unsigned char>(s[i + k]);
        o += 16;
        i += 16;
      }
    }
    if (i >= n) break;
    // One code point, without branches on its length (text that mixes scripts would mispredict
    // them): its 1-4 bytes built in one word, stored whole (the buffer has 3 bytes of slack), the
    // pointer moved by the length. A surrogate is noted and reported at the end.
    const uint32_t c = s[i++];
    const uint32_t b2 = 0x80C0u | (c >> 6) | ((c & 0x3Fu) << 8);
    const uint32_t b3 = 0x8080E0u | (c >> 12) | (((c >> 6) & 0x3Fu) << 8) | ((c & 0x3Fu) << 16);
    const uint32_t b4 = 0x808080F0u | (c >> 18) | (((c >> 12) & 0x3Fu) << 8) | (((c >> 6) & 0x3Fu) << 16) |
                        ((c & 0x3Fu) << 24);
    // Masks, not a ?: chain (which the compiler turns back into branches).
    const uint32_t m1 = 0u - uint32_t(c >= 0x80), m2 = 0u - uint32_t(c >= 0x800), m3 = 0u - uint32_t(c >= 0x10000);
    const uint32_t w = (c & ~m1) | (b2 & m1 & ~m2) | (b3 & m2 & ~m3) | (b4 & m3);
    bad |= (c - 0xD800u) < 0x800u;
    const unsigned char bytes[4] = {static_cast<unsigned char>(w), static_cast<unsigned char>(w >> 8),
                                    static_cast<unsigned char>(w >> 16), static_cast<unsigned char>(w >> 24)};
    std::memcpy(o, bytes, 4);
    o += 1 + (m1 & 1u) + (m2 & 1u) + (m3 & 1u);
  }
  if (bad) { *ok = false; return 0; }
  *ok = true;
  return size_t(o - o0);
}

#if KGPT_X86
#define KGPT_TARGET_VBMI2 __attribute__((target("avx512f,avx512bw,avx512vbmi2,popcnt")))

template <class T>
KGPT_TARGET_VBMI2 inline __m512i load16(const T* p) {
  if constexpr (sizeof(T) == 1) return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  else if constexpr (sizeof(T) == 2) return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else return _mm512_loadu_si512(p);
}

// 16 code points a step, each lane building the same 32-bit word as utf8_scalar (its 1-4 UTF-8
// bytes, low byte first); the bytes below each lane's length are kept (a byte compare of the
// lane's byte positions 0,1,2,3 with its length) and packed by vpcompressb; a masked store writes
// exactly those bytes. The last n mod 16 units go through utf8_scalar.
template <class T>
KGPT_TARGET_VBMI2 size_t utf8_avx512(const T* __restrict s, size_t n, unsigned char* __restrict o, bool* ok) {
  unsigned char* const o0 = o;
  const __m512i c80 = _mm512_set1_epi32(0x80), c800 = _mm512_set1_epi32(0x800),
                c10000 = _mm512_set1_epi32(0x10000), c3f = _mm512_set1_epi32(0x3F),
                sur0 = _mm512_set1_epi32(0xD800), sur_n = _mm512_set1_epi32(0x800),
                one = _mm512_set1_epi32(1), pos = _mm512_set1_epi32(0x03020100),
                rep = _mm512_set1_epi32(0x01010101);
  __mmask16 bad = 0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i c = load16(s + i);
    const __mmask16 k1 = _mm512_cmpge_epu32_mask(c, c80);
    if (k1 == 0) {  // 16 ASCII characters
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm512_cvtepi32_epi8(c));
      o += 16;
      continue;
    }
    const __mmask16 k2 = _mm512_cmpge_epu32_mask(c, c800), k3 = _mm512_cmpge_epu32_mask(c, c10000);
    bad |= _mm512_cmplt_epu32_mask(_mm512_sub_epi32(c, sur0), sur_n);
    const __m512i lo = _mm512_and_si512(c, c3f);
    const __m512i mid = _mm512_and_si512(_mm512_srli_epi32(c, 6), c3f);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi32(c, 12), c3f);
    const __m512i b2 = _mm512_or_si512(_mm512_or_si512(_mm512_set1_epi32(0x80C0), _mm512_srli_epi32(c, 6)),
                                       _mm512_slli_epi32(lo, 8));
    const __m512i b3 = _mm512_or_si512(
        _mm512_or_si512(_mm512_set1_epi32(0x8080E0), _mm512_srli_epi32(c, 12)),
        _mm512_or_si512(_mm512_slli_epi32(mid, 8), _mm512_slli_epi32(lo, 16)));
    const __m512i b4 = _mm512_or_si512(
        _mm512_or_si512(_mm512_set1_epi32(int(0x808080F0u)), _mm512_srli_epi32(c, 18)),
        _mm512_or_si512(_mm512_slli_epi32(hi, 8),
                        _mm512_or_si512(_mm512_slli_epi32(mid, 16), _mm512_slli_epi32(lo, 24))));
    __m512i w = _mm512_mask_mov_epi32(c, k1, b2);
    w = _mm512_mask_mov_epi32(w, k2, b3);
    w = _mm512_mask_mov_epi32(w, k3, b4);
    __m512i len = _mm512_mask_add_epi32(one, k1, one, one);
    len = _mm512_mask_add_epi32(len, k2, len, one);
    len = _mm512_mask_add_epi32(len, k3, len, one);
    const __mmask64 keep = _mm512_cmplt_epu8_mask(pos, _mm512_mullo_epi32(len, rep));
    const __m512i packed = _mm512_maskz_compress_epi8(keep, w);
    const unsigned nb = unsigned(__builtin_popcountll(keep));  // 16..64
    _mm512_mask_storeu_epi8(o, nb >= 64 ? ~__mmask64(0) : ((__mmask64(1) << nb) - 1), packed);
    o += nb;
  }
  bool tail_ok = true;
  const size_t t = utf8_scalar(s + i, n - i, o, &tail_ok);
  if (bad || !tail_ok) { *ok = false; return 0; }
  *ok = true;
  return size_t(o - o0) + t;
}

#endif

bool has_vbmi2() {
#if KGPT_X86
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vbmi2");
#else
  return false;
#endif
}
IsaSwitch g_isa("avx512", has_vbmi2);

}  // namespace

size_t utf8_from_units(const void* s, size_t n, int unit_bytes, unsigned char* o, bool* ok) {
#if KGPT_X86
  if (g_isa.simd()) {
    if (unit_bytes == 1) return utf8_avx512(static_cast<const uint8_t*>(s), n, o, ok);
    if (unit_bytes == 2) return utf8_avx512(static_cast<const uint16_t*>(s), n, o, ok);
    return utf8_avx512(static_cast<const uint32_t*>(s), n, o, ok);
  }
#endif
  if (unit_bytes == 1) return utf8_scalar(static_cast<const uint8_t*>(s), n, o, ok);
  if (unit_bytes == 2) return utf8_scalar(static_cast<const uint16_t*>(s), n, o, ok);
  return utf8_scalar(static_cast<const uint32_t*>(s), n, o, ok);
}

bool set_utf8_isa(const char* name) { return g_isa.set(name); }

const char* utf8_isa() { return g_isa.name(); }

}  // namespace kgpt::tok
