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

// Row `row` of the time-major sequence -> (time t, batch row b).
__device__ __forceinline__ void locate_row(int64_t row, int64_t steps, int64_t batch,
                                           const int64_t* offsets, int64_t& t, int64_t& b) {
  if (offsets == nullptr) {
    t = row / batch;
    b = row - t * batch;
    return;
  }
  // The last t with offsets[t] <= row; offsets[0] = 0 and offsets is strictly increasing.
  int64_t lo = 0, hi = steps - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (offsets[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  t = lo;
  b = row - offsets[t];
}

template <typename S>
__global__ void __launch_bounds__(kThreads) previous_hidden_kernel(const PreviousHidden<S> p) {
  const int64_t P = p.output;
  const int64_t n = p.rows * P;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t row = i / P;
    const int64_t k = i - row * P;
    int64_t t, b;
    locate_row(row, p.steps, p.batch, p.offsets, t, b);
    // The time processed just before t in this direction.
    const int64_t t_prev = p.reverse ? t + 1 : t - 1;
    bool from_out = false;
    int64_t prev_row = 0;
    if (t_prev >= 0 && t_prev < p.steps) {
      const int64_t prev_batch = p.batch_sizes != nullptr ? p.batch_sizes[t_prev] : p.batch;
      const int64_t prev_offset = p.offsets != nullptr ? p.offsets[t_prev] : t_prev * p.batch;
      from_out = b < prev_batch;
      prev_row = prev_offset + b;
    }
    p.prev[i] = from_out ? p.out[prev_row * p.ld_out + k] : p.h0[b * P + k];
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
  if (n <= 0 || p.batch <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, 1), stream, p, previous_hidden_kernel<S>);
  return cudaGetLastError();
}

}  // namespace rnnkernels::cuda
