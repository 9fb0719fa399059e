// Lookup tables for the BPE encoder's hot path, laid out for one cache line per probe:
//   TokenTable: byte string -> int32 (the whole-chunk vocabulary lookup). Each slot holds the key's
//     first 8 bytes and length inline, so a key of up to 8 bytes (most chunks of text) is found or
//     rejected with one memory access; longer keys compare the rest against an arena.
//   RankTable: (left id, right id) -> merged id, key and value in one 16-byte slot.
//   ChunkCache: a direct-mapped (no probing, newest wins) chunk -> ids cache. The encoder keeps a
//     few (one per call running at once) and reuses them across calls: an entry is the
//     deterministic result of one chunk, so which calls ran before never changes an output.
// Keys are hashed with a two-multiply mixer; the tables are built once and then only read
// (TokenTable, RankTable), or owned by one thread (ChunkCache).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <cstdlib>
#include <new>

namespace kgpt { namespace tok {

// Asks for the cache line at p (a lookup a little later will read it); a no-op without GCC/Clang.
inline void prefetch_line(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p);
#else
  (void)p;
#endif
}

// Allocator of the large lookup tables: an array of 2 MiB or more is aligned to 2 MiB and marked
// for transparent huge pages (Linux, madvise; a hint: without them it is an ordinary array). The
// tables are probed at random, so with 4 KiB pages nearly every probe of a 4-8 MiB table also
// misses the TLB; 2 MiB pages cover a table with a few entries.
template <class T>
struct HugePageAlloc {
  using value_type = T;
  HugePageAlloc() = default;
  template <class U> HugePageAlloc(const HugePageAlloc<U>&) {}
  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_alloc();
    const size_t bytes = n * sizeof(T);
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t align = bytes >= kHuge ? kHuge : (alignof(T) > 64 ? alignof(T) : 64);
    const size_t rounded = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, rounded ? rounded : align);  // size: a multiple of align
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) noexcept { std::free(p); }
  template <class U> bool operator==(const HugePageAlloc<U>&) const { return true; }
  template <class U> bool operator!=(const HugePageAlloc<U>&) const { return false; }
};
template <class T> using HugeVector = std::vector<T, HugePageAlloc<T>>;

// The first min(n, 8) bytes of p as a little-endian-ordered word, zero-padded. `readable8`: the 8
// bytes at p may be read (they lie inside the caller's buffer), which allows one unaligned load.
inline uint64_t load_head(const char* p, size_t n, bool readable8) {
  uint64_t w = 0;
  if (n >= 8 || readable8) {
    std::memcpy(&w, p, 8);
    if (n < 8) {  // keep the bytes p[0..n) only
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      w &= ~uint64_t(0) >> (64 - 8 * n);
#else
      unsigned char b[8];
      std::memcpy(b, &w, 8);
      std::memset(b + n, 0, 8 - n);
      std::memcpy(&w, b, 8);
#endif
    }
    return w;
  }
  std::memcpy(&w, p, n);
  return w;
}

inline uint64_t hash_key(uint64_t head, const char* p, size_t n) {
  uint64_t h = (head ^ (uint64_t(n) << 58)) * 0x9e3779b97f4a7c15ULL;
  for (size_t i = 8; i < n; i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, n - i < 8 ? n - i : 8);
    h = (h ^ (h >> 29) ^ w) * 0xbf58476d1ce4e5b9ULL;
  }
  h ^= h >> 32;
  return h * 0x94d049bb133111ebULL;
}

class TokenTable {
 public:
  TokenTable() = default;
  explicit TokenTable(size_t n) {
    size_t c = 16;
    while (c < n * 2) c <<= 1;
    slots_.assign(c, Slot{0, 0, -1});
    off_.assign(c, 0);
    bits_ = 0;
    while ((size_t(1) << bits_) < c) ++bits_;
  }
  // Inserts s -> v unless s is present (the first value stays). s must be non-empty.
  void insert(std::string_view s, int32_t v) {
    const uint64_t head = load_head(s.data(), s.size(), false);
    size_t i = index(hash_key(head, s.data(), s.size()));
    while (slots_[i].len != 0) {
      if (match(i, head, s.data(), s.size())) return;
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = Slot{head, uint32_t(s.size()), v};
    if (s.size() > 8) {
      off_[i] = uint32_t(arena_.size());
      arena_.append(s.data(), s.size());
    }
    if (s.size() > max_len_) max_len_ = s.size();
  }
  // Starts loading the first slot of hash h.
  void prefetch(uint64_t h) const { prefetch_line(&slots_[index(h)]); }
  // Value of p[0..n), or -1. `head` is load_head(p, n, ...).
  int32_t find(const char* p, size_t n, uint64_t head, uint64_t h) const {
    size_t i = index(h);
    while (true) {
      const Slot& s = slots_[i];
      if (s.len == 0) return -1;
      if (s.head == head && s.len == n && (n <= 8 || std::memcmp(arena_.data() + off_[i] + 8, p + 8, n - 8) == 0))
        return s.val;
      i = (i + 1) & (slots_.size() - 1);
    }
  }
  size_t max_len() const { return max_len_; }

 private:
  struct Slot { uint64_t head; uint32_t len; int32_t val; };
  size_t index(uint64_t h) const { return size_t(h >> (64 - bits_)); }
  bool match(size_t i, uint64_t head, const char* p, size_t n) const {
    const Slot& s = slots_[i];
    return s.head == head && s.len == n && (n <= 8 || std::memcmp(arena_.data() + off_[i] + 8, p + 8, n - 8) == 0);
  }
  HugeVector<Slot> slots_;
  HugeVector<uint32_t> off_;  // arena offset of a key longer than 8 bytes
  std::string arena_;
  unsigned bits_ = 0;
  size_t max_len_ = 0;
};

class RankTable {
 public:
  RankTable() = default;
  explicit RankTable(size_t n) {
    size_t c = 16;
    while (c < n * 2) c <<= 1;
    slots_.assign(c, Slot{kEmpty, 0});
    bits_ = 0;
    while ((size_t(1) << bits_) < c) ++bits_;
  }
  // Inserts (a, b) -> v; false if the pair is already there.
  bool insert(int32_t a, int32_t b, int32_t v) {
    const uint64_t k = key(a, b);
    size_t i = index(k);
    while (slots_[i].key != kEmpty) {
      if (slots_[i].key == k) return false;
      i = (i + 1) & (slots_.size() - 1);
    }
    slots_[i] = Slot{k, v};
    return true;
  }
  // Starts loading the slot of (a, b) (a lookup a little later).
  void prefetch(int32_t a, int32_t b) const { prefetch_line(&slots_[index(key(a, b))]); }
  // Merged id of (a, b), or -1.
  int32_t find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    size_t i = index(k);
    while (true) {
      const Slot& s = slots_[i];
      if (s.key == k) return s.val;
      if (s.key == kEmpty) return -1;
      i = (i + 1) & (slots_.size() - 1);
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  struct Slot { uint64_t key; int64_t val; };
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t index(uint64_t k) const {
    uint64_t h = k * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    return size_t((h * 0xbf58476d1ce4e5b9ULL) >> (64 - bits_));
  }
  HugeVector<Slot> slots_;
  unsigned bits_ = 0;
};

// chunk -> the ids it encodes to. Used by one thread at a time. Memory is bounded: past kMaxIds
// stored ids, everything is dropped (a generation stamp per slot: nothing to clear) and refilled.
class ChunkCache {
 public:
  static constexpr size_t kMaxLen = 256;  // longer chunks are not cached
  // Starts a call on about text_bytes of text: the table grows (up to kMaxBits) to one slot per
  // 128 bytes of it (and then starts empty); otherwise what earlier calls stored stays. Chunks of
  // 17+ bytes are about 1% of chunks in code and prose (4-5 bytes each): a slot per 16 bytes zeroed
  // a 1 MiB table on a 0.5 MB text's first call for a few hundred of them.
  void begin(size_t text_bytes) {
    unsigned want = 8;
    while (want < kMaxBits && (size_t(1) << want) * 128 < text_bytes) ++want;
    if (want > bits_) {
      bits_ = want;
      slots_.assign(size_t(1) << bits_, Slot{});
      gen_ = 0;
      next_gen();
    }
  }
  // The cached ids of p[0..n) (n <= kMaxLen), or nullptr; *count gets their number.
  const int32_t* find(const char* p, size_t n, uint64_t head, uint64_t h, uint32_t* count) const {
    const Slot& s = slots_[h >> (64 - bits_)];
    if (s.gen != gen_ || s.head != head || s.len != n) return nullptr;
    if (n > 8 && std::memcmp(keys_.data() + s.key_off, p + 8, n - 8) != 0) return nullptr;
    *count = s.count;
    return ids_.data() + s.ids_off;
  }
  void put(const char* p, size_t n, uint64_t head, uint64_t h, const int32_t* ids, size_t count) {
    if (ids_.size() + count > kMaxIds || keys_.size() + n > kMaxIds * 4) next_gen();
    Slot& s = slots_[h >> (64 - bits_)];
    s.head = head;
    s.len = uint32_t(n);
    s.gen = gen_;
    s.count = uint32_t(count);
    s.ids_off = uint32_t(ids_.size());
    ids_.insert(ids_.end(), ids, ids + count);
    s.key_off = uint32_t(keys_.size());
    if (n > 8) keys_.append(p + 8, n - 8);
  }

 private:
  static constexpr unsigned kMaxBits = 15;
  static constexpr size_t kMaxIds = size_t(1) << 20;
  struct Slot { uint64_t head = 0; uint32_t len = 0, gen = 0, count = 0, ids_off = 0, key_off = 0, pad = 0; };
  void next_gen() {
    ids_.clear();
    keys_.clear();
    if (++gen_ == 0) {  // wrapped: no slot may look current
      for (Slot& s : slots_) s.gen = 0;
      gen_ = 1;
    }
  }
  std::vector<Slot> slots_;
  std::vector<int32_t> ids_;
  std::string keys_;  // bytes 8.. of each cached key longer than 8 bytes
  uint32_t gen_ = 0;
  unsigned bits_ = 0;
};

// chunk of at most 8 bytes -> its ids when they are one or two (nearly every such chunk: most
// chunks of code and English), the first-level cache of the encoder's loop. A slot is the chunk's 8
// zero-padded bytes (one word) and 8 bytes of value (first id; second id, length and count packed
// in one word), 4 slots to a 64-byte set: a lookup reads one cache line, the table (512 KiB) stays
// in L2, and a set holds 4 chunks whose hashes collide (a 2-way set thrashes on a few hot ones). The
// hash is one multiply; only chunks without a zero byte are stored, so the key word alone decides
// a hit (see storable). No arena, no generations: an entry is only ever replaced by another (a
// round-robin way when the set is full). Results it cannot hold (3+ ids, a second id >= 2^27) are
// not stored; the caller's second level (PieceCache) holds them. Used by one thread at a time.
class WordCache {
 public:
  static constexpr size_t kMaxLen = 8;
  static inline uint64_t hash(uint64_t k) { return k * 0x9e3779b97f4a7c15ULL; }
  void begin() {
    if (sets_.empty()) sets_.assign(size_t(1) << kBits, Set{});
  }
  // The set (cache line) of hash h, for find_at: a loop may carry it (and prefetch it) instead of
  // the hash.
  const void* line(uint64_t h) const { return &sets_[size_t(h >> (64 - kBits))]; }
  // Whether a chunk of n bytes (1 <= n <= 8) whose zero-padded bytes are k holds no zero byte. Only
  // such chunks are stored, so the key alone gives the length (the bytes up to the highest non-zero
  // one) and a lookup compares one word per slot; a chunk with a zero byte ("!" and "!\0" pad to the
  // same word) is never found here (the caller's PieceCache, which compares lengths, holds it).
  static inline bool storable(uint64_t k, size_t n) {
    const uint64_t pad = n >= 8 ? 0 : ~uint64_t(0) << (8 * n);  // the padding's bytes set
    const uint64_t x = k | pad;
    return ((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) == 0;
  }
  // The word to look a chunk up with: k itself when storable, else a word no slot ever holds (a
  // zero byte below a non-zero one: not a storable key, not the empty slot's 0).
  static inline uint64_t probe_key(uint64_t k, size_t n) { return storable(k, n) ? k : kNever; }
  // The same from the 8 bytes read at the chunk (raw, little-endian: the chunk's n bytes and what
  // follows) and keep, the mask of its n bytes: the key is raw & keep, and the zero-byte test runs
  // on raw (a borrow only marks bytes above a zero byte, so within keep it is exact enough: a
  // marked byte there has a zero byte at or below it, also within keep).
  static inline uint64_t probe_key_raw(uint64_t raw, uint64_t keep) {
    const uint64_t zero = (raw - 0x0101010101010101ULL) & ~raw & 0x8080808080808080ULL & keep;
    return zero ? kNever : raw & keep;
  }
  static constexpr uint64_t kNever = 0xFF00u;
  // Writes the ids of probe key k (probe_key of a chunk of 1..8 bytes) at w[0], w[1] (both written)
  // and returns how many there are; 0 if absent. One compare per slot (see storable).
  inline size_t find_to(uint64_t k, uint64_t h, int32_t* w) const { return find_at(line(h), k, w); }
  // find_to in the set `set` (line(h)).
  static inline size_t find_at(const void* set, uint64_t k, int32_t* w) {
    const Set& s = *static_cast<const Set*>(set);
    const unsigned m = unsigned(s.key[0] == k) | unsigned(s.key[1] == k) << 1 |
                       unsigned(s.key[2] == k) << 2 | unsigned(s.key[3] == k) << 3;
    if (!m) return 0;
    const unsigned i = unsigned(__builtin_ctz(m));
    const uint32_t meta = s.meta[i];
    w[0] = s.id[i];
    w[1] = int32_t(meta >> 5);
    return 1 + ((meta >> 4) & 1u);
  }
  // Whether put() stores these ids (1 or 2 of them, the second below 2^27: the slot's bits) for a
  // chunk of n bytes with key k.
  static bool holds(uint64_t k, size_t n, const int32_t* ids, size_t count) {
    return n >= 1 && n <= kMaxLen && storable(k, n) && count >= 1 && count <= 2 &&
           (count == 1 || (ids[1] >= 0 && ids[1] < (int32_t(1) << 27)));
  }
  void put(uint64_t k, size_t n, uint64_t h, const int32_t* ids, size_t count) {
    if (!holds(k, n, ids, count)) return;
    Set& s = sets_[size_t(h >> (64 - kBits))];
    unsigned i = 0;
    while (i < 4 && (s.meta[i] & 15u) != 0) ++i;
    if (i == 4) i = (next_++) & 3u;
    s.key[i] = k;
    s.id[i] = ids[0];
    s.meta[i] = uint32_t(n) | (count == 2 ? 16u | (uint32_t(ids[1]) << 5) : 0u);
  }

 private:
  static constexpr unsigned kBits = 13;  // 8192 sets of 4 slots: 512 KiB (with PieceCache's, the 1 MiB one cache took before)
  // meta: length (bits 0-3; 0: empty slot), two ids (bit 4), the second id (bits 5-31).
  struct alignas(64) Set { uint64_t key[4] = {0, 0, 0, 0}; int32_t id[4] = {0, 0, 0, 0}; uint32_t meta[4] = {0, 0, 0, 0}; };
  HugeVector<Set> sets_;
  unsigned next_ = 0;
};

// chunk of at most 16 bytes -> its ids, for every such chunk an encode call has met (whole tokens
// and merged ones alike), kept across calls: the first lookup for a chunk of 9..16 bytes (and the
// second, after WordCache, for one of up to 8 bytes whose ids WordCache cannot hold), so a chunk seen before
// costs one probe of a cache line in this table (512 KiB, L2-sized) instead of a probe of the whole-token
// table (4-8 MiB for 100k-200k tokens) and maybe another of ChunkCache. The key (the chunk's bytes,
// zero-padded to 16, and its length) is stored whole in the slot: no arena, no memcmp. 2-way set
// associative (a set is one 64-byte line); a new entry goes to way 0 and pushes way 0 to way 1. Up to
// two ids are stored in the slot; more go to an arena, bounded like ChunkCache's (past kMaxIds the
// whole cache is dropped by a generation stamp). Used by one thread at a time (see BpeEncoder).
class PieceCache {
 public:
  static constexpr size_t kMaxLen = 16;
  // The 16 zero-padded key bytes of p[0..n), n <= 16. `readable16`: 16 bytes at p may be read.
  static inline void key(const char* p, size_t n, bool readable16, uint64_t* k0, uint64_t* k1) {
    uint64_t a = 0, b = 0;
    if (readable16) {
      std::memcpy(&a, p, 8);
      std::memcpy(&b, p + 8, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      // No branch on the length (it varies chunk to chunk): the masks come from a table.
      static constexpr uint64_t kKeep[9] = {0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFull,
                                            0xFFFFFFFFFFFFull, 0xFFFFFFFFFFFFFFull, ~uint64_t(0)};
      a &= kKeep[n < 8 ? n : 8];
      b &= kKeep[n > 8 ? n - 8 : 0];
#else
      unsigned char t[16] = {};
      std::memcpy(t, p, n);
      std::memcpy(&a, t, 8);
      std::memcpy(&b, t + 8, 8);
#endif
    } else {
      unsigned char t[16] = {};
      std::memcpy(t, p, n);
      std::memcpy(&a, t, 8);
      std::memcpy(&b, t + 8, 8);
    }
    *k0 = a;
    *k1 = b;
  }
  static inline uint64_t hash(uint64_t k0, uint64_t k1, size_t n) {
    uint64_t h = (k0 ^ (uint64_t(n) << 56)) * 0x9e3779b97f4a7c15ULL;
    h ^= (k1 + (h >> 31)) * 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 29);
  }
  // Allocates the table on first use (512 KiB).
  void begin() {
    if (sets_.empty()) {
      sets_.assign(size_t(1) << kBits, Set{});
      gen_ = 1;
    }
  }
  // The set (cache line) of hash h, for find_at.
  const void* line(uint64_t h) const { return &sets_[size_t(h >> (64 - kBits))]; }
  // Writes the cached ids of the key at w (room for kMaxLen ids) and returns how many (0: absent).
  inline size_t find_to(uint64_t k0, uint64_t k1, size_t n, uint64_t h, int32_t* w) const {
    return find_at(line(h), k0, k1, n, w);
  }
  // find_to in the set `line` (line(h)); always inlined into the encode loop (an out-of-line copy
  // is called through the PLT in a shared library).
#if defined(__GNUC__)
  __attribute__((always_inline))
#endif
  inline size_t find_at(const void* line, uint64_t k0, uint64_t k1, size_t n, int32_t* w) const {
    const Slot* set = static_cast<const Set*>(line)->w;
    for (int k = 0; k < 2; ++k) {
      const Slot& s = set[k];
      if (s.k0 == k0 && s.k1 == k1 && s.len == n && s.gen == gen_) {
        if (s.count <= 2) {  // both written, the count says how many count
          w[0] = s.a;
          w[1] = s.b;
          return s.count;
        }
        std::memcpy(w, ids_.data() + s.a, sizeof(int32_t) * s.count);
        return s.count;
      }
    }
    return 0;
  }
  // Appends the cached ids of the key to out; false if absent.
  bool find(uint64_t k0, uint64_t k1, size_t n, uint64_t h, std::vector<int32_t>& out) const {
    int32_t w[kMaxLen];
    const size_t c = find_to(k0, k1, n, h, w);
    out.insert(out.end(), w, w + c);
    return c != 0;
  }
  void put(uint64_t k0, uint64_t k1, size_t n, uint64_t h, const int32_t* ids, size_t count) {
    if (count == 0 || count > kMaxLen) return;  // n bytes make at most n ids
    if (count > 2 && ids_.size() + count > kMaxIds) next_gen();
    Slot* set = sets_[size_t(h >> (64 - kBits))].w;
    if (set[0].gen == gen_) set[1] = set[0];
    Slot& s = set[0];
    s.k0 = k0; s.k1 = k1; s.gen = gen_; s.len = uint16_t(n); s.count = uint16_t(count);
    if (count <= 2) { s.a = ids[0]; s.b = count == 2 ? ids[1] : 0; }
    else { s.a = int32_t(ids_.size()); s.b = 0; ids_.insert(ids_.end(), ids, ids + count); }
  }

 private:
  static constexpr unsigned kBits = 13;  // 8192 sets of 2 slots, 32 bytes each: 512 KiB
  static constexpr size_t kMaxIds = size_t(1) << 18;
  struct Slot { uint64_t k0 = 0, k1 = 0; uint32_t gen = 0; uint16_t len = 0, count = 0; int32_t a = 0, b = 0; };
  void next_gen() {
    ids_.clear();
    if (++gen_ == 0) {
      for (Set& t : sets_) t.w[0].gen = t.w[1].gen = 0;
      gen_ = 1;
    }
  }
  struct alignas(64) Set { Slot w[2]; };
  HugeVector<Set> sets_;  // 64-byte aligned (HugePageAlloc)
  std::vector<int32_t> ids_;
  uint32_t gen_ = 1;
};

}}  // namespace kgpt::tok
