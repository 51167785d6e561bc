// The CPU backend of the op pair: its forward recurrences (argument checks, output
// allocation, the fused time loops of kernels_isa.h on the thread plan of
// recurrence_common.h) and TORCH_LIBRARY_IMPL(rnnkernels, CPU). The backward recurrences
// are in backward_cpu.cpp, the layer-normalised LSTM in layer_norm_lstm_cpu.cpp; the
// table of all of them under the precision policy (host/precision.h) closes this file.
//
// Note [weight packing]
// The time loops read W_hh (and W_hr) from panels packed at the start of every call.
// Packing costs about as much as one or two time steps, and caching the panels by
// tensor version would be unsafe: writes through `param.data` do not bump the version
// counter, and weight changes between calls must always be seen.
//
// Note [time loop threads]
// One at::parallel_for region runs the whole sequence. Each direction gets a team of
// slices; a slice is a share of every step's register tiles, and the team meets at a
// spin barrier after every step (kernels_isa.h, SliceWorker). A thread that is handed
// several slices (fewer OpenMP threads than asked for, or a nested region) runs them
// together, so the barrier can never wait for a thread that does not exist. Small steps
// run on one slice: a barrier costs about a microsecond, more than a tiny step's work.
// Bidirectional layers run their two directions side by side. An LSTM team may split the
// batch instead and skip the barriers (Note [row-split teams]).

#include <torch/library.h>

#include "cpu/recurrence_common.h"
#include "cpu/recurrence_cpu.h"

namespace rnnkernels::cpu {
namespace detail {

// The input of a fused forward (Note [fused input projection] in kernels_isa.h).
struct FusedInput {
  at::Tensor x;                     // [N, I] contiguous
  std::vector<at::Tensor> w_ih, b_ih;
};

// LSTM forward from x_proj (in.x_proj defined) or from x, W_ih, b_ih (fused).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_run(
    const char* op, const ForwardInputs& in, const FusedInput* fused, const at::Tensor& c0_in,
    bool need_workspace, const std::optional<at::Tensor>& zoneout_in) {
  const Dims& d = in.d;
  const at::Tensor& like = fused != nullptr ? fused->x : in.x_proj;
  const char* like_name = fused != nullptr ? "x" : "x_proj";
  const at::Tensor c0 = check_c0(op, d, c0_in, like, like_name);
  const int64_t N = d.rows, D = d.directions, H = d.hidden, P = d.output, B = d.batch;
  const auto opts = like.options();
  at::Tensor out = empty_large({N, D * P}, opts);
  at::Tensor h_n = empty_large({D, B, P}, opts);
  at::Tensor c_n = empty_large({D, B, H}, opts);
  const std::optional<at::Tensor> zoneout = check_zoneout(op, zoneout_in, like, like_name, d,
                                                          P + H);
  const int64_t ws_width = math::lstm_workspace_slots(zoneout.has_value()) * H;
  at::Tensor ws = empty_large({D, need_workspace ? N : 0, ws_width},
                              opts.dtype(compute_dtype(like.scalar_type())));

  RNNKERNELS_DISPATCH_KERNEL_TYPES(like.scalar_type(), "rnnkernels_lstm_forward", [&] {
    using S = compute_t<scalar_t>;
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<LstmForwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D), h_pre(D);
    const bool single_step = fused == nullptr && is_single_step(in.seq, !in.w_hr.empty());
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      if (single_step) {
        h_pre[i] = recurrent_product(in.h0[i], in.w_hh[i], in.b_hh, i);
        a.h_pre = h_pre[i].data_ptr<scalar_t>();
      }
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.output = P;
      if (fused != nullptr) {
        a.x = fused->x.data_ptr<scalar_t>();
        a.ld_x = fused->x.size(1);
        a.input = fused->x.size(1);
        a.w_ih = fused->w_ih[i].data_ptr<scalar_t>();
        a.b_ih = ptr_or_null<S>(fused->b_ih, i);
      } else {
        a.x_proj = in.x_proj.data_ptr<scalar_t>() + i * 4 * H;
        a.ld_x_proj = D * 4 * H;
      }
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.b_hh = ptr_or_null<S>(in.b_hh, i);
      a.w_hr = ptr_or_null<scalar_t>(in.w_hr, i);
      a.h0 = in.h0.data_ptr<scalar_t>() + i * B * P;
      a.c0 = c0.data_ptr<scalar_t>() + i * B * H;
      a.out = out.data_ptr<scalar_t>() + i * P;
      a.ld_out = D * P;
      a.h_n = h_n.data_ptr<scalar_t>() + i * B * P;
      a.c_n = c_n.data_ptr<scalar_t>() + i * B * H;
      a.workspace = need_workspace ? ws.data_ptr<S>() + i * N * ws_width : nullptr;
      a.zoneout = zoneout_ptr<S>(zoneout, i);
      a.ld_zoneout = zoneout_ld(zoneout);
      scratch[i] = scratch_bytes(kern.lstm_forward_scratch(a, 1), like);
      a.scratch = scratch[i].data_ptr();
    }
    const int64_t input_macs = fused != nullptr ? B * 4 * H * fused->x.size(1) : 0;
    const int64_t step_macs = B * 4 * H * P + (in.w_hr.empty() ? 0 : B * H * P) + input_macs;
    run_directions(op, D, step_macs, [&](int64_t i, Team& team, SliceRange mine) {
      kern.lstm_forward(args[i], team, mine);
    }, RowSplit{B, static_cast<int64_t>(sizeof(scalar_t))});
  });
  return {out, h_n, c_n, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cpu(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  constexpr const char* op = "rnnkernels::lstm_forward";
  const ForwardInputs in =
      prepare_forward(op, Cell::kLstm, x_proj, w_hh, b_hh, w_hr, h0, batch_sizes);
  return lstm_forward_run(op, in, nullptr, c0, need_workspace, zoneout);
}

// x [N, I] and W_ih instead of x_proj: the input projection runs inside the time loop.
// Below a batch of kMinFusedBatch a step is a matrix-vector product bound by reading the
// weights, and fusing would read W_ih once per step instead of once per call (slower than
// unfused at B=1: bench/results/design-notes-measurements.md); those, one-step sequences
// and reduced precision go through input_projection and lstm_forward.
constexpr int64_t kMinFusedBatch = 8;


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_fused_cpu(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  constexpr const char* op = "rnnkernels::lstm_forward_fused";
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape [rows, input_size], got ", x.sizes());
  TORCH_CHECK(w_ih.size() == w_hh.size(), op, ": w_ih has ", w_ih.size(),
              " weights but w_hh has ", w_hh.size());
  TORCH_CHECK(b_ih.size() == b_hh.size(), op, ": b_ih has ", b_ih.size(),
              " biases but b_hh has ", b_hh.size());
  ForwardInputs in;
  in.d = check_weights(op, Cell::kLstm, x, "x", w_hh, b_hh, w_hr, h0);
  const int64_t GH = 4 * in.d.hidden;
  for (const auto i : c10::irange(w_ih.size())) {
    check_same(op, "w_ih", w_ih[i], x, "x");
    check_shape(op, "w_ih[" + std::to_string(i) + "]", w_ih[i], {GH, x.size(1)});
    if (!b_ih.empty()) {
      check_same(op, "b_ih", b_ih[i], x, "x");
      check_shape(op, "b_ih[" + std::to_string(i) + "]", b_ih[i], {GH});
    }
  }
  TORCH_CHECK(x.device().is_cpu(), op, ": the CPU kernel got x on ", x.device());
  in.d.rows = x.size(0);
  in.seq = make_sequence(op, in.d.rows, in.d.batch, batch_sizes);
  if (!has_native_kernels(x.scalar_type()) || is_single_step(in.seq, !w_hr.empty()) || x.size(1) == 0 ||
      in.d.batch < kMinFusedBatch) {
    return recurrence_table().lstm_forward(input_projection(x, w_ih, b_ih), w_hh, b_hh, w_hr,
                                           h0, c0, batch_sizes, need_workspace, zoneout);
  }
  in.h0 = h0.contiguous();
  in.w_hh = contiguous_all(w_hh);
  in.b_hh = in_compute_dtype(contiguous_all(b_hh));
  in.w_hr = contiguous_all(w_hr);
  FusedInput fused{x.contiguous(), contiguous_all(w_ih), in_compute_dtype(contiguous_all(b_ih))};
  return lstm_forward_run(op, in, &fused, c0, need_workspace, zoneout);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::gru_forward";
  const ForwardInputs in = prepare_forward(op, Cell::kGru, x_proj, w_hh, b_hh, {}, h0, batch_sizes);
  const Dims& d = in.d;
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = in.x_proj.options();
  at::Tensor out = empty_large({N, D * H}, opts);
  at::Tensor h_n = empty_large({D, B, H}, opts);
  at::Tensor ws = empty_large({D, need_workspace ? N : 0, math::gru_workspace_slots(false) * H},
                              opts.dtype(compute_dtype(in.x_proj.scalar_type())));
  const std::optional<at::Tensor> zoneout = check_zoneout(op, zoneout_in, in.x_proj, "x_proj", d,
                                                          H);

  RNNKERNELS_DISPATCH_KERNEL_TYPES(in.x_proj.scalar_type(), "rnnkernels_gru_forward", [&] {
    using S = compute_t<scalar_t>;
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<GruForwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D), h_pre(D);
    const bool single_step = is_single_step(in.seq, false);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      if (single_step) {
        h_pre[i] = recurrent_product(in.h0[i], in.w_hh[i], in.b_hh, i);
        a.h_pre = h_pre[i].data_ptr<scalar_t>();
      }
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.x_proj = in.x_proj.data_ptr<scalar_t>() + i * 3 * H;
      a.ld_x_proj = D * 3 * H;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.b_hh = ptr_or_null<S>(in.b_hh, i);
      a.h0 = in.h0.data_ptr<scalar_t>() + i * B * H;
      a.out = out.data_ptr<scalar_t>() + i * H;
      a.ld_out = D * H;
      a.h_n = h_n.data_ptr<scalar_t>() + i * B * H;
      a.workspace = need_workspace ? ws.data_ptr<S>() + i * N * 4 * H : nullptr;
      a.zoneout = zoneout_ptr<S>(zoneout, i);
      a.ld_zoneout = zoneout_ld(zoneout);
      scratch[i] = scratch_bytes(kern.gru_forward_scratch(a, 1), in.x_proj);
      a.scratch = scratch[i].data_ptr();
    }
    run_directions(op, D, B * 3 * H * H, [&](int64_t i, Team& team, SliceRange mine) {
      kern.gru_forward(args[i], team, mine);
    });
  });
  return {out, h_n, ws};
}


std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_cpu(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, c10::string_view nonlinearity,
    bool need_workspace, const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::rnn_forward";
  const bool relu = parse_nonlinearity(op, nonlinearity);
  const ForwardInputs in = prepare_forward(op, Cell::kRnn, x_proj, w_hh, b_hh, {}, h0, batch_sizes);
  const Dims& d = in.d;
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = in.x_proj.options();
  at::Tensor out = empty_large({N, D * H}, opts);
  at::Tensor h_n = empty_large({D, B, H}, opts);
  const std::optional<at::Tensor> zoneout = check_zoneout(op, zoneout_in, in.x_proj, "x_proj", d,
                                                          H);
  // With zoneout the workspace keeps h before zoneout, for the activation's backward.
  const int64_t ws_width = math::rnn_workspace_slots(zoneout.has_value()) * H;
  at::Tensor ws = empty_large({D, need_workspace ? N : 0, ws_width},
                              opts.dtype(compute_dtype(in.x_proj.scalar_type())));

  RNNKERNELS_DISPATCH_KERNEL_TYPES(in.x_proj.scalar_type(), "rnnkernels_rnn_forward", [&] {
    using S = compute_t<scalar_t>;
    const auto& kern = cell_kernels<scalar_t>();
    std::vector<RnnForwardArgs<scalar_t>> args(D);
    std::vector<at::Tensor> scratch(D), h_pre(D);
    const bool single_step = is_single_step(in.seq, false);
    for (const auto i : c10::irange(D)) {
      auto& a = args[i];
      if (single_step) {
        h_pre[i] = recurrent_product(in.h0[i], in.w_hh[i], in.b_hh, i);
        a.h_pre = h_pre[i].data_ptr<scalar_t>();
      }
      a.seq = layout_of(in.seq, i == 1);
      a.hidden = H;
      a.relu = relu;
      a.x_proj = in.x_proj.data_ptr<scalar_t>() + i * H;
      a.ld_x_proj = D * H;
      a.w_hh = in.w_hh[i].data_ptr<scalar_t>();
      a.b_hh = ptr_or_null<S>(in.b_hh, i);
      a.h0 = in.h0.data_ptr<scalar_t>() + i * B * H;
      a.out = out.data_ptr<scalar_t>() + i * H;
      a.ld_out = D * H;
      a.h_n = h_n.data_ptr<scalar_t>() + i * B * H;
      a.zoneout = zoneout_ptr<S>(zoneout, i);
      a.ld_zoneout = zoneout_ld(zoneout);
      a.workspace = need_workspace && zoneout ? ws.data_ptr<S>() + i * N * H : nullptr;
      scratch[i] = scratch_bytes(kern.rnn_forward_scratch(a, 1), in.x_proj);
      a.scratch = scratch[i].data_ptr();
    }
    run_directions(op, D, B * H * H, [&](int64_t i, Team& team, SliceRange mine) {
      kern.rnn_forward(args[i], team, mine);
    }, RowSplit{B, static_cast<int64_t>(sizeof(scalar_t))});
  });
  return {out, h_n, ws};
}

// The layer-normalised LSTM has no bfloat16 kernels of its own.
bool stores_only_float32_and_64(at::ScalarType t) { return t == at::kFloat || t == at::kDouble; }

const host::Recurrence& recurrence_table() {
  using host::with_precision;
  static const host::Recurrence table{
      with_precision<&lstm_forward_cpu, has_native_kernels>,
      with_precision<&lstm_backward_cpu, has_native_kernels>,
      with_precision<&gru_forward_cpu, has_native_kernels>,
      with_precision<&gru_backward_cpu, has_native_kernels>,
      with_precision<&rnn_forward_cpu, has_native_kernels>,
      with_precision<&rnn_backward_cpu, has_native_kernels>,
      with_precision<&layer_norm_lstm_forward_cpu, stores_only_float32_and_64>,
      with_precision<&layer_norm_lstm_backward_cpu, stores_only_float32_and_64>,
      &input_projection,
      &input_projection_backward,
      &lstm_forward_fused_cpu};
  return table;
}

}  // namespace detail

const host::Recurrence& cpu_recurrence() { return detail::recurrence_table(); }

bool stores(at::ScalarType t) { return detail::has_native_kernels(t); }

TORCH_LIBRARY_IMPL(rnnkernels, CPU, m) {
  using Kernels = host::LayerKernels<&detail::recurrence_table, host::NoDeviceGuard>;
  m.impl("rnn_layer", &Kernels::forward);
  m.impl("rnn_layer_backward", &Kernels::backward);
}

}  // namespace rnnkernels::cpu
