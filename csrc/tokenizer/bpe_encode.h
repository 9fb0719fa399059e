// Byte-level BPE encoder and decoder over a fixed list of merges (+ special tokens after them).
// Per chunk: whole-chunk lookup in the vocabulary first (the lowest id spelling those bytes), then
// lowest-rank-first merging, leftmost among equals (a scan for short chunks; for long ones a linked
// list with the pending pairs bucketed by rank, so no input is quadratic). Immutable after
// construction but for a pool of chunk caches behind a mutex: encode/decode are const and safe to
// call from many threads at once. Outputs are appended (+=) to caller's vectors.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/encode_tables.h"
#include "tokenizer/pretokenize.h"

namespace kgpt { namespace tok {

// The merging of a batch of short-chunk cache misses (BpeEncoder::resolve_misses): "avx512" (each
// chunk's ids and pair ranks in one 16-lane vector) or "scalar"; "auto" picks the best this CPU
// has. Process-wide; a test hook (both give the same ids). false (nothing changed) for an unknown
// name or one this CPU lacks.
bool set_bpe_merge_isa(const char* name);
const char* bpe_merge_isa();

class BpeEncoder {
 public:
  // merges[i] = (left, right) creates internal id 256 + i; specials get internal ids
  // 256 + merges.size() + k. `ids` (empty: the identity) gives the id the caller sees for each
  // internal id (a vocabulary laid out otherwise: tiktoken ranks, Hugging Face ids): encode returns
  // ids[internal], decode and token take those ids. Two internal ids may share an id only if they
  // spell the same bytes (not specials); ids the map leaves out are holes (decode rejects them).
  // whole_lookup == false skips the whole-chunk vocabulary lookup (pure merging, as Hugging Face's
  // BPE without ignore_merges). Throws std::invalid_argument if a merge refers to an id not yet
  // created, a special is empty or
  // `ids` is inconsistent.
  BpeEncoder(const std::vector<std::pair<int32_t, int32_t>>& merges,
             const std::vector<std::string>& specials, Pattern pattern,
             const std::vector<int32_t>& ids = {}, bool whole_lookup = true);

  // Encodes `text`; the special tokens whose index is in `allowed` are recognised (leftmost
  // first, the longest at one position), everything else is ordinary text.
  void encode(std::string_view text, const std::vector<int>& allowed, std::vector<int32_t>& out) const;
  // Ordinary text only.
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;
  // encode() of each text into out[i] (out.size() must equal texts.size()) on up to `threads`
  // threads (parallel_for: items handed out one at a time); each thread borrows one set of caches
  // for the whole batch. Exceptions (std::bad_alloc) are rethrown here after every thread joined.
  void encode_batch(const std::vector<std::string_view>& texts, const std::vector<int>& allowed,
                    int threads, std::vector<std::vector<int32_t>>& out) const;

  // Appends the bytes of ids[0..n). Throws std::invalid_argument naming the first id out of range.
  // Reads each id once, so ids may change meanwhile (another thread's array) without harm.
  void decode(const int64_t* ids, size_t n, std::string& out) const;
  void decode(const int32_t* ids, size_t n, std::string& out) const;

  // One more than the largest id (with `ids`, ids below it may be holes: see valid_id).
  size_t vocab_size() const { return ext_.empty() ? offs_.size() - 1 : int_.size(); }
  bool valid_id(int64_t id) const {
    return id >= 0 && size_t(id) < vocab_size() && (ext_.empty() || int_[size_t(id)] >= 0);
  }
  // The bytes of a valid id.
  std::string_view token(size_t id) const { return itoken(ext_.empty() ? id : size_t(int_[id])); }

 private:
  std::string_view itoken(size_t i) const { return std::string_view(bytes_.data() + offs_[i], offs_[i + 1] - offs_[i]); }
  int32_t ext(int32_t internal) const { return ext_.empty() ? internal : ext_[size_t(internal)]; }
  // The caches lent to one call (or one batch thread) at a time: chunks of <= 16 bytes in `piece`,
  // longer ones (<= ChunkCache::kMaxLen) in `chunk`.
  struct Caches {
    WordCache word;
    PieceCache piece;
    ChunkCache chunk;
  };
  void encode_internal(std::string_view text, const std::vector<int>& allowed, std::vector<int32_t>& out) const;
  void encode_with(std::string_view text, const std::vector<int>& allowed, std::vector<int32_t>& out,
                   Caches& caches) const;
  void ordinary_internal(std::string_view text, std::vector<int32_t>& out, Caches& caches) const;
  template <Pattern P, bool kNoZero>
  void ordinary_loop(std::string_view text, std::vector<int32_t>& out, Caches& caches) const;
  template <class T> void decode_impl(const T* ids, size_t n, std::string& out) const;
  // Appends the ids (external) of text[pos, end); the caller's text extends to text_end.
  void encode_chunk(const char* p, size_t n, const char* text_end, std::vector<int32_t>& out, Caches& caches) const;
  // A chunk of 2..PieceCache::kMaxLen bytes that PieceCache does not hold (its key k0, k1 and hash
  // h): whole-token lookup or merging, appended to out, then cached.
  void short_miss(const char* p, size_t n, uint64_t k0, uint64_t k1, uint64_t h, std::vector<int32_t>& out,
                  Caches& caches) const;
  void merge_short(const unsigned char* p, size_t n, std::vector<int32_t>& out) const;
 public:
  // A chunk of 1..PieceCache::kMaxLen bytes that the loop's cache probe missed: resolved later, in
  // a batch (resolve_misses), its ids spliced in at sink index `at`.
  struct Miss { size_t pos; uint32_t len, at; uint64_t k0, k1, h; };
  static constexpr size_t kMissBatch = 32;
 private:
  // Resolves misses m[0..k) of the text at base: their ids go to res (room for the sum of their
  // lengths), cnt[j] = how many are miss j's. The same results as a lookup then short_miss (the
  // same caches are filled), but each step runs over the whole batch: the table probes of
  // different chunks (whole-token lookups, the rank lookups of each merge step) overlap in memory.
  void resolve_misses(const char* base, const Miss* m, size_t k, int32_t* res, uint32_t* cnt, Caches& caches) const;
  void merge_long(const unsigned char* p, size_t n, std::vector<int32_t>& out) const;
  template <class Sink>
  void long_chunk(const char* p, size_t n, const char* text_end, Sink& sink, std::vector<int32_t>& out,
                  std::vector<int32_t>& tmp, Caches& caches) const;
  int32_t rank(int32_t a, int32_t b) const { return ranks_.find(a, b); }
  void init_ids(const std::vector<int32_t>& ids, size_t total, size_t n_merges);
  std::unique_ptr<Caches> take_cache() const;
  void give_cache(std::unique_ptr<Caches> c) const;

  Pattern pattern_;
  size_t n_merges_;
  RankTable ranks_;              // (left, right) -> merged (internal) id
  TokenTable whole_;             // token bytes -> id (external) of the lowest internal id (ordinary tokens only)
  std::string bytes_;            // decode table: id -> bytes_[offs_[id] .. offs_[id+1])
  std::vector<size_t> offs_;
  std::vector<std::string> specials_;
  std::vector<int32_t> ext_;  // internal id -> id (empty: identity)
  std::vector<int32_t> int_;  // id -> internal id, -1 for a hole (empty: identity)
  bool whole_lookup_ = true;
  std::vector<int32_t> byte_rank_;  // [a << 8 | b]: rank(a, b) of two bytes (every merge's first step)
  // Idle caches (one set is lent to each call, or to each thread of a batch, for its duration: a
  // lookup never takes a lock and no two threads share a cache; the mutex is only taken to borrow
  // and to give back). As many sets as calls have run at once.
  mutable std::mutex caches_mu_;
  mutable std::vector<std::unique_ptr<Caches>> caches_;
};

}}  // namespace kgpt::tok
