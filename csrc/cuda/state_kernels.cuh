#pragma once
// Kernels that move hidden states around: the projection's store into state and output,
// and the gather of every row's previous hidden state for the weight gradient.

#include "cuda/device_utils.cuh"

namespace rnnkernels::cuda {

template <typename S, typename G>
__global__ void __launch_bounds__(kThreads) store_hidden_kernel(const StoreHidden<S, G> p) {
  const auto d = this_direction(p.dir);
  const int64_t P = p.output;
  const int64_t n = d.rows * P;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / P;
    const int64_t k = i - r * P;
    auto value = to_acc(d.product[r * P + k]);
    if (d.zoneout != nullptr)  // Note [zoneout]; d.h still holds the previous state
      value = math::zoneout(value, to_acc(d.h[r * P + k]), to_acc(d.zoneout[r * p.ld_zoneout + k]));
    const S h = from_acc<S>(value);
    d.h[r * P + k] = h;
    d.out[r * p.ld_out + k] = h;
  }
}

// Step of row `row` within the launch window of p (Note [cuda step sizes by value]): the
// last window slot k in [1, window_steps] with offsets[k] <= row; offsets rise with k.
template <typename S>
__device__ __forceinline__ int64_t window_slot(const PreviousHidden<S>& p, int64_t row) {
  int64_t lo = 1, hi = p.window_steps;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (p.offsets[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename S>
__global__ void __launch_bounds__(kThreads) previous_hidden_kernel(const PreviousHidden<S> p) {
  const int64_t P = p.output;
  const int64_t n = p.rows * P;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t row = p.first_row + i / P;
    const int64_t k = i - (i / P) * P;
    // The previous processing step's batch size and first row (0, 0 outside the sequence).
    int64_t b, prev_batch, prev_offset;
    if (p.packed) {
      const int64_t slot = window_slot(p, row);
      b = row - p.offsets[slot];
      const int64_t prev_slot = p.reverse ? slot + 1 : slot - 1;
      prev_batch = p.batch_sizes[prev_slot];
      prev_offset = p.offsets[prev_slot];
    } else {
      const int64_t t = row / p.batch;
      b = row - t * p.batch;
      const int64_t t_prev = p.reverse ? t + 1 : t - 1;
      const bool inside = t_prev >= 0 && t_prev < p.steps;
      prev_batch = inside ? p.batch : 0;
      prev_offset = inside ? t_prev * p.batch : 0;
    }
    p.prev[row * P + k] =
        b < prev_batch ? p.out[(prev_offset + b) * p.ld_out + k] : p.h0[b * P + k];
  }
}

template <typename S, typename G>
cudaError_t store_hidden(const StoreHidden<S, G>& p, cudaStream_t stream) {
  const int64_t n = max_over_directions(p, [](const auto& d) { return d.rows; }) * p.output;
  if (n <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, p.directions), stream, p, store_hidden_kernel<S, G>);
  return cudaGetLastError();
}

template <typename S>
cudaError_t previous_hidden(const PreviousHidden<S>& p, cudaStream_t stream) {
  const int64_t n = p.rows * p.output;
  if (p.packed && (p.window_steps < 1 || p.window_steps > kGatherSteps))
    return cudaErrorInvalidValue;
  if (n <= 0 || p.batch <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, 1), stream, p, previous_hidden_kernel<S>);
  return cudaGetLastError();
}

}  // namespace rnnkernels::cuda
