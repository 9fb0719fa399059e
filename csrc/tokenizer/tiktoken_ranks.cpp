#include "tokenizer/tiktoken_ranks.h"

#include <algorithm>
#include <string>

#include "tokenizer/flat_hash.h"

namespace kgpt::tok {
namespace {

// bytes.split()'s whitespace.
inline bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// Canonical base64 only (length a multiple of 4, '=' only as the last one or two characters);
// false for anything else, which the caller leaves to Python's base64.b64decode.
bool b64_decode(std::string_view s, std::string& out) {
  if (s.empty() || s.size() % 4) return false;
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[i + k]);
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad) return false;  // data after '='
      v[k] = b64_value(c);
      if (v[k] < 0) return false;
    }
    const uint32_t w = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(static_cast<char>(w >> 16));
    if (pad < 2) out.push_back(static_cast<char>((w >> 8) & 0xFF));
    if (pad < 1) out.push_back(static_cast<char>(w & 0xFF));
  }
  return true;
}

// The file's tokens by their bytes: open addressing over token numbers (the strings live in the
// caller's arena), linear probing.
class TokenTable {
 public:
  explicit TokenTable(const std::vector<std::string_view>& keys) : keys_(keys) {
    size_t cap = 16;
    while (cap < keys.size() * 2) cap *= 2;
    slot_.assign(cap, 0);
    mask_ = cap - 1;
  }
  // Token number of s, or -1. A slot holds the token number + 1 and 32 bits of its hash (most
  // probes then end without reading the token's bytes).
  int64_t find(std::string_view s) const {
    const uint64_t h = hash_bytes(s.data(), s.size());
    const uint64_t tag = h >> 32;
    size_t i = size_t(h) & mask_;
    while (uint64_t v = slot_[i]) {
      if ((v >> 32) == tag && keys_[uint32_t(v) - 1] == s) return int64_t(uint32_t(v)) - 1;
      i = (i + 1) & mask_;
    }
    return -1;
  }
  // Adds token t; false if its bytes are there already.
  bool insert(uint32_t t) {
    const std::string_view s = keys_[t];
    const uint64_t h = hash_bytes(s.data(), s.size());
    size_t i = size_t(h) & mask_;
    while (uint64_t v = slot_[i]) {
      if ((v >> 32) == (h >> 32) && keys_[uint32_t(v) - 1] == s) return false;
      i = (i + 1) & mask_;
    }
    slot_[i] = ((h >> 32) << 32) | (uint64_t(t) + 1);
    return true;
  }

 private:
  const std::vector<std::string_view>& keys_;
  std::vector<uint64_t> slot_;
  size_t mask_;
};

}  // namespace

bool tiktoken_ranks_to_merges(std::string_view text, RanksMerges* out) {
  struct Tok { size_t off, len; int64_t rank; };
  std::string arena;
  arena.reserve(text.size());
  std::vector<Tok> toks;
  toks.reserve(text.size() / 8 + 16);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    std::string_view field[3];
    int nf = 0;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && is_space(static_cast<unsigned char>(line[i]))) ++i;
      if (i == line.size()) break;
      const size_t a = i;
      while (i < line.size() && !is_space(static_cast<unsigned char>(line[i]))) ++i;
      if (nf == 2) return false;
      field[nf++] = line.substr(a, i - a);
    }
    if (nf == 0) continue;  // a blank line
    if (nf != 2) return false;
    const std::string_view r = field[1];
    if (r.empty() || r.size() > 10) return false;
    int64_t rank = 0;
    for (char c : r) {
      if (c < '0' || c > '9') return false;
      rank = rank * 10 + (c - '0');
    }
    if (rank >= (int64_t(1) << 31) - 1) return false;
    const size_t off = arena.size();
    if (!b64_decode(field[0], arena) || arena.size() == off) return false;
    toks.push_back(Tok{off, arena.size() - off, rank});
  }
  // Every token once, every rank once, all 256 bytes.
  if (toks.size() >= (size_t(1) << 31)) return false;
  std::vector<std::string_view> keys(toks.size());
  for (size_t t = 0; t < toks.size(); ++t) keys[t] = std::string_view(arena.data() + toks[t].off, toks[t].len);
  TokenTable table(keys);
  std::vector<int32_t> internal(toks.size(), -1);  // set when the token's merge is made
  for (int b = 0; b < 256; ++b) out->byte_rank[b] = -1;
  std::vector<int64_t> all_ranks;
  all_ranks.reserve(toks.size());
  std::vector<size_t> multi;
  for (size_t t = 0; t < toks.size(); ++t) {
    if (!table.insert(uint32_t(t))) return false;
    all_ranks.push_back(toks[t].rank);
    if (keys[t].size() == 1) out->byte_rank[static_cast<unsigned char>(keys[t][0])] = toks[t].rank;
    else multi.push_back(t);
  }
  std::sort(all_ranks.begin(), all_ranks.end());
  if (std::adjacent_find(all_ranks.begin(), all_ranks.end()) != all_ranks.end()) return false;
  for (int b = 0; b < 256; ++b)
    if (out->byte_rank[b] < 0) return false;
  std::sort(multi.begin(), multi.end(), [&](size_t a, size_t b) { return toks[a].rank < toks[b].rank; });

  // The internal id of a token already made (a byte, or a token of a lower rank), else -1.
  auto internal_of = [&](std::string_view s) -> int32_t {
    if (s.size() == 1) return static_cast<unsigned char>(s[0]);
    const int64_t t = table.find(s);
    return t < 0 ? -1 : internal[size_t(t)];
  };
  out->ranks.clear();
  out->merges.clear();
  out->ranks.reserve(multi.size());
  out->merges.reserve(multi.size());
  std::vector<size_t> cands, parts;  // parts: start offsets of BPE's parts
  std::vector<int64_t> pr;
  for (size_t t : multi) {
    const std::string_view tb = keys[t];
    const int64_t r = toks[t].rank;
    cands.clear();
    for (size_t i = 1; i < tb.size(); ++i)
      if (internal_of(tb.substr(0, i)) >= 0 && internal_of(tb.substr(i)) >= 0) cands.push_back(i);
    if (cands.empty()) return false;
    size_t cut = cands[0];
    if (cands.size() > 1) {
      // BPE of tb's bytes with the ranks below r: the lowest-ranked adjacent pair merges first
      // (the leftmost of equals).
      parts.clear();
      for (size_t i = 0; i <= tb.size(); ++i) parts.push_back(i);  // part j: [parts[j], parts[j+1])
      // pr[j]: rank of parts j and j+1 joined, if it is a token ranked below r (else r).
      auto pair_rank = [&](size_t j) -> int64_t {
        const int64_t u = table.find(tb.substr(parts[j], parts[j + 2] - parts[j]));
        return (u >= 0 && toks[size_t(u)].rank < r) ? toks[size_t(u)].rank : r;
      };
      pr.clear();
      for (size_t j = 0; j + 2 < parts.size(); ++j) pr.push_back(pair_rank(j));
      while (!pr.empty()) {
        size_t best = 0;
        for (size_t j = 1; j < pr.size(); ++j)
          if (pr[j] < pr[best]) best = j;
        if (pr[best] >= r) break;
        parts.erase(parts.begin() + std::ptrdiff_t(best) + 1);
        pr.erase(pr.begin() + std::ptrdiff_t(best));
        if (best < pr.size()) pr[best] = pair_rank(best);
        if (best > 0) pr[best - 1] = pair_rank(best - 1);
      }
      if (parts.size() == 3) cut = parts[1];
    }
    const int32_t a = internal_of(tb.substr(0, cut)), b = internal_of(tb.substr(cut));
    internal[t] = int32_t(256 + out->merges.size());
    out->merges.emplace_back(a, b);
    out->ranks.push_back(r);
  }
  return true;
}

}  // namespace kgpt::tok
