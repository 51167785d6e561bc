// The large-buffer cache of Note [buffer cache] (memory.h).

#include "cpu/memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <new>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__)
#include <pthread.h>
#endif

namespace rnnkernels::cpu {
namespace {

constexpr size_t kBlockAlign = size_t{2} << 20;  // one transparent huge page
constexpr size_t kCachedMinBytes = size_t{4} << 20;
constexpr int64_t kDefaultLimitBytes = int64_t{1} << 30;

size_t round_to_block(size_t bytes) { return (bytes + kBlockAlign - 1) / kBlockAlign * kBlockAlign; }

int64_t limit_from_environment() {
  const char* mb = std::getenv("RNNKERNELS_CPU_CACHE_MB");
  if (mb == nullptr || *mb == '\0') return kDefaultLimitBytes;
  char* end = nullptr;
  const long long value = std::strtoll(mb, &end, 10);
  TORCH_CHECK(end != mb && *end == '\0' && value >= 0,
              "RNNKERNELS_CPU_CACHE_MB must be a whole number of MiB >= 0, got '", mb, "'");
  return static_cast<int64_t>(value) << 20;
}

// RNNKERNELS_CPU_CACHE_POISON=1 (tests): every buffer comes from the cache, whatever its
// size, filled with 0xff bytes (NaN in float32/float64/bfloat16), so a kernel that reads
// memory it did not write gives NaN instead of the zeros of fresh pages.
bool poison() {
  static const bool enabled = [] {
    const char* v = std::getenv("RNNKERNELS_CPU_CACHE_POISON");
    return v != nullptr && std::string(v) == "1";
  }();
  return enabled;
}

struct Block {
  void* data;
  size_t bytes;
};

class BufferCache final : public c10::Allocator {
 public:
  BufferCache() : limit_(limit_from_environment()) {}

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &release, cpu};
    const size_t bytes = round_to_block(n);
    Block* block = take_cached(bytes);
    if (block == nullptr) {
      block = new_block(bytes);
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_bytes_ += static_cast<int64_t>(bytes);
      ++misses_;
    }
    if (poison()) std::memset(block->data, 0xff, block->bytes);
    report(block, static_cast<int64_t>(block->bytes));
    return {block->data, block, &release, cpu};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  BufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, in_use_bytes_, limit_, hits_, misses_};
  }

  void set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "the CPU buffer cache limit must be >= 0 bytes, got ", bytes);
    std::list<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      evict_locked(evicted);
    }
    free_blocks(evicted);
  }

  void empty() {
    std::list<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evicted.splice(evicted.end(), cached_);
      cached_bytes_ = 0;
    }
    free_blocks(evicted);
  }

 private:
  // The smallest cached block of at least `bytes` and at most 25% more.
  Block* take_cached(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = cached_.end();
    for (auto it = cached_.begin(); it != cached_.end(); ++it) {
      const size_t have = (*it)->bytes;
      if (have >= bytes && have <= bytes + bytes / 4 &&
          (best == cached_.end() || have < (*best)->bytes))
        best = it;
    }
    if (best == cached_.end()) return nullptr;
    Block* block = *best;
    cached_.erase(best);
    cached_bytes_ -= static_cast<int64_t>(block->bytes);
    in_use_bytes_ += static_cast<int64_t>(block->bytes);
    ++hits_;
    return block;
  }

  Block* new_block(size_t bytes) {
    void* data = std::aligned_alloc(kBlockAlign, bytes);
    if (data == nullptr) {  // give the cache's blocks back and try once more
      empty();
      data = std::aligned_alloc(kBlockAlign, bytes);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, data != nullptr, "rnnkernels: CPU out of memory trying to "
                     "allocate ", bytes, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (std::getenv("RNNKERNELS_NO_HUGE_PAGES") == nullptr) madvise(data, bytes, MADV_HUGEPAGE);
#endif
    return new Block{data, bytes};
  }

  static void release(void* context) {
    if (context == nullptr) return;
    instance().put_back(static_cast<Block*>(context));
  }

  void put_back(Block* block) {
    report(block, -static_cast<int64_t>(block->bytes));
    std::list<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_bytes_ -= static_cast<int64_t>(block->bytes);
      cached_.push_back(block);  // most recently freed last
      cached_bytes_ += static_cast<int64_t>(block->bytes);
      evict_locked(evicted);
    }
    free_blocks(evicted);
  }

  // Least recently freed first, until the cache is within its limit.
  void evict_locked(std::list<Block*>& evicted) {
    while (cached_bytes_ > limit_ && !cached_.empty()) {
      cached_bytes_ -= static_cast<int64_t>(cached_.front()->bytes);
      evicted.splice(evicted.end(), cached_, cached_.begin());
    }
  }

  static void free_blocks(std::list<Block*>& blocks) {
    for (Block* block : blocks) {
      std::free(block->data);
      delete block;
    }
    blocks.clear();
  }

  // torch.profiler(profile_memory=True) sees these blocks as the CPU allocator's.
  void report(const Block* block, int64_t delta) {
    if (!c10::memoryProfilingEnabled()) return;
    int64_t in_use = 0, reserved = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      in_use = in_use_bytes_;
      reserved = in_use_bytes_ + cached_bytes_;
    }
    c10::reportMemoryUsageToProfiler(block->data, delta, static_cast<size_t>(in_use),
                                     static_cast<size_t>(reserved),
                                     c10::Device(c10::DeviceType::CPU));
  }

 public:
  // Never destroyed: tensors may be freed during interpreter shutdown, after statics.
  static BufferCache& instance() {
    static BufferCache* cache = [] {
      auto* c = new BufferCache();
#if defined(__unix__)
      // A fork while another thread held the lock would leave the child's copy locked
      // for ever (DataLoader workers fork); the child starts from a fresh lock.
      pthread_atfork(nullptr, nullptr, [] { new (&instance().mutex_) std::mutex(); });
#endif
      return c;
    }();
    return *cache;
  }

 private:
  std::mutex mutex_;
  std::list<Block*> cached_;
  int64_t cached_bytes_ = 0, in_use_bytes_ = 0, limit_;
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace

BufferCacheStats buffer_cache_stats() { return BufferCache::instance().stats(); }

void empty_buffer_cache() { BufferCache::instance().empty(); }

void set_buffer_cache_limit(int64_t bytes) { BufferCache::instance().set_limit(bytes); }

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const bool cpu = options.device().is_cpu() && !options.pinned_memory() &&
                   options.layout() == at::kStrided;
  if (cpu) {
    const auto dtype = c10::typeMetaToScalarType(options.dtype());
    int64_t numel = 1;
    for (const int64_t s : sizes) numel *= s;
    if (static_cast<size_t>(numel) * c10::elementSize(dtype) >= kCachedMinBytes || poison())
      return at::detail::empty_generic(sizes, &BufferCache::instance(),
                                       c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                       c10::MemoryFormat::Contiguous);
  }
  return at::empty(sizes, options);
}

}  // namespace rnnkernels::cpu
