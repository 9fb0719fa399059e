// BPE encoder (see bpe_encode.h). The rank of a merge is the id it creates, so "lowest rank first"
// is "oldest merge first". Short chunks: an array of current ids with the rank of each adjacent
// pair, rescanned after each merge (n^2 but n <= kShortChunk). Long chunks: a doubly linked list of
// symbols plus the pending pairs bucketed by rank, with lazy invalidation. A merge only creates
// pairs of a higher rank than its own (a merge's parts are older than it), so the ranks are taken
// lowest first, each once, with all its positions in one batch: O(n) pushes, a heap operation per
// distinct rank only (a 1 MB run of one character has a handful of them).
// Chunk caches (chunks that were not whole tokens -> their ids) are kept by the encoder and lent to
// one call at a time, so a cache survives across calls (short texts in a loop or a batch reuse the
// chunks merged before) without two threads ever sharing one. A chunk's ids depend on the chunk
// alone, so reuse never changes a result.
#include "tokenizer/bpe_encode.h"

#include "tokenizer/parallel.h"
#include "tokenizer/pretokenize_inline.h"
#include "tokenizer/pretokenize_simd.h"
#include "common/isa.h"
#include "tokenizer/isa_switch.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>

#if defined(__GNUC__)
#define KGPT_LIKELY(x) __builtin_expect(!!(x), 1)
#define KGPT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define KGPT_LIKELY(x) (x)
#define KGPT_UNLIKELY(x) (x)
#endif

namespace kgpt { namespace tok {

namespace {
constexpr size_t kShortChunk = 64;

// A short chunk being merged: its current ids and the rank of each adjacent pair (kNoRank: none).
// step() merges the lowest-ranked pair (the leftmost of equals) and starts loading the rank-table
// slots of the two pairs it makes; finish() reads them. merge_short runs step, finish, step...;
// resolve_misses runs the steps of a batch of chunks in lockstep, so their loads overlap.
constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();
template <size_t Cap>
struct ShortMerge {
  int32_t ids[Cap];
  int32_t rk[Cap];  // rk[i]: rank of (ids[i], ids[i + 1])
  uint32_t n;
  int32_t need;  // after a step: the merged symbol's index << 2, | 2 for its right pair, | 1 left
  // byte_rank[a << 8 | b]: the rank of bytes a, b (or -1).
  void start(const unsigned char* u, size_t len, const int32_t* byte_rank) {
    n = uint32_t(len);
    need = 0;
    for (size_t i = 0; i < len; ++i) ids[i] = u[i];
    for (size_t i = 0; i + 1 < len; ++i) {
      const int32_t r = byte_rank[size_t(u[i]) << 8 | u[i + 1]];
      rk[i] = r < 0 ? kNoRank : r;
    }
  }
  // One merge; false (nothing changed) when no pair is left to merge.
  bool step(const RankTable& ranks) {
    if (n <= 1) return false;
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (rk[i] < rk[best]) best = i;
    if (rk[best] == kNoRank) return false;
    ids[best] = rk[best];
    for (size_t i = best + 1; i + 1 < n; ++i) { ids[i] = ids[i + 1]; rk[i] = rk[i + 1]; }
    --n;
    need = int32_t(best) << 2;
    if (best + 1 < n) { ranks.prefetch(ids[best], ids[best + 1]); need |= 2; }
    if (best > 0) { ranks.prefetch(ids[best - 1], ids[best]); need |= 1; }
    return true;
  }
  // The ranks of the pairs the last step made.
  void finish(const RankTable& ranks) {
    if (!need) return;
    const size_t b = size_t(need >> 2);
    if (need & 2) { const int32_t r = ranks.find(ids[b], ids[b + 1]); rk[b] = r < 0 ? kNoRank : r; }
    if (need & 1) { const int32_t r = ranks.find(ids[b - 1], ids[b]); rk[b - 1] = r < 0 ? kNoRank : r; }
    need = 0;
  }
};

// The merge rounds of a batch (resolve_misses): every active chunk's step, one round at a time;
// the lookups a step requests are read (finish) a round later. act[0..na) are the chunks still
// merging; a finished chunk's ids (external, through ext; nullptr: the identity) go to res at
// off[j], their number to cnt[j].
template <class SM>
KGPT_ALWAYS_INLINE void merge_rounds(SM* st, size_t* act, size_t na, const RankTable& ranks, const int32_t* ext,
                                     const uint32_t* off, int32_t* res, uint32_t* cnt) {
  while (na) {
    size_t keep = 0;
    for (size_t a = 0; a < na; ++a) {
      SM& t = st[act[a]];
      t.finish(ranks);  // the lookups requested a round ago
      if (t.step(ranks)) {
        act[keep++] = act[a];
        continue;
      }
      const size_t j = act[a];
      for (size_t i = 0; i < t.n; ++i) res[off[j] + i] = ext ? ext[t.ids[i]] : t.ids[i];
      cnt[j] = t.n;
    }
    na = keep;
  }
}

#if KGPT_X86
#define KGPT_TARGET_MERGE __attribute__((target("avx512f,avx512bw,avx512vl,avx2,bmi")))
// ShortMerge<16> with the ids and pair ranks in one 16-lane vector each: a step is a min
// reduction, a compare (the leftmost lowest rank), and two compresses that drop the merged
// symbol's right part; no loop over the chunk, no branch on where the merge happens. The same
// merges in the same order as ShortMerge (the lowest rank, leftmost of equals). Lanes past the
// last pair hold kNoRank.
struct alignas(64) ShortMerge16V {
  int32_t ids[16];
  int32_t rk[16];
  uint32_t n;
  int32_t need;
  KGPT_TARGET_MERGE void start(const unsigned char* u, size_t len, const int32_t* byte_rank) {
    n = uint32_t(len);
    need = 0;
    const __mmask16 in = __mmask16((1u << len) - 1u);  // len <= 16
    const __m512i id = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(in, u));
    const __m512i next = _mm512_alignr_epi32(_mm512_setzero_si512(), id, 1);  // lane i: ids[i + 1]
    const __mmask16 pairs = __mmask16(in >> 1);
    const __m512i r = _mm512_mask_i32gather_epi32(_mm512_set1_epi32(-1), pairs,
                                                  _mm512_or_si512(_mm512_slli_epi32(id, 8), next), byte_rank, 4);
    _mm512_store_si512(ids, id);
    _mm512_store_si512(rk, _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(r, _mm512_setzero_si512()), r,
                                                   _mm512_set1_epi32(kNoRank)));
  }
  KGPT_TARGET_MERGE bool step(const RankTable& ranks) {
    const __m512i r = _mm512_load_si512(rk);
    const int32_t mn = _mm512_reduce_min_epi32(r);
    if (mn == kNoRank) return false;
    const unsigned best = unsigned(__builtin_ctz(unsigned(_mm512_cmpeq_epi32_mask(r, _mm512_set1_epi32(mn)))));
    const __mmask16 at = __mmask16(1u << best), keep = __mmask16(~(2u << best));
    const __m512i id = _mm512_maskz_compress_epi32(keep, _mm512_mask_set1_epi32(_mm512_load_si512(ids), at, mn));
    const __m512i r2 = _mm512_mask_compress_epi32(_mm512_set1_epi32(kNoRank), keep, r);
    _mm512_store_si512(ids, id);
    _mm512_store_si512(rk, _mm512_mask_set1_epi32(r2, at, kNoRank));  // lane best: finish's
    --n;
    need = int32_t(best) << 2;
    if (best + 1 < n) { ranks.prefetch(ids[best], ids[best + 1]); need |= 2; }
    if (best > 0) { ranks.prefetch(ids[best - 1], ids[best]); need |= 1; }
    return true;
  }
  KGPT_TARGET_MERGE void finish(const RankTable& ranks) {
    if (!need) return;
    const unsigned b = unsigned(need >> 2);
    __m512i r = _mm512_load_si512(rk);
    if (need & 2) { const int32_t x = ranks.find(ids[b], ids[b + 1]); r = _mm512_mask_set1_epi32(r, __mmask16(1u << b), x < 0 ? kNoRank : x); }
    if (need & 1) { const int32_t x = ranks.find(ids[b - 1], ids[b]); r = _mm512_mask_set1_epi32(r, __mmask16(1u << (b - 1)), x < 0 ? kNoRank : x); }
    _mm512_store_si512(rk, r);
    need = 0;
  }
};

__attribute__((flatten)) KGPT_TARGET_MERGE void merge_rounds_avx512(
    ShortMerge16V* st, const char* base, const BpeEncoder::Miss* m, size_t* act, size_t na,
    const RankTable& ranks, const int32_t* byte_rank, const int32_t* ext, const uint32_t* off, int32_t* res,
    uint32_t* cnt) {
  for (size_t a = 0; a < na; ++a)
    st[act[a]].start(reinterpret_cast<const unsigned char*>(base + m[act[a]].pos), m[act[a]].len, byte_rank);
  merge_rounds(st, act, na, ranks, ext, off, res, cnt);
}
#endif

// Which merge_rounds resolve_misses runs (set_bpe_merge_isa).
bool has_merge_avx512() {
#if KGPT_X86
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}
IsaSwitch g_merge_isa("avx512", has_merge_avx512);

// The pending pairs of a long chunk, grouped by rank: a min-heap of the distinct ranks and, per rank,
// the positions pushed with it. Ranks come out lowest first, each with all its positions at once.
class RankBuckets {
 public:
  void push(int32_t r, uint32_t pos) {
    // The last two ranks pushed are remembered: a merge pushes its two new pairs, and a run
    // of the same text pushes the same ranks over and over.
    if (r == memo_r_[0]) { bucket_[memo_b_[0]].push_back(pos); return; }
    if (r == memo_r_[1]) { bucket_[memo_b_[1]].push_back(pos); return; }
    uint32_t& b = slot(r);
    if (b == kNone) {
      if (free_.empty()) { b = uint32_t(bucket_.size()); bucket_.emplace_back(); }
      else { b = free_.back(); free_.pop_back(); }
      heap_.push_back(r);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<int32_t>());
    }
    bucket_[b].push_back(pos);
    memo_r_[1] = memo_r_[0]; memo_b_[1] = memo_b_[0];
    memo_r_[0] = r; memo_b_[0] = b;
  }
  // The lowest rank left and its positions (swapped into *pos); false when none is left.
  bool pop(int32_t* r, std::vector<uint32_t>* pos) {
    if (heap_.empty()) return false;
    std::pop_heap(heap_.begin(), heap_.end(), std::greater<int32_t>());
    *r = heap_.back();
    heap_.pop_back();
    uint32_t& b = slot(*r);
    pos->clear();
    pos->swap(bucket_[b]);
    free_.push_back(b);
    b = kNone;
    for (int k = 0; k < 2; ++k) if (memo_r_[k] == *r) memo_r_[k] = -1;
    return true;
  }

 private:
  static constexpr uint32_t kNone = ~uint32_t(0);
  // The bucket of rank r (kNone if it has none), inserting r if absent. Open addressing, never shrinks.
  uint32_t& slot(int32_t r) {
    if ((used_ + 1) * 2 > keys_.size()) grow();
    size_t i = (uint32_t(r) * 0x9e3779b1u) & (keys_.size() - 1);
    while (keys_[i] != r) {
      if (keys_[i] == -1) { keys_[i] = r; vals_[i] = kNone; ++used_; break; }
      i = (i + 1) & (keys_.size() - 1);
    }
    return vals_[i];
  }
  void grow() {
    std::vector<int32_t> ok;
    std::vector<uint32_t> ov;
    ok.swap(keys_);
    ov.swap(vals_);
    const size_t c = ok.empty() ? 64 : ok.size() * 2;
    keys_.assign(c, -1);
    vals_.assign(c, kNone);
    for (size_t j = 0; j < ok.size(); ++j) {
      if (ok[j] == -1) continue;
      size_t i = (uint32_t(ok[j]) * 0x9e3779b1u) & (c - 1);
      while (keys_[i] != -1) i = (i + 1) & (c - 1);
      keys_[i] = ok[j];
      vals_[i] = ov[j];
    }
  }
  std::vector<int32_t> heap_;
  std::vector<std::vector<uint32_t>> bucket_;
  std::vector<uint32_t> free_;
  std::vector<int32_t> keys_;
  std::vector<uint32_t> vals_;
  size_t used_ = 0;
  int32_t memo_r_[2] = {-1, -1};
  uint32_t memo_b_[2] = {0, 0};
};
}  // namespace

bool set_bpe_merge_isa(const char* name) { return g_merge_isa.set(name); }
const char* bpe_merge_isa() { return g_merge_isa.name(); }

BpeEncoder::BpeEncoder(const std::vector<std::pair<int32_t, int32_t>>& merges,
                       const std::vector<std::string>& specials, Pattern pattern,
                       const std::vector<int32_t>& ids, bool whole_lookup)
    : pattern_(pattern), n_merges_(merges.size()), ranks_(merges.size() * 2 + 16),
      whole_(merges.size() + 256), specials_(specials), whole_lookup_(whole_lookup) {
  offs_.reserve(256 + merges.size() + specials.size() + 1);
  offs_.push_back(0);
  for (int b = 0; b < 256; ++b) {
    bytes_.push_back(char(b));
    offs_.push_back(bytes_.size());
  }
  for (size_t i = 0; i < merges.size(); ++i) {
    const int32_t a = merges[i].first, b = merges[i].second, id = int32_t(256 + i);
    if (a < 0 || b < 0 || a >= id || b >= id)
      throw std::invalid_argument("merge " + std::to_string(i) + " (" + std::to_string(a) + ", " +
                                  std::to_string(b) + ") refers to an id not created before id " +
                                  std::to_string(id));
    if (!ranks_.insert(a, b, id))
      throw std::invalid_argument("merge " + std::to_string(i) + " repeats the pair (" +
                                  std::to_string(a) + ", " + std::to_string(b) + ")");
    // token(a) + token(b), appended (copy first: appending may reallocate bytes_)
    std::string t(itoken(a));
    t += itoken(b);
    bytes_ += t;
    offs_.push_back(bytes_.size());
  }
  for (size_t k = 0; k < specials.size(); ++k)
    if (specials[k].empty())  // encode would find it at every position and never advance
      throw std::invalid_argument("special token " + std::to_string(k) + " is empty; special tokens must not be empty strings");
  for (const std::string& s : specials) {
    bytes_ += s;
    offs_.push_back(bytes_.size());
  }
  const size_t total = offs_.size() - 1;
  init_ids(ids, total, merges.size());
  byte_rank_.resize(size_t(1) << 16);
  for (size_t a = 0; a < 256; ++a)
    for (size_t b = 0; b < 256; ++b) byte_rank_[a << 8 | b] = ranks_.find(int32_t(a), int32_t(b));
  // The whole-chunk table gives the id the caller sees (the first, lowest, internal id wins).
  whole_ = TokenTable(256 + merges.size());
  for (size_t id = 0; id < 256 + merges.size(); ++id) whole_.insert(itoken(id), ext(int32_t(id)));
}

void BpeEncoder::init_ids(const std::vector<int32_t>& ids, size_t total, size_t n_merges) {
  if (ids.empty()) return;
  if (ids.size() != total)
    throw std::invalid_argument("ids must hold one id per token (" + std::to_string(total) + "), got " +
                                std::to_string(ids.size()));
  bool identity = true;
  int32_t top = -1;
  for (size_t i = 0; i < total; ++i) {
    if (ids[i] < 0 || ids[i] == std::numeric_limits<int32_t>::max())
      throw std::invalid_argument("ids: id " + std::to_string(ids[i]) + " is out of range");
    identity = identity && ids[i] == int32_t(i);
    top = std::max(top, ids[i]);
  }
  if (identity) return;
  ext_ = ids;
  int_.assign(size_t(top) + 1, -1);
  const size_t ordinary = 256 + n_merges;
  for (size_t i = 0; i < total; ++i) {
    int32_t& slot = int_[size_t(ids[i])];
    if (slot >= 0 && (i >= ordinary || itoken(size_t(slot)) != itoken(i)))
      throw std::invalid_argument("ids: tokens " + std::to_string(slot) + " and " + std::to_string(i) +
                                  " share the id " + std::to_string(ids[i]) + " but not their bytes");
    if (slot < 0) slot = int32_t(i);
  }
}

void BpeEncoder::merge_short(const unsigned char* p, size_t n, std::vector<int32_t>& out) const {
  ShortMerge<kShortChunk> m;
  m.start(p, n, byte_rank_.data());
  while (m.step(ranks_)) m.finish(ranks_);
  for (size_t i = 0; i < m.n; ++i) out.push_back(ext(m.ids[i]));
}

void BpeEncoder::merge_long(const unsigned char* p, size_t n, std::vector<int32_t>& out) const {
  // One 16-byte node per symbol; pr is the rank of the pair (this, next), -1 if none (or dead).
  struct Node { int32_t tok; int32_t pr; uint32_t nxt, prv; };
  std::unique_ptr<Node[]> node(new Node[n]);  // every field written below
  const uint32_t kEnd = uint32_t(n);
  RankBuckets pending;
  for (size_t i = 0; i < n; ++i) {
    node[i].tok = p[i];
    node[i].nxt = uint32_t(i + 1);
    node[i].prv = i == 0 ? kEnd : uint32_t(i - 1);
    const int32_t r = i + 1 < n ? byte_rank_[size_t(p[i]) << 8 | p[i + 1]] : -1;
    node[i].pr = r;
    if (r >= 0) pending.push(r, uint32_t(i));
  }
  int32_t r = 0;
  std::vector<uint32_t> batch;
  while (pending.pop(&r, &batch)) {
    // All pairs of rank r, merged left to right: a merge only makes pairs of higher ranks, so no
    // pair of rank r appears meanwhile, and leftmost-first among equals is position order.
    if (!std::is_sorted(batch.begin(), batch.end())) std::sort(batch.begin(), batch.end());
    for (const uint32_t i : batch) {
      // Stale unless the pair at i is still one of rank r: a pair only ever changes into one of
      // another rank (ids only grow), so an equal rank is the same pair.
      if (node[i].pr != r) continue;
      const uint32_t j = node[i].nxt;
      const uint32_t nj = node[j].nxt;
      node[i].tok = r;
      node[i].nxt = nj;
      node[j].pr = -1;
      node[i].pr = -1;
      if (nj != kEnd) {
        node[nj].prv = i;
        const int32_t rr = rank(r, node[nj].tok);
        node[i].pr = rr;
        if (rr >= 0) pending.push(rr, i);
      }
      const uint32_t pi = node[i].prv;
      if (pi != kEnd) {
        const int32_t rr = rank(node[pi].tok, r);
        node[pi].pr = rr;
        if (rr >= 0) pending.push(rr, pi);
      }
    }
  }
  for (uint32_t i = 0; i != kEnd; i = node[i].nxt) out.push_back(ext(node[i].tok));
}

void BpeEncoder::encode_chunk(const char* p, size_t n, const char* text_end, std::vector<int32_t>& out,
                              Caches& caches) const {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  if (n == 1) { out.push_back(ext(int32_t(u[0]))); return; }
  if (n <= PieceCache::kMaxLen) {
    // Seen before (this call or an earlier one on these caches): one probe.
    uint64_t k0, k1;
    PieceCache::key(p, n, text_end - p >= 16, &k0, &k1);
    const uint64_t h = PieceCache::hash(k0, k1, n);
    if (caches.piece.find(k0, k1, n, h, out)) return;
    short_miss(p, n, k0, k1, h, out, caches);
    return;
  }
  ChunkCache& cache = caches.chunk;
  if (n > ChunkCache::kMaxLen) {
    if (whole_lookup_ && n <= whole_.max_len()) {
      const uint64_t head = load_head(p, n, true);
      const int32_t w = whole_.find(p, n, head, hash_key(head, p, n));
      if (w >= 0) { out.push_back(w); return; }
    }
    merge_long(u, n, out);
    return;
  }
  const uint64_t head = load_head(p, n, true);
  const uint64_t h = hash_key(head, p, n);
  // The cache first (whole tokens are cached too): a chunk seen before costs no probe of the
  // whole-token table, which is large and, on a first call, not in the CPU's caches.
  uint32_t count = 0;
  if (const int32_t* c = cache.find(p, n, head, h, &count)) {
    out.insert(out.end(), c, c + count);
    return;
  }
  if (whole_lookup_ && n <= whole_.max_len()) {
    const int32_t w = whole_.find(p, n, head, h);
    if (w >= 0) {
      out.push_back(w);
      cache.put(p, n, head, h, &w, 1);
      return;
    }
  }
  const size_t start = out.size();
  if (n <= kShortChunk) merge_short(u, n, out);
  else merge_long(u, n, out);
  cache.put(p, n, head, h, out.data() + start, out.size() - start);
}

void BpeEncoder::short_miss(const char* p, size_t n, uint64_t k0, uint64_t k1, uint64_t h,
                            std::vector<int32_t>& out, Caches& caches) const {
  const size_t start = out.size();
  int32_t w = -1;
  if (whole_lookup_ && n <= whole_.max_len()) w = whole_.find(p, n, k0, hash_key(k0, p, n));
  if (w >= 0) out.push_back(w);
  else merge_short(reinterpret_cast<const unsigned char*>(p), n, out);
  caches.piece.put(k0, k1, n, h, out.data() + start, out.size() - start);
}

void BpeEncoder::resolve_misses(const char* base, const Miss* m, size_t k, int32_t* res, uint32_t* cnt,
                                Caches& caches) const {
  constexpr size_t kMax = PieceCache::kMaxLen;
  // Per miss: where its ids go in res, and whether it is still to be resolved (1) or done (0).
  uint32_t off[kMissBatch];
  uint8_t state[kMissBatch];
  uint64_t ph[kMissBatch], th[kMissBatch];
  size_t o = 0;
  for (size_t j = 0; j < k; ++j) { off[j] = uint32_t(o); o += m[j].len; cnt[j] = 0; state[j] = 1; }
  // The PieceCache hash of each chunk (for the put at the end; the encode loop has already
  // looked every miss up in WordCache and PieceCache).
  for (size_t j = 0; j < k; ++j)
    ph[j] = m[j].len <= WordCache::kMaxLen ? PieceCache::hash(m[j].k0, 0, m[j].len) : m[j].h;
  // Whole-token lookups: every slot requested, then each read.
  const bool whole = whole_lookup_;
  if (whole) {
    for (size_t j = 0; j < k; ++j) {
      if (!state[j] || m[j].len > whole_.max_len()) continue;
      th[j] = hash_key(m[j].k0, base + m[j].pos, m[j].len);
      whole_.prefetch(th[j]);
    }
    for (size_t j = 0; j < k; ++j) {
      if (!state[j] || m[j].len > whole_.max_len()) continue;
      const int32_t w = whole_.find(base + m[j].pos, m[j].len, m[j].k0, th[j]);
      if (w >= 0) { res[off[j]] = w; cnt[j] = 1; state[j] = 0; }
    }
  }
  // Merging (merge_short's steps), one step of every chunk per round: a step's two new pair
  // lookups are requested in one round and read in the next.
  size_t act[kMissBatch];
  size_t na = 0;
  for (size_t j = 0; j < k; ++j)
    if (state[j]) act[na++] = j;
  const int32_t* emap = ext_.empty() ? nullptr : ext_.data();
#if KGPT_X86
  if (g_merge_isa.simd()) {
    ShortMerge16V st[kMissBatch];
    merge_rounds_avx512(st, base, m, act, na, ranks_, byte_rank_.data(), emap, off, res, cnt);
  } else
#endif
  {
    ShortMerge<kMax> st[kMissBatch];
    for (size_t a = 0; a < na; ++a)
      st[act[a]].start(reinterpret_cast<const unsigned char*>(base + m[act[a]].pos), m[act[a]].len, byte_rank_.data());
    merge_rounds(st, act, na, ranks_, emap, off, res, cnt);
  }
  // Fill the caches as the one-by-one path does (a chunk twice in the batch is stored once).
  int32_t tmp[kMax];
  for (size_t j = 0; j < k; ++j) {
    const size_t n = m[j].len;
    const int32_t* ids = res + off[j];
    // A short chunk goes to WordCache when it can hold its ids, else to PieceCache.
    if (WordCache::holds(m[j].k0, n, ids, cnt[j])) {
      if (!caches.word.find_to(m[j].k0, m[j].h, tmp)) caches.word.put(m[j].k0, n, m[j].h, ids, cnt[j]);
    } else if (!caches.piece.find_to(m[j].k0, m[j].k1, n, ph[j], tmp)) {
      caches.piece.put(m[j].k0, m[j].k1, n, ph[j], ids, cnt[j]);
    }
  }
}

std::unique_ptr<BpeEncoder::Caches> BpeEncoder::take_cache() const {
  {
    std::lock_guard<std::mutex> lock(caches_mu_);
    if (!caches_.empty()) {
      std::unique_ptr<Caches> c = std::move(caches_.back());
      caches_.pop_back();
      return c;
    }
  }
  return std::unique_ptr<Caches>(new Caches());
}

void BpeEncoder::give_cache(std::unique_ptr<Caches> c) const {
  if (!c) return;
  std::lock_guard<std::mutex> lock(caches_mu_);
  try {
    caches_.push_back(std::move(c));
  } catch (...) {  // out of memory: the cache is dropped (called from a destructor: never throws)
  }
}

void BpeEncoder::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  const std::vector<int> none;
  encode_internal(text, none, out);
}

void BpeEncoder::encode(std::string_view text, const std::vector<int>& allowed,
                        std::vector<int32_t>& out) const {
  encode_internal(text, allowed, out);
}

namespace {
// The ids of one loop, written through a pointer into a small buffer (L1-resident) and appended to
// the caller's vector a buffer at a time: no capacity check and call per id. Cache misses are
// recorded (up to kMissBatch) instead of resolved on the spot; flush() resolves them as one batch
// and splices their ids in where they belong.
template <class Resolve>
class IdSink {
 public:
  static constexpr size_t kCap = 2048, kRoom = 64;  // room for any one write (<= kRoom ids)
  static constexpr size_t kBatch = BpeEncoder::kMissBatch;
  using Miss = BpeEncoder::Miss;
  // resolve(m, k, res, cnt): the ids of misses m[0..k) into res (miss j's at the sum of the
  // lengths before it), their numbers into cnt.
  IdSink(std::vector<int32_t>& out, Resolve& resolve) : out_(out), resolve_(resolve), w_(buf_) {}
  // A pointer with room for kRoom ids; advance() by what was written.
  KGPT_ALWAYS_INLINE int32_t* at() {
    if (w_ > buf_ + (kCap - kRoom)) flush();
    return w_;
  }
  KGPT_ALWAYS_INLINE void advance(size_t k) { w_ += k; }
  // The chunk text[pos, pos + len) goes here, once resolved.
  KGPT_ALWAYS_INLINE void miss(size_t pos, size_t len, uint64_t k0, uint64_t k1, uint64_t h) {
    m_[nm_++] = Miss{pos, uint32_t(len), uint32_t(w_ - buf_), k0, k1, h};
    if (nm_ == kBatch) flush();
  }
  // Appends what is buffered, with the batch's ids spliced in, to the vector (before anything else
  // writes to it).
  void flush() {
    if (nm_ == 0) {
      out_.insert(out_.end(), buf_, w_);
    } else {
      resolve_(m_, nm_, res_, cnt_);
      size_t total = size_t(w_ - buf_);
      for (size_t j = 0; j < nm_; ++j) total += cnt_[j];
      const size_t o = out_.size();
      out_.resize(o + total);
      int32_t* d = out_.data() + o;
      size_t prev = 0, r = 0;
      for (size_t j = 0; j < nm_; ++j) {
        const size_t a = m_[j].at;
        std::memcpy(d, buf_ + prev, sizeof(int32_t) * (a - prev));
        d += a - prev;
        prev = a;
        std::memcpy(d, res_ + r, sizeof(int32_t) * cnt_[j]);
        d += cnt_[j];
        r += m_[j].len;
      }
      std::memcpy(d, buf_ + prev, sizeof(int32_t) * (size_t(w_ - buf_) - prev));
      nm_ = 0;
    }
    w_ = buf_;
  }

 private:
  std::vector<int32_t>& out_;
  Resolve& resolve_;
  int32_t* w_;
  size_t nm_ = 0;
  Miss m_[kBatch];
  uint32_t cnt_[kBatch];
  int32_t res_[kBatch * PieceCache::kMaxLen];
  int32_t buf_[kCap];
};

// What the encode loop carries from one chunk to the next: the cache set its lookup reads
// (WordCache's for 1..8 bytes, PieceCache's for 9..16) and, for 1..8 bytes, its WordCache probe
// word. Anything else (the full key, a hash) is recomputed from the text on the rare paths.
struct ShortKey { const void* set; uint64_t wk; };
}  // namespace

// A chunk of 17+ bytes of the encode loop: its ids through the sink (out of line: the loop's hot
// path stays small), or, past the sink's room (64 ids), after a flush straight to out.
template <class Sink>
__attribute__((noinline)) void BpeEncoder::long_chunk(const char* p, size_t n, const char* text_end, Sink& sink,
                                                      std::vector<int32_t>& out, std::vector<int32_t>& tmp,
                                                      Caches& caches) const {
  tmp.clear();
  encode_chunk(p, n, text_end, tmp, caches);
  if (KGPT_LIKELY(tmp.size() <= Sink::kRoom)) {
    std::memcpy(sink.at(), tmp.data(), sizeof(int32_t) * tmp.size());
    sink.advance(tmp.size());
  } else {
    sink.flush();
    out.insert(out.end(), tmp.begin(), tmp.end());
  }
}

// Pre-tokenization and lookup in one loop: each chunk is encoded as soon as its end is found (no
// list of chunks). The loop runs one chunk ahead: while chunk i is looked up, the end of chunk
// i + 1 is known and its cache set is already being loaded (a prefetch), so the cache's latency
// overlaps the work on chunk i. Chunks of 1..8 bytes are looked up in WordCache (then PieceCache),
// 9..16 in PieceCache; hits are written through IdSink, misses recorded there and resolved in
// batches (resolve_misses); a longer chunk goes through the sink too (long_chunk).
template <Pattern P, bool kNoZero>
void BpeEncoder::ordinary_loop(std::string_view text, std::vector<int32_t>& out, Caches& caches) const {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const char* base = text.data();
  const char* end = base + text.size();
  const size_t n = text.size();
  if (n == 0) return;
  const PieceCache& piece = caches.piece;
  // gpt4 / cl100k: the chunk starts of 64-byte windows found at once (pretokenize_simd.h); o200k:
  // each chunk from the class masks; the exact matcher where those cannot decide (and for gpt2).
  detail::CursorFor<P> cur(s, n, false);
  auto resolve = [&](const Miss* m, size_t k, int32_t* res, uint32_t* cnt) {
    resolve_misses(base, m, k, res, cnt, caches);
  };
  IdSink<decltype(resolve)> sink(out, resolve);
  const WordCache& word = caches.word;
  // A chunk's set and probe word, and the start of the load of the set: WordCache for 1..8 bytes,
  // PieceCache for 9..16.
  auto key_of = [&](size_t a, size_t len) {
    ShortKey k;
    if (len <= WordCache::kMaxLen) {
      uint64_t k0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      if (n - a >= 8) {  // one 8-byte load, its first len bytes kept (a table mask: no shifts)
        static constexpr uint64_t kKeep[9] = {0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFull,
                                              0xFFFFFFFFFFFFull, 0xFFFFFFFFFFFFFFull, ~uint64_t(0)};
        uint64_t raw;
        std::memcpy(&raw, base + a, 8);
        const uint64_t keep = kKeep[len];
        k0 = raw & keep;
        // A text without a zero byte has no chunk with one: the key is the probe word as it is.
        k.wk = kNoZero ? k0 : WordCache::probe_key_raw(raw, keep);
      } else {
        k0 = load_head(base + a, len, false);
        k.wk = WordCache::probe_key(k0, len);
      }
#else
      k0 = load_head(base + a, len, n - a >= 8);
      k.wk = WordCache::probe_key(k0, len);
#endif
      k.set = word.line(WordCache::hash(k0));
    } else {
      uint64_t k0, k1;
      PieceCache::key(base + a, len, n - a >= 16, &k0, &k1);
      k.set = piece.line(PieceCache::hash(k0, k1, len));
      k.wk = 0;
    }
    prefetch_line(k.set);
    return k;
  };
  // A miss is resolved when its batch is (up to 32 misses later), starting with a probe of the
  // whole-token table: that table's slot starts loading now, while the loop goes on.
  const bool whole = whole_lookup_;
  const size_t whole_max = whole_.max_len();
  auto prefetch_whole = [&](size_t a, size_t len, uint64_t k0) {
    if (whole && len <= whole_max) whole_.prefetch(hash_key(k0, base + a, len));
  };
  std::vector<int32_t> longc;  // the ids of one long chunk
  size_t pos = 0, e = cur.next_end(0);
  ShortKey kc{nullptr, 0};
  if (e - pos <= PieceCache::kMaxLen) kc = key_of(pos, e - pos);
  while (true) {
    // The next chunk's end and key (its set starts loading now).
    size_t e2 = e;
    ShortKey kn{nullptr, 0};
    if (KGPT_LIKELY(e < n)) {
      e2 = cur.next_end(e);
      if (KGPT_LIKELY(e2 - e <= PieceCache::kMaxLen)) kn = key_of(e, e2 - e);
    }
    const size_t len = e - pos;
    if (KGPT_LIKELY(len <= WordCache::kMaxLen)) {
      int32_t* w = sink.at();
      size_t k = WordCache::find_at(kc.set, kc.wk, w);
      if (KGPT_UNLIKELY(!k)) {
        // Not there: maybe a result WordCache cannot hold (3+ ids, frequent in Korean), in PieceCache.
        const uint64_t k0 = load_head(base + pos, len, n - pos >= 8);
        k = piece.find_to(k0, 0, len, PieceCache::hash(k0, 0, len), w);
        if (!k) {
          prefetch_whole(pos, len, k0);
          sink.miss(pos, len, k0, 0, WordCache::hash(k0));
        }
      }
      sink.advance(k);
    } else if (len <= PieceCache::kMaxLen) {
      int32_t* w = sink.at();
      uint64_t k0, k1;
      PieceCache::key(base + pos, len, n - pos >= 16, &k0, &k1);
      const size_t k = piece.find_at(kc.set, k0, k1, len, w);
      if (k) {
        sink.advance(k);
      } else {
        prefetch_whole(pos, len, k0);
        sink.miss(pos, len, k0, k1, PieceCache::hash(k0, k1, len));
      }
    } else {
      // A long chunk (1% of chunks in code and prose) goes through the sink like the others: a
      // flush per long chunk would resolve the pending misses in batches too small to overlap.
      long_chunk(base + pos, len, end, sink, out, longc, caches);
    }
    if (KGPT_UNLIKELY(e >= n)) break;
    pos = e;
    e = e2;
    kc = kn;
  }
  sink.flush();
}

void BpeEncoder::ordinary_internal(std::string_view text, std::vector<int32_t>& out, Caches& caches) const {
  // Most texts hold no zero byte (one memchr, ~1% of a warm call): their WordCache probe word needs no
  // zero-byte test (see WordCache::storable).
  if (text.empty() || std::memchr(text.data(), 0, text.size()) == nullptr) {
    switch (pattern_) {
      case Pattern::GPT4: ordinary_loop<Pattern::GPT4, true>(text, out, caches); return;
      case Pattern::CL100K: ordinary_loop<Pattern::CL100K, true>(text, out, caches); return;
      case Pattern::GPT2: ordinary_loop<Pattern::GPT2, true>(text, out, caches); return;
      case Pattern::O200K: ordinary_loop<Pattern::O200K, true>(text, out, caches); return;
    }
  }
  switch (pattern_) {
    case Pattern::GPT4: ordinary_loop<Pattern::GPT4, false>(text, out, caches); return;
    case Pattern::CL100K: ordinary_loop<Pattern::CL100K, false>(text, out, caches); return;
    case Pattern::GPT2: ordinary_loop<Pattern::GPT2, false>(text, out, caches); return;
    case Pattern::O200K: ordinary_loop<Pattern::O200K, false>(text, out, caches); return;
  }
}

void BpeEncoder::encode_internal(std::string_view text, const std::vector<int>& allowed,
                                 std::vector<int32_t>& out) const {
  struct Lease {
    const BpeEncoder* enc;
    std::unique_ptr<Caches> c;
    ~Lease() { enc->give_cache(std::move(c)); }
  } lease{this, take_cache()};
  encode_with(text, allowed, out, *lease.c);
}

void BpeEncoder::encode_batch(const std::vector<std::string_view>& texts, const std::vector<int>& allowed,
                              int threads, std::vector<std::vector<int32_t>>& out) const {
  if (out.size() != texts.size()) throw std::invalid_argument("encode_batch: out.size() != texts.size()");
  if (threads <= 0) threads = default_threads();
  const size_t nt = std::max<size_t>(1, std::min<size_t>(size_t(threads), texts.size()));
  // One set of caches per thread index (each index is used by one thread only), borrowed on the
  // thread's first item and given back after the join, even on an exception. The calling thread
  // (index 0) borrows first and gives back last: the pool hands out its newest set first, so the
  // caller keeps the set it warmed (in its core's cache) from call to call, and each other index
  // the set it had, instead of the sets changing places every call.
  struct Leases {
    const BpeEncoder* enc;
    std::vector<std::unique_ptr<Caches>> c;
    ~Leases() { for (size_t i = c.size(); i-- > 0;) enc->give_cache(std::move(c[i])); }
  } leases{this, std::vector<std::unique_ptr<Caches>>(nt)};
  leases.c[0] = take_cache();
  parallel_for(texts.size(), int(nt), [&](size_t i, int t) {
    std::unique_ptr<Caches>& c = leases.c[size_t(t)];
    if (!c) c = take_cache();
    out[i].reserve(texts[i].size() / 3 + 16);  // see encode's binding: no growth copy on code or prose
    encode_with(texts[i], allowed, out[i], *c);
  });
}

void BpeEncoder::encode_with(std::string_view text, const std::vector<int>& allowed,
                             std::vector<int32_t>& out, Caches& caches) const {
  caches.word.begin();
  caches.piece.begin();
  caches.chunk.begin(text.size());
  if (allowed.empty()) { ordinary_internal(text, out, caches); return; }
  const size_t npos = std::string_view::npos;
  std::vector<size_t> next(allowed.size());
  for (size_t k = 0; k < allowed.size(); ++k) next[k] = text.find(specials_[allowed[k]]);
  size_t pos = 0;
  while (true) {
    size_t best = npos, blen = 0;
    int bid = -1;
    for (size_t k = 0; k < allowed.size(); ++k) {
      const size_t len = specials_[allowed[k]].size();
      if (next[k] < best || (next[k] == best && next[k] != npos && len > blen)) {
        best = next[k]; blen = len; bid = allowed[k];
      }
    }
    if (best == npos) break;
    ordinary_internal(text.substr(pos, best - pos), out, caches);
    out.push_back(ext(int32_t(256 + n_merges_ + size_t(bid))));
    pos = best + blen;
    for (size_t k = 0; k < allowed.size(); ++k)
      if (next[k] != npos && next[k] < pos) next[k] = text.find(specials_[allowed[k]], pos);
  }
  ordinary_internal(text.substr(pos), out, caches);
}

// One pass, each id read once (a volatile load: never re-read), checked, then its bytes copied:
// the ids may be a NumPy array that another Python thread writes to while the GIL is released, so
// an id checked in one pass and read again in a second could index outside the table.
template <class T>
void BpeEncoder::decode_impl(const T* ids, size_t n, std::string& out) const {
  const size_t v = vocab_size();
  const bool mapped = !ext_.empty();
  const volatile T* src = ids;
  out.reserve(out.size() + std::min(n, size_t(1) << 24) * 4);
  for (size_t i = 0; i < n; ++i) {
    const T id = src[i];
    if (id < 0 || uint64_t(id) >= v || (mapped && int_[size_t(id)] < 0))
      throw std::invalid_argument("token id " + std::to_string(id) + " at position " +
                                  std::to_string(i) + (mapped && id >= 0 && uint64_t(id) < v
                                      ? std::string(" is not a token of this vocabulary")
                                      : " is out of range [0, " + std::to_string(v) + ")"));
    const size_t t = mapped ? size_t(int_[size_t(id)]) : size_t(id);
    const size_t a = offs_[t], b = offs_[t + 1];
    out.append(bytes_.data() + a, b - a);
  }
}

void BpeEncoder::decode(const int64_t* ids, size_t n, std::string& out) const { decode_impl(ids, n, out); }
void BpeEncoder::decode(const int32_t* ids, size_t n, std::string& out) const { decode_impl(ids, n, out); }

}}  // namespace kgpt::tok
