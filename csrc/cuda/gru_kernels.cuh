#pragma once
// GRU pointwise kernels: one thread per (row, hidden unit) of a step, both directions in
// one launch (gridDim.y). Shapes and aliasing of every pointer: kernels.h.

#include "cuda/device_utils.cuh"

namespace rnnkernels::cuda {

// Forward step: hidden-side pre-activations gates (+ b_hh), input-side x_proj; h is
// updated in place (each thread reads and writes only its own element).
template <typename S, typename G, typename X>
__global__ void __launch_bounds__(kThreads)
    gru_forward_step_kernel(const GruForwardStep<S, G, X> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t n = d.rows * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const G* gates = d.gates + r * 3 * H + u;
    const X* x = d.x_proj + r * p.ld_x_proj + u;
    A hidden_pre[3];
#pragma unroll
    for (int q = 0; q < 3; ++q) {
      hidden_pre[q] = to_acc(gates[q * H]);
      if (d.b_hh != nullptr) hidden_pre[q] += to_acc(d.b_hh[q * H + u]);
    }
    const math::GruGates<A> g =
        math::gru_activate(to_acc(x[0]), to_acc(x[H]), to_acc(x[2 * H]), hidden_pre[0],
                           hidden_pre[1], hidden_pre[2]);
    S* h_ptr = d.h + r * H + u;
    const A h_prev = to_acc(*h_ptr);
    A h_new = math::gru_hidden(g, h_prev);
    if (d.zoneout != nullptr)  // Note [zoneout]
      h_new = math::zoneout(h_new, h_prev, to_acc(d.zoneout[r * p.ld_zoneout + u]));
    const S h = from_acc<S>(h_new);
    *h_ptr = h;
    d.out[r * p.ld_out + u] = h;
    if (d.workspace != nullptr) {
      A* ws = d.workspace + r * 4 * H + u;
      ws[0] = g.r;
      ws[H] = g.z;
      ws[2 * H] = g.n;
      ws[3 * H] = g.hn;
    }
  }
}

// Backward step (Note [cuda step rows] in kernels.h). dh_carry keeps z*dh, the part of
// dL/dh_prev that bypasses W_hh.
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    gru_backward_step_kernel(const GruBackwardStep<S, G> p) {
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
    A dh_skip = A(0);
    if (d.zoneout != nullptr) {  // Note [zoneout]
      const A keep = to_acc(d.zoneout[r * p.ld_zoneout + u]);
      dh_skip = math::zoneout_carried_grad(dh, keep);
      dh = math::zoneout_candidate_grad(dh, keep);
    }
    const A* ws = d.workspace + r * 4 * H + u;
    const math::GruGates<A> g{ws[0], ws[H], ws[2 * H], ws[3 * H]};
    const A h_prev =
        r < d.prev_rows ? to_acc(d.prev_out[r * p.ld_out + u]) : to_acc(d.h0[su]);
    A direct;
    const math::GruGateGrads<A> grad = math::gru_cell_backward(dh, g, h_prev, direct);
    d.dh_carry[su] = direct + dh_skip;
    const S gr = from_acc<S>(grad.r), gz = from_acc<S>(grad.z);
    S* gx = d.grad_x_proj + r * p.ld_grad_x_proj + u;
    gx[0] = gr;
    gx[H] = gz;
    gx[2 * H] = from_acc<S>(grad.n_x);
    const S gn_h = from_acc<S>(grad.n_h);
    S* gh = d.grad_hidden + r * 3 * H + u;
    gh[0] = gr;
    gh[H] = gz;
    gh[2 * H] = gn_h;
    S* grec = d.grad_rec + r * 3 * H + u;
    grec[0] = gr;
    grec[H] = gz;
    grec[2 * H] = gn_h;
  }
}

template <typename S, typename G, typename X>
cudaError_t gru_forward_step(const GruForwardStep<S, G, X>& p, cudaStream_t stream) {
  const int64_t n = max_over_directions(p, [](const auto& d) { return d.rows; }) * p.hidden;
  if (n <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, p.directions), stream, p, gru_forward_step_kernel<S, G, X>);
  return cudaGetLastError();
}

template <typename S, typename G>
cudaError_t gru_backward_step(const GruBackwardStep<S, G>& p, cudaStream_t stream) {
  const int64_t n =
      max_over_directions(p, [](const auto& d) { return std::max(d.rows, d.next_rows); }) *
      p.hidden;
  if (n <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, p.directions), stream, p, gru_backward_step_kernel<S, G>);
  return cudaGetLastError();
}

}  // namespace rnnkernels::cuda
