// BPE encoder (see bpe_encode.h). The rank of a merge is the id it creates, so "lowest rank first"
// is "oldest merge first". Short chunks: an array of current ids with the rank of each adjacent
// pair, rescanned after each merge (n^2 but n <= kShortChunk). Long chunks: a doubly linked list of
// symbols plus a min-heap of (rank, position) with lazy invalidation: O(n log n).
// A per-call cache maps chunks that were not whole tokens to their ids (bounded, then cleared).
#include "tokenizer/bpe_encode.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>
#include <stdexcept>

namespace kgpt { namespace tok {

namespace {
constexpr size_t kShortChunk = 64;
constexpr size_t kCacheEntries = size_t(1) << 15;
constexpr size_t kCacheMaxLen = 256;
}  // namespace

struct BpeEncoder::Cache {
  StringMap<std::pair<uint32_t, uint32_t>> map{4096};  // chunk -> (offset, count) into ids
  std::vector<int32_t> ids;
};

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
    if (!ranks_.insert((uint64_t(uint32_t(a)) << 32) | uint32_t(b), uint32_t(id)).second)
      throw std::invalid_argument("merge " + std::to_string(i) + " repeats the pair (" +
                                  std::to_string(a) + ", " + std::to_string(b) + ")");
    // token(a) + token(b), appended (copy first: appending may reallocate bytes_)
    std::string t(itoken(a));
    t += itoken(b);
    bytes_ += t;
    offs_.push_back(bytes_.size());
  }
  for (size_t id = 0; id < 256 + merges.size(); ++id) whole_.insert(itoken(id), int32_t(id));
  for (size_t k = 0; k < specials.size(); ++k)
    if (specials[k].empty())  // encode would find it at every position and never advance
      throw std::invalid_argument("special token " + std::to_string(k) + " is empty; special tokens must not be empty strings");
  for (const std::string& s : specials) {
    bytes_ += s;
    offs_.push_back(bytes_.size());
  }
  const size_t total = offs_.size() - 1;
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
  const size_t ordinary = 256 + merges.size();
  for (size_t i = 0; i < total; ++i) {
    int32_t& slot = int_[size_t(ids[i])];
    if (slot >= 0 && (i >= ordinary || itoken(size_t(slot)) != itoken(i)))
      throw std::invalid_argument("ids: tokens " + std::to_string(slot) + " and " + std::to_string(i) +
                                  " share the id " + std::to_string(ids[i]) + " but not their bytes");
    if (slot < 0) slot = int32_t(i);
  }
}

void BpeEncoder::merge_short(const unsigned char* p, size_t n, std::vector<int32_t>& out) const {
  int32_t ids[kShortChunk];
  int32_t rk[kShortChunk];  // rk[i]: rank of (ids[i], ids[i+1]), or INT32_MAX
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  for (size_t i = 0; i < n; ++i) ids[i] = p[i];
  for (size_t i = 0; i + 1 < n; ++i) {
    const int32_t r = rank(ids[i], ids[i + 1]);
    rk[i] = r < 0 ? kNone : r;
  }
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (rk[i] < rk[best]) best = i;
    if (rk[best] == kNone) break;
    ids[best] = rk[best];
    for (size_t i = best + 1; i + 1 < n; ++i) { ids[i] = ids[i + 1]; rk[i] = rk[i + 1]; }
    --n;
    if (best + 1 < n) { const int32_t r = rank(ids[best], ids[best + 1]); rk[best] = r < 0 ? kNone : r; }
    if (best > 0) { const int32_t r = rank(ids[best - 1], ids[best]); rk[best - 1] = r < 0 ? kNone : r; }
  }
  out.insert(out.end(), ids, ids + n);
}

void BpeEncoder::merge_long(const unsigned char* p, size_t n, std::vector<int32_t>& out) const {
  std::vector<int32_t> tok(p, p + n);
  std::vector<uint32_t> nxt(n), prv(n);
  std::vector<char> alive(n, 1);
  const uint32_t kEnd = uint32_t(n);
  for (size_t i = 0; i < n; ++i) { nxt[i] = uint32_t(i + 1); prv[i] = i == 0 ? kEnd : uint32_t(i - 1); }
  using Item = std::pair<int32_t, uint32_t>;  // (rank, position): leftmost first among equals
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap;
  for (size_t i = 0; i + 1 < n; ++i) {
    const int32_t r = rank(tok[i], tok[i + 1]);
    if (r >= 0) heap.push({r, uint32_t(i)});
  }
  while (!heap.empty()) {
    const Item top = heap.top();
    heap.pop();
    const uint32_t i = top.second;
    if (!alive[i] || nxt[i] == kEnd || rank(tok[i], tok[nxt[i]]) != top.first) continue;
    const uint32_t j = nxt[i];
    tok[i] = top.first;
    alive[j] = 0;
    nxt[i] = nxt[j];
    if (nxt[j] != kEnd) prv[nxt[j]] = i;
    if (prv[i] != kEnd) {
      const int32_t r = rank(tok[prv[i]], tok[i]);
      if (r >= 0) heap.push({r, prv[i]});
    }
    if (nxt[i] != kEnd) {
      const int32_t r = rank(tok[i], tok[nxt[i]]);
      if (r >= 0) heap.push({r, i});
    }
  }
  for (uint32_t i = 0; i != kEnd; i = nxt[i]) out.push_back(tok[i]);
}

void BpeEncoder::encode_chunk(std::string_view chunk, std::vector<int32_t>& out, Cache* cache) const {
  const uint64_t h = hash_bytes(chunk.data(), chunk.size());
  if (whole_lookup_) {
    const int64_t w = whole_.find_h(chunk, h);
    if (w >= 0) { out.push_back(whole_.value(size_t(w))); return; }
  }
  const auto* p = reinterpret_cast<const unsigned char*>(chunk.data());
  if (chunk.size() > kCacheMaxLen) { merge_long(p, chunk.size(), out); return; }
  const int64_t c = cache->map.find_h(chunk, h);
  if (c >= 0) {
    const auto& v = cache->map.value(size_t(c));
    out.insert(out.end(), cache->ids.begin() + v.first, cache->ids.begin() + v.first + v.second);
    return;
  }
  const size_t start = out.size();
  if (chunk.size() <= kShortChunk) merge_short(p, chunk.size(), out);
  else merge_long(p, chunk.size(), out);
  if (cache->map.size() >= kCacheEntries) { cache->map.clear(); cache->ids.clear(); }
  cache->map.insert_h(chunk, h, {uint32_t(cache->ids.size()), uint32_t(out.size() - start)});
  cache->ids.insert(cache->ids.end(), out.begin() + start, out.end());
}

void BpeEncoder::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  const size_t start = out.size();
  ordinary_internal(text, out);
  to_ext(out, start);
}

void BpeEncoder::encode(std::string_view text, const std::vector<int>& allowed,
                        std::vector<int32_t>& out) const {
  const size_t start = out.size();
  encode_internal(text, allowed, out);
  to_ext(out, start);
}

void BpeEncoder::ordinary_internal(std::string_view text, std::vector<int32_t>& out) const {
  Cache cache;
  for (size_t pos = 0, end; pos < text.size(); pos = end) {
    end = chunk_end(text, pos, pattern_);
    encode_chunk(text.substr(pos, end - pos), out, &cache);
  }
}

void BpeEncoder::encode_internal(std::string_view text, const std::vector<int>& allowed,
                                 std::vector<int32_t>& out) const {
  if (allowed.empty()) { ordinary_internal(text, out); return; }
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
    ordinary_internal(text.substr(pos, best - pos), out);
    out.push_back(int32_t(256 + n_merges_ + size_t(bid)));
    pos = best + blen;
    for (size_t k = 0; k < allowed.size(); ++k)
      if (next[k] != npos && next[k] < pos) next[k] = text.find(specials_[allowed[k]], pos);
  }
  ordinary_internal(text.substr(pos), out);
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
