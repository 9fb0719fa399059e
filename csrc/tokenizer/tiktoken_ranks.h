// A tiktoken ranks file ("<base64 bytes> <rank>" per line) turned into BPE merges, the fast path
// of Tokenizer.from_tiktoken. Python keeps the reference rules (tokenizer.py) and every error
// message: this reader only accepts files it reads exactly as the Python path does and says "no"
// (returns false) for anything else, duplicates and unsplittable tokens included; the caller then
// runs the Python path, which either gives the same result or raises its message.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace kgpt::tok {

struct RanksMerges {
  int64_t byte_rank[256];                         // rank of each single-byte token
  std::vector<int64_t> ranks;                     // multi-byte tokens' ranks, ascending
  std::vector<std::pair<int32_t, int32_t>> merges;  // merge i makes internal id 256 + i (ranks[i])
};

// The merges of a ranks file's text (already decompressed). A token of several bytes is two
// lower-ranked tokens joined: with one such split, that split; with several, the two parts BPE
// with the lower ranks leaves of its bytes, if it leaves two, else the shortest first part.
bool tiktoken_ranks_to_merges(std::string_view text, RanksMerges* out);

}  // namespace kgpt::tok
