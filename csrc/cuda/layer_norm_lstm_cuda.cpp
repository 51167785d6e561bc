// The CUDA backend's layer-normalised LSTM recurrence, forward and backward (Note
// [layer-normalised LSTM] in cell_math.h).

#include "cuda/recurrence_common.h"

namespace rnnkernels::cuda::detail {

// ---------------------------------------------------------------- layer-normalised LSTM

// Note [cuda layer-normalised LSTM]
// The engine of Note [cuda engine] with the passes of Note [layer-normalised LSTM]
// (cell_math.h): per step ONE recurrent GEMM for both directions, then
// ln_lstm_forward_step, which enqueues the row statistics of the product, the gates,
// the row statistics of c and h (Note [cuda layer-norm rows] in ln_lstm_kernels.cuh).
// The backward per step: ONE GEMM dR_{s+1} @ W_hh, then ln_lstm_backward_step. After the
// sweep dW_hh is one GEMM per direction (dR^T @ h_prev) and the three LN parameter
// gradients are column sums (at::sum: reductions, no atomics) of d_pre * R^, dy * c^ and
// dy. Precision as in Note [cuda precision]: fp32 math, cell state, workspace and
// scratch for the 16-bit types.

// out [N, D*H], h_state [D, B, H] (starts as h0, ends as h_n), c_state [D, B, H] (A),
// ws [D, N, 10H+2] (A) or empty.
template <typename S, typename G>
void run_layer_norm_lstm_forward(const ForwardInputs& in, const LayerNormParams& ln,
                                 const at::Tensor& out, const at::Tensor& h_state,
                                 const at::Tensor& c_state, const at::Tensor& ws,
                                 bool need_workspace) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, B = dm.batch;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t T = in.seq.steps();
  const cudaStream_t stream = current_stream();
  const auto g_opts = in.x_proj.options().dtype(scalar_type_of<G>());
  const auto acc_opts = in.x_proj.options().dtype(scalar_type_of<A>());

  const at::Tensor product = at::empty({D * B * 4 * H}, g_opts);
  StepProduct recurrent_product(h_state, stack_directions(in.w_hh).transpose(1, 2), product);
  // Without a workspace the passes of a step still pass values through workspace rows.
  const at::Tensor step_rows = at::empty({D, need_workspace ? 0 : B, W}, acc_opts);
  const at::Tensor partials = at::empty({D, B, ln_row_lanes(4 * H), 2}, acc_opts);
  const at::Tensor stats = at::empty({2, D, B, 2}, acc_opts);  // product's, then c's

  const S* x_side = ptr<S>(in.x_proj);
  S* out_p = ptr<S>(out);
  S* h_p = ptr<S>(h_state);
  A* c_p = ptr<A>(c_state);
  A* ws_p = need_workspace ? ptr<A>(ws) : ptr<A>(step_rows);
  const G* product_p = ptr<G>(product);

  LnLstmForwardStep<S, G> step;
  step.hidden = H;
  step.directions = D;
  step.ld_x_side = D * 4 * H;
  step.ld_out = D * H;
  for (int64_t s = 0; s < T; ++s) {
    const StepRows sr(in.seq, D, s);
    const int64_t M = sr.max_rows;
    recurrent_product.run(M);
    for (int64_t d = 0; d < D; ++d) {
      auto& q = step.dir[d];
      q.rows = sr.rows[d];
      q.product = product_p + d * M * 4 * H;
      q.x_side = x_side + sr.offset[d] * D * 4 * H + d * 4 * H;
      q.ln_hh_weight = ptr<S>(ln.hh_weight[d]);
      q.ln_c_weight = ptr<S>(ln.c_weight[d]);
      q.ln_c_bias = ptr_or_null<S>(ln.c_bias, d);
      q.c = c_p + d * B * H;
      q.h = h_p + d * B * H;
      q.out = out_p + sr.offset[d] * D * H + d * H;
      q.workspace = ws_p + (need_workspace ? (d * N + sr.offset[d]) * W : d * B * W);
      q.partials = ptr<A>(partials) + d * partials.stride(0);
      q.product_stats = ptr<A>(stats) + d * B * 2;
      q.cell_stats = ptr<A>(stats) + (D + d) * B * 2;
    }
    RNNKERNELS_CUDA_CHECK(ln_lstm_forward_step(step, stream));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward_cuda(
    const at::Tensor& x_side, at::TensorList w_hh, at::TensorList ln_hh_weight,
    at::TensorList ln_c_weight, at::TensorList ln_c_bias, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes, bool need_workspace) {
  constexpr const char* op = "rnnkernels::layer_norm_lstm_forward";
  const DeviceGuard guard(x_side.device());
  const ForwardInputs in =
      prepare_forward(op, Cell::kLstm, x_side, w_hh, {}, {}, h0, batch_sizes, "x_side",
                      /*float_input_ok=*/false);
  const Dims& d = in.d;
  const LayerNormParams ln =
      check_layer_norm_params(op, d, x_side, "x_side", ln_hh_weight, ln_c_weight, ln_c_bias);
  check_c0(op, d, c0, x_side, "x_side");
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = in.x_proj.options();
  const auto acc_opts = opts.dtype(workspace_dtype(x_side.scalar_type()));
  at::Tensor out = at::empty({N, D * H}, opts);
  at::Tensor h_n = copy_or_zeros(in.h0, {D, B, H}, opts);
  at::Tensor c_state = copy_or_zeros(c0, {D, B, H}, acc_opts);
  at::Tensor ws =
      at::empty({D, need_workspace ? N : 0, math::ln_lstm_workspace_width(H)}, acc_opts);
  dispatch_types(op, in.x_proj, [&](auto types) {
    using T = decltype(types);
    run_layer_norm_lstm_forward<typename T::S, typename T::G>(in, ln, out, h_n, c_state, ws,
                                                              need_workspace);
  });
  return {out, h_n, to_dtype(c_state, x_side.scalar_type()), ws};
}

// dh_carry, dc_carry [D, B, H] (A): grad_h_n, grad_c_n in, grad_h0, grad_c0 out;
// grad_x_side [N, D*4H]; grad_product [D, N, 4H] (dR, for dW_hh); grad_y [D, N, H] (A).
template <typename S, typename G>
void run_layer_norm_lstm_backward(const BackwardInputs& in, const LayerNormParams& ln,
                                  const at::Tensor& c0, const at::Tensor& dh_carry,
                                  const at::Tensor& dc_carry, const at::Tensor& grad_x_side,
                                  const at::Tensor& grad_product, const at::Tensor& grad_y) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, B = dm.batch;
  const int64_t W = math::ln_lstm_workspace_width(H);
  const int64_t T = in.seq.steps();
  const cudaStream_t stream = current_stream();
  const auto s_opts = in.out.options();
  const auto acc_opts = s_opts.dtype(scalar_type_of<A>());

  const at::Tensor grad_rec = at::zeros({D, B, 4 * H}, s_opts);
  const at::Tensor rec = at::empty({D * B * H}, s_opts.dtype(scalar_type_of<G>()));
  StepProduct rec_product(grad_rec, stack_directions(in.w_hh), rec);
  const at::Tensor grad_pre = at::empty({D, B, 4 * H}, acc_opts);
  const at::Tensor partials = at::empty({D, B, ln_row_lanes(4 * H), 2}, acc_opts);
  const at::Tensor stats = at::empty({2, D, B, 2}, acc_opts);  // c's, then the product's

  const S* grad_out = in.grad_out ? ptr<S>(*in.grad_out) : nullptr;
  A* dh_p = ptr<A>(dh_carry);
  A* dc_p = ptr<A>(dc_carry);
  const A* ws_p = ptr<A>(in.ws);
  const S* c0_p = ptr<S>(c0);
  S* gx_p = ptr<S>(grad_x_side);
  S* gp_p = ptr<S>(grad_product);
  A* gy_p = ptr<A>(grad_y);
  S* grad_rec_p = ptr<S>(grad_rec);
  const G* rec_p = ptr<G>(rec);

  LnLstmBackwardStep<S, G> step;
  step.hidden = H;
  step.directions = D;
  step.ld_grad_out = D * H;
  step.ld_grad_x_side = D * 4 * H;
  for (int64_t s = T - 1; s >= -1; --s) {
    const BackwardStepRows sr(in.seq, D, s);
    rec_product.run(sr.max_next);
    for (int64_t d = 0; d < D; ++d) {
      auto& q = step.dir[d];
      q.rows = sr.rows[d];
      q.next_rows = sr.next[d];
      q.prev_rows = sr.prev[d];
      q.rec = sr.next[d] > 0 ? rec_p + d * sr.max_next * H : nullptr;
      q.grad_out = grad_out != nullptr && sr.rows[d] > 0
                       ? grad_out + sr.offset[d] * D * H + d * H
                       : nullptr;
      q.dh_carry = dh_p + d * B * H;
      q.dc_carry = dc_p + d * B * H;
      q.workspace = ws_p + (d * N + sr.offset[d]) * W;
      q.prev_workspace = sr.prev[d] > 0 ? ws_p + (d * N + sr.prev_offset[d]) * W : nullptr;
      q.c0 = c0_p + d * B * H;
      q.ln_hh_weight = ptr<S>(ln.hh_weight[d]);
      q.ln_c_weight = ptr<S>(ln.c_weight[d]);
      q.ln_c_bias = ptr_or_null<S>(ln.c_bias, d);
      q.grad_x_side = gx_p + sr.offset[d] * D * 4 * H + d * 4 * H;
      q.grad_pre = ptr<A>(grad_pre) + d * B * 4 * H;
      q.grad_y = gy_p + (d * N + sr.offset[d]) * H;
      q.grad_product = gp_p + (d * N + sr.offset[d]) * 4 * H;
      q.grad_rec = grad_rec_p + d * B * 4 * H;
      q.partials = ptr<A>(partials) + d * partials.stride(0);
      q.cell_stats = ptr<A>(stats) + d * B * 2;
      q.product_stats = ptr<A>(stats) + (D + d) * B * 2;
    }
    RNNKERNELS_CUDA_CHECK(ln_lstm_backward_step(step, stream));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>>
layer_norm_lstm_backward_cuda(const std::optional<at::Tensor>& grad_out,
                              const std::optional<at::Tensor>& grad_h_n,
                              const std::optional<at::Tensor>& grad_c_n_in, at::TensorList w_hh,
                              at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
                              at::TensorList ln_c_bias, const at::Tensor& h0,
                              const at::Tensor& c0_in, const at::Tensor& out,
                              const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes) {
  constexpr const char* op = "rnnkernels::layer_norm_lstm_backward";
  const DeviceGuard guard(out.device());
  // Workspace rows: kLnRstd H-wide slots, then the two rstd (Note [layer-normalised LSTM]).
  const BackwardInputs in = host::prepare_backward(kCuda, op, Cell::kLstm, grad_out, grad_h_n, w_hh,
                                                   {}, {}, h0, out, ws, batch_sizes, math::kLnRstd,
                                                   math::kLnRstdValues);
  const Dims& d = in.d;
  const LayerNormParams ln =
      check_layer_norm_params(op, d, out, "output", ln_hh_weight, ln_c_weight, ln_c_bias);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const at::Tensor c0 = check_c0(op, d, c0_in, out, "output");
  const std::optional<at::Tensor> grad_c_n = check_grad_c_n(op, d, grad_c_n_in, out);
  const at::ScalarType dtype = out.scalar_type();
  const auto opts = out.options();
  const auto acc_opts = opts.dtype(workspace_dtype(dtype));
  at::Tensor grad_x_side = at::empty({N, D * 4 * H}, opts);
  at::Tensor grad_product = at::empty({D, N, 4 * H}, opts);
  at::Tensor grad_y = at::empty({D, N, H}, acc_opts);
  at::Tensor dh_carry = copy_or_zeros(in.grad_h_n, {D, B, H}, acc_opts);
  at::Tensor dc_carry = copy_or_zeros(grad_c_n, {D, B, H}, acc_opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh);
  std::vector<at::Tensor> grad_ln_hh_weight, grad_ln_c_weight, grad_ln_c_bias;
  dispatch_types(op, out, [&](auto types) {
    using T = decltype(types);
    using S = typename T::S;
    run_layer_norm_lstm_backward<S, typename T::G>(in, ln, c0, dh_carry, dc_carry, grad_x_side,
                                                   grad_product, grad_y);
    for (int64_t i = 0; i < D; ++i) {
      recurrent_weight_grad<S, typename T::G>(in, i, grad_product[i], grad_w_hh[i]);
      // Column sums over the rows, in the workspace dtype, rounded once.
      const at::Tensor ws_dir = in.ws[i];
      const at::Tensor grad_pre = grad_x_side.narrow(1, i * 4 * H, 4 * H).to(acc_opts.dtype());
      const at::Tensor normalized_product = ws_dir.narrow(1, math::kLnProduct * H, 4 * H);
      const at::Tensor normalized_c = ws_dir.narrow(1, math::kLnCellNormalized * H, H);
      grad_ln_hh_weight.push_back((grad_pre * normalized_product).sum(0).to(dtype));
      grad_ln_c_weight.push_back((grad_y[i] * normalized_c).sum(0).to(dtype));
      if (!ln.c_bias.empty()) grad_ln_c_bias.push_back(grad_y[i].sum(0).to(dtype));
    }
  });
  return {grad_x_side, to_dtype(dh_carry, dtype), to_dtype(dc_carry, dtype), grad_w_hh,
          grad_ln_hh_weight, grad_ln_c_weight, grad_ln_c_bias};
}

}  // namespace rnnkernels::cuda::detail
