// BPE trainer (see bpe_train.h). Counting: each thread counts chunks of its pieces in a private
// table; the tables are then folded into 16 hash shards in parallel (one thread per shard), so the
// result does not depend on the thread count. Merge loop: words are the unique chunks of length
// >= 2 (symbols in one flat array, compacted in place); after merging (a, b) -> z only the pairs
// touching a merge site change, and z is new, so every pair that gains count is new and every old
// pair only loses count: a popped heap entry whose count is above the pair's current one is stale.
#include "tokenizer/bpe_train.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <memory>
#include <queue>
#include <stdexcept>

#include "tokenizer/parallel.h"
#include "tokenizer/pretokenize_simd.h"

namespace kgpt { namespace tok {

namespace {
constexpr size_t kPieceBytes = size_t(1) << 20;  // a thread's unit of splitting work
constexpr size_t kFileBlock = size_t(16) << 20;  // bytes read from a file per round (default)

int resolve_threads(int n) { return n > 0 ? n : default_threads(); }

inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

// Length of the longest prefix of p[0..n) made of complete, well-formed UTF-8 sequences (what
// Python's strict "utf-8" codec accepts: no overlong forms, no surrogates, nothing above
// U+10FFFF). *bad is set when the byte there starts an ill-formed sequence; left false when the
// rest is only an incomplete (so far valid) sequence cut by the end of the data.
size_t utf8_valid_prefix(const unsigned char* p, size_t n, bool* bad) {
  *bad = false;
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) { ++i; continue; }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { *bad = true; return i; }
    for (size_t k = 1; k < len; ++k) {
      if (i + k >= n) return i;  // cut by the end: maybe completed by the next block
      const unsigned char d = p[i + k];
      if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) { *bad = true; return i; }
    }
    i += len;
  }
  return i;
}

std::invalid_argument bad_utf8(const std::string& path, uint64_t offset, unsigned char byte) {
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02x", byte);
  return std::invalid_argument(path + ": not valid UTF-8 (byte " + hex + " at offset " +
                            std::to_string(offset) + ")");
}
}  // namespace

BpeTrainer::BpeTrainer(Pattern pattern) : pattern_(pattern), shards_(kShards) {}

size_t BpeTrainer::num_unique_chunks() const {
  size_t n = 0;
  for (const auto& s : shards_) n += s.size();
  return n;
}

void BpeTrainer::add_documents(const std::vector<std::string_view>& docs, int num_threads) {
  std::vector<size_t> ends(docs.size());
  for (size_t d = 0; d < docs.size(); ++d) ends[d] = docs[d].size();
  add_ranges(docs, ends, num_threads);
}

// Counts the chunks of docs[d] that start in [0, ends[d]), each split with the WHOLE of docs[d] as
// its context: a chunk's end may depend on the code point after it ("gpt2" splits "\n\n\nx" as
// "\n\n", "\n", "x" but a text that ends in "\n\n\n" as one chunk), so a streamed block must be
// split with the text that follows it in view. ends[d] must be a chunk boundary of docs[d].
void BpeTrainer::add_ranges(const std::vector<std::string_view>& docs, const std::vector<size_t>& ends,
                            int num_threads) {
  if (trained_) throw std::logic_error("BpeTrainer: train() already consumed the counts");
  struct Piece { size_t doc, begin, end; };
  std::vector<Piece> pieces;
  for (size_t d = 0; d < docs.size(); ++d) {
    std::string_view t = docs[d];
    const size_t stop = ends[d];
    for (size_t pos = 0; pos < stop;) {
      size_t end = pos + kPieceBytes >= stop ? stop : std::min(stop, next_safe_boundary(t, pos + kPieceBytes));
      pieces.push_back({d, pos, end});
      pos = end;
    }
  }
  if (pieces.empty()) return;
  const int nt = std::max(1, std::min<int>(resolve_threads(num_threads), int(pieces.size())));
  std::vector<std::unique_ptr<StringMap<int64_t>>> local(nt);
  std::vector<int64_t> nchunks(nt, 0);
  // Each thread makes its own table on first use: threads that never start (parallel_for runs on
  // fewer when the system refuses some) cost nothing.
  parallel_for(pieces.size(), nt, [&](size_t p, int t) {
    if (!local[t]) local[t].reset(new StringMap<int64_t>(4096));
    StringMap<int64_t>& m = *local[t];
    std::string_view text = docs[pieces[p].doc];
    int64_t cnt = 0;
    detail::for_each_chunk(reinterpret_cast<const uint8_t*>(text.data()), text.size(), pieces[p].begin,
                           pieces[p].end, pattern_, false, [&](size_t pos, size_t end) {
                             m.value(m.insert(text.substr(pos, end - pos), 0)) += 1;
                             ++cnt;
                           });
    nchunks[t] += cnt;
  });
  for (int64_t c : nchunks) total_chunks_ += c;
  // Fold into the shards: shard s takes the entries whose hash says s, from every local table.
  parallel_for(kShards, std::min(nt, kShards), [&](size_t s, int) {
    for (int t = 0; t < nt; ++t) {
      if (!local[t]) continue;
      const StringMap<int64_t>& m = *local[t];
      for (size_t e = 0; e < m.size(); ++e) {
        const uint64_t h = m.hash_of(e);
        if ((h >> 60) != s) continue;
        shards_[s].value(shards_[s].insert_h(m.key(e), h, 0)) += m.value(e);
      }
    }
  });
}

size_t last_safe_cut(std::string_view text) {
  const size_t n = text.size();
  // Only look where a complete code point (<= 4 bytes) follows the newline.
  for (size_t i = n >= 4 ? n - 4 : 0; i > 0; --i) {
    const char prev = text[i - 1];
    if (prev != '\n' && prev != '\r') continue;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x21 && c <= 0x7e && c != '/') return i;  // printable ASCII, never whitespace; "o200k" keeps CR/LF + '/'
    if (c >= 0x80 && next_safe_boundary(text.substr(0, i + 4), i) == i) return i;
  }
  return 0;
}

void BpeTrainer::add_file(const std::string& path, int num_threads, size_t block_bytes) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw std::runtime_error("cannot open file '" + path + "': " + std::strerror(errno));
  std::string buf;
  uint64_t base = 0;     // file offset of buf[0]
  size_t checked = 0;    // buf[0, checked) is well-formed UTF-8 (complete sequences)
  std::vector<char> block(block_bytes > 0 ? block_bytes : kFileBlock);
  while (true) {
    const size_t got = std::fread(block.data(), 1, block.size(), f.get());
    if (got == 0) {
      if (std::ferror(f.get()))
        throw std::runtime_error("error reading file '" + path + "': " + std::strerror(errno));
      break;
    }
    buf.append(block.data(), got);
    bool bad = false;
    checked += utf8_valid_prefix(reinterpret_cast<const unsigned char*>(buf.data()) + checked,
                                 buf.size() - checked, &bad);
    if (bad) throw bad_utf8(path, base + checked, static_cast<unsigned char>(buf[checked]));
    const size_t cut = last_safe_cut(std::string_view(buf).substr(0, checked));
    if (cut > 0) {
      // The chunks before the cut are split with the code point after it in view (see add_ranges).
      add_ranges({std::string_view(buf)}, {cut}, num_threads);
      buf.erase(0, cut);
      base += cut;
      checked -= cut;
    }
  }
  if (checked != buf.size())  // a sequence cut by the end of the file
    throw bad_utf8(path, base + checked, static_cast<unsigned char>(buf[checked]));
  if (!buf.empty()) add_documents({std::string_view(buf)}, num_threads);
}

std::vector<Merge> BpeTrainer::train(size_t num_merges) {
  if (trained_) throw std::logic_error("BpeTrainer: train() may be called once");
  trained_ = true;

  // ---- words: unique chunks of >= 2 bytes, symbols in one flat array.
  std::vector<int32_t> sym;
  std::vector<uint64_t> wstart;
  std::vector<uint32_t> wlen;
  std::vector<int64_t> wcount;
  for (auto& shard : shards_) {
    for (size_t e = 0; e < shard.size(); ++e) {
      std::string_view k = shard.key(e);
      if (k.size() < 2) continue;
      wstart.push_back(sym.size());
      wlen.push_back(uint32_t(k.size()));
      wcount.push_back(shard.value(e));
      for (unsigned char c : k) sym.push_back(c);
    }
    shard.release();
  }
  const size_t nwords = wlen.size();

  // ---- pair statistics: key -> index; count and the words it occurs in (may hold stale words).
  PairMap index(1 << 16);
  std::vector<int64_t> pcount;
  std::vector<Merge> ppair;
  std::vector<std::vector<uint32_t>> pwords;
  auto pair_index = [&](int32_t a, int32_t b) -> uint32_t {
    auto r = index.insert(pair_key(a, b), uint32_t(pcount.size()));
    if (r.second) { pcount.push_back(0); ppair.emplace_back(a, b); pwords.emplace_back(); }
    return *r.first;
  };
  for (size_t w = 0; w < nwords; ++w) {
    const int32_t* s = sym.data() + wstart[w];
    for (uint32_t i = 0; i + 1 < wlen[w]; ++i) {
      const uint32_t p = pair_index(s[i], s[i + 1]);
      pcount[p] += wcount[w];
      if (pwords[p].empty() || pwords[p].back() != w) pwords[p].push_back(uint32_t(w));
    }
  }

  // ---- max-heap: highest count, then smallest (left, right).
  struct Entry { int64_t count; int32_t a, b; uint32_t p; };
  auto less = [](const Entry& x, const Entry& y) {
    if (x.count != y.count) return x.count < y.count;
    if (x.a != y.a) return x.a > y.a;
    return x.b > y.b;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(less)> heap(less);
  for (uint32_t p = 0; p < pcount.size(); ++p)
    if (pcount[p] > 0) heap.push({pcount[p], ppair[p].first, ppair[p].second, p});

  std::vector<Merge> merges;
  merges.reserve(std::min(num_merges, pcount.size()));  // num_merges may be huge: "as many as exist"
  std::vector<uint32_t> stamp(nwords, 0);
  std::vector<uint32_t> touched;  // new pairs created by the current merge
  while (merges.size() < num_merges && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    const int64_t cur = pcount[top.p];
    if (cur != top.count) {  // stale: the count only went down since the push
      if (cur > 0) heap.push({cur, top.a, top.b, top.p});
      continue;
    }
    const int32_t a = top.a, b = top.b;
    const int32_t z = int32_t(256 + merges.size());
    const uint32_t mark = uint32_t(merges.size() + 1);
    merges.emplace_back(a, b);
    touched.clear();
    std::vector<uint32_t> words;
    words.swap(pwords[top.p]);  // the merged pair never occurs again: free its list
    for (uint32_t w : words) {
      if (stamp[w] == mark) continue;
      stamp[w] = mark;
      int32_t* s = sym.data() + wstart[w];
      const uint32_t n = wlen[w];
      const int64_t c = wcount[w];
      // Pass 1: subtract every old pair that touches a merge site (each once), compact in place.
      long long last_sub = -1;
      uint32_t out = 0;
      bool any = false;
      for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
          any = true;
          for (long long k = (long long)i - 1; k <= (long long)i + 1; ++k) {
            if (k < 0 || k + 1 >= (long long)n || k <= last_sub) continue;
            pcount[*index.find(pair_key(s[k], s[k + 1]))] -= c;
            last_sub = k;
          }
          // s[k] for k >= i+2 is still original: compaction writes at out <= i.
          s[out++] = z;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      if (!any) continue;  // a stale entry in the list
      wlen[w] = out;
      // Pass 2: add every new pair that holds z (each once).
      long long last_add = -1;
      for (uint32_t j = 0; j < out; ++j) {
        if (s[j] != z) continue;
        for (long long k = (long long)j - 1; k <= (long long)j; ++k) {
          if (k < 0 || k + 1 >= (long long)out || k <= last_add) continue;
          const uint32_t p = pair_index(s[k], s[k + 1]);
          if (pcount[p] == 0 && (pwords[p].empty())) touched.push_back(p);
          pcount[p] += c;
          if (pwords[p].empty() || pwords[p].back() != w) pwords[p].push_back(w);
          last_add = k;
        }
      }
    }
    for (uint32_t p : touched)
      if (pcount[p] > 0) heap.push({pcount[p], ppair[p].first, ppair[p].second, p});
  }
  return merges;
}

}}  // namespace kgpt::tok
