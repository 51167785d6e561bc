// The CPU backend's shared host code: sequence layout for the kernels, the thread plan of
// the fused time loops (Note [time loop threads], Note [row-split teams]), the helpers of
// the forward and backward recurrences, and the backend's functions, defined in
// recurrence_cpu.cpp (forward, the table, the op pair's entry), backward_cpu.cpp and
// layer_norm_lstm_cpu.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/gemm_cpu.h"
#include "cpu/kernels.h"
#include "cpu/memory.h"
#include "host/arguments.h"
#include "host/layer.h"
#include "host/precision.h"
#include "rnnkernels/cell_math.h"

namespace rnnkernels::cpu::detail {

// Sequence, Dims, the argument checks and the op arguments of csrc/host/arguments.h.
using namespace host;

inline SequenceLayout layout_of(const Sequence& seq, bool reverse) {
  SequenceLayout s;
  s.steps = seq.steps();
  s.batch = seq.batch;
  s.batch_sizes = seq.batch_sizes.data();
  s.offsets = seq.offsets.data();
  s.reverse = reverse;
  return s;
}

// The dtypes the CPU kernels store (Note [precision policy] in host/precision.h): bfloat16
// where the CPU has AVX512-BF16 dot products (Note [storage and compute types] in
// kernels.h); float16 never (no x86 CPU we target has float16 dot products with float32
// sums short of AMX-FP16), so it runs widened.
inline bool has_native_kernels(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble ||
         (t == at::kBFloat16 && active_bf16_kernels() != nullptr);
}

// The dtype a kernel computes in for storage dtype t: float32 for bfloat16.
inline at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; }

// Biases and zoneout weights enter the kernels in the compute dtype.
inline std::vector<at::Tensor> in_compute_dtype(std::vector<at::Tensor> ts) {
  for (auto& t : ts) t = t.to(compute_dtype(t.scalar_type()));
  return ts;
}

template <typename S>
const S* ptr_or_null(const std::vector<at::Tensor>& ts, int64_t i) {
  return ts.empty() ? nullptr : ts[i].data_ptr<S>();
}

template <typename S>
const S* ptr_or_null(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<S>() : nullptr;
}

// Zoneout weights (Note [zoneout] in cell_math.h): [D, N, width], width P (+ H for LSTM),
// any row stride (0: one row broadcast to all, as evaluation passes it), unit stride
// along the last dimension. Null when not given.
inline std::optional<at::Tensor> check_zoneout(const char* op, const std::optional<at::Tensor>& zoneout,
                                        const at::Tensor& like, const char* like_name,
                                        const Dims& d, int64_t width) {
  if (!zoneout.has_value() || !zoneout->defined()) return std::nullopt;
  const at::Tensor& z = *zoneout;
  check_same(op, "zoneout", z, like, like_name);
  check_shape(op, "zoneout", z, {d.directions, d.rows, width});
  const at::Tensor zc = z.to(compute_dtype(z.scalar_type()));
  return zc.stride(2) == 1 ? zc : zc.contiguous();
}

template <typename S>
const S* zoneout_ptr(const std::optional<at::Tensor>& z, int64_t dir) {
  return z ? z->data_ptr<S>() + dir * z->stride(0) : nullptr;
}

inline int64_t zoneout_ld(const std::optional<at::Tensor>& z) { return z ? z->stride(1) : 0; }

// ---------------------------------------------------------------- thread plan

// A slice gets at least this many multiply-adds per step; smaller steps use fewer
// slices. RNNKERNELS_SLICE_MACS overrides it (read once; for tuning on a new machine).
// 2^15 (about 0.5 us of one core): the spin barrier is cheap enough that splitting pays
// down to small steps, while smaller slices lose to cache-line traffic on the shared state
// (bench/results/design-notes-measurements.md). Splitting also keeps the worker thread warm.
inline int64_t min_step_macs_per_slice() {
  static const int64_t value = [] {
    const char* env = std::getenv("RNNKERNELS_SLICE_MACS");
    return env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : int64_t{1} << 15;
  }();
  return value;
}

inline int64_t slices_for(int64_t step_macs, int64_t threads) {
  return std::max<int64_t>(1, std::min<int64_t>(threads, step_macs / min_step_macs_per_slice()));
}

// Profiler ranges per direction, e.g. "rnnkernels::lstm_forward (reverse)".
struct DirectionNames {
  std::string forward, reverse;
  explicit DirectionNames(const char* op)
      : forward(std::string(op) + " (forward direction)"),
        reverse(std::string(op) + " (reverse direction)") {}
  const std::string& operator[](int64_t d) const { return d == 0 ? forward : reverse; }
};

// Note [row-split teams]
// Batch rows never interact within a layer, so a team can also split the batch: each
// slice owns a fixed share of the rows for the whole sequence, runs every column block
// of them, and meets nobody between steps. Splitting the columns instead shares every
// row's state across cores each step (h, c, or the backward's dG rows move from one
// core's cache to the other's), while each core reads only its part of the weights.
// Rows win once each slice has a few rows (kMinRowsPerSlice) and every core can keep
// reading all of the step's weights (kMaxWeightBytesPerStep); with one or two rows a slice,
// or tens of MB of weights a step, columns win. The LSTM and RNN kernels split rows; the
// GRU kernels could (same loop shape) but measured no gain. The A/B figures behind these
// thresholds: bench/results/design-notes-measurements.md.
struct RowSplit {
  int64_t batch = 0;          // 0: never split rows
  int64_t element_bytes = 0;  // of the weights
  static constexpr int64_t kMinRowsPerSlice = 4;
  static constexpr int64_t kMaxWeightBytesPerStep = int64_t{8} << 20;

  bool splits(int64_t slices, int64_t step_macs) const {
    if (slices < 2 || batch < kMinRowsPerSlice * slices) return false;
    return step_macs / batch * element_bytes <= kMaxWeightBytesPerStep;
  }
};

// Runs `run(direction, team, slices)` for every direction over one parallel region.
template <typename Run>
void run_directions(const char* op, int64_t directions, int64_t step_macs, Run&& run,
                    RowSplit row_split = {}) {
  const bool profiling = at::hasCallbacks() && at::isRecordFunctionEnabled();
  const DirectionNames names(op);
  // Worker threads of the region see the profiler only through the caller's state.
  const std::optional<at::ThreadLocalState> caller_state =
      profiling ? std::make_optional<at::ThreadLocalState>() : std::nullopt;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  std::vector<int64_t> first(directions + 1, 0);
  auto teams = std::make_unique<Team[]>(directions);
  for (const auto d : c10::irange(directions)) {
    const int64_t share = threads / directions + (d < threads % directions ? 1 : 0);
    teams[d].size = slices_for(step_macs, std::max<int64_t>(1, share));
    teams[d].split_rows = row_split.splits(teams[d].size, step_macs);
    first[d + 1] = first[d] + teams[d].size;
  }
  auto body = [&](int64_t begin, int64_t end) {
    for (const auto d : c10::irange(directions)) {
      const int64_t lo = std::max(begin, first[d]), hi = std::min(end, first[d + 1]);
      if (lo >= hi) continue;
      if (profiling) {
        at::ThreadLocalStateGuard state_guard(*caller_state);
        RECORD_FUNCTION(names[d], std::vector<c10::IValue>());
        run(d, teams[d], SliceRange{lo - first[d], hi - first[d]});
      } else {
        run(d, teams[d], SliceRange{lo - first[d], hi - first[d]});
      }
    }
  };
  const int64_t total = first[directions];
  if (total == 1) {
    body(0, 1);
  } else {
    at::parallel_for(0, total, 1, body);
  }
}

template <typename T>
const CellKernels<T>& cell_kernels();
template <>
inline const CellKernels<float>& cell_kernels<float>() { return active_isa_kernels().f32; }
template <>
inline const CellKernels<double>& cell_kernels<double>() { return active_isa_kernels().f64; }
template <>
inline const CellKernels<c10::BFloat16>& cell_kernels<c10::BFloat16>() {
  return *active_bf16_kernels();  // has_native_kernels(kBFloat16) was checked
}

// The dispatch of the native kernels' storage types (has_native_kernels).
#define RNNKERNELS_DISPATCH_KERNEL_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

inline at::Tensor scratch_bytes(int64_t bytes, const at::Tensor& like) {
  return empty_large({bytes}, like.options().dtype(at::kByte));
}

// Note [single step]
// With one time step (cells, step-by-step decoding) packing W_hh would cost as much as
// the step's product itself. The host then computes h0 @ W_hh^T + b_hh with one GEMM
// and the kernel runs only the gate math; the backward adds dG @ W_hh to grad_h0 the
// same way. Not used with a projection (its second product needs packed W_hr).
inline bool is_single_step(const Sequence& seq, bool has_projection) {
  return seq.batch_sizes.size() == 1 && !has_projection;
}

// h0[d] @ W_hh[d]^T + b_hh[d]: [B, G*H], in h0's dtype (b_hh may be in the compute dtype).
inline at::Tensor recurrent_product(const at::Tensor& h0_dir, const at::Tensor& w_hh,
                             const std::vector<at::Tensor>& b_hh, int64_t dir) {
  return b_hh.empty() ? at::mm(h0_dir, w_hh.t())
                      : at::addmm(b_hh[dir].to(h0_dir.scalar_type()), h0_dir, w_hh.t());
}

// ---------------------------------------------------------------- h_prev rows

// Hidden state entering every row of one direction: [N, P]. Row (t, b) holds h0[b] at the
// row's first step, else the output of the step before it in processing order.
template <typename S>
at::Tensor previous_hidden(const Sequence& seq, bool reverse, const at::Tensor& out_dir,
                           const at::Tensor& h0_dir) {
  const int64_t P = h0_dir.size(1);
  at::Tensor prev = empty_large({seq.rows, P}, h0_dir.options());
  const SequenceLayout lay = layout_of(seq, reverse);
  const S* out = out_dir.data_ptr<S>();
  const int64_t ld_out = out_dir.stride(0);
  const S* h0 = h0_dir.data_ptr<S>();
  S* dst = prev.data_ptr<S>();
  at::parallel_for(0, lay.steps, 16, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t off = lay.offset_at(s);
      const int64_t prev_rows = lay.rows_at(s - 1);
      const int64_t prev_off = s > 0 ? lay.offset_at(s - 1) : 0;
      for (int64_t b = 0; b < lay.rows_at(s); ++b) {
        const S* src = b < prev_rows ? out + (prev_off + b) * ld_out : h0 + b * P;
        std::copy(src, src + P, dst + (off + b) * P);
      }
    }
  });
  return prev;
}

// grad_w [G*H, P] = dG^T @ h_prev over all rows of one direction. bfloat16 gathers h_prev
// and runs one product, so that the sum over all rows is rounded once.
template <typename S>
void recurrent_weight_grad(const Sequence& seq, bool reverse, const at::Tensor& grad_pre,
                           const at::Tensor& out_dir, const at::Tensor& h0_dir,
                           at::Tensor& grad_w) {
  const int64_t N = seq.rows, B = seq.batch;
  if (N == 0) {
    grad_w.zero_();
    return;
  }
  if (seq.uniform() && std::is_same_v<S, compute_t<S>>) {
    // Unpacked: h_prev is the output shifted by one step, and h0 for the first step.
    const at::Tensor first = reverse ? grad_pre.narrow(0, N - B, B) : grad_pre.narrow(0, 0, B);
    matmul_into(grad_w, first.t(), h0_dir, std::nullopt, /*accumulate=*/false);
    if (N > B) {
      const at::Tensor g = reverse ? grad_pre.narrow(0, 0, N - B) : grad_pre.narrow(0, B, N - B);
      const at::Tensor h = reverse ? out_dir.narrow(0, B, N - B) : out_dir.narrow(0, 0, N - B);
      matmul_into(grad_w, g.t(), h, std::nullopt, /*accumulate=*/true);
    }
    return;
  }
  matmul_into(grad_w, grad_pre.t(), previous_hidden<S>(seq, reverse, out_dir, h0_dir),
              std::nullopt, /*accumulate=*/false);
}


// The kernels see float32, float64, and bfloat16 where the CPU has AVX512-BF16; the
// precision policy widens the rest before they get here.
inline const host::Backend kCpu{"CPU", [](const at::Tensor& t) { return t.device().is_cpu(); },
                         has_native_kernels, "float32, float64, bfloat16 and float16",
                         compute_dtype};

// x_name names x_proj in messages: x_proj, or x_side for the layer-normalised LSTM.
inline ForwardInputs prepare_forward(const char* op, Cell cell, const at::Tensor& x_proj,
                              at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                              const at::Tensor& h0,
                              const std::optional<at::Tensor>& batch_sizes,
                              const char* x_name = "x_proj") {
  ForwardInputs in = host::prepare_forward(kCpu, op, cell, x_proj, x_name, w_hh, b_hh, w_hr,
                                           h0, batch_sizes, x_proj, x_name);
  in.b_hh = in_compute_dtype(std::move(in.b_hh));
  return in;
}


// Weight and bias gradients of one direction from the pre-activation gradients.
template <typename S>
void recurrent_param_grads(const BackwardInputs& in, int64_t dir, const at::Tensor& grad_pre,
                           std::vector<at::Tensor>& grad_w_hh,
                           std::vector<at::Tensor>& grad_b_hh) {
  const int64_t P = in.d.output;
  const at::Tensor out_dir = in.out.narrow(1, dir * P, P);
  recurrent_weight_grad<S>(in.seq, dir == 1, grad_pre, out_dir, in.h0[dir], grad_w_hh[dir]);
  if (!grad_b_hh.empty()) at::sum_out(grad_b_hh[dir], grad_pre, {0});
}

// ---------------------------------------------------------------- the backend's functions

// On x_proj, in the kernels' storage dtypes (recurrence_cpu.cpp, backward_cpu.cpp,
// layer_norm_lstm_cpu.cpp); the LSTM from x, its input projection inside the time loop
// where that pays.
host::LstmForward lstm_forward_cpu;
host::GruForward gru_forward_cpu;
host::RnnForward rnn_forward_cpu;
host::LstmForwardFromInput lstm_forward_fused_cpu;
host::LstmBackward lstm_backward_cpu;
host::GruBackward gru_backward_cpu;
host::RnnBackward rnn_backward_cpu;
host::LayerNormLstmForward layer_norm_lstm_forward_cpu;
host::LayerNormLstmBackward layer_norm_lstm_backward_cpu;

// The table of the backend's recurrences under the precision policy (recurrence_cpu.cpp).
const host::Recurrence& recurrence_table();

}  // namespace rnnkernels::cpu::detail
