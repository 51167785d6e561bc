// The op pair rnnkernels::rnn_layer / rnn_layer_backward on any backend: one layer, one or
// both directions, of any mode, from its input x. The backend supplies the recurrences on
// the projected input (a table of its kernels); this layer decides how x reaches them (one
// GEMM before the time loop, the CPU LSTM's in-loop projection, the layer-normalised
// input side) and carries the gradients back to x, W_ih, b_ih and the LN parameters.
//
// weights: D blocks of one direction's tensors, in this order (after torch.nn's
// _flat_weights; a bracket is present when its flag is):
//   lstm, gru, rnn_tanh, rnn_relu: w_ih, w_hh, [b_ih, b_hh], [w_hr (lstm only)]
//   ln_lstm:                       w_ih, w_hh, [b_ih, b_hh], ln_ih, ln_hh, ln_c_weight,
//                                  [ln_c_bias]
// x [N, I], h0 [D, B, P], c0 [D, B, H] (LSTMs) -> output [N, D*P], h_n [D, B, P],
// c_n [D, B, H] (LSTMs; [0] otherwise), workspace [D, N or 0, S] (S from cell_math.h).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace rnnkernels::host {

using TensorVec = std::vector<at::Tensor>;
using OptTensor = std::optional<at::Tensor>;

enum class Mode { kLstm, kGru, kRnnTanh, kRnnRelu, kLayerNormLstm };

Mode parse_mode(const char* op, c10::string_view mode);
bool is_lstm(Mode mode);

// Tensors of one direction's block per kind; absent kinds are empty lists.
struct LayerWeights {
  TensorVec w_ih, w_hh, b_ih, b_hh, w_hr, ln_ih, ln_hh, ln_c_weight, ln_c_bias;
  int64_t directions = 0;
};

int64_t weights_per_direction(Mode mode, bool has_biases, bool has_projection);
LayerWeights split_weights(const char* op, Mode mode, at::TensorList weights, bool has_biases,
                           bool has_projection);
// The inverse of split_weights: one gradient per weight, in the weights' order.
TensorVec join_weights(const LayerWeights& w);

// One backend's recurrences on the projected input (x_proj, or x_side for the
// layer-normalised LSTM) and its input projection; the function types let each backend
// declare its own (`host::LstmForward lstm_forward_cpu;`).
using Forward4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Forward3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using LstmForward = Forward4(const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh,
                            at::TensorList w_hr, const at::Tensor& h0, const at::Tensor& c0,
                            const OptTensor& batch_sizes, bool need_workspace,
                            const OptTensor& zoneout);
using LstmBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, TensorVec, TensorVec,
                                TensorVec>(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const OptTensor& grad_c_n,
    at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& out, const at::Tensor& ws,
    const OptTensor& batch_sizes, const OptTensor& zoneout);
using GruForward = Forward3(const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh,
                           const at::Tensor& h0, const OptTensor& batch_sizes,
                           bool need_workspace, const OptTensor& zoneout);
using GruBackward = std::tuple<at::Tensor, at::Tensor, TensorVec, TensorVec>(
    const OptTensor& grad_out, const OptTensor& grad_h_n, at::TensorList w_hh,
    at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out, const at::Tensor& ws,
    const OptTensor& batch_sizes, const OptTensor& zoneout);
using RnnForward = Forward3(const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh,
                           const at::Tensor& h0, const OptTensor& batch_sizes,
                           c10::string_view nonlinearity, bool need_workspace,
                           const OptTensor& zoneout);
using RnnBackward = std::tuple<at::Tensor, at::Tensor, TensorVec, TensorVec>(
    const OptTensor& grad_out, const OptTensor& grad_h_n, at::TensorList w_hh,
    at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out, const at::Tensor& ws,
    const OptTensor& batch_sizes, c10::string_view nonlinearity, const OptTensor& zoneout);
using LayerNormLstmForward = Forward4(const at::Tensor& x_side, at::TensorList w_hh,
                                      at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
                                      at::TensorList ln_c_bias, const at::Tensor& h0,
                                      const at::Tensor& c0, const OptTensor& batch_sizes,
                                      bool need_workspace);
using LayerNormLstmBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor, TensorVec,
                                         TensorVec, TensorVec, TensorVec>(
    const OptTensor& grad_out, const OptTensor& grad_h_n, const OptTensor& grad_c_n,
    at::TensorList w_hh, at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
    at::TensorList ln_c_bias, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& out, const at::Tensor& ws, const OptTensor& batch_sizes);
// x [N, I] -> [N, D*G*H]: direction d's columns x @ w_ih[d]^T + b_ih[d].
using Project = at::Tensor(const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih);
// -> grad_x (empty unless need_input_grad), grad_w_ih[], grad_b_ih[] (empty unless has_bias).
using ProjectBackward = std::tuple<at::Tensor, TensorVec, TensorVec>(
    const at::Tensor& grad_x_proj, const at::Tensor& x, at::TensorList w_ih,
    bool need_input_grad, bool has_bias);
// The LSTM from x with its input projection inside the time loop (same results as project
// then lstm_forward, which it may fall back to).
using LstmForwardFromInput = Forward4(const at::Tensor& x, at::TensorList w_ih,
                                      at::TensorList b_ih, at::TensorList w_hh,
                                      at::TensorList b_hh, at::TensorList w_hr,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const OptTensor& batch_sizes, bool need_workspace,
                                      const OptTensor& zoneout);

struct Recurrence {
  LstmForward* lstm_forward;
  LstmBackward* lstm_backward;
  GruForward* gru_forward;
  GruBackward* gru_backward;
  RnnForward* rnn_forward;
  RnnBackward* rnn_backward;
  LayerNormLstmForward* layer_norm_lstm_forward;
  LayerNormLstmBackward* layer_norm_lstm_backward;
  Project* project;
  ProjectBackward* project_backward;
  LstmForwardFromInput* lstm_forward_from_input = nullptr;  // optional
};

// -> output, h_n, c_n, workspace.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer(
    const Recurrence& backend, c10::string_view mode, const at::Tensor& x,
    at::TensorList weights, bool has_biases, bool has_projection, const at::Tensor& h0,
    const OptTensor& c0, const OptTensor& batch_sizes, const OptTensor& zoneout,
    bool need_workspace);

// -> grad_x (empty unless need_input_grad), grad_weights (one per weight), grad_h0, grad_c0
// ([0] unless an LSTM mode).
std::tuple<at::Tensor, TensorVec, at::Tensor, at::Tensor> rnn_layer_backward(
    const Recurrence& backend, c10::string_view mode, const at::Tensor& x,
    at::TensorList weights, bool has_biases, bool has_projection, const at::Tensor& h0,
    const OptTensor& c0, const at::Tensor& output, const at::Tensor& workspace,
    const OptTensor& batch_sizes, const OptTensor& zoneout, const OptTensor& grad_output,
    const OptTensor& grad_h_n, const OptTensor& grad_c_n, bool need_input_grad);

// The op pair's kernels of one backend, for TORCH_LIBRARY_IMPL: table() gives its
// recurrences, Guard(x.device()) makes x's device current for the call.
template <const Recurrence& (*table)(), typename Guard>
struct LayerKernels {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
      c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
      bool has_projection, const at::Tensor& h0, const OptTensor& c0,
      const OptTensor& batch_sizes, const OptTensor& zoneout, bool need_workspace) {
    const Guard guard(x.device());
    return rnn_layer(table(), mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes,
                     zoneout, need_workspace);
  }

  static std::tuple<at::Tensor, TensorVec, at::Tensor, at::Tensor> backward(
      c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
      bool has_projection, const at::Tensor& h0, const OptTensor& c0, const at::Tensor& output,
      const at::Tensor& workspace, const OptTensor& batch_sizes, const OptTensor& zoneout,
      const OptTensor& grad_output, const OptTensor& grad_h_n, const OptTensor& grad_c_n,
      bool need_input_grad) {
    const Guard guard(x.device());
    return rnn_layer_backward(table(), mode, x, weights, has_biases, has_projection, h0, c0,
                              output, workspace, batch_sizes, zoneout, grad_output, grad_h_n,
                              grad_c_n, need_input_grad);
  }
};

// The CPU needs no device guard.
struct NoDeviceGuard {
  explicit NoDeviceGuard(const c10::Device&) {}
};

}  // namespace rnnkernels::host
