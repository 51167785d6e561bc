// The CPU backend's backward recurrences (BPTT): the fused reverse time loops, then the
// weight gradients as GEMMs over all rows.

#include "cpu/recurrence_common.h"

namespace rnnkernels::cpu::detail {

// ---------------------------------------------------------------- backward ops



std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
lstm_backward_cpu(const std::optional<at::Tensor>& grad_out,
                  const std::optional<at::Tensor>& grad_h_n,
                  const std::optional<at::Tensor>& grad_c_n_in, at::TensorList w_hh,
                  at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                  const at::Tensor& c0_in, const at::Tensor& out, const at::Tensor& ws,
                  const std::optional<at::Tensor>& batch_sizes,
                  const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::lstm_backward";
  const bool has_zoneout = zoneout_in.has_value() && zoneout_in->defined();
  const int64_t ws_per_hidden = math::lstm_workspace_slots(has_zoneout);
  const BackwardInputs in = host::prepare_backward(kCpu, op, Cell::kLstm, grad_out, grad_h_n, w_hh,
                                                   b_hh, w_hr, h0, out, ws, batch_sizes,
                                                   ws_per_hidden);
  const Dims& d = in.d;
  const std::optional<at::Tensor> zoneout =
      check_zoneout(op, zoneout_in, out, "output", d, d.output + d.hidden);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, P = d.output, B = d.batch;
  const at::Tensor c0 = check_c0(op, d, c0_in, out, "output");
  const std::optional<at::Tensor> grad_c_n = check_grad_c_n(op, d, grad_c_n_in, out);
  const bool proj = !in.w_hr.empty();
  const auto opts = out.options();
  at::Tensor grad_x_proj = empty_large({N, D * 4 * H}, opts);
  at::Tensor grad_h0 = empty_large({D, B, P}, opts);
  at::Tensor grad_c0 = empty_large({D, B, H}, opts);
  at::Tensor grad_h = empty_large({D, proj ? N : 0, P}, opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh), grad_b_hh = empty_like_all(in.b_hh),
                          grad_w_hr = empty_like_all(in.w_hr);

  RNNKERNELS_DISPATCH_KERNEL_TYPES(out.scalar_type(), "rnnkernels_lstm_backward", [&] {
    using S = compute_t<scalar_t>;
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<LstmBackwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D);
    const bool single_step = is_single_step(in.seq, proj);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      a.skip_initial_product = single_step;
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.output = P;
      a.grad_out = in.grad_out ? in.grad_out->data_ptr<scalar_t>() + i * P : nullptr;
      a.ld_grad_out = D * P;
      a.grad_h_n = in.grad_h_n ? in.grad_h_n->data_ptr<scalar_t>() + i * B * P : nullptr;
      a.grad_c_n = grad_c_n ? grad_c_n->data_ptr<scalar_t>() + i * B * H : nullptr;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.w_hr = ptr_or_null<scalar_t>(in.w_hr, i);
      a.c0 = c0.data_ptr<scalar_t>() + i * B * H;
      a.workspace = in.ws.data_ptr<S>() + i * N * ws_per_hidden * H;
      a.zoneout = zoneout_ptr<S>(zoneout, i);
      a.ld_zoneout = zoneout_ld(zoneout);
      a.grad_x_proj = grad_x_proj.data_ptr<scalar_t>() + i * 4 * H;
      a.ld_grad_x_proj = D * 4 * H;
      a.grad_h0 = grad_h0.data_ptr<scalar_t>() + i * B * P;
      a.grad_c0 = grad_c0.data_ptr<scalar_t>() + i * B * H;
      a.grad_h = proj ? grad_h.data_ptr<scalar_t>() + i * N * P : nullptr;
      scratch[i] = scratch_bytes(kern.lstm_backward_scratch(a, 1), out);
      a.scratch = scratch[i].data_ptr();
    }
    const int64_t step_macs = B * 4 * H * P + (proj ? B * H * P : 0);
    run_directions(op, D, step_macs, [&](int64_t i, Team& team, SliceRange mine) {
      kern.lstm_backward(args[i], team, mine);
    }, RowSplit{B, static_cast<int64_t>(sizeof(scalar_t))});
    for (const auto i : c10::irange(D)) {
      const at::Tensor grad_pre = grad_x_proj.narrow(1, i * 4 * H, 4 * H);
      if (single_step) grad_h0[i].addmm_(grad_pre, in.w_hh[i]);
      recurrent_param_grads<scalar_t>(in, i, grad_pre, grad_w_hh, grad_b_hh);
      if (proj) {
        // h_t = W_hr m_t with m_t = o_t * tanh(c_t): dW_hr = sum_t dh_t^T m_t (c_t and
        // dh_t before zoneout).
        const at::Tensor ws_dir = in.ws[i];
        const at::Tensor m = ws_dir.narrow(1, 3 * H, H) * at::tanh(ws_dir.narrow(1, 4 * H, H));
        if constexpr (std::is_same_v<S, scalar_t>) {
          matmul_into(grad_w_hr[i], grad_h[i].t(), m, std::nullopt, /*accumulate=*/false);
        } else {  // m is in the compute dtype: sum there, round once
          grad_w_hr[i].copy_(at::mm(grad_h[i].t().to(m.scalar_type()), m));
        }
      }
    }
  });
  return {grad_x_proj, grad_h0, grad_c0, grad_w_hh, grad_b_hh, grad_w_hr};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
gru_backward_cpu(const std::optional<at::Tensor>& grad_out,
                 const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                 at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                 const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                 const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::gru_backward";
  const BackwardInputs in = host::prepare_backward(kCpu, op, Cell::kGru, grad_out, grad_h_n, w_hh,
                                                   b_hh, {}, h0, out, ws, batch_sizes,
                                                   math::gru_workspace_slots(false));
  const Dims& d = in.d;
  const std::optional<at::Tensor> zoneout = check_zoneout(op, zoneout_in, out, "output", d,
                                                          d.hidden);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = out.options();
  at::Tensor grad_x_proj = empty_large({N, D * 3 * H}, opts);
  at::Tensor grad_hidden_pre = empty_large({D, N, 3 * H}, opts);
  at::Tensor grad_h0 = empty_large({D, B, H}, opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh), grad_b_hh = empty_like_all(in.b_hh);

  RNNKERNELS_DISPATCH_KERNEL_TYPES(out.scalar_type(), "rnnkernels_gru_backward", [&] {
    using S = compute_t<scalar_t>;
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<GruBackwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D);
    const bool single_step = is_single_step(in.seq, false);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      a.skip_initial_product = single_step;
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.grad_out = in.grad_out ? in.grad_out->data_ptr<scalar_t>() + i * H : nullptr;
      a.ld_grad_out = D * H;
      a.grad_h_n = in.grad_h_n ? in.grad_h_n->data_ptr<scalar_t>() + i * B * H : nullptr;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.h0 = in.h0.data_ptr<scalar_t>() + i * B * H;
      a.out = in.out.data_ptr<scalar_t>() + i * H;
      a.ld_out = D * H;
      a.workspace = in.ws.data_ptr<S>() + i * N * 4 * H;
      a.grad_x_proj = grad_x_proj.data_ptr<scalar_t>() + i * 3 * H;
      a.ld_grad_x_proj = D * 3 * H;
      a.grad_hidden_pre = grad_hidden_pre.data_ptr<scalar_t>() + i * N * 3 * H;
      a.grad_h0 = grad_h0.data_ptr<scalar_t>() + i * B * H;
      a.zoneout = zoneout_ptr<S>(zoneout, i);
      a.ld_zoneout = zoneout_ld(zoneout);
      scratch[i] = scratch_bytes(kern.gru_backward_scratch(a, 1), out);
      a.scratch = scratch[i].data_ptr();
    }
    run_directions(op, D, B * 3 * H * H, [&](int64_t i, Team& team, SliceRange mine) {
      kern.gru_backward(args[i], team, mine);
    });
    for (const auto i : c10::irange(D)) {
      if (single_step) grad_h0[i].addmm_(grad_hidden_pre[i], in.w_hh[i]);
      recurrent_param_grads<scalar_t>(in, i, grad_hidden_pre[i], grad_w_hh, grad_b_hh);
    }
  });
  return {grad_x_proj, grad_h0, grad_w_hh, grad_b_hh};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
rnn_backward_cpu(const std::optional<at::Tensor>& grad_out,
                 const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                 at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                 const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                 c10::string_view nonlinearity, const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::rnn_backward";
  const bool relu = parse_nonlinearity(op, nonlinearity);
  const bool has_zoneout = zoneout_in.has_value() && zoneout_in->defined();
  const BackwardInputs in = host::prepare_backward(kCpu, op, Cell::kRnn, grad_out, grad_h_n, w_hh,
                                                   b_hh, {}, h0, out, ws, batch_sizes,
                                                   math::rnn_workspace_slots(has_zoneout));
  const Dims& d = in.d;
  const std::optional<at::Tensor> zoneout = check_zoneout(op, zoneout_in, out, "output", d,
                                                          d.hidden);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = out.options();
  at::Tensor grad_x_proj = empty_large({N, D * H}, opts);
  at::Tensor grad_h0 = empty_large({D, B, H}, opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh), grad_b_hh = empty_like_all(in.b_hh);

  RNNKERNELS_DISPATCH_KERNEL_TYPES(out.scalar_type(), "rnnkernels_rnn_backward", [&] {
    using S = compute_t<scalar_t>;
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<RnnBackwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D);
    const bool single_step = is_single_step(in.seq, false);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      a.skip_initial_product = single_step;
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.relu = relu;
      a.grad_out = in.grad_out ? in.grad_out->data_ptr<scalar_t>() + i * H : nullptr;
      a.ld_grad_out = D * H;
      a.grad_h_n = in.grad_h_n ? in.grad_h_n->data_ptr<scalar_t>() + i * B * H : nullptr;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.out = in.out.data_ptr<scalar_t>() + i * H;
      a.ld_out = D * H;
      a.grad_x_proj = grad_x_proj.data_ptr<scalar_t>() + i * H;
      a.ld_grad_x_proj = D * H;
      a.grad_h0 = grad_h0.data_ptr<scalar_t>() + i * B * H;
      a.zoneout = zoneout_ptr<S>(zoneout, i);
      a.ld_zoneout = zoneout_ld(zoneout);
      a.workspace = zoneout ? in.ws.data_ptr<S>() + i * N * H : nullptr;
      scratch[i] = scratch_bytes(kern.rnn_backward_scratch(a, 1), out);
      a.scratch = scratch[i].data_ptr();
    }
    run_directions(op, D, B * H * H, [&](int64_t i, Team& team, SliceRange mine) {
      kern.rnn_backward(args[i], team, mine);
    }, RowSplit{B, static_cast<int64_t>(sizeof(scalar_t))});
    for (const auto i : c10::irange(D)) {
      const at::Tensor grad_pre = grad_x_proj.narrow(1, i * H, H);
      if (single_step) grad_h0[i].addmm_(grad_pre, in.w_hh[i]);
      recurrent_param_grads<scalar_t>(in, i, grad_pre, grad_w_hh, grad_b_hh);
    }
  });
  return {grad_x_proj, grad_h0, grad_w_hh, grad_b_hh};
}

}  // namespace rnnkernels::cpu::detail
