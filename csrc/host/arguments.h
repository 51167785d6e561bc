// The device-agnostic host layer of the recurrence ops: the sequence layout of one call and
// the argument checks every forward and backward op makes, shared by the CPU entry
// (csrc/cpu/recurrence_cpu.cpp) and the CUDA entry (csrc/cuda/recurrence_cuda.cpp).
// Shapes: x_proj [N, D*G*H], out [N, D*P], h0 [D, B, P], w_hh[d] [G*H, P], b_hh[d] [G*H],
// w_hr[d] [P, H], workspace [D, N, width]; N rows of all steps, D directions, G gates.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rnnkernels::host {

enum class Cell { kLstm, kGru, kRnn };

constexpr int64_t gate_count(Cell cell) {
  return cell == Cell::kLstm ? 4 : (cell == Cell::kGru ? 3 : 1);
}

// ---------------------------------------------------------------- sequence layout

// Per-step batch sizes and row offsets of one call. Time step t holds batch_sizes[t] rows
// starting at row offsets[t]; a direction's processing step s reads time step time_at(s).
struct Sequence {
  std::vector<int64_t> batch_sizes;
  std::vector<int64_t> offsets;
  int64_t batch = 0;
  int64_t rows = 0;

  int64_t steps() const { return static_cast<int64_t>(batch_sizes.size()); }
  int64_t time_at(int64_t s, bool reverse) const { return reverse ? steps() - 1 - s : s; }
  // Rows active at processing step s of a direction; 0 outside [0, T).
  int64_t rows_at(int64_t s, bool reverse) const {
    return (s < 0 || s >= steps()) ? 0 : batch_sizes[time_at(s, reverse)];
  }
  // First row of processing step s; only for s in [0, T).
  int64_t offset_at(int64_t s, bool reverse) const { return offsets[time_at(s, reverse)]; }
  bool uniform() const {
    return std::all_of(batch_sizes.begin(), batch_sizes.end(),
                       [&](int64_t b) { return b == batch; });
  }
};

// rows: N; batch: B (h0's); batch_sizes: PackedSequence.batch_sizes, or none for T = N / B
// steps of B rows.
Sequence make_sequence(const char* op, int64_t rows, int64_t batch,
                       const std::optional<at::Tensor>& batch_sizes);

// ---------------------------------------------------------------- checks

// t on ref's device in ref's dtype; ref_name names ref in the message.
void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                const char* ref_name);
void check_shape(const char* op, const std::string& name, const at::Tensor& t,
                 at::IntArrayRef expected);

// The shapes every op of a cell agrees on.
struct Dims {
  int64_t directions = 1;  // D
  int64_t gates = 1;       // G
  int64_t hidden = 0;      // H
  int64_t output = 0;      // P
  int64_t batch = 0;       // B
  int64_t rows = 0;        // N
};

// w_hh, b_hh (may be empty), w_hr (may be empty) and h0, each on ref's device in its dtype.
Dims check_weights(const char* op, Cell cell, const at::Tensor& ref, const char* ref_name,
                   at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                   const at::Tensor& h0);

// The LSTM's cell state c0 [D, B, H] on ref's device in its dtype, made contiguous.
at::Tensor check_c0(const char* op, const Dims& d, const at::Tensor& c0, const at::Tensor& ref,
                    const char* ref_name);
// A backward's grad_c_n [D, B, H] (optional) like its output, made contiguous.
std::optional<at::Tensor> check_grad_c_n(const char* op, const Dims& d,
                                         const std::optional<at::Tensor>& grad_c_n,
                                         const at::Tensor& out);

// The layer-normalised LSTM's LayerNorm parameters, one per direction (Note
// [layer-normalised LSTM] in cell_math.h): ln_hh_weight [4H], ln_c_weight [H], ln_c_bias [H]
// (or none), on ref's device in its dtype; checked and made contiguous.
struct LayerNormParams {
  std::vector<at::Tensor> hh_weight, c_weight, c_bias;
};
LayerNormParams check_layer_norm_params(const char* op, const Dims& d, const at::Tensor& ref,
                                        const char* ref_name, at::TensorList ln_hh_weight,
                                        at::TensorList ln_c_weight, at::TensorList ln_c_bias);

bool parse_nonlinearity(const char* op, c10::string_view nonlinearity);  // true for relu

std::vector<at::Tensor> contiguous_all(at::TensorList ts);
std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t);
std::vector<at::Tensor> empty_like_all(const std::vector<at::Tensor>& ts);

// What a backend's kernels accept: their device, their storage dtypes, and the dtype of the
// workspace a forward of storage dtype t writes.
struct Backend {
  const char* name;  // in messages: "the CPU kernel got x_proj on cuda:0"
  bool (*on_device)(const at::Tensor&);
  bool (*supports)(at::ScalarType);
  const char* supported;  // in messages: "float32, float64, bfloat16 and float16"
  at::ScalarType (*workspace_dtype)(at::ScalarType);
};

void check_device_and_dtype(const Backend& backend, const char* op, const at::Tensor& t,
                            const char* name);

// ---------------------------------------------------------------- op arguments

// What every recurrence of a cell takes, forward or backward, checked and made contiguous.
struct RecurrenceInputs {
  Dims d;
  Sequence seq;
  at::Tensor h0;
  std::vector<at::Tensor> w_hh, b_hh, w_hr;
};

// The forward's arguments: the recurrence's and x_proj.
struct ForwardInputs : RecurrenceInputs {
  at::Tensor x_proj;
};

// x_proj [N, D*G*H]: the input side of the gates, x_name in messages (x_proj, or x_side for
// the layer-normalised LSTM). The weights and h0 share ref's device and dtype: x_proj's, or
// the weights' own where the backend takes a float32 x_proj for 16-bit weights.
ForwardInputs prepare_forward(const Backend& backend, const char* op, Cell cell,
                              const at::Tensor& x_proj, const char* x_name, at::TensorList w_hh,
                              at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                              const std::optional<at::Tensor>& batch_sizes,
                              const at::Tensor& ref, const char* ref_name);

// The backward's arguments: the recurrence's, the forward's output and workspace, and the
// upstream gradients.
struct BackwardInputs : RecurrenceInputs {
  at::Tensor out, ws;
  std::optional<at::Tensor> grad_out, grad_h_n;
};

// ws [D, N, ws_per_hidden * H + ws_extra]: the forward's workspace.
BackwardInputs prepare_backward(const Backend& backend, const char* op, Cell cell,
                                const std::optional<at::Tensor>& grad_out,
                                const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                                at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                                const at::Tensor& out, const at::Tensor& ws,
                                const std::optional<at::Tensor>& batch_sizes,
                                int64_t ws_per_hidden, int64_t ws_extra = 0);

}  // namespace rnnkernels::host
