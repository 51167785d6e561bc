#pragma once
// CPU emulation stand-in for cuda_runtime.h (tests/test_cuda_compile.py): the execution
// space keywords, the launch geometry variables, and RNNKERNELS_LAUNCH, which runs every
// thread of every block of a launch one after the other on the calling CPU thread. The
// kernels of csrc/cuda have no dependency between the threads of one launch (each thread
// owns its elements), so sequential execution computes what the GPU computes.

#include <cstdint>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 blockIdx, threadIdx;
inline thread_local dim3 blockDim, gridDim;

namespace rnnkernels_emulation {

// Runs body() once per (block, thread) of grid x block, with the launch variables set;
// a configuration the GPU would reject sets the error cudaGetLastError() returns.
template <typename Body>
void launch(dim3 grid, dim3 block, Body&& body) {
  if (grid.x == 0 || grid.x > 2147483647u || grid.y == 0 || grid.y > 65535u || grid.z == 0 ||
      grid.z > 65535u || block.x == 0 || block.x * block.y * block.z > 1024u) {
    last_error() = cudaErrorInvalidConfiguration;
    return;
  }
  gridDim = grid;
  blockDim = block;
  for (unsigned int bz = 0; bz < grid.z; ++bz)
    for (unsigned int by = 0; by < grid.y; ++by)
      for (unsigned int bx = 0; bx < grid.x; ++bx)
        for (unsigned int tz = 0; tz < block.z; ++tz)
          for (unsigned int ty = 0; ty < block.y; ++ty)
            for (unsigned int tx = 0; tx < block.x; ++tx) {
              blockIdx = uint3{bx, by, bz};
              threadIdx = uint3{tx, ty, tz};
              body();
            }
}

}  // namespace rnnkernels_emulation

#define RNNKERNELS_LAUNCH(grid, stream, params, ...) \
  ::rnnkernels_emulation::launch((grid), dim3(kThreads), [&] { __VA_ARGS__(params); })
