#pragma once
// LSTM pointwise kernels: one thread per (row, hidden unit) of a step, both directions in
// one launch (gridDim.y). Shapes and aliasing of every pointer: kernels.h.

#include "cuda/device_utils.cuh"

namespace rnnkernels::cuda {

// Forward step: pre = x_proj + gates (+ b_hh), the cell update in place, h (or m for the
// projection), the output row and the workspace row i, f, g, o, c.
template <typename S, typename G, typename X>
__global__ void __launch_bounds__(kThreads)
    lstm_forward_step_kernel(const LstmForwardStep<S, G, X> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t n = d.rows * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const G* gates = d.gates + r * 4 * H + u;
    const X* x = d.x_proj + r * p.ld_x_proj + u;
    A pre[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      pre[q] = to_acc(gates[q * H]) + to_acc(x[q * H]);
      if (d.b_hh != nullptr) pre[q] += to_acc(d.b_hh[q * H + u]);
    }
    const math::LstmGates<A> g = math::lstm_activate(pre[0], pre[1], pre[2], pre[3]);
    A* c_ptr = d.c + r * H + u;
    const A c_prev = *c_ptr;
    const A c = math::lstm_cell_state(g, c_prev);
    A h = math::lstm_hidden(g, c);
    A c_state = c;
    if (d.zoneout != nullptr) {  // Note [zoneout]: h and c both from c before zoneout
      const S* keep = d.zoneout + r * p.ld_zoneout;
      c_state = math::zoneout(c, c_prev, to_acc(keep[p.output + u]));
      if (d.m == nullptr) h = math::zoneout(h, to_acc(d.h[r * H + u]), to_acc(keep[u]));
    }
    *c_ptr = c_state;
    const S h_s = from_acc<S>(h);
    if (d.m != nullptr) {
      d.m[r * H + u] = h_s;
    } else {
      d.h[r * H + u] = h_s;
      d.out[r * p.ld_out + u] = h_s;
    }
    if (d.workspace != nullptr) {
      const int64_t width = math::lstm_workspace_slots(d.zoneout != nullptr) * H;
      A* ws = d.workspace + r * width + u;
      ws[0] = g.i;
      ws[H] = g.f;
      ws[2 * H] = g.g;
      ws[3 * H] = g.o;
      ws[4 * H] = c;
      if (d.zoneout != nullptr) ws[math::lstm_workspace_state_slot(true) * H] = c_state;
    }
  }
}

// Backward step (Note [cuda step rows] in kernels.h).
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads)
    lstm_backward_step_kernel(const LstmBackwardStep<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t H = p.hidden;
  const int64_t visited = p.projection ? d.rows : (d.rows > d.next_rows ? d.rows : d.next_rows);
  const int64_t n = visited * H;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / H;
    const int64_t u = i - r * H;
    const int64_t su = r * H + u;  // element of the [B, H] state buffers and of rec / dm
    A dh;
    if (!p.projection) {
      const A carried = d.dh_carry[su];
      if (r >= d.rows) {
        // Not active at s, active at s+1: the row started at s+1, rec is its dL/dh0.
        d.dh_carry[su] = carried + to_acc(d.rec[su]);
        continue;
      }
      dh = carried;
      if (r < d.next_rows) dh += to_acc(d.rec[su]);
      if (d.grad_out != nullptr) dh += to_acc(d.grad_out[r * p.ld_grad_out + u]);
      if (d.zoneout != nullptr) {  // Note [zoneout]: the unit's share that skips the cell
        const A keep_h = to_acc(d.zoneout[r * p.ld_zoneout + u]);
        d.dh_carry[su] = math::zoneout_carried_grad(dh, keep_h);
        dh = math::zoneout_candidate_grad(dh, keep_h);
      } else {
        d.dh_carry[su] = A(0);
      }
    } else {
      dh = to_acc(d.dh_complete[su]);
    }
    const int64_t width = math::lstm_workspace_slots(d.zoneout != nullptr) * H;
    const int64_t c_state_slot = math::lstm_workspace_state_slot(d.zoneout != nullptr) * H;
    const A* ws = d.workspace + r * width + u;
    const math::LstmGates<A> g{ws[0], ws[H], ws[2 * H], ws[3 * H]};
    const A c = ws[4 * H];
    const A c_prev =
        r < d.prev_rows ? d.prev_workspace[r * width + c_state_slot + u] : to_acc(d.c0[su]);
    A dc = d.dc_carry[su];
    A dc_skip = A(0);
    if (d.zoneout != nullptr) {
      const A keep_c = to_acc(d.zoneout[r * p.ld_zoneout + p.output + u]);
      dc_skip = math::zoneout_carried_grad(dc, keep_c);
      dc = math::zoneout_candidate_grad(dc, keep_c);
    }
    const math::LstmGateGrads<A> grad = math::lstm_cell_backward(dh, dc, g, c, c_prev);
    d.dc_carry[su] = dc + dc_skip;
    const S gi = from_acc<S>(grad.i), gf = from_acc<S>(grad.f);
    const S gg = from_acc<S>(grad.g), go = from_acc<S>(grad.o);
    S* gx = d.grad_x_proj + r * p.ld_grad_x_proj + u;
    gx[0] = gi;
    gx[H] = gf;
    gx[2 * H] = gg;
    gx[3 * H] = go;
    S* gr = d.grad_rec + r * 4 * H + u;
    gr[0] = gi;
    gr[H] = gf;
    gr[2 * H] = gg;
    gr[3 * H] = go;
  }
}

// Projection: dL/dh_t (P wide) of step s, before the host's product dh @ W_hr.
template <typename S, typename G>
__global__ void __launch_bounds__(kThreads) step_grad_h_kernel(const StepGradH<S, G> p) {
  using A = acc_t<S>;
  const auto d = this_direction(p.dir);
  const int64_t P = p.output;
  const int64_t visited = d.rows > d.next_rows ? d.rows : d.next_rows;
  const int64_t n = visited * P;
  for (int64_t i = first_index(); i < n; i += grid_stride()) {
    const int64_t r = i / P;
    const int64_t k = i - r * P;
    const int64_t su = r * P + k;
    const A carried = d.dh_carry[su];
    if (r >= d.rows) {
      d.dh_carry[su] = carried + to_acc(d.rec[su]);
      continue;
    }
    A dh = carried;
    if (r < d.next_rows) dh += to_acc(d.rec[su]);
    if (d.grad_out != nullptr) dh += to_acc(d.grad_out[r * p.ld_grad_out + k]);
    if (d.zoneout != nullptr) {  // grad_h then holds the projection output's share
      const A keep_h = to_acc(d.zoneout[r * p.ld_zoneout + k]);
      d.dh_carry[su] = math::zoneout_carried_grad(dh, keep_h);
      dh = math::zoneout_candidate_grad(dh, keep_h);
    } else {
      d.dh_carry[su] = A(0);
    }
    const S value = from_acc<S>(dh);
    d.grad_h[su] = value;
    d.grad_h_step[su] = value;
  }
}

template <typename S, typename G, typename X>
cudaError_t lstm_forward_step(const LstmForwardStep<S, G, X>& p, cudaStream_t stream) {
  const int64_t n = max_over_directions(p, [](const auto& d) { return d.rows; }) * p.hidden;
  if (n <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, p.directions), stream, p, lstm_forward_step_kernel<S, G, X>);
  return cudaGetLastError();
}

template <typename S, typename G>
cudaError_t lstm_backward_step(const LstmBackwardStep<S, G>& p, cudaStream_t stream) {
  const bool projection = p.projection;
  const int64_t n = max_over_directions(p, [projection](const auto& d) {
                      return projection ? d.rows : std::max(d.rows, d.next_rows);
                    }) * p.hidden;
  if (n <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, p.directions), stream, p, lstm_backward_step_kernel<S, G>);
  return cudaGetLastError();
}

template <typename S, typename G>
cudaError_t step_grad_h(const StepGradH<S, G>& p, cudaStream_t stream) {
  const int64_t n =
      max_over_directions(p, [](const auto& d) { return std::max(d.rows, d.next_rows); }) *
      p.output;
  if (n <= 0) return cudaSuccess;
  RNNKERNELS_LAUNCH(grid_for(n, p.directions), stream, p, step_grad_h_kernel<S, G>);
  return cudaGetLastError();
}

}  // namespace rnnkernels::cuda
