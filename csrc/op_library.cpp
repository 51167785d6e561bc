// The op schemas of the rnnkernels namespace, in the op library rnnkernels/_ops*.so: the
// kernels, dispatch and autograd without Python, which a C++ program linked against
// LibTorch loads (examples/cpp_inference) and the Python bindings rnnkernels._C link. So a
// process registers these schemas (TORCH_LIBRARY) once, however many of the two it loads.
//
// One op pair, after ATen's _cudnn_rnn: rnn_layer runs one layer of any mode, one or both
// directions, over the whole sequence, from its input x; rnn_layer_backward returns the
// gradients of x, of every weight, of h0 (and c0). csrc/host/layer.h holds the weights'
// layout and the shapes; N rows (T*B, time-major, or sum(batch_sizes) for packed input),
// D directions, hidden size H, output size P (proj_size or H):
//   x [N, I], h0 [D, B, P], c0 [D, B, H] (LSTM modes) -> output [N, D*P], h_n [D, B, P],
//   c_n [D, B, H] (LSTM modes; [0] otherwise), workspace [D, N, S]: what the backward needs
//   (S from the workspace widths of include/rnnkernels/cell_math.h), [D, 0, S] when
//   need_workspace is false.
// zoneout (optional) [D, N, P] (LSTM [D, N, P+H]: h's then c's): the weight of the
// previous state per row and unit (Note [zoneout] in include/rnnkernels/cell_math.h); a
// row stride of 0 broadcasts one row.

#include <torch/library.h>

TORCH_LIBRARY(rnnkernels, m) {
  // The op pair (csrc/host/layer.h has the weights' layout and the shapes): one layer of
  // any mode (lstm, gru, rnn_tanh, rnn_relu, ln_lstm) from its input x. c_n is [0] for
  // GRU and RNN; the backward's grad_weights match weights one for one.
  m.def(
      "rnn_layer(str mode, Tensor x, Tensor[] weights, bool has_biases, bool has_projection, "
      "Tensor h0, Tensor? c0, Tensor? batch_sizes, Tensor? zoneout, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "rnn_layer_backward(str mode, Tensor x, Tensor[] weights, bool has_biases, "
      "bool has_projection, Tensor h0, Tensor? c0, Tensor output, Tensor workspace, "
      "Tensor? batch_sizes, Tensor? zoneout, Tensor? grad_output, Tensor? grad_h_n, "
      "Tensor? grad_c_n, bool need_input_grad) "
      "-> (Tensor grad_x, Tensor[] grad_weights, Tensor grad_h0, Tensor grad_c0)");
}
