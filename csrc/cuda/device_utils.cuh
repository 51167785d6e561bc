#pragma once
// Device helpers shared by the pointwise kernels: conversions between the storage types
// and the math type, 64-bit grid-stride indexing, the launch shape.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/kernels.h"
#include "rnnkernels/cell_math.h"

namespace rnnkernels::cuda {

constexpr int kThreads = 256;

// Launches __VA_ARGS__ (a kernel, template arguments and all) on `grid` x kThreads with
// `params`. tests/ci_include/emulation defines its own, which runs the kernel body on the
// CPU for the emulation test (tests/test_cuda_compile.py).
#ifndef RNNKERNELS_LAUNCH
#define RNNKERNELS_LAUNCH(grid, stream, params, ...) \
  __VA_ARGS__<<<(grid), kThreads, 0, (stream)>>>(params)
#endif
// More blocks than this only add scheduling work: the grid-stride loops cover the rest
// (an H200 holds 132 SMs x 8 blocks of 256 threads at a time). The CPU emulation test
// sets it to 2 so that every kernel walks its grid-stride loop.
#ifndef RNNKERNELS_MAX_BLOCKS
#define RNNKERNELS_MAX_BLOCKS (int64_t{1} << 16)
#endif
constexpr int64_t kMaxBlocks = RNNKERNELS_MAX_BLOCKS;

// ---------------------------------------------------------------- conversions

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(float16_t x) {
  return __half2float(__ushort_as_half(x.bits));
}
__device__ __forceinline__ float to_acc(bfloat16_t x) {
  return __bfloat162float(__ushort_as_bfloat16(x.bits));
}

template <typename S>
struct Store;
template <>
struct Store<float> {
  static __device__ __forceinline__ float from(float x) { return x; }
};
template <>
struct Store<double> {
  static __device__ __forceinline__ double from(double x) { return x; }
};
template <>
struct Store<float16_t> {
  static __device__ __forceinline__ float16_t from(float x) {
    return float16_t{__half_as_ushort(__float2half_rn(x))};
  }
};
template <>
struct Store<bfloat16_t> {
  static __device__ __forceinline__ bfloat16_t from(float x) {
    return bfloat16_t{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
  }
};

// Rounds a math-type value to storage type S (round to nearest even).
template <typename S>
__device__ __forceinline__ S from_acc(acc_t<S> x) {
  return Store<S>::from(x);
}

// ---------------------------------------------------------------- indexing

__device__ __forceinline__ int64_t first_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// This block's direction: a copy of dir[blockIdx.y] (by value, so the parameter array is
// never indexed with a run-time value).
template <typename Dir>
__device__ __forceinline__ Dir this_direction(const Dir (&dir)[kMaxDirections]) {
  return blockIdx.y == 0 ? dir[0] : dir[1];
}

// Grid for `n` elements of the larger direction; gridDim.y is the direction.
inline dim3 grid_for(int64_t n, int64_t directions) {
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks);
  return dim3(static_cast<unsigned int>(blocks), static_cast<unsigned int>(directions), 1);
}

// max over the launched directions of f(dir[d]).
template <typename Params, typename F>
inline int64_t max_over_directions(const Params& p, F&& f) {
  int64_t m = 0;
  for (int64_t d = 0; d < p.directions && d < kMaxDirections; ++d) m = std::max(m, f(p.dir[d]));
  return m;
}

}  // namespace rnnkernels::cuda
