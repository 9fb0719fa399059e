// Pre-tokenizer: splits text into chunks exactly as the "gpt4", "gpt2", "cl100k" and "o200k" regex patterns
// do under Python's `regex` package (the patterns, to the character, are kernelgpt._bpe_reference.PATTERNS),
// with a hand-written matcher and Unicode category tables generated from the pinned Unicode data
// (scripts/gen_unicode_tables.py). Input is UTF-8. Invalid UTF-8 bytes are each treated as one code
// point of category "other" (neither letter, number nor whitespace), so every byte lands in exactly
// one chunk. Outputs are appended (+=) to the caller's vector; nothing else is written, no state kept.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace kgpt { namespace tok {

// GPT4: minbpe's cl100k pattern. CL100K: tiktoken's current cl100k_base pattern, which is GPT4 plus
// \s++$ before \s*[\r\n] (a whitespace run that ends the text is one chunk: "a\n  " splits as
// "a", "\n  " where GPT4 gives "a", "\n", "  "). GPT2: GPT-2's pattern (tiktoken's r50k/p50k string
// is written differently but splits the same). O200K: tiktoken's o200k_base pattern.
enum class Pattern { GPT4 = 0, GPT2 = 1, O200K = 2, CL100K = 3 };

// "gpt4" -> GPT4, "gpt2" / "r50k" / "p50k" -> GPT2, "o200k" -> O200K, "cl100k" -> CL100K; returns
// false (and leaves *out alone) for any other name.
bool parse_pattern(std::string_view name, Pattern* out);

// Appends [begin, end) byte offsets of each chunk of `text`, in order; the chunks tile the text.
// Throws std::invalid_argument if text.size() >= 2^32 (offsets are uint32).
void pretokenize(std::string_view text, Pattern pattern,
                 std::vector<std::pair<uint32_t, uint32_t>>& spans);

// Streaming form, no allocation: the byte offset where the chunk that starts at `pos` ends
// (pos < text.size(); returns a value in (pos, text.size()]). A chunk depends only on the text from
// its start onwards (the patterns only look ahead), so
//     for (size_t pos = 0, end; pos < text.size(); pos = end) {
//       end = chunk_end(text, pos, pattern);  /* chunk is text.substr(pos, end - pos) */ }
// visits exactly the chunks `pretokenize` returns. No size limit. (pos >= text.size() returns
// text.size().)
size_t chunk_end(std::string_view text, size_t pos, Pattern pattern);

// Splitting one large text on several threads: cut it at safe boundaries and split each piece
// [begin, end) with pretokenize_range over the WHOLE text (a piece's last chunk may depend on what
// follows the cut: "gpt2" splits "\n\n" as one chunk at the end of a text but as two before "x").
// next_safe_boundary returns the smallest i in [pos, text.size()] that is a chunk boundary whatever
// the text before pos is: i == 0, i == text.size(), or text[i-1] is '\n' or '\r' and the code point
// at i is neither whitespace nor '/' (no chunk of any pattern holds a CR/LF followed by such a
// code point; "o200k" chunks may end in [\r\n/]*).
size_t next_safe_boundary(std::string_view text, size_t pos);

// Appends the chunks of `text` that start in [begin, end), in order. `begin` must be a chunk
// boundary (0 or a next_safe_boundary result); if `end` is one too, the chunks tile [begin, end)
// and are exactly pretokenize(text)'s chunks there. Offsets are from the start of `text`.
// Throws std::invalid_argument unless begin <= end <= text.size() < 2^32.
void pretokenize_range(std::string_view text, size_t begin, size_t end, Pattern pattern,
                       std::vector<std::pair<uint32_t, uint32_t>>& spans);

// Same as pretokenize, but `text` may also hold lone surrogates U+D800..U+DFFF encoded as three
// bytes (ED A0..BF 80..BF, what Python's "surrogatepass" writes for a str holding them): each is one
// "other" code point, as `regex` sees it in a str. Used by the binding for such str input only.
void pretokenize_wtf8(std::string_view text, Pattern pattern,
                      std::vector<std::pair<uint32_t, uint32_t>>& spans);

}}  // namespace kgpt::tok
