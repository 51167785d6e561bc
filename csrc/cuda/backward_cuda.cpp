// The CUDA backend's backward recurrences (BPTT): per step one GEMM for both directions
// and one pointwise kernel, then the weight gradients as GEMMs over all rows.

#include "cuda/recurrence_common.h"

namespace rnnkernels::cuda::detail {

// dh_carry [D, B, P] (A): grad_h_n in, grad_h0 out; dc_carry [D, B, H] (A): grad_c_n in,
// grad_c0 out; grad_h [D, N, P] with projection.
template <typename S, typename G>
void run_lstm_backward(const BackwardInputs& in, const at::Tensor& c0,
                       const at::Tensor& dh_carry, const at::Tensor& dc_carry,
                       const at::Tensor& grad_x_proj, const at::Tensor& grad_h,
                       const Zoneout& zoneout) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, P = dm.output, B = dm.batch;
  const int64_t T = in.seq.steps();
  const bool proj = !in.w_hr.empty();
  const cudaStream_t stream = current_stream();
  const auto s_opts = in.out.options();
  const auto g_opts = s_opts.dtype(scalar_type_of<G>());

  const at::Tensor grad_rec = at::zeros({D, B, 4 * H}, s_opts);
  const at::Tensor rec = at::empty({D * B * P}, g_opts);
  StepProduct rec_product(grad_rec, stack_directions(in.w_hh), rec);
  at::Tensor grad_h_step, dm_buf;
  StepProduct dm_product;
  if (proj) {
    grad_h_step = at::zeros({D, B, P}, s_opts);
    dm_buf = at::empty({D * B * H}, g_opts);
    dm_product = StepProduct(grad_h_step, stack_directions(in.w_hr), dm_buf);
  }
  const S* grad_out = in.grad_out ? ptr<S>(*in.grad_out) : nullptr;
  A* dh_p = ptr<A>(dh_carry);
  A* dc_p = ptr<A>(dc_carry);
  const A* ws_p = ptr<A>(in.ws);
  const S* c0_p = ptr<S>(c0);
  S* gx_p = ptr<S>(grad_x_proj);
  S* grad_rec_p = ptr<S>(grad_rec);
  const G* rec_p = ptr<G>(rec);

  const int64_t ws_width = math::lstm_workspace_slots(zoneout.defined()) * H;
  LstmBackwardStep<S, G> cell;
  cell.hidden = H;
  cell.output = P;
  cell.directions = D;
  cell.ld_grad_out = D * P;
  cell.ld_grad_x_proj = D * 4 * H;
  cell.ld_zoneout = zoneout.ld;
  cell.projection = proj;
  StepGradH<S, G> dh_step;
  dh_step.output = P;
  dh_step.directions = D;
  dh_step.ld_grad_out = D * P;
  dh_step.ld_zoneout = zoneout.ld;
  for (int64_t s = T - 1; s >= -1; --s) {
    const BackwardStepRows sr(in.seq, D, s);
    rec_product.run(sr.max_next);
    auto rec_of = [&](int64_t d) -> const G* {
      return sr.next[d] > 0 ? rec_p + d * sr.max_next * P : nullptr;
    };
    auto grad_out_of = [&](int64_t d) -> const S* {
      return grad_out != nullptr && sr.rows[d] > 0 ? grad_out + sr.offset[d] * D * P + d * P
                                                   : nullptr;
    };
    if (proj) {
      for (int64_t d = 0; d < D; ++d) {
        auto& q = dh_step.dir[d];
        q.rows = sr.rows[d];
        q.next_rows = sr.next[d];
        q.rec = rec_of(d);
        q.grad_out = grad_out_of(d);
        q.dh_carry = dh_p + d * B * P;
        q.grad_h = ptr<S>(grad_h) + (d * N + sr.offset[d]) * P;
        q.grad_h_step = ptr<S>(grad_h_step) + d * B * P;
        q.zoneout = sr.rows[d] > 0 ? zoneout.rows<S>(d, sr.offset[d]) : nullptr;
      }
      RNNKERNELS_CUDA_CHECK(step_grad_h(dh_step, stream));
      dm_product.run(sr.max_rows);
    }
    for (int64_t d = 0; d < D; ++d) {
      auto& q = cell.dir[d];
      q.rows = sr.rows[d];
      q.next_rows = sr.next[d];
      q.prev_rows = sr.prev[d];
      q.rec = proj ? nullptr : rec_of(d);
      q.grad_out = proj ? nullptr : grad_out_of(d);
      q.dh_carry = proj ? nullptr : dh_p + d * B * H;
      q.dh_complete = proj && sr.rows[d] > 0 ? ptr<G>(dm_buf) + d * sr.max_rows * H : nullptr;
      q.dc_carry = dc_p + d * B * H;
      q.workspace = ws_p + (d * N + sr.offset[d]) * ws_width;
      q.prev_workspace =
          sr.prev[d] > 0 ? ws_p + (d * N + sr.prev_offset[d]) * ws_width : nullptr;
      q.c0 = c0_p + d * B * H;
      q.grad_x_proj = gx_p + sr.offset[d] * D * 4 * H + d * 4 * H;
      q.grad_rec = grad_rec_p + d * B * 4 * H;
      q.zoneout = sr.rows[d] > 0 ? zoneout.rows<S>(d, sr.offset[d]) : nullptr;
    }
    RNNKERNELS_CUDA_CHECK(lstm_backward_step(cell, stream));
  }
}

template <typename S, typename G>
void run_gru_backward(const BackwardInputs& in, const at::Tensor& dh_carry,
                      const at::Tensor& grad_x_proj, const at::Tensor& grad_hidden,
                      const Zoneout& zoneout) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, B = dm.batch;
  const int64_t T = in.seq.steps();
  const cudaStream_t stream = current_stream();
  const auto s_opts = in.out.options();

  const at::Tensor grad_rec = at::zeros({D, B, 3 * H}, s_opts);
  const at::Tensor rec = at::empty({D * B * H}, s_opts.dtype(scalar_type_of<G>()));
  StepProduct rec_product(grad_rec, stack_directions(in.w_hh), rec);
  const S* grad_out = in.grad_out ? ptr<S>(*in.grad_out) : nullptr;
  const S* out_p = ptr<S>(in.out);
  const S* h0_p = ptr<S>(in.h0);
  A* dh_p = ptr<A>(dh_carry);
  const A* ws_p = ptr<A>(in.ws);
  S* gx_p = ptr<S>(grad_x_proj);
  S* gh_p = ptr<S>(grad_hidden);
  S* grad_rec_p = ptr<S>(grad_rec);
  const G* rec_p = ptr<G>(rec);

  GruBackwardStep<S, G> step;
  step.hidden = H;
  step.directions = D;
  step.ld_grad_out = D * H;
  step.ld_grad_x_proj = D * 3 * H;
  step.ld_out = D * H;
  step.ld_zoneout = zoneout.ld;
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
      q.workspace = ws_p + (d * N + sr.offset[d]) * 4 * H;
      q.prev_out = sr.prev[d] > 0 ? out_p + sr.prev_offset[d] * D * H + d * H : nullptr;
      q.h0 = h0_p + d * B * H;
      q.grad_x_proj = gx_p + sr.offset[d] * D * 3 * H + d * 3 * H;
      q.grad_hidden = gh_p + (d * N + sr.offset[d]) * 3 * H;
      q.grad_rec = grad_rec_p + d * B * 3 * H;
      q.zoneout = sr.rows[d] > 0 ? zoneout.rows<S>(d, sr.offset[d]) : nullptr;
    }
    RNNKERNELS_CUDA_CHECK(gru_backward_step(step, stream));
  }
}

template <typename S, typename G>
void run_rnn_backward(const BackwardInputs& in, bool relu, const at::Tensor& dh_carry,
                      const at::Tensor& grad_x_proj, const Zoneout& zoneout) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, B = dm.batch;
  const A* ws_p = zoneout.defined() ? ptr<A>(in.ws) : nullptr;
  const int64_t T = in.seq.steps();
  const cudaStream_t stream = current_stream();
  const auto s_opts = in.out.options();

  const at::Tensor grad_rec = at::zeros({D, B, H}, s_opts);
  const at::Tensor rec = at::empty({D * B * H}, s_opts.dtype(scalar_type_of<G>()));
  StepProduct rec_product(grad_rec, stack_directions(in.w_hh), rec);
  const S* grad_out = in.grad_out ? ptr<S>(*in.grad_out) : nullptr;
  const S* out_p = ptr<S>(in.out);
  A* dh_p = ptr<A>(dh_carry);
  S* gx_p = ptr<S>(grad_x_proj);
  S* grad_rec_p = ptr<S>(grad_rec);
  const G* rec_p = ptr<G>(rec);

  RnnBackwardStep<S, G> step;
  step.hidden = H;
  step.directions = D;
  step.ld_grad_out = D * H;
  step.ld_grad_x_proj = D * H;
  step.ld_out = D * H;
  step.ld_zoneout = zoneout.ld;
  step.relu = relu;
  for (int64_t s = T - 1; s >= -1; --s) {
    const BackwardStepRows sr(in.seq, D, s);
    rec_product.run(sr.max_next);
    for (int64_t d = 0; d < D; ++d) {
      auto& q = step.dir[d];
      q.rows = sr.rows[d];
      q.next_rows = sr.next[d];
      q.rec = sr.next[d] > 0 ? rec_p + d * sr.max_next * H : nullptr;
      q.grad_out = grad_out != nullptr && sr.rows[d] > 0
                       ? grad_out + sr.offset[d] * D * H + d * H
                       : nullptr;
      q.dh_carry = dh_p + d * B * H;
      q.out = out_p + sr.offset[d] * D * H + d * H;
      q.grad_x_proj = gx_p + sr.offset[d] * D * H + d * H;
      q.grad_rec = grad_rec_p + d * B * H;
      q.zoneout = sr.rows[d] > 0 ? zoneout.rows<S>(d, sr.offset[d]) : nullptr;
      q.workspace = ws_p != nullptr ? ws_p + (d * N + sr.offset[d]) * H : nullptr;
    }
    RNNKERNELS_CUDA_CHECK(rnn_backward_step(step, stream));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
lstm_backward_cuda(const std::optional<at::Tensor>& grad_out,
                   const std::optional<at::Tensor>& grad_h_n,
                   const std::optional<at::Tensor>& grad_c_n_in, at::TensorList w_hh,
                   at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                   const at::Tensor& c0_in, const at::Tensor& out, const at::Tensor& ws,
                   const std::optional<at::Tensor>& batch_sizes,
                   const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::lstm_backward";
  const DeviceGuard guard(out.device());
  const bool has_zoneout = zoneout_in.has_value() && zoneout_in->defined();
  const BackwardInputs in = host::prepare_backward(kCuda, op, Cell::kLstm, grad_out, grad_h_n, w_hh,
                                                   b_hh, w_hr, h0, out, ws, batch_sizes,
                                                   math::lstm_workspace_slots(has_zoneout));
  const Dims& d = in.d;
  const Zoneout zoneout(op, zoneout_in, out, "output", d, d.output + d.hidden);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, P = d.output, B = d.batch;
  const at::Tensor c0 = check_c0(op, d, c0_in, out, "output");
  const std::optional<at::Tensor> grad_c_n = check_grad_c_n(op, d, grad_c_n_in, out);
  const bool proj = !in.w_hr.empty();
  const auto opts = out.options();
  const auto acc_opts = opts.dtype(workspace_dtype(out.scalar_type()));
  at::Tensor grad_x_proj = at::empty({N, D * 4 * H}, opts);
  at::Tensor dh_carry = copy_or_zeros(in.grad_h_n, {D, B, P}, acc_opts);
  at::Tensor dc_carry = copy_or_zeros(grad_c_n, {D, B, H}, acc_opts);
  at::Tensor grad_h = at::empty({D, proj ? N : 0, P}, opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh), grad_b_hh = empty_like_all(in.b_hh),
                          grad_w_hr = empty_like_all(in.w_hr);
  dispatch_types(op, out, [&](auto types) {
    using T = decltype(types);
    using S = typename T::S;
    using G = typename T::G;
    run_lstm_backward<S, G>(in, c0, dh_carry, dc_carry, grad_x_proj, grad_h, zoneout);
    for (int64_t i = 0; i < D; ++i) {
      param_grads<S, G>(in, i, grad_x_proj.narrow(1, i * 4 * H, 4 * H), grad_w_hh, grad_b_hh);
      if (proj) {
        // h_t = W_hr m_t with m_t = o_t * tanh(c_t): dW_hr = sum_t dh_t^T m_t (c_t and
        // dh_t before zoneout).
        const at::Tensor ws_dir = in.ws[i];
        const at::Tensor m =
            (ws_dir.narrow(1, 3 * H, H) * at::tanh(ws_dir.narrow(1, 4 * H, H)))
                .to(out.scalar_type());
        weight_grad_out<G>(grad_w_hr[i], grad_h[i].t(), m);
      }
    }
  });
  return {grad_x_proj, to_dtype(dh_carry, out.scalar_type()), to_dtype(dc_carry, out.scalar_type()),
          grad_w_hh, grad_b_hh, grad_w_hr};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
gru_backward_cuda(const std::optional<at::Tensor>& grad_out,
                  const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                  at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                  const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                  const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::gru_backward";
  const DeviceGuard guard(out.device());
  const BackwardInputs in = host::prepare_backward(kCuda, op, Cell::kGru, grad_out, grad_h_n, w_hh,
                                                   b_hh, {}, h0, out, ws, batch_sizes,
                                                   math::gru_workspace_slots(false));
  const Dims& d = in.d;
  const Zoneout zoneout(op, zoneout_in, out, "output", d, d.hidden);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = out.options();
  const auto acc_opts = opts.dtype(workspace_dtype(out.scalar_type()));
  at::Tensor grad_x_proj = at::empty({N, D * 3 * H}, opts);
  at::Tensor grad_hidden = at::empty({D, N, 3 * H}, opts);
  at::Tensor dh_carry = copy_or_zeros(in.grad_h_n, {D, B, H}, acc_opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh), grad_b_hh = empty_like_all(in.b_hh);
  dispatch_types(op, out, [&](auto types) {
    using T = decltype(types);
    using S = typename T::S;
    using G = typename T::G;
    run_gru_backward<S, G>(in, dh_carry, grad_x_proj, grad_hidden, zoneout);
    for (int64_t i = 0; i < D; ++i) param_grads<S, G>(in, i, grad_hidden[i], grad_w_hh, grad_b_hh);
  });
  return {grad_x_proj, to_dtype(dh_carry, out.scalar_type()), grad_w_hh, grad_b_hh};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
rnn_backward_cuda(const std::optional<at::Tensor>& grad_out,
                  const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                  at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                  const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                  c10::string_view nonlinearity, const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::rnn_backward";
  const bool relu = parse_nonlinearity(op, nonlinearity);
  const DeviceGuard guard(out.device());
  const bool has_zoneout = zoneout_in.has_value() && zoneout_in->defined();
  const BackwardInputs in = host::prepare_backward(kCuda, op, Cell::kRnn, grad_out, grad_h_n, w_hh,
                                                   b_hh, {}, h0, out, ws, batch_sizes,
                                                   math::rnn_workspace_slots(has_zoneout));
  const Dims& d = in.d;
  const Zoneout zoneout(op, zoneout_in, out, "output", d, d.hidden);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = out.options();
  const auto acc_opts = opts.dtype(workspace_dtype(out.scalar_type()));
  at::Tensor grad_x_proj = at::empty({N, D * H}, opts);
  at::Tensor dh_carry = copy_or_zeros(in.grad_h_n, {D, B, H}, acc_opts);
  std::vector<at::Tensor> grad_w_hh = empty_like_all(in.w_hh), grad_b_hh = empty_like_all(in.b_hh);
  dispatch_types(op, out, [&](auto types) {
    using T = decltype(types);
    using S = typename T::S;
    using G = typename T::G;
    run_rnn_backward<S, G>(in, relu, dh_carry, grad_x_proj, zoneout);
    for (int64_t i = 0; i < D; ++i)
      param_grads<S, G>(in, i, grad_x_proj.narrow(1, i * H, H), grad_w_hh, grad_b_hh);
  });
  return {grad_x_proj, to_dtype(dh_carry, out.scalar_type()), grad_w_hh, grad_b_hh};
}

}  // namespace rnnkernels::cuda::detail
