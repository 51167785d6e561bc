#pragma once
// Interface between the CUDA host code (recurrence_cuda.cpp: checks, allocation, the
// GEMMs through ATen, the time loop) and the pointwise kernels (*_kernels.cuh, instantiated
// once per storage type in kernels_{f32,f64,f16,bf16}.cu). No torch headers: sizes, raw
// pointers and a stream, so the .cu files compile fast and anywhere nvcc runs.
//
// Type parameters:
//   S  storage type of the user-visible tensors (x_proj, weights, h, output, gradients):
//      float, double, float16_t, bfloat16_t
//   G  type of the GEMM results the kernels read (gates, recurrent gradient products):
//      acc_t<S> when ATen can write a 16-bit product in fp32 (mm.dtype_out), else S
//   X  type of x_proj in the forward steps: S, or float for the 16-bit types (Note [cuda
//      x_proj in float32] in recurrence_cuda.cpp)
//   acc_t<S>  math, cell state and workspace type: float for the 16-bit types, else S
//
// Matrices are row-major; ld_* is a row stride in elements. Every launcher returns
// cudaGetLastError() after its launch (cudaSuccess when there is nothing to do) and is
// enqueued on the given stream only. Sizes and offsets are 64-bit throughout.
//
// Both directions of a bidirectional layer run in one launch: dir[0] and dir[1] hold each
// direction's rows and pointers for the step, and gridDim.y = directions.
//
// Note [cuda step rows]
// Rows of a time step are the prefix [0, rows) of the batch (PackedSequence order), so a
// state buffer [B, X] holds every row's latest state: a row that is not active keeps its
// value. At processing step s of a direction (t = s forward, T-1-s reverse):
//   forward   rows [0, rows_s) read the state, run the cell and write the state back;
//             the state buffers start as h0 (and c0), so a row that becomes active late
//             (reverse direction of a packed sequence) starts from its initial state, and
//             a row that ends early (forward direction) keeps its final state: the state
//             buffer is h_n (c_n) at the end.
//   backward  walks s = T-1 .. -1 (see Note [backward rows] in cpu/kernels_isa.h). With
//             `rec` = dG_{s+1} @ W_hh over the rows of step s+1 and a carried
//             dh_carry [B, P] that starts as grad_h_n:
//               r < rows_s:                dh = grad_out + dh_carry + (r < next_rows ? rec : 0),
//                                          then the cell backward; dh_carry becomes the part
//                                          of dL/dh_prev that does not pass through W_hh
//                                          (GRU: z*dh; LSTM, RNN: 0)
//               rows_s <= r < next_rows:   the row starts at s+1, so rec is dL/dh0:
//                                          dh_carry += rec
//             After s = -1 (rows_{-1} = 0) dh_carry is grad_h0; dc_carry (grad_c_n at the
//             start) is grad_c0.

#include <cuda_runtime_api.h>

#include <cstdint>

namespace rnnkernels::cuda {

// 16-bit storage types, bit-compatible with at::Half / __half and at::BFloat16 /
// __nv_bfloat16; the kernels convert them with the cuda_fp16.h / cuda_bf16.h intrinsics.
struct alignas(2) float16_t {
  uint16_t bits;
};
struct alignas(2) bfloat16_t {
  uint16_t bits;
};

template <typename S>
struct AccumulateType {
  using type = S;
};
template <>
struct AccumulateType<float16_t> {
  using type = float;
};
template <>
struct AccumulateType<bfloat16_t> {
  using type = float;
};
template <typename S>
using acc_t = typename AccumulateType<S>::type;

constexpr int kMaxDirections = 2;

// ================================================================ forward steps

// LSTM, one step. Gate order i, f, g, o (PyTorch's); workspace row: i, f, g, o, c (with
// zoneout: i, f, g, o, c before zoneout, c after it).
template <typename S, typename G, typename X = S>
struct LstmForwardStep {
  int64_t hidden = 0;      // H
  int64_t output = 0;      // P
  int64_t directions = 1;  // D, gridDim.y
  int64_t ld_x_proj = 0;   // D*4H
  int64_t ld_out = 0;      // D*P
  int64_t ld_zoneout = 0;
  struct Dir {
    int64_t rows = 0;                    // active rows of this step
    const G* gates = nullptr;            // [rows, 4H] h_prev @ W_hh^T, row stride 4H
    const X* x_proj = nullptr;           // [rows, 4H] row stride ld_x_proj (b_ih included)
    const S* b_hh = nullptr;             // [4H] or null
    acc_t<S>* c = nullptr;               // [B, H] cell state, rows [0, rows) updated in place
    S* h = nullptr;                      // [B, H] hidden state (no projection), else null
    S* out = nullptr;                    // [rows, H] row stride ld_out (no projection), else null
    S* m = nullptr;                      // [B, H] o*tanh(c) for the projection, else null
    acc_t<S>* workspace = nullptr;       // [rows, 5H] (zoneout: 6H) contiguous, or null
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;          // [rows, P+H]: h's (P) then c's (H)
  } dir[kMaxDirections];
};

// GRU, one step. Gate order r, z, n; workspace row: r, z, n, W_hn h + b_hn.
template <typename S, typename G, typename X = S>
struct GruForwardStep {
  int64_t hidden = 0;
  int64_t directions = 1;
  int64_t ld_x_proj = 0;  // D*3H
  int64_t ld_out = 0;     // D*H
  int64_t ld_zoneout = 0;
  struct Dir {
    int64_t rows = 0;
    const G* gates = nullptr;       // [rows, 3H] h_prev @ W_hh^T, row stride 3H
    const X* x_proj = nullptr;      // [rows, 3H] row stride ld_x_proj
    const S* b_hh = nullptr;        // [3H] or null
    S* h = nullptr;                 // [B, H] hidden state, rows [0, rows) updated in place
    S* out = nullptr;               // [rows, H] row stride ld_out
    acc_t<S>* workspace = nullptr;  // [rows, 4H] contiguous, or null
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;     // [rows, H]
  } dir[kMaxDirections];
};

// Elman RNN, one step (tanh or relu).
template <typename S, typename G, typename X = S>
struct RnnForwardStep {
  int64_t hidden = 0;
  int64_t directions = 1;
  int64_t ld_x_proj = 0;  // D*H
  int64_t ld_out = 0;     // D*H
  int64_t ld_zoneout = 0;
  bool relu = false;
  struct Dir {
    int64_t rows = 0;
    const G* gates = nullptr;   // [rows, H] h_prev @ W_hh^T, row stride H
    const X* x_proj = nullptr;  // [rows, H] row stride ld_x_proj
    const S* b_hh = nullptr;    // [H] or null
    S* h = nullptr;             // [B, H] hidden state
    S* out = nullptr;           // [rows, H] row stride ld_out
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;          // [rows, H]
    acc_t<S>* workspace = nullptr;       // zoneout only: [rows, H] h before zoneout, or null
  } dir[kMaxDirections];
};

// LSTM with projection, after the host's product h = m @ W_hr^T: copies the product into
// the hidden state and the output rows, rounded to S.
template <typename S, typename G>
struct StoreHidden {
  int64_t output = 0;  // P
  int64_t directions = 1;
  int64_t ld_out = 0;  // D*P
  int64_t ld_zoneout = 0;
  struct Dir {
    int64_t rows = 0;
    const G* product = nullptr;  // [rows, P] row stride P
    S* h = nullptr;              // [B, P] hidden state (the previous one until written)
    S* out = nullptr;            // [rows, P] row stride ld_out
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;  // [rows, P+H]: the first P columns
  } dir[kMaxDirections];
};

// ================================================================ backward steps

// LSTM cell backward at step s (Note [cuda step rows]). Without projection the kernel
// assembles dh itself (rows [0, max(rows, next_rows)) of the direction); with projection
// `dh_complete` already holds dL/dm for rows [0, rows) (StepGradH and the host's product
// dh @ W_hr ran first) and only the active rows are visited.
template <typename S, typename G>
struct LstmBackwardStep {
  int64_t hidden = 0;
  int64_t directions = 1;
  int64_t output = 0;          // P
  int64_t ld_grad_out = 0;     // D*H
  int64_t ld_grad_x_proj = 0;  // D*4H
  int64_t ld_zoneout = 0;
  bool projection = false;
  struct Dir {
    int64_t rows = 0;       // active at s
    int64_t next_rows = 0;  // active at s+1 (rows with a `rec` row)
    int64_t prev_rows = 0;  // active at s-1 (rows whose c_prev is in prev_workspace)
    const G* rec = nullptr;                     // [next_rows, H] dG_{s+1} @ W_hh, or null
    const S* grad_out = nullptr;                // [rows, H] row stride ld_grad_out, or null
    acc_t<S>* dh_carry = nullptr;               // [B, H] (no projection)
    const G* dh_complete = nullptr;             // [rows, H] dL/dm, row stride H (projection)
    acc_t<S>* dc_carry = nullptr;               // [B, H]
    const acc_t<S>* workspace = nullptr;        // [rows, 5H] rows of step s (zoneout: 6H)
    const acc_t<S>* prev_workspace = nullptr;   // [prev_rows, 5H] rows of step s-1, or null
    const S* c0 = nullptr;                      // [B, H]
    S* grad_x_proj = nullptr;                   // [rows, 4H] row stride ld_grad_x_proj
    S* grad_rec = nullptr;                      // [B, 4H]: dG of step s for the next product
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;                 // [rows, P+H]: h's (P) then c's (H)
  } dir[kMaxDirections];
};

// LSTM with projection: assembles dL/dh_t (P wide) for step s, as the first half of the
// no-projection LstmBackwardStep does for H-wide rows.
template <typename S, typename G>
struct StepGradH {
  int64_t output = 0;  // P
  int64_t directions = 1;
  int64_t ld_grad_out = 0;  // D*P
  int64_t ld_zoneout = 0;
  struct Dir {
    int64_t rows = 0;
    int64_t next_rows = 0;
    const G* rec = nullptr;         // [next_rows, P], or null
    const S* grad_out = nullptr;    // [rows, P] row stride ld_grad_out, or null
    acc_t<S>* dh_carry = nullptr;   // [B, P]
    S* grad_h = nullptr;            // [rows, P] contiguous: the rows of step s (for dW_hr)
    S* grad_h_step = nullptr;       // [B, P]: the same rows, for the product dh @ W_hr
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;     // [rows, P+H]: the first P columns
  } dir[kMaxDirections];
};

template <typename S, typename G>
struct GruBackwardStep {
  int64_t hidden = 0;
  int64_t directions = 1;
  int64_t ld_grad_out = 0;     // D*H
  int64_t ld_grad_x_proj = 0;  // D*3H
  int64_t ld_out = 0;          // D*H
  int64_t ld_zoneout = 0;
  struct Dir {
    int64_t rows = 0;
    int64_t next_rows = 0;
    int64_t prev_rows = 0;                 // active at s-1 (h_prev is in prev_out)
    const G* rec = nullptr;                // [next_rows, H], or null
    const S* grad_out = nullptr;           // [rows, H] row stride ld_grad_out, or null
    acc_t<S>* dh_carry = nullptr;          // [B, H]
    const acc_t<S>* workspace = nullptr;   // [rows, 4H] rows of step s
    const S* prev_out = nullptr;           // [prev_rows, H] output rows of step s-1
                                           // (row stride ld_out), or null
    const S* h0 = nullptr;                 // [B, H]
    S* grad_x_proj = nullptr;              // [rows, 3H] row stride ld_grad_x_proj: r, z, n_x
    S* grad_hidden = nullptr;              // [rows, 3H] contiguous: r, z, n_h (for dW_hh, db_hh)
    S* grad_rec = nullptr;                 // [B, 3H]: the same, for the next product
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;            // [rows, H]
  } dir[kMaxDirections];
};

template <typename S, typename G>
struct RnnBackwardStep {
  int64_t hidden = 0;
  int64_t directions = 1;
  int64_t ld_grad_out = 0;     // D*H
  int64_t ld_grad_x_proj = 0;  // D*H
  int64_t ld_out = 0;          // D*H
  int64_t ld_zoneout = 0;
  bool relu = false;
  struct Dir {
    int64_t rows = 0;
    int64_t next_rows = 0;
    const G* rec = nullptr;        // [next_rows, H], or null
    const S* grad_out = nullptr;   // [rows, H] row stride ld_grad_out, or null
    acc_t<S>* dh_carry = nullptr;  // [B, H]
    const S* out = nullptr;        // [rows, H] output rows of step s (the activation),
                                   // row stride ld_out
    S* grad_x_proj = nullptr;      // [rows, H] row stride ld_grad_x_proj
    S* grad_rec = nullptr;         // [B, H]
    // Zoneout weights of the previous state for the rows of this step (Note [zoneout] in
    // cell_math.h), row stride ld_zoneout (0: one row for all), or null:
    const S* zoneout = nullptr;              // [rows, H]
    const acc_t<S>* workspace = nullptr;     // zoneout only: [rows, H] h before zoneout
  } dir[kMaxDirections];
};

// ================================================================ layer-normalised LSTM

// Lanes of the two-pass row reductions of the layer-normalised LSTM (Note [cuda layer-norm
// rows] in ln_lstm_kernels.cuh): a row of `width` values is split into ln_row_lanes(width)
// interleaved lanes (lane k: elements k, k + lanes, ...), each summed by one thread.
constexpr int64_t kLnMaxLanes = 32;
inline int64_t ln_row_lanes(int64_t width) { return width < kLnMaxLanes ? width : kLnMaxLanes; }

// Layer-normalised LSTM, one step (Note [layer-normalised LSTM] in cell_math.h). The
// launcher enqueues the step's passes in order: statistics of the recurrent product, the
// gates and c, statistics of c, then h. Workspace row: math::LnLstmWorkspaceSlot.
template <typename S, typename G>
struct LnLstmForwardStep {
  int64_t hidden = 0;      // H
  int64_t directions = 1;  // D, gridDim.y
  int64_t ld_x_side = 0;   // D*4H
  int64_t ld_out = 0;      // D*H
  struct Dir {
    int64_t rows = 0;                        // active rows of this step
    const G* product = nullptr;              // [rows, 4H] h_prev @ W_hh^T, row stride 4H
    const S* x_side = nullptr;               // [rows, 4H] row stride ld_x_side
    const S* ln_hh_weight = nullptr;         // [4H] gamma of the recurrent product
    const S* ln_c_weight = nullptr;          // [H] gamma of c
    const S* ln_c_bias = nullptr;            // [H] beta of c, or null (0)
    acc_t<S>* c = nullptr;                   // [B, H] cell state, rows [0, rows) updated in place
    S* h = nullptr;                          // [B, H] hidden state, rows [0, rows) updated
    S* out = nullptr;                        // [rows, H] row stride ld_out
    // [rows, 10H+2] contiguous: the step's rows of the workspace, or a scratch of the same
    // layout when the caller needs no workspace (the later passes read it).
    acc_t<S>* workspace = nullptr;
    acc_t<S>* partials = nullptr;            // [rows, ln_row_lanes(4H), 2] scratch
    acc_t<S>* product_stats = nullptr;       // [rows, 2] scratch: mean, rstd of the product
    acc_t<S>* cell_stats = nullptr;          // [rows, 2] scratch: mean, rstd of c
  } dir[kMaxDirections];
};

// Layer-normalised LSTM backward at step s (Note [cuda step rows]: rows, next_rows, rec and
// dh_carry as in LstmBackwardStep without projection). Passes, in order: dh, the gradient
// of o and of y = LN_c(c); the means LN_c's backward needs; the gradient of c and of
// i, f, g; the means LN_hh's backward needs; the gradient of the recurrent product dR.
template <typename S, typename G>
struct LnLstmBackwardStep {
  int64_t hidden = 0;
  int64_t directions = 1;
  int64_t ld_grad_out = 0;     // D*H
  int64_t ld_grad_x_side = 0;  // D*4H
  struct Dir {
    int64_t rows = 0;       // active at s
    int64_t next_rows = 0;  // active at s+1 (rows with a `rec` row)
    int64_t prev_rows = 0;  // active at s-1 (rows whose c_prev is in prev_workspace)
    const G* rec = nullptr;                    // [next_rows, H] dR_{s+1} @ W_hh, or null
    const S* grad_out = nullptr;               // [rows, H] row stride ld_grad_out, or null
    acc_t<S>* dh_carry = nullptr;              // [B, H]
    acc_t<S>* dc_carry = nullptr;              // [B, H]
    const acc_t<S>* workspace = nullptr;       // [rows, 10H+2] rows of step s
    const acc_t<S>* prev_workspace = nullptr;  // [prev_rows, 10H+2] rows of step s-1, or null
    const S* c0 = nullptr;                     // [B, H]
    const S* ln_hh_weight = nullptr;           // [4H]
    const S* ln_c_weight = nullptr;            // [H]
    const S* ln_c_bias = nullptr;              // [H] or null
    S* grad_x_side = nullptr;                  // [rows, 4H] row stride ld_grad_x_side
    acc_t<S>* grad_pre = nullptr;              // [rows, 4H] contiguous scratch: the same, unrounded
    acc_t<S>* grad_y = nullptr;                // [rows, H] contiguous: dL/dy, y = LN_c(c)
    S* grad_product = nullptr;                 // [rows, 4H] contiguous: dR (for dW_hh)
    S* grad_rec = nullptr;                     // [B, 4H]: dR of step s for the next product
    acc_t<S>* partials = nullptr;              // [rows, ln_row_lanes(4H), 2] scratch
    acc_t<S>* cell_stats = nullptr;            // [rows, 2] scratch: means of dc^, dc^ * c^
    acc_t<S>* product_stats = nullptr;         // [rows, 2] scratch: means of dR^, dR^ * R^
  } dir[kMaxDirections];
};

// ================================================================ weight gradients

// The hidden state entering every row of one direction, for dW_hh = dG^T @ h_prev:
// prev[row] = out[row of the previous processing step] when the row was active there,
// else h0[b]. Rows of time t are [offsets[t], offsets[t] + batch_sizes[t]).
//
// Note [cuda step sizes by value]
// A packed sequence's batch sizes and row offsets reach the kernel as values in its launch
// parameters, for the kGatherSteps steps one launch covers (the host launches once per
// window of steps), never as a device array copied from host memory. A CUDA graph keeps
// launch parameters by value, so a captured backward replays with the sizes it was
// captured with; a copy from a pinned host buffer would instead be replayed from that
// buffer, which the caching host allocator has long reused. A dense sequence needs no sizes
// and runs in one launch.
constexpr int64_t kGatherSteps = 64;

template <typename S>
struct PreviousHidden {
  int64_t steps = 0;   // T, all steps of the sequence
  int64_t batch = 0;   // B
  int64_t output = 0;  // P
  bool reverse = false;
  // This launch: the rows of steps [first_step, first_step + window_steps), which are rows
  // [first_row, first_row + rows).
  int64_t first_step = 0;
  int64_t window_steps = 0;  // at most kGatherSteps
  int64_t first_row = 0;
  int64_t rows = 0;
  // Packed: batch_sizes[k] and offsets[k] of step first_step - 1 + k for k in
  // [0, window_steps + 2) (0 and 0 for a step outside [0, T)); dense: unused, every step
  // has `batch` rows.
  bool packed = false;
  int64_t batch_sizes[kGatherSteps + 2] = {};
  int64_t offsets[kGatherSteps + 2] = {};
  const S* out = nullptr;  // [N, P] row stride ld_out
  int64_t ld_out = 0;
  const S* h0 = nullptr;   // [B, P]
  S* prev = nullptr;       // [N, P] contiguous (this launch writes its rows)
};

// ================================================================ launchers

template <typename S, typename G, typename X>
cudaError_t lstm_forward_step(const LstmForwardStep<S, G, X>& p, cudaStream_t stream);
template <typename S, typename G, typename X>
cudaError_t gru_forward_step(const GruForwardStep<S, G, X>& p, cudaStream_t stream);
template <typename S, typename G, typename X>
cudaError_t rnn_forward_step(const RnnForwardStep<S, G, X>& p, cudaStream_t stream);
template <typename S, typename G>
cudaError_t store_hidden(const StoreHidden<S, G>& p, cudaStream_t stream);

template <typename S, typename G>
cudaError_t lstm_backward_step(const LstmBackwardStep<S, G>& p, cudaStream_t stream);
template <typename S, typename G>
cudaError_t step_grad_h(const StepGradH<S, G>& p, cudaStream_t stream);
template <typename S, typename G>
cudaError_t gru_backward_step(const GruBackwardStep<S, G>& p, cudaStream_t stream);
template <typename S, typename G>
cudaError_t rnn_backward_step(const RnnBackwardStep<S, G>& p, cudaStream_t stream);

template <typename S, typename G>
cudaError_t ln_lstm_forward_step(const LnLstmForwardStep<S, G>& p, cudaStream_t stream);
template <typename S, typename G>
cudaError_t ln_lstm_backward_step(const LnLstmBackwardStep<S, G>& p, cudaStream_t stream);

template <typename S>
cudaError_t previous_hidden(const PreviousHidden<S>& p, cudaStream_t stream);

// The architectures the kernels were compiled for (nvcc's __CUDA_ARCH_LIST__, e.g.
// "800,900"), and the CUDA version of the headers (CUDART_VERSION, e.g. 13000).
const char* compiled_arch_list();
int compiled_cuda_version();

}  // namespace rnnkernels::cuda
