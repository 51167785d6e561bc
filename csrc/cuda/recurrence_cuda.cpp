// The CUDA backend of the op pair (csrc/host/layer.h): its forward recurrences on x_proj
// (argument checks, allocation, the time loop on the current stream), its input projection
// and TORCH_LIBRARY_IMPL(rnnkernels, CUDA); the backward recurrences (the weight gradients
// as GEMMs after the reverse sweep) are in backward_cuda.cpp, the layer-normalised LSTM in
// layer_norm_lstm_cuda.cpp, the shared host code in recurrence_common.h. The pointwise kernels sit behind
// cuda/kernels.h (sizes, raw pointers, a stream); this file holds all the torch glue and
// includes no cuBLAS header (GEMMs go through ATen), so it compiles against a CPU wheel's
// headers too (tests/test_cuda_compile.py).
//
// Note [cuda engine]
// Per layer call, for every time step: ONE recurrent GEMM for both directions
// (h_state[D, rows] @ W_hh^T through at::mm / at::bmm, so cuBLAS on the current stream)
// into a gates buffer, then ONE fused pointwise kernel for both directions (gates + x_proj
// + b_hh, the activations, the cell update, the output row and what BPTT needs). The
// backward mirrors it: one GEMM dG_{s+1} @ W_hh, one pointwise kernel. The LSTM projection
// adds one GEMM and one small kernel per step. dW_hh (dW_hr) is one GEMM per direction
// after the sweep, db_hh a column sum (at::sum: a reduction, no atomics). Nothing is
// created per call besides tensors from the caching allocator: no streams, events or
// handles; the device is set with a CUDAGuard. When the two directions of a packed
// sequence have different row counts at a step, the batched GEMM runs over the larger
// count; the extra rows read valid state and their results are never used.
// A CUDA-graph capture of the loop (and a persistent-kernel engine for small batches) can
// replace run_*_loop without touching the checks, allocation or the kernels' contract.
//
// Note [cuda precision]
// float16 / bfloat16: the math is fp32 (cell_math.h's float instantiation), the cell
// state and the workspace are fp32 (workspace dtype rule: float32 when x_proj is 16-bit,
// else x_proj's dtype; rnnkernels/ops.py's fakes follow it), and the GEMM results are
// written in fp32 through mm.dtype_out / bmm.dtype_out (torch >= 2.8, Note [cuda torch
// floor]). A probe at the first 16-bit call falls back to products in the input dtype
// should ATen refuse them at run time; RNNKERNELS_CUDA_LOWP_PRODUCTS=input forces that
// path (the tests run both).
// The hidden state h, the outputs and the gradients are in the input dtype: h is the next
// step's GEMM operand, as in torch.nn. dW and db accumulate in fp32 (Note [cuda weight
// gradients]; db: the reduction's fp32 accumulator) and are rounded once. x_proj may come
// in fp32 (Note [cuda x_proj in float32]).
//
// Note [cuda tf32]
// Our float32 GEMMs are ATen matmuls, so they follow torch.backends.cuda.matmul.allow_tf32
// (torch.backends.cuda.matmul.fp32_precision), whose default is off: by default we compute
// in full fp32. nn.LSTM on cuDNN follows torch.backends.cudnn.allow_tf32 instead (default
// on). We do not flip the matmul flag to mirror the cuDNN one: it is process-wide (a race
// with other threads' matmuls), and torch >= 2.9 rejects reading the legacy flag after the
// new fp32_precision API was used. Users who want TF32 speed set the matmul flag; tests
// compare float32 with both flags off.
//
// Autocast is decided once, in rnnkernels/functional.py (Note [autocast] there): the
// ops run with autocast off, in the dtype they are given.

#include "cuda/recurrence_common.h"

namespace rnnkernels::cuda {
namespace detail {

template <typename S, typename G, typename X>
void run_lstm_forward(const ForwardInputs& in, const at::Tensor& out, const at::Tensor& h_state,
                      const at::Tensor& c_state, const at::Tensor& ws, bool need_workspace,
                      const Zoneout& zoneout) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, P = dm.output, B = dm.batch;
  const int64_t T = in.seq.steps();
  const bool proj = !in.w_hr.empty();
  const cudaStream_t stream = current_stream();
  const auto s_opts = in.options;
  const auto g_opts = s_opts.dtype(scalar_type_of<G>());

  const at::Tensor gates = at::empty({D * B * 4 * H}, g_opts);
  StepProduct gate_product(h_state, stack_directions(in.w_hh).transpose(1, 2), gates);
  at::Tensor m, projected;
  StepProduct projection;
  if (proj) {
    m = at::zeros({D, B, H}, s_opts);
    projected = at::empty({D * B * P}, g_opts);
    projection = StepProduct(m, stack_directions(in.w_hr).transpose(1, 2), projected);
  }

  const X* x_proj = ptr<X>(in.x_proj);
  S* out_p = ptr<S>(out);
  S* h_p = ptr<S>(h_state);
  A* c_p = ptr<A>(c_state);
  A* ws_p = need_workspace ? ptr<A>(ws) : nullptr;
  const G* gates_p = ptr<G>(gates);

  const int64_t ws_width = math::lstm_workspace_slots(zoneout.defined()) * H;
  LstmForwardStep<S, G, X> step;
  step.hidden = H;
  step.output = P;
  step.directions = D;
  step.ld_x_proj = D * 4 * H;
  step.ld_out = D * P;
  step.ld_zoneout = zoneout.ld;
  StoreHidden<S, G> store;
  store.output = P;
  store.directions = D;
  store.ld_out = D * P;
  store.ld_zoneout = zoneout.ld;
  for (int64_t s = 0; s < T; ++s) {
    const StepRows sr(in.seq, D, s);
    const int64_t M = sr.max_rows;
    gate_product.run(M);
    for (int64_t d = 0; d < D; ++d) {
      auto& q = step.dir[d];
      q.rows = sr.rows[d];
      q.gates = gates_p + d * M * 4 * H;
      q.x_proj = x_proj + sr.offset[d] * D * 4 * H + d * 4 * H;
      q.b_hh = ptr_or_null<S>(in.b_hh, d);
      q.c = c_p + d * B * H;
      if (proj) {
        q.m = ptr<S>(m) + d * B * H;
      } else {
        q.h = h_p + d * B * P;
        q.out = out_p + sr.offset[d] * D * P + d * P;
      }
      q.workspace = ws_p != nullptr ? ws_p + (d * N + sr.offset[d]) * ws_width : nullptr;
      q.zoneout = zoneout.rows<S>(d, sr.offset[d]);
    }
    RNNKERNELS_CUDA_CHECK(lstm_forward_step(step, stream));
    if (proj) {
      projection.run(M);
      for (int64_t d = 0; d < D; ++d) {
        auto& q = store.dir[d];
        q.rows = sr.rows[d];
        q.product = ptr<G>(projected) + d * M * P;
        q.h = h_p + d * B * P;
        q.out = out_p + sr.offset[d] * D * P + d * P;
        q.zoneout = zoneout.rows<S>(d, sr.offset[d]);
      }
      RNNKERNELS_CUDA_CHECK(store_hidden(store, stream));
    }
  }
}

template <typename S, typename G, typename X>
void run_gru_forward(const ForwardInputs& in, const at::Tensor& out, const at::Tensor& h_state,
                     const at::Tensor& ws, bool need_workspace, const Zoneout& zoneout) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, B = dm.batch;
  const int64_t T = in.seq.steps();
  const cudaStream_t stream = current_stream();
  const auto g_opts = in.options.dtype(scalar_type_of<G>());

  const at::Tensor gates = at::empty({D * B * 3 * H}, g_opts);
  StepProduct gate_product(h_state, stack_directions(in.w_hh).transpose(1, 2), gates);
  const X* x_proj = ptr<X>(in.x_proj);
  S* out_p = ptr<S>(out);
  S* h_p = ptr<S>(h_state);
  A* ws_p = need_workspace ? ptr<A>(ws) : nullptr;
  const G* gates_p = ptr<G>(gates);

  GruForwardStep<S, G, X> step;
  step.hidden = H;
  step.directions = D;
  step.ld_x_proj = D * 3 * H;
  step.ld_out = D * H;
  step.ld_zoneout = zoneout.ld;
  for (int64_t s = 0; s < T; ++s) {
    const StepRows sr(in.seq, D, s);
    const int64_t M = sr.max_rows;
    gate_product.run(M);
    for (int64_t d = 0; d < D; ++d) {
      auto& q = step.dir[d];
      q.rows = sr.rows[d];
      q.gates = gates_p + d * M * 3 * H;
      q.x_proj = x_proj + sr.offset[d] * D * 3 * H + d * 3 * H;
      q.b_hh = ptr_or_null<S>(in.b_hh, d);
      q.h = h_p + d * B * H;
      q.out = out_p + sr.offset[d] * D * H + d * H;
      q.workspace = ws_p != nullptr ? ws_p + (d * N + sr.offset[d]) * 4 * H : nullptr;
      q.zoneout = zoneout.rows<S>(d, sr.offset[d]);
    }
    RNNKERNELS_CUDA_CHECK(gru_forward_step(step, stream));
  }
}

template <typename S, typename G, typename X>
void run_rnn_forward(const ForwardInputs& in, bool relu, const at::Tensor& out,
                     const at::Tensor& h_state, const at::Tensor& ws, const Zoneout& zoneout) {
  using A = acc_t<S>;
  const Dims& dm = in.d;
  const int64_t N = dm.rows, D = dm.directions, H = dm.hidden, B = dm.batch;
  A* ws_p = zoneout.defined() && ws.size(1) > 0 ? ptr<A>(ws) : nullptr;
  const int64_t T = in.seq.steps();
  const cudaStream_t stream = current_stream();
  const auto g_opts = in.options.dtype(scalar_type_of<G>());

  const at::Tensor gates = at::empty({D * B * H}, g_opts);
  StepProduct gate_product(h_state, stack_directions(in.w_hh).transpose(1, 2), gates);
  const X* x_proj = ptr<X>(in.x_proj);
  S* out_p = ptr<S>(out);
  S* h_p = ptr<S>(h_state);
  const G* gates_p = ptr<G>(gates);

  RnnForwardStep<S, G, X> step;
  step.hidden = H;
  step.directions = D;
  step.ld_x_proj = D * H;
  step.ld_out = D * H;
  step.ld_zoneout = zoneout.ld;
  step.relu = relu;
  for (int64_t s = 0; s < T; ++s) {
    const StepRows sr(in.seq, D, s);
    const int64_t M = sr.max_rows;
    gate_product.run(M);
    for (int64_t d = 0; d < D; ++d) {
      auto& q = step.dir[d];
      q.rows = sr.rows[d];
      q.gates = gates_p + d * M * H;
      q.x_proj = x_proj + sr.offset[d] * D * H + d * H;
      q.b_hh = ptr_or_null<S>(in.b_hh, d);
      q.h = h_p + d * B * H;
      q.out = out_p + sr.offset[d] * D * H + d * H;
      q.zoneout = zoneout.rows<S>(d, sr.offset[d]);
      q.workspace = ws_p != nullptr ? ws_p + (d * N + sr.offset[d]) * H : nullptr;
    }
    RNNKERNELS_CUDA_CHECK(rnn_forward_step(step, stream));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_cuda(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::lstm_forward";
  const DeviceGuard guard(x_proj.device());
  const ForwardInputs in =
      prepare_forward(op, Cell::kLstm, x_proj, w_hh, b_hh, w_hr, h0, batch_sizes);
  const Dims& d = in.d;
  check_c0(op, d, c0, in.h0, "h0");
  const int64_t N = d.rows, D = d.directions, H = d.hidden, P = d.output, B = d.batch;
  const auto opts = in.options;
  const auto acc_opts = opts.dtype(workspace_dtype(opts.dtype().toScalarType()));
  at::Tensor out = at::empty({N, D * P}, opts);
  at::Tensor h_n = copy_or_zeros(in.h0, {D, B, P}, opts);
  at::Tensor c_state = copy_or_zeros(c0, {D, B, H}, acc_opts);
  const Zoneout zoneout(op, zoneout_in, in.h0, "h0", d, P + H);
  const int64_t ws_width = math::lstm_workspace_slots(zoneout.defined()) * H;
  at::Tensor ws = at::empty({D, need_workspace ? N : 0, ws_width}, acc_opts);
  dispatch_types(op, in.h0, [&](auto types) {
    using T = decltype(types);
    in.dispatch_input<typename T::S>([&](auto x) {
      run_lstm_forward<typename T::S, typename T::G, decltype(x)>(in, out, h_n, c_state, ws,
                                                                  need_workspace, zoneout);
    });
  });
  return {out, h_n, to_dtype(c_state, opts.dtype().toScalarType()), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_cuda(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::gru_forward";
  const DeviceGuard guard(x_proj.device());
  const ForwardInputs in = prepare_forward(op, Cell::kGru, x_proj, w_hh, b_hh, {}, h0, batch_sizes);
  const Dims& d = in.d;
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = in.options;
  const auto acc_opts = opts.dtype(workspace_dtype(opts.dtype().toScalarType()));
  at::Tensor out = at::empty({N, D * H}, opts);
  at::Tensor h_n = copy_or_zeros(in.h0, {D, B, H}, opts);
  at::Tensor ws =
      at::empty({D, need_workspace ? N : 0, math::gru_workspace_slots(false) * H}, acc_opts);
  const Zoneout zoneout(op, zoneout_in, in.h0, "h0", d, H);
  dispatch_types(op, in.h0, [&](auto types) {
    using T = decltype(types);
    in.dispatch_input<typename T::S>([&](auto x) {
      run_gru_forward<typename T::S, typename T::G, decltype(x)>(in, out, h_n, ws,
                                                                 need_workspace, zoneout);
    });
  });
  return {out, h_n, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_cuda(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, c10::string_view nonlinearity,
    bool need_workspace, const std::optional<at::Tensor>& zoneout_in) {
  constexpr const char* op = "rnnkernels::rnn_forward";
  const bool relu = parse_nonlinearity(op, nonlinearity);
  const DeviceGuard guard(x_proj.device());
  const ForwardInputs in = prepare_forward(op, Cell::kRnn, x_proj, w_hh, b_hh, {}, h0, batch_sizes);
  const Dims& d = in.d;
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const auto opts = in.options;
  at::Tensor out = at::empty({N, D * H}, opts);
  at::Tensor h_n = copy_or_zeros(in.h0, {D, B, H}, opts);
  const Zoneout zoneout(op, zoneout_in, in.h0, "h0", d, H);
  // With zoneout the workspace keeps h before zoneout, for the activation's backward.
  const int64_t ws_width = math::rnn_workspace_slots(zoneout.defined()) * H;
  at::Tensor ws = at::empty({D, need_workspace ? N : 0, ws_width},
                            opts.dtype(workspace_dtype(opts.dtype().toScalarType())));
  dispatch_types(op, in.h0, [&](auto types) {
    using T = decltype(types);
    in.dispatch_input<typename T::S>([&](auto x) {
      run_rnn_forward<typename T::S, typename T::G, decltype(x)>(in, relu, out, h_n, ws,
                                                                 zoneout);
    });
  });
  return {out, h_n, ws};
}

// ---------------------------------------------------------------- the op pair

at::Tensor directions_stacked(at::TensorList ts) { return ts.size() == 1 ? ts[0] : at::cat(ts, 0); }

// a @ b with float32 sums and a float32 result for 16-bit a and b (the CPU emulation: the
// product of the widened operands, the same values).
at::Tensor mm_float32(const at::Tensor& a, const at::Tensor& b) {
  if (!kEmulation && products_in_float(a)) return at::mm(a, b, at::kFloat);
  return at::mm(a.to(at::kFloat), b.to(at::kFloat));
}

// x [N, I] -> x_proj [N, D*G*H] in one GEMM (cuBLAS); float32 for 16-bit x (Note [cuda
// x_proj in float32]), x's dtype otherwise.
at::Tensor input_projection_cuda(const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih) {
  const at::Tensor w = directions_stacked(w_ih);
  if (is_16bit(x.scalar_type())) {
    at::Tensor out = mm_float32(x, w.t());
    return b_ih.empty() ? out : out.add_(directions_stacked(b_ih));
  }
  return b_ih.empty() ? at::mm(x, w.t()) : at::addmm(directions_stacked(b_ih), x, w.t());
}

// grad_x from the gradient in x's dtype (what the recurrence returns for 16-bit weights),
// as torch's own 16-bit addmm computes it; for 16-bit x, grad_W summed over all N rows in
// float32 and rounded once (as Note [cuda weight gradients] does for W_hh), grad_b the
// float32 column sums rounded once.
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
input_projection_backward_cuda(const at::Tensor& grad_x_proj, const at::Tensor& x,
                               at::TensorList w_ih, bool need_input_grad, bool has_bias) {
  const bool half = is_16bit(x.scalar_type());
  const at::Tensor grad = to_dtype(grad_x_proj, x.scalar_type());
  const int64_t GH = w_ih[0].size(0);
  at::Tensor grad_x = need_input_grad ? at::mm(grad, directions_stacked(w_ih))
                                      : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_w, grad_b;
  for (const auto d : c10::irange(static_cast<int64_t>(w_ih.size()))) {
    const at::Tensor g = grad.narrow(1, d * GH, GH);
    grad_w.push_back(half ? mm_float32(g.t(), x).to(w_ih[d].scalar_type()) : at::mm(g.t(), x));
    if (has_bias) {
      grad_b.push_back(half ? grad_x_proj.narrow(1, d * GH, GH).to(at::kFloat).sum(0).to(
                                  x.scalar_type())
                            : g.sum(0));
    }
  }
  return {grad_x, grad_w, grad_b};
}

const host::Recurrence& recurrence_table() {
  // Note [precision policy]: the CUDA kernels store every floating dtype they take.
  using host::with_precision;
  static const host::Recurrence table{
      with_precision<&lstm_forward_cuda, cuda_supports>,
      with_precision<&lstm_backward_cuda, cuda_supports>,
      with_precision<&gru_forward_cuda, cuda_supports>,
      with_precision<&gru_backward_cuda, cuda_supports>,
      with_precision<&rnn_forward_cuda, cuda_supports>,
      with_precision<&rnn_backward_cuda, cuda_supports>,
      with_precision<&layer_norm_lstm_forward_cuda, cuda_supports>,
      with_precision<&layer_norm_lstm_backward_cuda, cuda_supports>,
      &input_projection_cuda,
      &input_projection_backward_cuda};
  return table;
}

// "800,900" -> ["sm_80", "sm_90"]
pybind11::list arch_names(const std::string& list) {
  pybind11::list names;
  size_t begin = 0;
  while (begin < list.size()) {
    size_t end = list.find(',', begin);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(begin, end - begin);
    char* rest = nullptr;
    const long value = std::strtol(item.c_str(), &rest, 10);
    if (!item.empty() && rest != nullptr && *rest == '\0' && value > 0) {
      names.append("sm_" + std::to_string(value / 10));
    } else if (!item.empty()) {
      names.append(item);
    }
    begin = end + 1;
  }
  return names;
}

}  // namespace detail

TORCH_LIBRARY_IMPL(RNNKERNELS_CUDA_LIBRARY, RNNKERNELS_CUDA_KEY, m) {
  using Kernels = host::LayerKernels<&detail::recurrence_table, detail::DeviceGuard>;
  m.impl("rnn_layer", &Kernels::forward);
  m.impl("rnn_layer_backward", &Kernels::backward);
}

}  // namespace rnnkernels::cuda

namespace rnnkernels {

// Declared in build_info.cpp: what the CUDA part contains.
pybind11::dict cuda_build_info() {
  pybind11::dict info;
  pybind11::list dtypes;
  for (const auto& [dtype, name] : host::kFloatingDtypes) {
    if (cuda::detail::cuda_supports(dtype)) dtypes.append(name);  // the table's predicate
  }
  info["dtypes"] = dtypes;
  info["arch_list"] = cuda::detail::arch_names(cuda::compiled_arch_list());
  const int version = cuda::compiled_cuda_version();
  info["cuda_version"] = std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
  info["engine"] = "per-step GEMM (ATen/cuBLAS) + fused pointwise kernel";
  return info;
}

}  // namespace rnnkernels
