// The CPU backend's layer-normalised LSTM recurrence, forward and backward (Note
// [layer-normalised LSTM] in cell_math.h, Note [two-phase step] in ln_lstm_isa.h).

#include "cpu/recurrence_common.h"

namespace rnnkernels::cpu::detail {

// ---------------------------------------------------------------- layer-normalised LSTM

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward_cpu(
    const at::Tensor& x_side, at::TensorList w_hh, at::TensorList ln_hh_weight,
    at::TensorList ln_c_weight, at::TensorList ln_c_bias, const at::Tensor& h0,
    const at::Tensor& c0_in, const std::optional<at::Tensor>& batch_sizes, bool need_workspace) {
  constexpr const char* op = "rnnkernels::layer_norm_lstm_forward";
  const ForwardInputs in =
      prepare_forward(op, Cell::kLstm, x_side, w_hh, {}, {}, h0, batch_sizes, "x_side");
  const Dims& d = in.d;
  const LayerNormParams ln =
      check_layer_norm_params(op, d, x_side, "x_side", ln_hh_weight, ln_c_weight, ln_c_bias);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const at::Tensor c0 = check_c0(op, d, c0_in, x_side, "x_side");
  const auto opts = x_side.options();
  const int64_t ws_width = math::ln_lstm_workspace_width(H);
  at::Tensor out = empty_large({N, D * H}, opts);
  at::Tensor h_n = empty_large({D, B, H}, opts);
  at::Tensor c_n = empty_large({D, B, H}, opts);
  at::Tensor ws = empty_large({D, need_workspace ? N : 0, ws_width}, opts);

  AT_DISPATCH_FLOATING_TYPES(x_side.scalar_type(), "rnnkernels_layer_norm_lstm_forward", [&] {
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<LnLstmForwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.x_side = in.x_proj.data_ptr<scalar_t>() + i * 4 * H;
      a.ld_x_side = D * 4 * H;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.ln_hh_weight = ln.hh_weight[i].data_ptr<scalar_t>();
      a.ln_c_weight = ln.c_weight[i].data_ptr<scalar_t>();
      a.ln_c_bias = ptr_or_null<scalar_t>(ln.c_bias, i);
      a.h0 = in.h0.data_ptr<scalar_t>() + i * B * H;
      a.c0 = c0.data_ptr<scalar_t>() + i * B * H;
      a.out = out.data_ptr<scalar_t>() + i * H;
      a.ld_out = D * H;
      a.h_n = h_n.data_ptr<scalar_t>() + i * B * H;
      a.c_n = c_n.data_ptr<scalar_t>() + i * B * H;
      a.workspace = need_workspace ? ws.data_ptr<scalar_t>() + i * N * ws_width : nullptr;
      scratch[i] = scratch_bytes(kern.ln_lstm_forward_scratch(a, 1), x_side);
      a.scratch = scratch[i].data_ptr();
    }
    run_directions(op, D, B * 4 * H * H, [&](int64_t i, Team& team, SliceRange mine) {
      kern.ln_lstm_forward(args[i], team, mine);
    });
  });
  return {out, h_n, c_n, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>>
layer_norm_lstm_backward_cpu(const std::optional<at::Tensor>& grad_out,
                             const std::optional<at::Tensor>& grad_h_n,
                             const std::optional<at::Tensor>& grad_c_n_in, at::TensorList w_hh,
                             at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
                             at::TensorList ln_c_bias, const at::Tensor& h0,
                             const at::Tensor& c0_in, const at::Tensor& out,
                             const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes) {
  constexpr const char* op = "rnnkernels::layer_norm_lstm_backward";
  const BackwardInputs in = host::prepare_backward(kCpu, op, Cell::kLstm, grad_out, grad_h_n, w_hh,
                                                   {}, {}, h0, out, ws, batch_sizes, math::kLnRstd,
                                                   math::kLnRstdValues);
  const Dims& d = in.d;
  const LayerNormParams ln =
      check_layer_norm_params(op, d, out, "output", ln_hh_weight, ln_c_weight, ln_c_bias);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const int64_t ws_width = math::ln_lstm_workspace_width(H);
  const at::Tensor c0 = check_c0(op, d, c0_in, out, "output");
  const std::optional<at::Tensor> grad_c_n = check_grad_c_n(op, d, grad_c_n_in, out);
  const auto opts = out.options();
  at::Tensor grad_x_side = empty_large({N, D * 4 * H}, opts);
  at::Tensor grad_h0 = empty_large({D, B, H}, opts);
  at::Tensor grad_c0 = empty_large({D, B, H}, opts);
  at::Tensor grad_product = empty_large({D, N, 4 * H}, opts);
  at::Tensor grad_cell_norm = empty_large({D, N, H}, opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh),
                          grad_ln_hh = empty_like_all(ln.hh_weight),
                          grad_ln_c = empty_like_all(ln.c_weight),
                          grad_ln_c_bias = empty_like_all(ln.c_bias);

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnnkernels_layer_norm_lstm_backward", [&] {
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<LnLstmBackwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.grad_out = in.grad_out ? in.grad_out->data_ptr<scalar_t>() + i * H : nullptr;
      a.ld_grad_out = D * H;
      a.grad_h_n = in.grad_h_n ? in.grad_h_n->data_ptr<scalar_t>() + i * B * H : nullptr;
      a.grad_c_n = grad_c_n ? grad_c_n->data_ptr<scalar_t>() + i * B * H : nullptr;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.ln_hh_weight = ln.hh_weight[i].data_ptr<scalar_t>();
      a.ln_c_weight = ln.c_weight[i].data_ptr<scalar_t>();
      a.ln_c_bias = ptr_or_null<scalar_t>(ln.c_bias, i);
      a.c0 = c0.data_ptr<scalar_t>() + i * B * H;
      a.workspace = in.ws.data_ptr<scalar_t>() + i * N * ws_width;
      a.grad_x_side = grad_x_side.data_ptr<scalar_t>() + i * 4 * H;
      a.ld_grad_x_side = D * 4 * H;
      a.grad_product = grad_product.data_ptr<scalar_t>() + i * N * 4 * H;
      a.grad_cell_norm = grad_cell_norm.data_ptr<scalar_t>() + i * N * H;
      a.grad_h0 = grad_h0.data_ptr<scalar_t>() + i * B * H;
      a.grad_c0 = grad_c0.data_ptr<scalar_t>() + i * B * H;
      scratch[i] = scratch_bytes(kern.ln_lstm_backward_scratch(a, 1), out);
      a.scratch = scratch[i].data_ptr();
    }
    run_directions(op, D, B * 4 * H * H, [&](int64_t i, Team& team, SliceRange mine) {
      kern.ln_lstm_backward(args[i], team, mine);
    });
    for (const auto i : c10::irange(D)) {
      recurrent_weight_grad<scalar_t>(in.seq, i == 1, grad_product[i], in.out.narrow(1, i * H, H),
                                      in.h0[i], grad_w_hh[i]);
      const at::Tensor ws_dir = in.ws[i];
      // gamma_hh multiplies the normalised product, gamma_c and beta_c LN_c's output.
      at::sum_out(grad_ln_hh[i],
                  grad_x_side.narrow(1, i * 4 * H, 4 * H) *
                      ws_dir.narrow(1, math::kLnProduct * H, 4 * H),
                  {0});
      at::sum_out(grad_ln_c[i], grad_cell_norm[i] * ws_dir.narrow(1, math::kLnCellNormalized * H, H),
                  {0});
      if (!ln.c_bias.empty()) at::sum_out(grad_ln_c_bias[i], grad_cell_norm[i], {0});
    }
  });
  return {grad_x_side, grad_h0, grad_c0, grad_w_hh, grad_ln_hh, grad_ln_c, grad_ln_c_bias};
}

}  // namespace rnnkernels::cpu::detail
