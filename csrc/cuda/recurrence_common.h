// The CUDA backend's shared host code: the CUDA runtime or its CPU emulation, storage and
// GEMM-result types, the per-step products, the rows of a step, the recurrences' arguments
// and the backward's weight gradients; the backend's functions, defined in
// recurrence_cuda.cpp (forward, the op pair's entry), backward_cuda.cpp and
// layer_norm_lstm_cuda.cpp. The Notes are in recurrence_cuda.cpp.
#pragma once

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
#include "host/precision.h"
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

namespace rnnkernels::cuda::detail {


#ifdef RNNKERNELS_CUDA_EMULATION
constexpr bool kEmulation = true;
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
#else
constexpr bool kEmulation = false;
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
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

inline bool is_16bit(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Workspace dtype rule (Note [cuda precision]).
inline at::ScalarType workspace_dtype(at::ScalarType t) { return is_16bit(t) ? at::kFloat : t; }

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
inline bool probe_products_in_float(const at::Tensor& like) {
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

inline bool products_in_float(const at::Tensor& like) {
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
inline at::Tensor stack_directions(const std::vector<at::Tensor>& ts) {
  return ts.size() == 1 ? ts[0].unsqueeze(0) : at::stack(ts);
}

// A fresh contiguous tensor of `sizes` and `dtype` holding src (converted), or zeros.
inline at::Tensor copy_or_zeros(const std::optional<at::Tensor>& src, at::IntArrayRef sizes,
                         const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (src.has_value() && src->defined()) {
    t.copy_(*src);
  } else {
    t.zero_();
  }
  return t;
}

inline at::Tensor to_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// ---------------------------------------------------------------- per-step GEMM

// out = a @ b for 2-D or batched 3-D operands; out may be fp32 for 16-bit a and b.
inline void product_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
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

inline bool on_cuda(const at::Tensor& t) { return kEmulation || t.is_cuda(); }
inline bool cuda_supports(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16;
}
inline const host::Backend kCuda{"CUDA", on_cuda, cuda_supports,
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
// With 16-bit weights the forward recurrences take x_proj in the weights' dtype or in
// float32, which the op pair's input projection passes (input_projection_cuda): the input
// projection's fp32 sums then join the fp32 gate math without a rounding to 16 bits,
// which would add 13-40% to the error against float64 (tests/test_cuda_compile.py::
// test_emulated_float32_x_proj_error_gain; bench/results/design-notes-measurements.md).
// Outputs, h, c and every gradient keep the
// weights' dtype; grad_x_proj too, which autograd casts to x_proj's float32.

// x_proj: the input side of the gates (x_name names it in messages: x_proj, or x_side for
// the layer-normalised LSTM); float32 for 16-bit weights when float_input_ok.
inline ForwardInputs prepare_forward(const char* op, Cell cell, const at::Tensor& x_proj,
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

// ---------------------------------------------------------------- the backend's functions

// recurrence_cuda.cpp, backward_cuda.cpp, layer_norm_lstm_cuda.cpp.
host::LstmBackward lstm_backward_cuda;
host::GruBackward gru_backward_cuda;
host::RnnBackward rnn_backward_cuda;
host::LayerNormLstmForward layer_norm_lstm_forward_cuda;
host::LayerNormLstmBackward layer_norm_lstm_backward_cuda;


// The table of the backend's recurrences (recurrence_cuda.cpp).
const host::Recurrence& recurrence_table();

}  // namespace rnnkernels::cuda::detail
