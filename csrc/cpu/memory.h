#pragma once
// Large CPU buffers backed by transparent huge pages where the kernel allows it.
//
// Note [huge pages]
// Every call allocates its outputs (output, workspace, x_proj, gradients) and scratch;
// large ones come fresh from mmap, and their first touch faults in 4 KB pages. On the
// VMs we measure on a fault costs about 2.4 us: writing a fresh 52 MB tensor took 35 ms
// against 3.6 ms for a reused one, more than the recurrence itself at mid sizes. Asking
// for huge pages on the 2 MB-aligned interior of buffers of 4 MB and more (madvise;
// Linux with transparent_hugepage in "madvise" or "always" mode) cuts that to ~8 ms.
// Nothing process-wide changes and no memory is retained between calls.

#include <ATen/ATen.h>

#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnnkernels::cpu {

inline bool huge_pages_enabled() {
  static const bool enabled = std::getenv("RNNKERNELS_NO_HUGE_PAGES") == nullptr;
  return enabled;
}

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!huge_pages_enabled()) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const size_t bytes = t.nbytes();
  if (bytes < (size_t{32} << 20) || !t.device().is_cpu()) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// at::empty for a buffer that is about to be written in full.
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

}  // namespace rnnkernels::cpu
