// Byte-level BPE trainer. Texts are pre-split (pretokenize.h) on several threads and the chunks
// counted (64-bit) piece by piece, so a corpus never has to be in memory at once; train() then runs
// the merge loop over the unique chunks with incrementally updated pair counts, the words each pair
// occurs in, and a max-heap with lazy invalidation. Tie-break (shared with _bpe_reference.py):
// highest count, then smallest (left_id, right_id); merge i creates token 256 + i.
// Leaves out special tokens (tokenizer.py gives them the ids after the merges).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/flat_hash.h"
#include "tokenizer/pretokenize.h"

namespace kgpt { namespace tok {

using Merge = std::pair<int32_t, int32_t>;

class BpeTrainer {
 public:
  explicit BpeTrainer(Pattern pattern);

  // Splits each document on its own (a chunk never spans two documents) and adds the counts of
  // its chunks (+=). Large documents are cut at safe boundaries so threads share them.
  // num_threads <= 0: OpenMP's default.
  void add_documents(const std::vector<std::string_view>& docs, int num_threads);

  // Streams a UTF-8 file in blocks of block_bytes (0: 16 MiB), as one document: the counts equal
  // add_documents({whole file}) for any block size. Throws std::runtime_error if unreadable, and
  // std::invalid_argument naming the byte offset if it is not well-formed UTF-8 (Python's strict
  // codec: what the Python backend and `tokenizer encode` read), before or after adding a part.
  void add_file(const std::string& path, int num_threads, size_t block_bytes = 0);

  // Learns up to num_merges merges (fewer when no pair is left). Consumes the chunk counts.
  std::vector<Merge> train(size_t num_merges);

  size_t num_unique_chunks() const;
  int64_t num_chunks() const { return total_chunks_; }

 private:
  void add_ranges(const std::vector<std::string_view>& docs, const std::vector<size_t>& ends, int num_threads);
  static constexpr int kShards = 16;
  Pattern pattern_;
  std::vector<StringMap<int64_t>> shards_;  // chunk -> count, sharded by hash
  int64_t total_chunks_ = 0;
  bool trained_ = false;
};

// The largest i in (0, text.size()) that is a chunk boundary whatever follows the text (a CR/LF
// followed by a complete non-whitespace code point), or 0 when there is none.
size_t last_safe_cut(std::string_view text);

}}  // namespace kgpt::tok
