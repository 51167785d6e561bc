#pragma once
// Layer-normalised LSTM kernels (Note [layer-normalised LSTM] in cell_math.h): per step, the
// row reductions of Note [cuda layer-norm rows] and pointwise kernels with one thread per
// (row, unit), both directions in one launch (gridDim.y). Shapes and aliasing of every
// pointer: kernels.h.
//
// Note [cuda layer-norm rows]
// Layer norm needs statistics of a whole row (the 4H recurrent product, the H cell state)
// before any element of it can be normalised, and in the backward the row means of
// dvhat and dvhat * vhat. Every such reduction runs as two deterministic passes:
//   1. one thread per (row, lane): lane k of a row of `width` values sums the elements
//      k, k + lanes, k + 2*lanes, ... (lanes = ln_row_lanes(width) <= 32; interleaved, so
//      neighbouring threads read neighbouring addresses) into partials[row, k];
//   2. one thread per row combines its lanes in lane order into the row's statistics.
// The pointwise kernel that follows reads them. Forward statistics are each lane's mean
// and sum of squared deviations (two passes over the lane), merged with Chan et al.'s
// pairwise update, so the variance does not suffer the cancellation of E[v^2] - E[v]^2
// when |mean| >> std; backward statistics are plain sums.
// Why not a block per row with a shared-memory or warp-shuffle tree reduction, which is
// what a GPU-tuned version would do (and then fuse a step's passes into one or two
// kernels)? The kernels here may not depend on other threads of their launch:
// tests/test_cuda_compile.py runs them in a CPU emulation that executes the threads of a
// grid one after another, where __syncthreads, shuffles and atomics have no meaning. The
// separate launches give the ordering instead, and no atomics means the same result run
// to run. The cost is a few extra launches per step and up to width/32 serial loads per
// thread, small next to the step's GEMM for the usual sizes.

#include "cuda/device_utils.cuh"

namespace rnnkernels::cuda {
namespace ln_detail {

using math::kLnCell;
using math::kLnCellNormalized;
using math::kLnGates;
using math::kLnProduct;
using math::kLnRstd;

// Number of elements of lane k of a row of `width` values split into `lanes` lanes.
__device__ __forceinline__ int64_t lane_count(int64_t width, int64_t lanes, int64_t k) {
  return (width - k + lanes - 1) / lanes;
}

// Forward statistics: for every row, mean and rstd of `width` values.
template <typename V, typename A>
struct RowMoments {
  int64_t width = 0;
  int64_t lanes = 0;
  int64_t directions = 1;
  struct Dir {
    int64_t rows = 0;
    const V* values = nullptr;  // [rows, width] row stride ld_values
    int64_t ld_values = 0;
    A* partials = nullptr;      // [rows, lanes, 2]: lane mean, lane sum of squared deviations
    A* stats = nullptr;         // [rows, 2]: mean, rstd
  } dir[kMaxDirections];
};

// Backward statistics: for every row, the means of dvhat and dvhat * vhat, where
// dvhat = grad * weight (the gradient w.r.t. the normalised value through its gamma).
template <typename S>
struct RowGradMeans {
  int64_t width = 0;
  int64_t lanes = 0;
  int64_t directions = 1;
  struct Dir {
    int64_t rows = 0;
    const acc_t<S>* grad = nullptr;        // [rows, width] row stride ld_grad
    int64_t ld_grad = 0;
    const S* weight = nullptr;             // [width]
    const acc_t<S>* normalized = nullptr;  // [rows, width] row stride ld_normalized
    int64_t ld_normalized = 0;
    acc_t<S>* partials = nullptr;          // [rows, lanes, 2]: lane sums
    acc_t<S>* stats = nullptr;             // [rows, 2]: mean of dvhat, of dvhat * vhat
  } dir[kMaxDirections];
};

template <typename V, typename A>
__global__ void __launch_bounds__(kThreads) row_moments_partial_kernel(const RowMoments<V, A> p) {
  const auto d = this_direction(p.dir);
  const int64_t n = d.rows * p.lanes;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / p.lanes;
    const int64_t k = i - r * p.lanes;
    const V* row = d.values + r * d.ld_values;
    A sum = A(0);
    for (int64_t j = k; j < p.width; j += p.lanes) sum += to_acc(row[j]);
    const A mean = sum / A(lane_count(p.width, p.lanes, k));
    A squares = A(0);
    for (int64_t j = k; j < p.width; j += p.lanes) {
      const A centered = to_acc(row[j]) - mean;
      squares += centered * centered;
    }
    d.partials[2 * i] = mean;
    d.partials[2 * i + 1] = squares;
  }
}

template <typename V, typename A>
__global__ void __launch_bounds__(kThreads) row_moments_combine_kernel(const RowMoments<V, A> p) {
  const auto d = this_direction(p.dir);
  for (int64_t r = first_index(); r < d.rows; r += grid_stride()) {
    const A* lane = d.partials + r * p.lanes * 2;
    // Chan et al.: merging (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b).
    A count = A(0), mean = A(0), squares = A(0);
    for (int64_t k = 0; k < p.lanes; ++k) {
      const A count_b = A(lane_count(p.width, p.lanes, k));
      const A merged = count + count_b;
      const A delta = lane[2 * k] - mean;
      mean += delta * (count_b / merged);
      squares += lane[2 * k + 1] + delta * delta * (count * count_b / merged);
      count = merged;
    }
    d.stats[2 * r] = mean;
    d.stats[2 * r + 1] = math::layer_norm_rstd(squares / A(p.width));  // biased variance
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads) row_grad_means_partial_kernel(const RowGradMeans<S> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t n = d.rows * p.lanes;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / p.lanes;
    const int64_t k = i - r * p.lanes;
    const A* grad = d.grad + r * d.ld_grad;
    const A* normalized = d.normalized + r * d.ld_normalized;
    A sum = A(0), sum_product = A(0);
    for (int64_t j = k; j < p.width; j += p.lanes) {
      const A dvhat = grad[j] * to_acc(d.weight[j]);
      sum += dvhat;
      sum_product += dvhat * normalized[j];
    }
    d.partials[2 * i] = sum;
    d.partials[2 * i + 1] = sum_product;
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads) row_grad_means_combine_kernel(const RowGradMeans<S> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  for (int64_t r = first_index(); r < d.rows; r += grid_stride()) {
    const A* lane = d.partials + r * p.lanes * 2;
    A sum = A(0), sum_product = A(0);
    for (int64_t k = 0; k < p.lanes; ++k) {
      sum += lane[2 * k];
      sum_product += lane[2 * k + 1];
    }
    d.stats[2 * r] = sum / A(p.width);
    d.stats[2 * r + 1] = sum_product / A(p.width);
  }
}

template <typename V, typename A>
cudaError_t row_moments(const RowMoments<V, A>& p, cudaStream_t stream) {
  const int64_t rows = max_over_directions(p, [](const auto& d) { return d.rows; });
  if (rows <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(rows * p.lanes, p.directions), stream, p,
                    row_moments_partial_kernel<V, A>);
  RNNKERNELS_LAUNCH(grid_for(rows, p.directions), stream, p, row_moments_combine_kernel<V, A>);
  return cudaGetLastError();
}

template <typename S>
cudaError_t row_grad_means(const RowGradMeans<S>& p, cudaStream_t stream) {
  const int64_t rows = max_over_directions(p, [](const auto& d) { return d.rows; });
  if (rows <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(rows * p.lanes, p.directions), stream, p,
                    row_grad_means_partial_kernel<S>);
  RNNKERNELS_LAUNCH(grid_for(rows, p.directions), stream, p, row_grad_means_combine_kernel<S>);
  return cudaGetLastError();
}

// ---------------------------------------------------------------- forward

// R^ = LN(product) without gamma, pre = x_side + gamma_hh * R^, the gates and the cell
// update in place; workspace: i, f, g, o, R^, c and the product's rstd.
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    ln_lstm_forward_gates_kernel(const LnLstmForwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t n = d.rows * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const A mean = d.product_stats[2 * r];
    const A rstd = d.product_stats[2 * r + 1];
    const G* product = d.product + r * 4 * H + u;
    const S* x = d.x_side + r * p.ld_x_side + u;
    A* ws = d.workspace + r * W;
    A pre[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const A normalized = math::layer_norm_normalize(to_acc(product[q * H]), mean, rstd);
      ws[kLnProduct * H + q * H + u] = normalized;
      pre[q] = to_acc(x[q * H]) + to_acc(d.ln_hh_weight[q * H + u]) * normalized;
    }
    const math::LstmGates<A> g = math::lstm_activate(pre[0], pre[1], pre[2], pre[3]);
    A* c_ptr = d.c + r * H + u;
    const A c = math::lstm_cell_state(g, *c_ptr);
    *c_ptr = c;
    ws[kLnGates * H + u] = g.i;
    ws[kLnGates * H + H + u] = g.f;
    ws[kLnGates * H + 2 * H + u] = g.g;
    ws[kLnGates * H + 3 * H + u] = g.o;
    ws[kLnCell * H + u] = c;
    if (u == 0) ws[kLnRstd * H] = rstd;
  }
}

// c^ = LN(c) without gamma, y = gamma_c * c^ + beta_c, h = o * tanh(y); workspace: c^ and
// the rstd of c.
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    ln_lstm_forward_hidden_kernel(const LnLstmForwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t n = d.rows * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const A rstd = d.cell_stats[2 * r + 1];
    A* ws = d.workspace + r * W;
    const A normalized = math::layer_norm_normalize(ws[kLnCell * H + u], d.cell_stats[2 * r], rstd);
    ws[kLnCellNormalized * H + u] = normalized;
    if (u == 0) ws[kLnRstd * H + 1] = rstd;
    A y = to_acc(d.ln_c_weight[u]) * normalized;
    if (d.ln_c_bias != nullptr) y += to_acc(d.ln_c_bias[u]);
    const S h = from_acc<S>(math::ln_lstm_hidden(ws[kLnGates * H + 3 * H + u], y));
    d.h[r * H + u] = h;
    d.out[r * p.ld_out + u] = h;
  }
}

// ---------------------------------------------------------------- backward

// dh assembled as in the LSTM (Note [cuda step rows]); then the gradients of o's
// pre-activation and of y = LN_c(c).
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    ln_lstm_backward_output_kernel(const LnLstmBackwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t n = (d.rows > d.next_rows ? d.rows : d.next_rows) * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const int64_t su = r * H + u;  // element of the [B, H] state buffers and of rec
    const A carried = d.dh_carry[su];
    if (r >= d.rows) {
      // Not active at s, active at s+1: the row started at s+1, rec is its dL/dh0.
      d.dh_carry[su] = carried + to_acc(d.rec[su]);
      continue;
    }
    A dh = carried;
    if (r < d.next_rows) dh += to_acc(d.rec[su]);
    if (d.grad_out != nullptr) dh += to_acc(d.grad_out[r * p.ld_grad_out + u]);
    d.dh_carry[su] = A(0);
    const A* ws = d.workspace + r * W;
    A y = to_acc(d.ln_c_weight[u]) * ws[kLnCellNormalized * H + u];
    if (d.ln_c_bias != nullptr) y += to_acc(d.ln_c_bias[u]);
    const math::LnLstmOutputGrads<A> grad =
        math::ln_lstm_output_backward(dh, ws[kLnGates * H + 3 * H + u], math::tanh(y));
    d.grad_pre[r * 4 * H + 3 * H + u] = grad.o;
    d.grad_x_side[r * p.ld_grad_x_side + 3 * H + u] = from_acc<S>(grad.o);
    d.grad_y[su] = grad.y;
  }
}

// dc = the carried dc + LN_c's backward of dc^ = dy * gamma_c; the gradients of i, f, g
// and the dc carried to the previous step.
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    ln_lstm_backward_state_kernel(const LnLstmBackwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t n = d.rows * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const int64_t su = r * H + u;
    const A* ws = d.workspace + r * W;
    const A grad_normalized = d.grad_y[su] * to_acc(d.ln_c_weight[u]);
    const A dc_ln = math::layer_norm_backward(grad_normalized, ws[kLnCellNormalized * H + u],
                                              ws[kLnRstd * H + 1], d.cell_stats[2 * r],
                                              d.cell_stats[2 * r + 1]);
    const math::LstmGates<A> g{ws[kLnGates * H + u], ws[kLnGates * H + H + u],
                               ws[kLnGates * H + 2 * H + u], ws[kLnGates * H + 3 * H + u]};
    const A c_prev = r < d.prev_rows ? d.prev_workspace[r * W + kLnCell * H + u]
                                     : to_acc(d.c0[su]);
    math::LstmGateGrads<A> grad{};
    d.dc_carry[su] = math::lstm_state_gates_backward(d.dc_carry[su] + dc_ln, g, c_prev, grad);
    A* gp = d.grad_pre + r * 4 * H + u;
    gp[0] = grad.i;
    gp[H] = grad.f;
    gp[2 * H] = grad.g;
    S* gx = d.grad_x_side + r * p.ld_grad_x_side + u;
    gx[0] = from_acc<S>(grad.i);
    gx[H] = from_acc<S>(grad.f);
    gx[2 * H] = from_acc<S>(grad.g);
  }
}

// dR = LN_hh's backward of dR^ = d_pre * gamma_hh, one thread per (row, element of 4H).
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    ln_lstm_backward_product_kernel(const LnLstmBackwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t n = d.rows * 4 * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / (4 * H);
    const int64_t j = i - r * 4 * H;
    const A* ws = d.workspace + r * W;
    const A grad_normalized = d.grad_pre[i] * to_acc(d.ln_hh_weight[j]);
    const S grad = from_acc<S>(math::layer_norm_backward(
        grad_normalized, ws[kLnProduct * H + j], ws[kLnRstd * H], d.product_stats[2 * r],
        d.product_stats[2 * r + 1]));
    d.grad_product[i] = grad;
    d.grad_rec[i] = grad;
  }
}

}  // namespace ln_detail

template <typename S, typename G>
cudaError_t ln_lstm_forward_step(const LnLstmForwardStep<S, G>& p, cudaStream_t stream) {
  using A = acc_t<S>;
  const int64_t rows = max_over_directions(p, [](const auto& d) { return d.rows; });
  if (rows <= 0) return cudaSuccess;
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  ln_detail::RowMoments<G, A> product;
  product.width = 4 * H;
  product.lanes = ln_row_lanes(4 * H);
  product.directions = p.directions;
  ln_detail::RowMoments<A, A> cell;
  cell.width = H;
  cell.lanes = ln_row_lanes(H);
  cell.directions = p.directions;
  for (int64_t k = 0; k < p.directions && k < kMaxDirections; ++k) {
    const auto& d = p.dir[k];
    product.dir[k].rows = cell.dir[k].rows = d.rows;
    product.dir[k].values = d.product;
    product.dir[k].ld_values = 4 * H;
    product.dir[k].partials = cell.dir[k].partials = d.partials;
    product.dir[k].stats = d.product_stats;
    cell.dir[k].values = d.workspace + math::kLnCell * H;
    cell.dir[k].ld_values = W;
    cell.dir[k].stats = d.cell_stats;
  }
  cudaError_t error = ln_detail::row_moments(product, stream);
  if (error != cudaSuccess) return error;
  RNNKERNELS_LAUNCH(grid_for(rows * H, p.directions), stream, p,
                    ln_detail::ln_lstm_forward_gates_kernel<S, G>);
  error = ln_detail::row_moments(cell, stream);
  if (error != cudaSuccess) return error;
  RNNKERNELS_LAUNCH(grid_for(rows * H, p.directions), stream, p,
                    ln_detail::ln_lstm_forward_hidden_kernel<S, G>);
  return cudaGetLastError();
}

template <typename S, typename G>
cudaError_t ln_lstm_backward_step(const LnLstmBackwardStep<S, G>& p, cudaStream_t stream) {
  const int64_t visited =
      max_over_directions(p, [](const auto& d) { return std::max(d.rows, d.next_rows); });
  if (visited <= 0) return cudaSuccess;
  const int64_t rows = max_over_directions(p, [](const auto& d) { return d.rows; });
  const int64_t H = p.hidden;
  const int64_t W = math::ln_lstm_workspace_width(H);
  RNNKERNELS_LAUNCH(grid_for(visited * H, p.directions), stream, p,
                    ln_detail::ln_lstm_backward_output_kernel<S, G>);
  cudaError_t error = cudaGetLastError();
  if (rows <= 0 || error != cudaSuccess) return error;
  ln_detail::RowGradMeans<S> cell;
  cell.width = H;
  cell.lanes = ln_row_lanes(H);
  cell.directions = p.directions;
  ln_detail::RowGradMeans<S> product;
  product.width = 4 * H;
  product.lanes = ln_row_lanes(4 * H);
  product.directions = p.directions;
  for (int64_t k = 0; k < p.directions && k < kMaxDirections; ++k) {
    const auto& d = p.dir[k];
    cell.dir[k].rows = product.dir[k].rows = d.rows;
    cell.dir[k].grad = d.grad_y;  // dc^ = dy * gamma_c, c^
    cell.dir[k].ld_grad = H;
    cell.dir[k].weight = d.ln_c_weight;
    cell.dir[k].normalized = d.workspace + math::kLnCellNormalized * H;
    cell.dir[k].ld_normalized = W;
    cell.dir[k].stats = d.cell_stats;
    product.dir[k].grad = d.grad_pre;  // dR^ = d_pre * gamma_hh, R^
    product.dir[k].ld_grad = 4 * H;
    product.dir[k].weight = d.ln_hh_weight;
    product.dir[k].normalized = d.workspace + math::kLnProduct * H;
    product.dir[k].ld_normalized = W;
    product.dir[k].stats = d.product_stats;
    cell.dir[k].partials = product.dir[k].partials = d.partials;
  }
  error = ln_detail::row_grad_means(cell, stream);
  if (error != cudaSuccess) return error;
  RNNKERNELS_LAUNCH(grid_for(rows * H, p.directions), stream, p,
                    ln_detail::ln_lstm_backward_state_kernel<S, G>);
  error = ln_detail::row_grad_means(product, stream);
  if (error != cudaSuccess) return error;
  RNNKERNELS_LAUNCH(grid_for(rows * 4 * H, p.directions), stream, p,
                    ln_detail::ln_lstm_backward_product_kernel<S, G>);
  return cudaGetLastError();
}

}  // namespace rnnkernels::cuda
