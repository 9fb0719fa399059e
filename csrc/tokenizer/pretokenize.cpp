// Hand-written matcher for the "gpt4", "cl100k", "gpt2" and "o200k" split patterns (see pretokenize.h). Each pattern
// is tried alternative by alternative at the chunk start, as a backtracking regex engine would, but
// every alternative is reduced to a few class runs over the code points. ASCII bytes are classified
// by a 128-entry table; other code points are decoded (strict UTF-8) and looked up in
// unicode_tables.h. Writes nothing but the caller's span vector.
#include "tokenizer/pretokenize.h"

#include <stdexcept>
#include <string>

#include "tokenizer/pretokenize_inline.h"
#include "tokenizer/pretokenize_simd.h"

namespace kgpt { namespace tok {
using namespace detail;
namespace {

template <bool kWtf8>
void split_range(std::string_view text, size_t begin, size_t end, Pattern pattern,
                 std::vector<std::pair<uint32_t, uint32_t>>& spans) {
  if (text.size() >= (size_t(1) << 32))
    throw std::invalid_argument("pretokenize: text must be shorter than 2^32 bytes, got " +
                                std::to_string(text.size()));
  if (begin > end || end > text.size())
    throw std::invalid_argument("pretokenize: need begin <= end <= text size " +
                                std::to_string(text.size()) + ", got begin " + std::to_string(begin) +
                                ", end " + std::to_string(end));
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  for_each_chunk(s, n, begin, end, pattern, kWtf8,
                 [&](size_t p, size_t e) { spans.emplace_back(uint32_t(p), uint32_t(e)); });
}

}  // namespace

bool parse_pattern(std::string_view name, Pattern* out) {
  if (name == "gpt4") { *out = Pattern::GPT4; return true; }
  if (name == "gpt2" || name == "r50k" || name == "p50k") { *out = Pattern::GPT2; return true; }
  if (name == "o200k") { *out = Pattern::O200K; return true; }
  if (name == "cl100k") { *out = Pattern::CL100K; return true; }
  return false;
}

size_t chunk_end(std::string_view text, size_t pos, Pattern pattern) {
  if (pos >= text.size()) return text.size();  // outside the contract; never read past the end
  return end_at(reinterpret_cast<const uint8_t*>(text.data()), text.size(), pos, pattern, false);
}

size_t next_safe_boundary(std::string_view text, size_t pos) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  if (pos == 0 || pos >= n) return pos >= n ? n : 0;
  for (size_t i = pos; i < n; ++i) {
    const uint8_t prev = s[i - 1];
    if ((prev == '\n' || prev == '\r') && s[i] != '/' && decode(s, i, n, false).cls != S) return i;
  }
  return n;
}

void pretokenize(std::string_view text, Pattern pattern,
                 std::vector<std::pair<uint32_t, uint32_t>>& spans) {
  split_range<false>(text, 0, text.size(), pattern, spans);
}

void pretokenize_range(std::string_view text, size_t begin, size_t end, Pattern pattern,
                       std::vector<std::pair<uint32_t, uint32_t>>& spans) {
  split_range<false>(text, begin, end, pattern, spans);
}

void pretokenize_wtf8(std::string_view text, Pattern pattern,
                      std::vector<std::pair<uint32_t, uint32_t>>& spans) {
  split_range<true>(text, 0, text.size(), pattern, spans);
}

}}  // namespace kgpt::tok
