// str -> UTF-8 for the encoder: the code units of a CPython str (1, 2 or 4 bytes each: Latin-1,
// UCS-2, UCS-4) written as UTF-8. Two implementations with the same output: a portable one (ASCII
// runs 16 units at a time, other code points without branches on their length) and, where the CPU
// has AVX-512 VBMI2, 16 code points at a time (each one's 1-4 bytes built in its 32-bit lane, then
// the lanes' used bytes packed together with one byte compress). Chosen at run time; a test hook
// forces either.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kgpt::tok {

// Writes the UTF-8 of s[0..n) (code units of `unit_bytes` = 1, 2 or 4 bytes) at o and returns its
// length. o must have room for the UTF-8 and 3 more bytes (at most n * {2, 3, 4} + 3: Latin-1
// needs 2 bytes a unit, UCS-2 3, UCS-4 4). *ok = false (and 0 returned) when s holds a surrogate
// code point (U+D800..U+DFFF), which UTF-8 cannot carry; o's contents are then unspecified.
size_t utf8_from_units(const void* s, size_t n, int unit_bytes, unsigned char* o, bool* ok);

// The room utf8_from_units needs for n code units of unit_bytes each (the UTF-8 and 3 bytes).
inline size_t utf8_room(size_t n, int unit_bytes) {
  return n * size_t(unit_bytes == 1 ? 2 : unit_bytes == 2 ? 3 : 4) + 3;
}

// Test hook (process-wide): "auto", "avx512" (false if the CPU lacks AVX-512 VBMI2) or "scalar".
bool set_utf8_isa(const char* name);
const char* utf8_isa();  // "avx512" or "scalar"

}  // namespace kgpt::tok
