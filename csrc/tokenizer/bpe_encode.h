// Byte-level BPE encoder and decoder over a fixed list of merges (+ special tokens after them).
// Per chunk: whole-chunk lookup in the vocabulary first (the lowest id spelling those bytes), then
// lowest-rank-first merging, leftmost among equals (a scan for short chunks, a heap over a linked
// list for long ones, so no input is quadratic). Immutable after construction: encode/decode are
// const and safe to call from many threads at once. Outputs are appended (+=) to caller's vectors.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/flat_hash.h"
#include "tokenizer/pretokenize.h"

namespace kgpt { namespace tok {

class BpeEncoder {
 public:
  // merges[i] = (left, right) creates id 256 + i; specials get ids 256 + merges.size() + k.
  // Throws std::invalid_argument if a merge refers to an id not yet created or a special is empty.
  BpeEncoder(const std::vector<std::pair<int32_t, int32_t>>& merges,
             const std::vector<std::string>& specials, Pattern pattern);

  // Encodes `text`; the special tokens whose index is in `allowed` are recognised (leftmost
  // first, the longest at one position), everything else is ordinary text.
  void encode(std::string_view text, const std::vector<int>& allowed, std::vector<int32_t>& out) const;
  // Ordinary text only.
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;

  // Appends the bytes of ids[0..n). Throws std::invalid_argument naming the first id out of range.
  // Reads each id once, so ids may change meanwhile (another thread's array) without harm.
  void decode(const int64_t* ids, size_t n, std::string& out) const;
  void decode(const int32_t* ids, size_t n, std::string& out) const;

  size_t vocab_size() const { return offs_.size() - 1; }
  std::string_view token(size_t id) const { return std::string_view(bytes_.data() + offs_[id], offs_[id + 1] - offs_[id]); }

 private:
  struct Cache;
  void encode_chunk(std::string_view chunk, std::vector<int32_t>& out, Cache* cache) const;
  void merge_short(const unsigned char* p, size_t n, std::vector<int32_t>& out) const;
  void merge_long(const unsigned char* p, size_t n, std::vector<int32_t>& out) const;
  int32_t rank(int32_t a, int32_t b) const {
    const uint32_t* r = ranks_.find((uint64_t(uint32_t(a)) << 32) | uint32_t(b));
    return r ? int32_t(*r) : -1;
  }

  Pattern pattern_;
  size_t n_merges_;
  PairMap ranks_;                // (left, right) -> merged id
  StringMap<int32_t> whole_;     // token bytes -> lowest id (ordinary tokens only)
  std::string bytes_;            // decode table: id -> bytes_[offs_[id] .. offs_[id+1])
  std::vector<size_t> offs_;
  std::vector<std::string> specials_;
};

}}  // namespace kgpt::tok
