// The CUDA backend of the op pair (csrc/host/layer.h): its recurrences on x_proj (argument
// checks, allocation, the time loop on the current stream, the weight gradients as GEMMs
// after the reverse sweep) and its input projection; TORCH_LIBRARY_IMPL(rnnkernels, CUDA). The pointwise kernels sit behind
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

// Note [cuda torch floor]
// The GEMMs write 16-bit products in fp32 through at::mm_out / at::bmm_out with an out
// dtype (mm.dtype_out, bmm.dtype_out), which torch has since 2.8. setup.py
// (CUDA_MIN_TORCH) and cmake/rnnkernels_cuda.cmake refuse an older torch before compiling;
// this check says the same to any other build. It comes before the ATen headers so that it
// is the first error.
#include <torch/version.h>
#if TORCH_VERSION_MAJOR < 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR < 8)
#error "rnnkernels CUDA kernels need torch >= 2.8 (Note [cuda torch floor])"
#endif

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/irange.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/kernels.h"
#include "host/arguments.h"
#include "host/layer.h"
#include "rnnkernels/cell_math.h"

#ifdef RNNKERNELS_CUDA_EMULATION
// The CPU emulation build of tests/test_cuda_compile.py: this file and the kernels compiled
// by g++ against a CPU torch, the kernels run on the CPU (tests/ci_include/emulation), the
// ops registered for CPU tensors in the namespace rnnkernels_cuda_emulation.
#include "rnnkernels_cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define RNNKERNELS_CUDA_LIBRARY rnnkernels
#define RNNKERNELS_CUDA_KEY CUDA
#define RNNKERNELS_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#endif

namespace rnnkernels::cuda {
namespace {

#ifdef RNNKERNELS_CUDA_EMULATION
constexpr bool kEmulation = true;
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
cudaStream_t current_stream() { return nullptr; }
#else
constexpr bool kEmulation = false;
using DeviceGuard = c10::cuda::CUDAGuard;
cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

static_assert(sizeof(at::Half) == sizeof(float16_t) && alignof(at::Half) == alignof(float16_t));
static_assert(sizeof(at::BFloat16) == sizeof(bfloat16_t) &&
              alignof(at::BFloat16) == alignof(bfloat16_t));

// Sequence, Dims, the argument checks and the op arguments of csrc/host/arguments.h.
using namespace host;

// ---------------------------------------------------------------- types

template <typename T>
constexpr at::ScalarType scalar_type_of();
template <>
constexpr at::ScalarType scalar_type_of<float>() { return at::kFloat; }
template <>
constexpr at::ScalarType scalar_type_of<double>() { return at::kDouble; }
template <>
constexpr at::ScalarType scalar_type_of<float16_t>() { return at::kHalf; }
template <>
constexpr at::ScalarType scalar_type_of<bfloat16_t>() { return at::kBFloat16; }
template <>
constexpr at::ScalarType scalar_type_of<int64_t>() { return at::kLong; }

bool is_16bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Workspace dtype rule (Note [cuda precision]).
at::ScalarType workspace_dtype(at::ScalarType t) { return is_16bit(t) ? at::kFloat : t; }

template <typename T>
T* ptr(const at::Tensor& t) {
  TORCH_INTERNAL_ASSERT(t.scalar_type() == scalar_type_of<T>(), "rnnkernels: expected ",
                        scalar_type_of<T>(), ", got ", t.scalar_type());
  return static_cast<T*>(t.data_ptr());
}

template <typename T>
T* ptr_or_null(const std::vector<at::Tensor>& ts, int64_t i) {
  return ts.empty() ? nullptr : ptr<T>(ts[i]);
}

template <typename S_, typename G_>
struct Types {
  using S = S_;
  using G = G_;
};

// Whether ATen can write the product of two 16-bit matrices in fp32 (mm.dtype_out,
// bmm.dtype_out, torch >= 2.8); probed once per dtype, with the operand layouts of
// StepProduct: the first rows of a state buffer times a transposed weight.
bool probe_products_in_float(const at::Tensor& like) {
  if (kEmulation) return true;  // product_out widens by itself there
  try {
    const at::Tensor state = at::ones({2, 4, 3}, like.options());
    const at::Tensor weight = at::ones({2, 5, 3}, like.options()).transpose(1, 2);
    at::Tensor out = at::empty({2 * 2 * 5}, like.options().dtype(at::kFloat));
    at::Tensor out2 = out.narrow(0, 0, 2 * 5).view({2, 5});
    at::Tensor out3 = out.view({2, 2, 5});
    at::mm_out(out2, state[0].narrow(0, 0, 2), weight[0], at::kFloat);
    at::bmm_out(out3, state.narrow(1, 0, 2), weight, at::kFloat);
    return true;  // no value check: that would synchronize (the tests compare results)
  } catch (const c10::Error&) {
    return false;
  }
}

bool products_in_float(const at::Tensor& like) {
  const char* env = std::getenv("RNNKERNELS_CUDA_LOWP_PRODUCTS");
  if (env != nullptr && std::strcmp(env, "input") == 0) return false;
  if (like.scalar_type() == at::kHalf) {
    static const bool half_ok = probe_products_in_float(like);
    return half_ok;
  }
  static const bool bfloat16_ok = probe_products_in_float(like);
  return bfloat16_ok;
}

// Calls f(Types<S, G>{}) for the storage type of `like` and the GEMM-result type.
template <typename F>
void dispatch_types(const char* op, const at::Tensor& like, F&& f) {
  switch (like.scalar_type()) {
    case at::kFloat:
      f(Types<float, float>{});
      break;
    case at::kDouble:
      f(Types<double, double>{});
      break;
    case at::kHalf:
      if (products_in_float(like)) {
        f(Types<float16_t, float>{});
      } else {
        f(Types<float16_t, float16_t>{});
      }
      break;
    case at::kBFloat16:
      if (products_in_float(like)) {
        f(Types<bfloat16_t, float>{});
      } else {
        f(Types<bfloat16_t, bfloat16_t>{});
      }
      break;
    default:
      TORCH_CHECK(false, op, ": CUDA kernels support float32, float64, float16 and bfloat16, got ",
                  like.scalar_type());
  }
}

// [D, rows, cols] stack of per-direction matrices; a view for one direction.
at::Tensor stack_directions(const std::vector<at::Tensor>& ts) {
  return ts.size() == 1 ? ts[0].unsqueeze(0) : at::stack(ts);
}

// A fresh contiguous tensor of `sizes` and `dtype` holding src (converted), or zeros.
at::Tensor copy_or_zeros(const std::optional<at::Tensor>& src, at::IntArrayRef sizes,
                         const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (src.has_value() && src->defined()) {
    t.copy_(*src);
  } else {
    t.zero_();
  }
  return t;
}

at::Tensor to_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// ---------------------------------------------------------------- per-step GEMM

// out = a @ b for 2-D or batched 3-D operands; out may be fp32 for 16-bit a and b.
void product_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const bool widen = out.scalar_type() != a.scalar_type();
  if (kEmulation && widen) {  // mm.dtype_out is CUDA-only: an fp32 product of the operands
    out.copy_(at::matmul(a.to(out.scalar_type()), b.to(out.scalar_type())));
    return;
  }
  if (a.dim() == 2) {
    if (widen) {
      at::mm_out(out, a, b, out.scalar_type());
    } else {
      at::mm_out(out, a, b);
    }
  } else if (widen) {
    at::bmm_out(out, a, b, out.scalar_type());
  } else {
    at::bmm_out(out, a, b);
  }
}

// The recurrent product of one step for every direction d:
//   result[d, :rows] = lhs[d, :rows] @ rhs[d]
// lhs: [D, B, K] state buffer, rhs: [D, K, X] (any strides), result: a flat buffer of
// D*B*X elements whose prefix holds the contiguous [D, rows, X] after run(rows). One
// direction runs as a 2-D mm, two as one bmm. The views are rebuilt only when the row
// count changes (never for a dense sequence).
class StepProduct {
 public:
  StepProduct() = default;
  StepProduct(at::Tensor lhs, at::Tensor rhs, at::Tensor result)
      : lhs_(std::move(lhs)), rhs_(std::move(rhs)), result_(std::move(result)) {}

  void run(int64_t rows) {
    if (rows <= 0) return;
    if (rows != rows_) {
      rows_ = rows;
      const int64_t D = lhs_.size(0), X = rhs_.size(2);
      if (D == 1) {
        lhs_rows_ = lhs_[0].narrow(0, 0, rows);
        rhs_view_ = rhs_[0];
        out_rows_ = result_.narrow(0, 0, rows * X).view({rows, X});
      } else {
        lhs_rows_ = lhs_.narrow(1, 0, rows);
        rhs_view_ = rhs_;
        out_rows_ = result_.narrow(0, 0, D * rows * X).view({D, rows, X});
      }
    }
    product_out(out_rows_, lhs_rows_, rhs_view_);
  }

 private:
  at::Tensor lhs_, rhs_, result_;
  at::Tensor lhs_rows_, rhs_view_, out_rows_;
  int64_t rows_ = -1;
};

// Row counts and offsets of every direction at one processing step.
struct StepRows {
  int64_t rows[kMaxDirections] = {0, 0};
  int64_t offset[kMaxDirections] = {0, 0};
  int64_t max_rows = 0;

  StepRows(const Sequence& seq, int64_t directions, int64_t s) {
    for (int64_t d = 0; d < directions; ++d) {
      rows[d] = seq.rows_at(s, d == 1);
      offset[d] = rows[d] > 0 ? seq.offset_at(s, d == 1) : 0;
      max_rows = std::max(max_rows, rows[d]);
    }
  }
};

// Zoneout weights (Note [zoneout] in cell_math.h): [D, N, width], any row stride (0: one
// row broadcast, as evaluation passes it), unit stride along the last dimension.
struct Zoneout {
  at::Tensor weights;  // undefined without zoneout
  int64_t ld = 0;

  Zoneout(const char* op, const std::optional<at::Tensor>& zoneout, const at::Tensor& like,
          const char* like_name, const Dims& d, int64_t width) {
    if (!zoneout.has_value() || !zoneout->defined()) return;
    const at::Tensor& z = *zoneout;
    check_same(op, "zoneout", z, like, like_name);
    check_shape(op, "zoneout", z, {d.directions, d.rows, width});
    weights = z.stride(2) == 1 ? z : z.contiguous();
    ld = weights.stride(1);
  }
  bool defined() const { return weights.defined(); }
  // Direction d's rows from `offset` on, or null.
  template <typename S>
  const S* rows(int64_t d, int64_t offset) const {
    return weights.defined() ? ptr<S>(weights) + d * weights.stride(0) + offset * ld : nullptr;
  }
};

// ---------------------------------------------------------------- forward

bool on_cuda(const at::Tensor& t) { return kEmulation || t.is_cuda(); }
bool cuda_supports(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
}
const host::Backend kCuda{"CUDA", on_cuda, cuda_supports,
                          "float32, float64, float16 and bfloat16", workspace_dtype};

// The common forward arguments and what the CUDA ops add to them.
struct ForwardInputs : host::ForwardInputs {
  at::TensorOptions options;  // device and storage dtype: the weights', h0's, the outputs'
  bool float_input = false;   // x_proj in float32 for 16-bit weights

  // Calls f(x) with x a value of x_proj's element type: S, or float (Note [cuda x_proj in
  // float32]).
  template <typename S, typename F>
  void dispatch_input(F&& f) const {
    if constexpr (std::is_same_v<acc_t<S>, S>) {
      f(S{});
    } else if (float_input) {
      f(float{});
    } else {
      f(S{});
    }
  }
};

// Note [cuda x_proj in float32]
// With 16-bit weights the forward ops take x_proj in the weights' dtype or in float32,
// which the layers and cells pass (rnnkernels/functional.py, _projection.py): the input
// projection's fp32 sums then join the fp32 gate math without a rounding to 16 bits.
// Measured in the CPU emulation of these kernels (tests/test_cuda_compile.py::
// test_emulated_float32_x_proj_error_gain: T=24, B=8, I=48, H=32, 4 seeds), against
// float64 on the same 16-bit inputs, rounding x_proj to 16 bits first added to the output
// error 17% / 19% (LSTM, float16 / bfloat16), 16% / 16% (GRU), 36% / 40% (RNN), and to the
// gradients' 27% / 30%, 23% / 24%, 13% / 18%. Outputs, h, c and every gradient keep the
// weights' dtype; grad_x_proj too, which autograd casts to x_proj's float32.

// x_proj: the input side of the gates (x_name names it in messages: x_proj, or x_side for
// the layer-normalised LSTM); float32 for 16-bit weights when float_input_ok.
ForwardInputs prepare_forward(const char* op, Cell cell, const at::Tensor& x_proj,
                              at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                              const at::Tensor& h0,
                              const std::optional<at::Tensor>& batch_sizes,
                              const char* x_name = "x_proj", bool float_input_ok = true) {
  const bool float_input = float_input_ok && x_proj.scalar_type() == at::kFloat &&
                           !w_hh.empty() && is_16bit(w_hh[0].scalar_type());
  ForwardInputs in;
  // With a float32 x_proj the weights set the storage dtype; x_proj only shares their device.
  const at::Tensor& ref = float_input ? w_hh[0] : x_proj;
  static_cast<host::ForwardInputs&>(in) =
      host::prepare_forward(kCuda, op, cell, x_proj, x_name, w_hh, b_hh, w_hr, h0, batch_sizes,
                            ref, float_input ? "w_hh[0]" : x_name);
  in.float_input = float_input;
  in.options = h0.options();
  return in;
}

// out [N, D*P], h_state [D, B, P] (starts as h0, ends as h_n), c_state [D, B, H] (A),
// ws [D, N, 5H] (A) or empty.
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
  check_same(op, "c0", c0, in.h0, "h0");
  check_shape(op, "c0", c0, {d.directions, d.batch, d.hidden});
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

// ---------------------------------------------------------------- backward

// Processing step s of every direction in the backward sweep: rows at s, s+1 and s-1.
struct BackwardStepRows {
  int64_t rows[kMaxDirections] = {0, 0}, next[kMaxDirections] = {0, 0},
          prev[kMaxDirections] = {0, 0};
  int64_t offset[kMaxDirections] = {0, 0}, prev_offset[kMaxDirections] = {0, 0};
  int64_t max_rows = 0, max_next = 0;

  BackwardStepRows(const Sequence& seq, int64_t directions, int64_t s) {
    for (int64_t d = 0; d < directions; ++d) {
      const bool reverse = d == 1;
      rows[d] = seq.rows_at(s, reverse);
      next[d] = seq.rows_at(s + 1, reverse);
      prev[d] = seq.rows_at(s - 1, reverse);
      offset[d] = rows[d] > 0 ? seq.offset_at(s, reverse) : 0;
      prev_offset[d] = prev[d] > 0 ? seq.offset_at(s - 1, reverse) : 0;
      max_rows = std::max(max_rows, rows[d]);
      max_next = std::max(max_next, next[d]);
    }
  }
};

// Note [cuda weight gradients]
// dW_hh = dG^T @ h_prev (and dW_hr = dh^T @ m) reduces over all N rows of a direction, the
// longest reduction of the pass. For 16-bit weights the product is written into a float32
// tensor through mm.dtype_out (cuBLAS with fp32 output, so any split-K partial sums are
// added in fp32 whatever torch.backends.cuda.matmul.allow_{bf16,fp16}_reduced_precision_
// reduction say, and both default to True) and rounded to the weight's dtype once, as
// Note [cuda precision] promises. A 16-bit output would let cuBLAS add the partial sums in
// 16 bits. With products in the input dtype (G = S, the run-time fallback) the product is
// written as before.
template <typename G>
void weight_grad_out(at::Tensor& grad_w, const at::Tensor& a, const at::Tensor& b) {
  if (grad_w.scalar_type() == scalar_type_of<G>()) {
    at::mm_out(grad_w, a, b);
    return;
  }
  at::Tensor sums = at::empty(grad_w.sizes(), grad_w.options().dtype(scalar_type_of<G>()));
  product_out(sums, a, b);
  grad_w.copy_(sums);
}

// prev [N, P] = the hidden state entering every row of direction `dir` (PreviousHidden in
// kernels.h): one launch for a dense sequence; for a packed one a launch per window of
// kGatherSteps steps with their sizes as values (Note [cuda step sizes by value]).
template <typename S>
void gather_previous_hidden(const BackwardInputs& in, int64_t dir, const at::Tensor& prev) {
  const Dims& d = in.d;
  const Sequence& seq = in.seq;
  PreviousHidden<S> p;
  p.steps = seq.steps();
  p.batch = d.batch;
  p.output = d.output;
  p.reverse = dir == 1;
  p.out = ptr<S>(in.out) + dir * d.output;
  p.ld_out = d.directions * d.output;
  p.h0 = ptr<S>(in.h0) + dir * d.batch * d.output;
  p.prev = ptr<S>(prev);
  p.packed = !seq.uniform();
  if (!p.packed) {
    p.window_steps = p.steps;
    p.rows = d.rows;
    RNNKERNELS_CUDA_CHECK(previous_hidden(p, current_stream()));
    return;
  }
  for (int64_t first = 0; first < p.steps; first += kGatherSteps) {
    p.first_step = first;
    p.window_steps = std::min(kGatherSteps, p.steps - first);
    p.first_row = seq.offsets[first];
    const int64_t last = first + p.window_steps - 1;
    p.rows = seq.offsets[last] + seq.batch_sizes[last] - p.first_row;
    for (int64_t k = 0; k < p.window_steps + 2; ++k) {
      const int64_t t = first - 1 + k;
      const bool inside = t >= 0 && t < p.steps;
      p.batch_sizes[k] = inside ? seq.batch_sizes[t] : 0;
      p.offsets[k] = inside ? seq.offsets[t] : 0;
    }
    RNNKERNELS_CUDA_CHECK(previous_hidden(p, current_stream()));
  }
}

// grad_w [G*H, P] = grad_pre^T @ h_prev over all rows of direction `dir`; grad_pre [N, G*H]
// (any row stride).
template <typename S, typename G>
void recurrent_weight_grad(const BackwardInputs& in, int64_t dir, const at::Tensor& grad_pre,
                           at::Tensor& grad_w) {
  if (in.d.rows == 0) {
    grad_w.zero_();
    return;
  }
  const at::Tensor prev = at::empty({in.d.rows, in.d.output}, in.out.options());
  gather_previous_hidden<S>(in, dir, prev);
  weight_grad_out<G>(grad_w, grad_pre.t(), prev);
}

template <typename S, typename G>
void param_grads(const BackwardInputs& in, int64_t dir, const at::Tensor& grad_pre,
                 std::vector<at::Tensor>& grad_w_hh, std::vector<at::Tensor>& grad_b_hh) {
  recurrent_weight_grad<S, G>(in, dir, grad_pre, grad_w_hh[dir]);
  if (!grad_b_hh.empty()) at::sum_out(grad_b_hh[dir], grad_pre, {0});
}

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
                   const std::optional<at::Tensor>& grad_c_n, at::TensorList w_hh,
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
  check_same(op, "c0", c0_in, out, "output");
  check_shape(op, "c0", c0_in, {D, B, H});
  if (grad_c_n.has_value() && grad_c_n->defined()) {
    check_same(op, "grad_c_n", *grad_c_n, out, "output");
    check_shape(op, "grad_c_n", *grad_c_n, {D, B, H});
  }
  const at::Tensor c0 = c0_in.contiguous();
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

// The LN parameter lists, checked and made contiguous.
struct LayerNormParams {
  std::vector<at::Tensor> hh_weight, c_weight, c_bias;  // [4H], [H], [H] (or empty) per direction
};

LayerNormParams check_layer_norm_params(const char* op, const Dims& d, const at::Tensor& ref,
                                        const char* ref_name, at::TensorList ln_hh_weight,
                                        at::TensorList ln_c_weight, at::TensorList ln_c_bias) {
  const auto check_list = [&](const char* name, at::TensorList ts, int64_t size, bool optional) {
    TORCH_CHECK(static_cast<int64_t>(ts.size()) == d.directions || (optional && ts.empty()), op,
                ": ", name, " must hold one tensor per direction (", d.directions, ")",
                optional ? " or be empty" : "", ", got ", ts.size());
    for (const auto i : c10::irange(ts.size())) {
      check_same(op, name, ts[i], ref, ref_name);
      check_shape(op, std::string(name) + "[" + std::to_string(i) + "]", ts[i], {size});
    }
  };
  check_list("ln_hh_weight", ln_hh_weight, 4 * d.hidden, false);
  check_list("ln_c_weight", ln_c_weight, d.hidden, false);
  check_list("ln_c_bias", ln_c_bias, d.hidden, true);
  return {contiguous_all(ln_hh_weight), contiguous_all(ln_c_weight), contiguous_all(ln_c_bias)};
}

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
  check_same(op, "c0", c0, x_side, "x_side");
  check_shape(op, "c0", c0, {d.directions, d.batch, d.hidden});
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
                              const std::optional<at::Tensor>& grad_c_n, at::TensorList w_hh,
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
  check_same(op, "c0", c0_in, out, "output");
  check_shape(op, "c0", c0_in, {D, B, H});
  if (grad_c_n.has_value() && grad_c_n->defined()) {
    check_same(op, "grad_c_n", *grad_c_n, out, "output");
    check_shape(op, "grad_c_n", *grad_c_n, {D, B, H});
  }
  const at::Tensor c0 = c0_in.contiguous();
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

const host::Recurrence kCudaRecurrence{
    &lstm_forward_cuda,      &lstm_backward_cuda,     &gru_forward_cuda,
    &gru_backward_cuda,      &rnn_forward_cuda,       &rnn_backward_cuda,
    &layer_norm_lstm_forward_cuda, &layer_norm_lstm_backward_cuda,
    &input_projection_cuda,  &input_projection_backward_cuda};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_cuda(
    c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
    bool has_projection, const at::Tensor& h0, const std::optional<at::Tensor>& c0,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& zoneout,
    bool need_workspace) {
  const DeviceGuard guard(x.device());
  return host::rnn_layer(kCudaRecurrence, mode, x, weights, has_biases, has_projection, h0, c0,
                         batch_sizes, zoneout, need_workspace);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> rnn_layer_backward_cuda(
    c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
    bool has_projection, const at::Tensor& h0, const std::optional<at::Tensor>& c0,
    const at::Tensor& output, const at::Tensor& workspace,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& zoneout,
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, bool need_input_grad) {
  const DeviceGuard guard(x.device());
  return host::rnn_layer_backward(kCudaRecurrence, mode, x, weights, has_biases, has_projection,
                                  h0, c0, output, workspace, batch_sizes, zoneout, grad_output,
                                  grad_h_n, grad_c_n, need_input_grad);
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

}  // namespace

TORCH_LIBRARY_IMPL(RNNKERNELS_CUDA_LIBRARY, RNNKERNELS_CUDA_KEY, m) {
  m.impl("rnn_layer", &rnn_layer_cuda);
  m.impl("rnn_layer_backward", &rnn_layer_backward_cuda);
}

}  // namespace rnnkernels::cuda

namespace rnnkernels {

// Declared in build_info.cpp: what the CUDA part contains.
pybind11::dict cuda_build_info() {
  pybind11::dict info;
  pybind11::list dtypes;
  for (const char* name : {"float32", "float64", "float16", "bfloat16"}) dtypes.append(name);
  info["dtypes"] = dtypes;
  info["arch_list"] = cuda::arch_names(cuda::compiled_arch_list());
  const int version = cuda::compiled_cuda_version();
  info["cuda_version"] = std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
  info["engine"] = "per-step GEMM (ATen/cuBLAS) + fused pointwise kernel";
  return info;
}

}  // namespace rnnkernels
