#pragma once
// Elman RNN pointwise kernels (tanh or relu as a template parameter), one thread per
// (row, hidden unit) of a step, both directions in one launch. Shapes: kernels.h.

#include "cuda/device_utils.cuh"

namespace rnnkernels::cuda {

template <typename S, typename G, typename X, math::Nonlinearity kAct>
__global__ void __launch_bounds__(kThreads)
    rnn_forward_step_kernel(const RnnForwardStep<S, G, X> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t n = d.rows * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    A pre = to_acc(d.gates[r * H + u]) + to_acc(d.x_proj[r * p.ld_x_proj + u]);
    if (d.b_hh != nullptr) pre += to_acc(d.b_hh[u]);
    A h_new = math::rnn_activate<kAct>(pre);
    if (d.zoneout != nullptr) {  // Note [zoneout]; the backward needs h before it
      if (d.workspace != nullptr) d.workspace[r * H + u] = h_new;
      h_new = math::zoneout(h_new, to_acc(d.h[r * H + u]), to_acc(d.zoneout[r * p.ld_zoneout + u]));
    }
    const S h = from_acc<S>(h_new);
    d.h[r * H + u] = h;
    d.out[r * p.ld_out + u] = h;
  }
}

// Backward step (Note [cuda step rows] in kernels.h); the activation's derivative is
// taken from its output, as torch does.
template <typename S, typename G, math::Nonlinearity kAct>
__global__ void __launch_bounds__(kThreads)
    rnn_backward_step_kernel(const RnnBackwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t visited = d.rows > d.next_rows ? d.rows : d.next_rows;
  const int64_t n = visited * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const int64_t su = r * H + u;
    const A carried = d.dh_carry[su];
    if (r >= d.rows) {
      d.dh_carry[su] = carried + to_acc(d.rec[su]);
      continue;
    }
    A dh = carried;
    if (r < d.next_rows) dh += to_acc(d.rec[su]);
    if (d.grad_out != nullptr) dh += to_acc(d.grad_out[r * p.ld_grad_out + u]);
    A h;
    if (d.zoneout != nullptr) {  // Note [zoneout]
      const A keep = to_acc(d.zoneout[r * p.ld_zoneout + u]);
      d.dh_carry[su] = math::zoneout_carried_grad(dh, keep);
      dh = math::zoneout_candidate_grad(dh, keep);
      h = d.workspace[r * H + u];
    } else {
      d.dh_carry[su] = A(0);
      h = to_acc(d.out[r * p.ld_out + u]);
    }
    const S grad = from_acc<S>(math::rnn_activate_backward<kAct>(dh, h));
    d.grad_x_proj[r * p.ld_grad_x_proj + u] = grad;
    d.grad_rec[su] = grad;
  }
}

template <typename S, typename G, typename X>
cudaError_t rnn_forward_step(const RnnForwardStep<S, G, X>& p, cudaStream_t stream) {
  const int64_t n = max_over_directions(p, [](const auto& d) { return d.rows; }) * p.hidden;
  if (n <= 0) return cudaSuccess;
  const dim3 grid = grid_for(n, p.directions);
  if (p.relu) {
    RNNKERNELS_LAUNCH(grid, stream, p, rnn_forward_step_kernel<S, G, X, math::Nonlinearity::kRelu>);
  } else {
    RNNKERNELS_LAUNCH(grid, stream, p, rnn_forward_step_kernel<S, G, X, math::Nonlinearity::kTanh>);
  }
  return cudaGetLastError();
}

template <typename S, typename G>
cudaError_t rnn_backward_step(const RnnBackwardStep<S, G>& p, cudaStream_t stream) {
  const int64_t n =
      max_over_directions(p, [](const auto& d) { return std::max(d.rows, d.next_rows); }) *
      p.hidden;
  if (n <= 0) return cudaSuccess;
  const dim3 grid = grid_for(n, p.directions);
  if (p.relu) {
    RNNKERNELS_LAUNCH(grid, stream, p, rnn_backward_step_kernel<S, G, math::Nonlinearity::kRelu>);
  } else {
    RNNKERNELS_LAUNCH(grid, stream, p, rnn_backward_step_kernel<S, G, math::Nonlinearity::kTanh>);
  }
  return cudaGetLastError();
}

}  // namespace rnnkernels::cuda
