// Pre-tokenizer: splits text into chunks exactly as the "gpt4" (cl100k) or "gpt2" regex patterns
// do (see ../shared/DESIGN.md for the patterns, to the character), with a hand-written matcher and
// Unicode category tables generated from Python's unicodedata (scripts/gen_unicode_tables.py).
// Input is UTF-8. Invalid UTF-8 bytes are each treated as one code point of category "other"
// (neither letter, number nor whitespace), so every byte lands in exactly one chunk.
#pragma once
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace kgpt { namespace tok {

enum class Pattern { GPT4 = 0, GPT2 = 1 };

// Appends [begin, end) byte offsets of each chunk of `text`, in order; the chunks tile the text.
void pretokenize(std::string_view text, Pattern pattern,
                 std::vector<std::pair<uint32_t, uint32_t>>& spans);

}}  // namespace kgpt::tok
