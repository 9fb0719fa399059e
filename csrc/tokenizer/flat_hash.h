// Small open-addressing hash tables used by the BPE trainer and encoder: uint64 key -> uint32
// value (pairs), and byte string -> value with the strings kept in one arena. Linear probing,
// power-of-two capacity, no deletion (the trainer never removes a pair, only zeroes its count).
// Nothing here is thread-safe; each thread owns its own tables.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace kgpt { namespace tok {

inline uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27; x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0xff51afd7ed558ccdULL);
  while (n >= 8) {
    uint64_t w; std::memcpy(&w, p, 8);
    h = (h ^ mix64(w)) * 0x9fb21c651e98df25ULL;
    p += 8; n -= 8;
  }
  if (n) {
    uint64_t w = 0; std::memcpy(&w, p, n);
    h = (h ^ mix64(w ^ (uint64_t(n) << 56))) * 0x9fb21c651e98df25ULL;
  }
  return mix64(h);
}

// uint64 -> uint32. Keys must not be ~0 (the empty marker).
class PairMap {
 public:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  explicit PairMap(size_t cap = 1024) { rehash(cap); }
  size_t size() const { return size_; }
  // Pointer to the value of `key`, or nullptr.
  const uint32_t* find(uint64_t key) const {
    size_t i = mix64(key) & mask_;
    while (true) {
      if (keys_[i] == key) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }
  // Inserts `key` with `val` if absent; returns (value ref, inserted).
  std::pair<uint32_t*, bool> insert(uint64_t key, uint32_t val) {
    if ((size_ + 1) * 4 > keys_.size() * 3) rehash(keys_.size() * 2);
    size_t i = mix64(key) & mask_;
    while (true) {
      if (keys_[i] == key) return {&vals_[i], false};
      if (keys_[i] == kEmpty) {
        keys_[i] = key; vals_[i] = val; ++size_;
        return {&vals_[i], true};
      }
      i = (i + 1) & mask_;
    }
  }

 private:
  void rehash(size_t cap) {
    size_t c = 16;
    while (c < cap) c <<= 1;
    std::vector<uint64_t> ok; std::vector<uint32_t> ov;
    ok.swap(keys_); ov.swap(vals_);
    keys_.assign(c, kEmpty); vals_.assign(c, 0); mask_ = c - 1; size_ = 0;
    for (size_t i = 0; i < ok.size(); ++i)
      if (ok[i] != kEmpty) insert(ok[i], ov[i]);
  }
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> vals_;
  size_t mask_ = 0, size_ = 0;
};

// byte string -> V. Strings are copied into one arena; entry i's key is key(i).
template <class V>
class StringMap {
 public:
  explicit StringMap(size_t cap = 1024) { rehash(cap); }
  size_t size() const { return offs_.size(); }
  std::string_view key(size_t i) const { return std::string_view(arena_.data() + offs_[i], lens_[i]); }
  V& value(size_t i) { return vals_[i]; }
  const V& value(size_t i) const { return vals_[i]; }
  // Index of `s`, or -1.
  int64_t find(std::string_view s) const { return find_h(s, hash_bytes(s.data(), s.size())); }
  int64_t find_h(std::string_view s, uint64_t h) const {
    size_t i = h & mask_;
    while (true) {
      uint32_t e = slots_[i];
      if (e == kNone) return -1;
      if (hashes_[e] == h && key(e) == s) return e;
      i = (i + 1) & mask_;
    }
  }
  // Index of `s`, inserting it with `init` if absent.
  size_t insert(std::string_view s, const V& init) { return insert_h(s, hash_bytes(s.data(), s.size()), init); }
  size_t insert_h(std::string_view s, uint64_t h, const V& init) {
    if ((offs_.size() + 1) * 4 > slots_.size() * 3) rehash(slots_.size() * 2);
    size_t i = h & mask_;
    while (true) {
      uint32_t e = slots_[i];
      if (e == kNone) break;
      if (hashes_[e] == h && key(e) == s) return e;
      i = (i + 1) & mask_;
    }
    uint32_t e = uint32_t(offs_.size());
    slots_[i] = e;
    offs_.push_back(arena_.size()); lens_.push_back(uint32_t(s.size()));
    hashes_.push_back(h); vals_.push_back(init);
    arena_.append(s.data(), s.size());
    return e;
  }
  uint64_t hash_of(size_t i) const { return hashes_[i]; }
  void clear() {
    arena_.clear(); offs_.clear(); lens_.clear(); hashes_.clear(); vals_.clear();
    std::fill(slots_.begin(), slots_.end(), kNone);
  }
  void release() {  // frees all memory
    std::string().swap(arena_); std::vector<uint64_t>().swap(offs_);
    std::vector<uint32_t>().swap(lens_); std::vector<uint64_t>().swap(hashes_);
    std::vector<V>().swap(vals_); std::vector<uint32_t>().swap(slots_); rehash(16);
  }

 private:
  static constexpr uint32_t kNone = ~uint32_t(0);
  void rehash(size_t cap) {
    size_t c = 16;
    while (c < cap) c <<= 1;
    slots_.assign(c, kNone); mask_ = c - 1;
    for (uint32_t e = 0; e < offs_.size(); ++e) {
      size_t i = hashes_[e] & mask_;
      while (slots_[i] != kNone) i = (i + 1) & mask_;
      slots_[i] = e;
    }
  }
  std::string arena_;
  std::vector<uint64_t> offs_;
  std::vector<uint32_t> lens_;
  std::vector<uint64_t> hashes_;
  std::vector<V> vals_;
  std::vector<uint32_t> slots_;
  size_t mask_ = 0;
};

}}  // namespace kgpt::tok
