#pragma once
// Large CPU buffers: a cache of freed blocks, backed by transparent huge pages.
//
// Note [buffer cache]
// Every call allocates its outputs (output, workspace, x_proj, gradients) and scratch.
// Fresh memory costs a page fault per page on first touch, several times the cost of
// filling a reused buffer, and makes large training steps swing in time
// (bench/results/design-notes-measurements.md). Buffers of kCachedMinBytes and
// more therefore come from a cache: a freed block is kept and handed to the next request
// it fits (at most 25% larger), so a training loop's second iteration reuses the first
// one's pages. Blocks are 2 MB aligned multiples of 2 MB with MADV_HUGEPAGE (Linux,
// transparent_hugepage "madvise" or "always"), which cuts the faults of a block's first
// use by orders of magnitude. The cache keeps at most `limit` bytes of freed blocks
// (default 1 GiB; RNNKERNELS_CPU_CACHE_MB, set_limit, 0 turns it off), dropping the least recently
// freed first; empty() returns them all to the system. Tensors stay ordinary: resizable
// storages whose allocator is the cache. RNNKERNELS_CPU_CACHE_POISON=1 (tests) fills
// every buffer with NaN bytes when it is handed out.

#include <ATen/ATen.h>

#include <cstdint>

namespace rnnkernels::cpu {

struct BufferCacheStats {
  int64_t cached_bytes = 0;  // freed blocks kept for reuse
  int64_t in_use_bytes = 0;  // blocks backing live tensors
  int64_t limit_bytes = 0;
  int64_t hits = 0;    // requests served from the cache
  int64_t misses = 0;  // requests that allocated a new block
};

BufferCacheStats buffer_cache_stats();
void empty_buffer_cache();
void set_buffer_cache_limit(int64_t bytes);

// at::empty for a buffer that is about to be written in full; large CPU buffers come
// from the cache (Note [buffer cache]).
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace rnnkernels::cpu
