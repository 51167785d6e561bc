// CPU implementations of the rnnkernels recurrence ops: argument checks, output
// allocation, the thread plan for the fused time loops (kernels_isa.h), and the weight
// gradients as GEMMs after the reverse sweep.
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

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cpu/gemm_cpu.h"
#include "cpu/kernels.h"
#include "cpu/memory.h"
#include "host/arguments.h"
#include "cpu/recurrence_cpu.h"
#include "host/layer.h"
#include "rnnkernels/cell_math.h"

namespace rnnkernels::cpu {
namespace {

// Sequence, Dims, the argument checks and the op arguments of csrc/host/arguments.h.
using namespace host;

SequenceLayout layout_of(const Sequence& seq, bool reverse) {
  SequenceLayout s;
  s.steps = seq.steps();
  s.batch = seq.batch;
  s.batch_sizes = seq.batch_sizes.data();
  s.offsets = seq.offsets.data();
  s.reverse = reverse;
  return s;
}

// Note [reduced precision on CPU]
// bfloat16 runs its own kernels where the CPU has AVX512-BF16 dot products (Note
// [storage and compute types] in kernels.h): the op reads and writes bfloat16 tensors
// and keeps the workspace, gates and cell state in float32. Elsewhere, and for float16
// (no x86 CPU we target has float16 dot products with float32 sums short of AMX-FP16),
// the op widens its inputs to float32, runs the float32 kernels and rounds its results
// back (the *_entry functions below).
bool has_native_kernels(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble ||
         (t == at::kBFloat16 && active_bf16_kernels() != nullptr);
}

// The dtype a kernel computes in for storage dtype t: float32 for bfloat16.
at::ScalarType compute_dtype(at::ScalarType t) { return t == at::kBFloat16 ? at::kFloat : t; }

// Biases and zoneout weights enter the kernels in the compute dtype.
std::vector<at::Tensor> in_compute_dtype(std::vector<at::Tensor> ts) {
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
std::optional<at::Tensor> check_zoneout(const char* op, const std::optional<at::Tensor>& zoneout,
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
// 2^15 (about 0.5 us of one core) measured best on 2-core Zen 4: the spin barrier costs
// about 20 ns a step there, so splitting pays down to small steps, while 2^13-2^14 lost
// to cache-line traffic on the shared state. Splitting also keeps the worker thread warm.
int64_t min_step_macs_per_slice() {
  static const int64_t value = [] {
    const char* env = std::getenv("RNNKERNELS_SLICE_MACS");
    return env != nullptr ? std::max<int64_t>(1, std::atoll(env)) : int64_t{1} << 15;
  }();
  return value;
}

int64_t slices_for(int64_t step_macs, int64_t threads) {
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
// Rows win once each slice has a few rows and every core can keep reading all of the
// step's weights: A/B in one process on 2-core Zen 4 (bit-identical results), LSTM
// training / inference time, columns -> rows: (200,16,128,128) 21.6 -> 19.4 / 6.56 ->
// 6.11 ms; (100,32,256,256) 65.5 -> 59.0 / 19.4 -> 17.7 ms; (1000,8,64,64) 14.2 -> 13.7
// / 4.41 -> 3.99 ms; (100,64,512,512) 400 -> 396 / 125 -> 123 ms; but B = 2 or 4 (one or
// two rows a slice) lost 5-20%, and (50,16,1024,1024), 32 MB of weights a step, lost 6%
// in training and 17% in inference. The RNN kernels take it too (A/B, columns -> rows,
// training / inference: (200,16,128,128) 5.19 -> 4.53 / 1.47 -> 1.24 ms; (100,8,256,256)
// 3.96 -> 3.77 / 1.22 -> 1.18 ms; (100,64,512,512) 117.8 -> 115.5 / 34.0 -> 33.2 ms;
// (100,32,256,256) and (1000,8,64,64) within +-3% in one run, 1.0-1.3x in another). The
// GRU kernels can (same loop shape) but do not: their forward lost 4% at (200,16,128,128)
// in two runs and the backward alone gained nothing beyond the +-3% noise.
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
const CellKernels<float>& cell_kernels<float>() { return active_isa_kernels().f32; }
template <>
const CellKernels<double>& cell_kernels<double>() { return active_isa_kernels().f64; }
template <>
const CellKernels<c10::BFloat16>& cell_kernels<c10::BFloat16>() {
  return *active_bf16_kernels();  // has_native_kernels(kBFloat16) was checked
}

// The dispatch of the native kernels' storage types (has_native_kernels).
#define RNNKERNELS_DISPATCH_KERNEL_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor scratch_bytes(int64_t bytes, const at::Tensor& like) {
  return empty_large({bytes}, like.options().dtype(at::kByte));
}

// Note [single step]
// With one time step (cells, step-by-step decoding) packing W_hh would cost as much as
// the step's product itself. The host then computes h0 @ W_hh^T + b_hh with one GEMM
// and the kernel runs only the gate math; the backward adds dG @ W_hh to grad_h0 the
// same way. Not used with a projection (its second product needs packed W_hr).
bool is_single_step(const Sequence& seq, bool has_projection) {
  return seq.batch_sizes.size() == 1 && !has_projection;
}

// h0[d] @ W_hh[d]^T + b_hh[d]: [B, G*H], in h0's dtype (b_hh may be in the compute dtype).
at::Tensor recurrent_product(const at::Tensor& h0_dir, const at::Tensor& w_hh,
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

// ---------------------------------------------------------------- forward ops

// Note [reduced precision on CPU]: the kernels see float32, float64, and bfloat16 where
// the CPU has AVX512-BF16; the *_entry functions widen the rest.
const host::Backend kCpu{"CPU", [](const at::Tensor& t) { return t.device().is_cpu(); },
                         has_native_kernels, "float32, float64, bfloat16 and float16",
                         compute_dtype};

// x_name names x_proj in messages: x_proj, or x_side for the layer-normalised LSTM.
ForwardInputs prepare_forward(const char* op, Cell cell, const at::Tensor& x_proj,
                              at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                              const at::Tensor& h0,
                              const std::optional<at::Tensor>& batch_sizes,
                              const char* x_name = "x_proj") {
  ForwardInputs in = host::prepare_forward(kCpu, op, cell, x_proj, x_name, w_hh, b_hh, w_hr,
                                           h0, batch_sizes, x_proj, x_name);
  in.b_hh = in_compute_dtype(std::move(in.b_hh));
  return in;
}

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
  check_same(op, "c0", c0_in, like, like_name);
  check_shape(op, "c0", c0_in, {d.directions, d.batch, d.hidden});
  const at::Tensor c0 = c0_in.contiguous();
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
// weights, and fusing would read W_ih once per step instead of once per call (measured
// 0.79x of torch.nn at B=1, H=256 against 1.2-1.4x unfused); those, one-step sequences
// and reduced precision go through input_projection and lstm_forward.
constexpr int64_t kMinFusedBatch = 8;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout);

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
    return lstm_forward_entry(input_projection(x, w_ih, b_ih), w_hh, b_hh, w_hr, h0, c0,
                              batch_sizes, need_workspace, zoneout);
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

// ---------------------------------------------------------------- backward ops

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
  check_same(op, "c0", c0_in, out, "output");
  check_shape(op, "c0", c0_in, {D, B, H});
  if (grad_c_n_in.has_value() && grad_c_n_in->defined()) {
    check_same(op, "grad_c_n", *grad_c_n_in, out, "output");
    check_shape(op, "grad_c_n", *grad_c_n_in, {D, B, H});
  }
  const at::Tensor c0 = c0_in.contiguous();
  const std::optional<at::Tensor> grad_c_n = contiguous_opt(grad_c_n_in);
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

// ---------------------------------------------------------------- reduced precision

// ---------------------------------------------------------------- layer-normalised LSTM

// The LayerNorm parameters of the recurrent product and the cell state, one per direction
// (Note [layer-normalised LSTM] in cell_math.h), checked and made contiguous.
struct LayerNormParams {
  std::vector<at::Tensor> hh_weight, c_weight, c_bias;
};

LayerNormParams check_layer_norm_params(const char* op, const Dims& d,
                                        at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
                                        at::TensorList ln_c_bias, const at::Tensor& like,
                                        const char* like_name) {
  const int64_t D = d.directions, H = d.hidden;
  TORCH_CHECK(static_cast<int64_t>(ln_hh_weight.size()) == D &&
                  static_cast<int64_t>(ln_c_weight.size()) == D,
              op, ": ln_hh_weight and ln_c_weight must hold one weight per direction (", D,
              "), got ", ln_hh_weight.size(), " and ", ln_c_weight.size());
  TORCH_CHECK(ln_c_bias.empty() || static_cast<int64_t>(ln_c_bias.size()) == D, op,
              ": ln_c_bias must be empty or hold one bias per direction (", D, "), got ",
              ln_c_bias.size());
  for (const auto i : c10::irange(D)) {
    const std::string idx = "[" + std::to_string(i) + "]";
    check_same(op, "ln_hh_weight", ln_hh_weight[i], like, like_name);
    check_shape(op, "ln_hh_weight" + idx, ln_hh_weight[i], {4 * H});
    check_same(op, "ln_c_weight", ln_c_weight[i], like, like_name);
    check_shape(op, "ln_c_weight" + idx, ln_c_weight[i], {H});
    if (!ln_c_bias.empty()) {
      check_same(op, "ln_c_bias", ln_c_bias[i], like, like_name);
      check_shape(op, "ln_c_bias" + idx, ln_c_bias[i], {H});
    }
  }
  return {contiguous_all(ln_hh_weight), contiguous_all(ln_c_weight), contiguous_all(ln_c_bias)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward_cpu(
    const at::Tensor& x_side, at::TensorList w_hh, at::TensorList ln_hh_weight,
    at::TensorList ln_c_weight, at::TensorList ln_c_bias, const at::Tensor& h0,
    const at::Tensor& c0_in, const std::optional<at::Tensor>& batch_sizes, bool need_workspace) {
  constexpr const char* op = "rnnkernels::layer_norm_lstm_forward";
  const ForwardInputs in =
      prepare_forward(op, Cell::kLstm, x_side, w_hh, {}, {}, h0, batch_sizes, "x_side");
  const Dims& d = in.d;
  const LayerNormParams ln =
      check_layer_norm_params(op, d, ln_hh_weight, ln_c_weight, ln_c_bias, x_side, "x_side");
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  check_same(op, "c0", c0_in, x_side, "x_side");
  check_shape(op, "c0", c0_in, {D, B, H});
  const at::Tensor c0 = c0_in.contiguous();
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
      check_layer_norm_params(op, d, ln_hh_weight, ln_c_weight, ln_c_bias, out, "output");
  const int64_t N = d.rows, D = d.directions, H = d.hidden, B = d.batch;
  const int64_t ws_width = math::ln_lstm_workspace_width(H);
  check_same(op, "c0", c0_in, out, "output");
  check_shape(op, "c0", c0_in, {D, B, H});
  if (grad_c_n_in.has_value() && grad_c_n_in->defined()) {
    check_same(op, "grad_c_n", *grad_c_n_in, out, "output");
    check_shape(op, "grad_c_n", *grad_c_n_in, {D, B, H});
  }
  const at::Tensor c0 = c0_in.contiguous();
  const std::optional<at::Tensor> grad_c_n = contiguous_opt(grad_c_n_in);
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

// ---------------------------------------------------------------- reduced precision

bool is_reduced_float(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

at::Tensor widen(const at::Tensor& t) { return t.to(at::kFloat); }

std::vector<at::Tensor> widen(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(widen(t));
  return out;
}

std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return widen(*t);
  return t;
}

std::vector<at::Tensor> narrow_to(std::vector<at::Tensor> ts, at::ScalarType dtype) {
  for (auto& t : ts) t = t.to(dtype);
  return ts;
}

void check_optional_same(const char* op, const char* name, const std::optional<at::Tensor>& t,
                         const at::Tensor& ref, const char* ref_name) {
  if (t.has_value() && t->defined()) check_same(op, name, *t, ref, ref_name);
}

void check_float32_workspace(const char* op, const at::Tensor& ws) {
  TORCH_CHECK(ws.scalar_type() == at::kFloat, op,
              ": the workspace of a bfloat16/float16 call is float32, got ", ws.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  const auto dtype = x_proj.scalar_type();
  if (has_native_kernels(dtype))
    return lstm_forward_cpu(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace,
                            zoneout);
  constexpr const char* op = "rnnkernels::lstm_forward";
  check_weights(op, Cell::kLstm, x_proj, "x_proj", w_hh, b_hh, w_hr, h0);
  check_same(op, "c0", c0, x_proj, "x_proj");
  check_optional_same(op, "zoneout", zoneout, x_proj, "x_proj");
  auto [out, h_n, c_n, ws] = lstm_forward_cpu(widen(x_proj), widen(w_hh), widen(b_hh),
                                              widen(w_hr), widen(h0), widen(c0), batch_sizes,
                                              need_workspace, widen(zoneout));
  return {out.to(dtype), h_n.to(dtype), c_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  const auto dtype = x_proj.scalar_type();
  if (has_native_kernels(dtype))
    return gru_forward_cpu(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
  check_weights("rnnkernels::gru_forward", Cell::kGru, x_proj, "x_proj", w_hh, b_hh, {}, h0);
  check_optional_same("rnnkernels::gru_forward", "zoneout", zoneout, x_proj, "x_proj");
  auto [out, h_n, ws] = gru_forward_cpu(widen(x_proj), widen(w_hh), widen(b_hh), widen(h0),
                                        batch_sizes, need_workspace, widen(zoneout));
  return {out.to(dtype), h_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, c10::string_view nonlinearity,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  const auto dtype = x_proj.scalar_type();
  if (has_native_kernels(dtype))
    return rnn_forward_cpu(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                           zoneout);
  check_weights("rnnkernels::rnn_forward", Cell::kRnn, x_proj, "x_proj", w_hh, b_hh, {}, h0);
  check_optional_same("rnnkernels::rnn_forward", "zoneout", zoneout, x_proj, "x_proj");
  auto [out, h_n, ws] = rnn_forward_cpu(widen(x_proj), widen(w_hh), widen(b_hh), widen(h0),
                                        batch_sizes, nonlinearity, need_workspace,
                                        widen(zoneout));
  return {out.to(dtype), h_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
lstm_backward_entry(const std::optional<at::Tensor>& grad_out,
                    const std::optional<at::Tensor>& grad_h_n,
                    const std::optional<at::Tensor>& grad_c_n, at::TensorList w_hh,
                    at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                    const at::Tensor& c0, const at::Tensor& out, const at::Tensor& ws,
                    const std::optional<at::Tensor>& batch_sizes,
                    const std::optional<at::Tensor>& zoneout) {
  const auto dtype = out.scalar_type();
  if (has_native_kernels(dtype))
    return lstm_backward_cpu(grad_out, grad_h_n, grad_c_n, w_hh, b_hh, w_hr, h0, c0, out, ws,
                             batch_sizes, zoneout);
  constexpr const char* op = "rnnkernels::lstm_backward";
  check_weights(op, Cell::kLstm, out, "output", w_hh, b_hh, w_hr, h0);
  check_same(op, "c0", c0, out, "output");
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "grad_c_n", grad_c_n, out, "output");
  check_optional_same(op, "zoneout", zoneout, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gc0, gw_hh, gb_hh, gw_hr] =
      lstm_backward_cpu(widen(grad_out), widen(grad_h_n), widen(grad_c_n), widen(w_hh),
                        widen(b_hh), widen(w_hr), widen(h0), widen(c0), widen(out), ws,
                        batch_sizes, widen(zoneout));
  return {gx.to(dtype), gh0.to(dtype), gc0.to(dtype), narrow_to(gw_hh, dtype),
          narrow_to(gb_hh, dtype), narrow_to(gw_hr, dtype)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
gru_backward_entry(const std::optional<at::Tensor>& grad_out,
                   const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                   at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                   const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                   const std::optional<at::Tensor>& zoneout) {
  const auto dtype = out.scalar_type();
  if (has_native_kernels(dtype))
    return gru_backward_cpu(grad_out, grad_h_n, w_hh, b_hh, h0, out, ws, batch_sizes, zoneout);
  constexpr const char* op = "rnnkernels::gru_backward";
  check_weights(op, Cell::kGru, out, "output", w_hh, b_hh, {}, h0);
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "zoneout", zoneout, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gw_hh, gb_hh] = gru_backward_cpu(widen(grad_out), widen(grad_h_n), widen(w_hh),
                                                  widen(b_hh), widen(h0), widen(out), ws,
                                                  batch_sizes, widen(zoneout));
  return {gx.to(dtype), gh0.to(dtype), narrow_to(gw_hh, dtype), narrow_to(gb_hh, dtype)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
rnn_backward_entry(const std::optional<at::Tensor>& grad_out,
                   const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                   at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                   const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                   c10::string_view nonlinearity, const std::optional<at::Tensor>& zoneout) {
  const auto dtype = out.scalar_type();
  if (has_native_kernels(dtype))
    return rnn_backward_cpu(grad_out, grad_h_n, w_hh, b_hh, h0, out, ws, batch_sizes,
                            nonlinearity, zoneout);
  constexpr const char* op = "rnnkernels::rnn_backward";
  check_weights(op, Cell::kRnn, out, "output", w_hh, b_hh, {}, h0);
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "zoneout", zoneout, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gw_hh, gb_hh] = rnn_backward_cpu(widen(grad_out), widen(grad_h_n), widen(w_hh),
                                                  widen(b_hh), widen(h0), widen(out), ws,
                                                  batch_sizes, nonlinearity, widen(zoneout));
  return {gx.to(dtype), gh0.to(dtype), narrow_to(gw_hh, dtype), narrow_to(gb_hh, dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward_entry(
    const at::Tensor& x_side, at::TensorList w_hh, at::TensorList ln_hh_weight,
    at::TensorList ln_c_weight, at::TensorList ln_c_bias, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes, bool need_workspace) {
  const auto dtype = x_side.scalar_type();
  if (!is_reduced_float(dtype))
    return layer_norm_lstm_forward_cpu(x_side, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0,
                                       batch_sizes, need_workspace);
  constexpr const char* op = "rnnkernels::layer_norm_lstm_forward";
  const Dims d = check_weights(op, Cell::kLstm, x_side, "x_side", w_hh, {}, {}, h0);
  check_layer_norm_params(op, d, ln_hh_weight, ln_c_weight, ln_c_bias, x_side, "x_side");
  check_same(op, "c0", c0, x_side, "x_side");
  auto [out, h_n, c_n, ws] = layer_norm_lstm_forward_cpu(
      widen(x_side), widen(w_hh), widen(ln_hh_weight), widen(ln_c_weight), widen(ln_c_bias),
      widen(h0), widen(c0), batch_sizes, need_workspace);
  return {out.to(dtype), h_n.to(dtype), c_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>>
layer_norm_lstm_backward_entry(const std::optional<at::Tensor>& grad_out,
                               const std::optional<at::Tensor>& grad_h_n,
                               const std::optional<at::Tensor>& grad_c_n, at::TensorList w_hh,
                               at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
                               at::TensorList ln_c_bias, const at::Tensor& h0,
                               const at::Tensor& c0, const at::Tensor& out, const at::Tensor& ws,
                               const std::optional<at::Tensor>& batch_sizes) {
  const auto dtype = out.scalar_type();
  if (!is_reduced_float(dtype))
    return layer_norm_lstm_backward_cpu(grad_out, grad_h_n, grad_c_n, w_hh, ln_hh_weight,
                                        ln_c_weight, ln_c_bias, h0, c0, out, ws, batch_sizes);
  constexpr const char* op = "rnnkernels::layer_norm_lstm_backward";
  const Dims d = check_weights(op, Cell::kLstm, out, "output", w_hh, {}, {}, h0);
  check_layer_norm_params(op, d, ln_hh_weight, ln_c_weight, ln_c_bias, out, "output");
  check_same(op, "c0", c0, out, "output");
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "grad_c_n", grad_c_n, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gc0, gw_hh, g_ln_hh, g_ln_c, g_ln_c_bias] = layer_norm_lstm_backward_cpu(
      widen(grad_out), widen(grad_h_n), widen(grad_c_n), widen(w_hh), widen(ln_hh_weight),
      widen(ln_c_weight), widen(ln_c_bias), widen(h0), widen(c0), widen(out), ws, batch_sizes);
  return {gx.to(dtype),           gh0.to(dtype),           gc0.to(dtype),
          narrow_to(gw_hh, dtype), narrow_to(g_ln_hh, dtype), narrow_to(g_ln_c, dtype),
          narrow_to(g_ln_c_bias, dtype)};
}

// ---------------------------------------------------------------- the op pair

const host::Recurrence kCpuRecurrence{
    &lstm_forward_entry,      &lstm_backward_entry,           &gru_forward_entry,
    &gru_backward_entry,      &rnn_forward_entry,             &rnn_backward_entry,
    &layer_norm_lstm_forward_entry, &layer_norm_lstm_backward_entry,
    &input_projection,        &input_projection_backward,     &lstm_forward_fused_cpu};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_cpu(
    c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
    bool has_projection, const at::Tensor& h0, const std::optional<at::Tensor>& c0,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& zoneout,
    bool need_workspace) {
  return host::rnn_layer(kCpuRecurrence, mode, x, weights, has_biases, has_projection, h0, c0,
                         batch_sizes, zoneout, need_workspace);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> rnn_layer_backward_cpu(
    c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
    bool has_projection, const at::Tensor& h0, const std::optional<at::Tensor>& c0,
    const at::Tensor& output, const at::Tensor& workspace,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& zoneout,
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, bool need_input_grad) {
  return host::rnn_layer_backward(kCpuRecurrence, mode, x, weights, has_biases, has_projection,
                                  h0, c0, output, workspace, batch_sizes, zoneout, grad_output,
                                  grad_h_n, grad_c_n, need_input_grad);
}

}  // namespace

const host::Recurrence& cpu_recurrence() { return kCpuRecurrence; }

TORCH_LIBRARY_IMPL(rnnkernels, CPU, m) {
  m.impl("rnn_layer", &rnn_layer_cpu);
  m.impl("rnn_layer_backward", &rnn_layer_backward_cpu);
}

}  // namespace rnnkernels::cpu
