// Gradients with a graph (backward with create_graph=True) for the fused ops.
//
// Note [double backward]
// The backward ops have no derivative of their own. When a fused Function's backward runs
// with create_graph=True (grad mode is on inside it), it does not call them: it hands its
// saved inputs (x, the weights, h0, c0: all alive anyway) to recompute_backward, which
// reruns the layer through the differentiable pure-PyTorch reference
// (rnnkernels/_double_backward.py) and differentiates that with create_graph=True. The
// gradients then carry a graph, at the reference's per-step speed, as torch.nn's own CPU
// path does. The Functions that take x_proj (the CUDA layers, the layer-normalised LSTM)
// keep no x_proj, so they refuse instead (cuDNN's RNN refuses too).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace rnnkernels {

struct RecomputeRequest {
  std::string op;                   // "rnnkernels::lstm_forward_fused", ...
  std::vector<at::Tensor> inputs;   // x, w_ih[D], b_ih[nb], w_hh[D], b_hh[nb], (w_hr[np]), h0, (c0)
  std::vector<int64_t> counts;      // D, nb (, np)
  std::optional<at::Tensor> batch_sizes, zoneout;
  std::string mode;                // rnn_layer's mode; the old RNN ops: their nonlinearity
  std::vector<std::optional<at::Tensor>> grads;  // of output, h_n (, c_n); nullopt: none
  std::vector<bool> needs;          // per input: whether its gradient is wanted
};

// Returns one gradient per input (nullopt where none).
using RecomputeFn =
    std::function<std::vector<std::optional<at::Tensor>>(const RecomputeRequest&)>;

void set_recompute_backward(RecomputeFn fn);
std::vector<std::optional<at::Tensor>> recompute_backward(const RecomputeRequest& request);

}  // namespace rnnkernels
