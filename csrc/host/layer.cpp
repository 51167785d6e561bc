#include "host/layer.h"

#include <c10/util/irange.h>

#include "rnnkernels/cell_math.h"

namespace rnnkernels::host {

Mode parse_mode(const char* op, c10::string_view mode) {
  if (mode == "lstm") return Mode::kLstm;
  if (mode == "gru") return Mode::kGru;
  if (mode == "rnn_tanh") return Mode::kRnnTanh;
  if (mode == "rnn_relu") return Mode::kRnnRelu;
  TORCH_CHECK(mode == "ln_lstm", op, ": unknown mode '", std::string(mode),
              "'; expected lstm, gru, rnn_tanh, rnn_relu or ln_lstm");
  return Mode::kLayerNormLstm;
}

bool is_lstm(Mode mode) { return mode == Mode::kLstm || mode == Mode::kLayerNormLstm; }

int64_t weights_per_direction(Mode mode, bool has_biases, bool has_projection) {
  const int64_t biases = has_biases ? 2 : 0;
  if (mode == Mode::kLayerNormLstm) return 2 + biases + 3 + (has_biases ? 1 : 0);
  return 2 + biases + (has_projection ? 1 : 0);
}

LayerWeights split_weights(const char* op, Mode mode, at::TensorList weights, bool has_biases,
                           bool has_projection) {
  TORCH_CHECK(!has_projection || mode == Mode::kLstm, op,
              ": has_projection is for mode lstm only");
  const int64_t per = weights_per_direction(mode, has_biases, has_projection);
  const int64_t count = static_cast<int64_t>(weights.size());
  TORCH_CHECK(count == per || count == 2 * per, op, ": expected ", per, " or ", 2 * per,
              " weights (", per, " per direction for this mode, has_biases=", has_biases,
              ", has_projection=", has_projection, "), got ", count);
  LayerWeights w;
  w.directions = count / per;
  for (const auto d : c10::irange(w.directions)) {
    const at::Tensor* t = weights.data() + d * per;
    w.w_ih.push_back(*t++);
    w.w_hh.push_back(*t++);
    if (has_biases) {
      w.b_ih.push_back(*t++);
      w.b_hh.push_back(*t++);
    }
    if (has_projection) w.w_hr.push_back(*t++);
    if (mode == Mode::kLayerNormLstm) {
      w.ln_ih.push_back(*t++);
      w.ln_hh.push_back(*t++);
      w.ln_c_weight.push_back(*t++);
      if (has_biases) w.ln_c_bias.push_back(*t++);
    }
  }
  return w;
}

TensorVec join_weights(const LayerWeights& w) {
  TensorVec all;
  for (const auto d : c10::irange(w.directions)) {
    for (const TensorVec* kind : {&w.w_ih, &w.w_hh, &w.b_ih, &w.b_hh, &w.w_hr, &w.ln_ih,
                                  &w.ln_hh, &w.ln_c_weight, &w.ln_c_bias}) {
      if (!kind->empty()) all.push_back((*kind)[d]);
    }
  }
  return all;
}

namespace {

constexpr const char* kForwardOp = "rnnkernels::rnn_layer";
constexpr const char* kBackwardOp = "rnnkernels::rnn_layer_backward";

// c0 belongs to the LSTM modes only: given to another, it would be silently unused.
void check_c0_for(const char* op, Mode mode, const OptTensor& c0) {
  TORCH_CHECK(is_lstm(mode) || !(c0.has_value() && c0->defined()), op,
              ": c0 is for the LSTM modes (lstm, ln_lstm); this mode takes none");
}

const at::Tensor& require_c0(const char* op, const OptTensor& c0) {
  TORCH_CHECK(c0.has_value() && c0->defined(), op, ": the LSTM modes need c0");
  return *c0;
}

TensorVec clones(const TensorVec& ts) {
  TensorVec out;
  for (const auto& t : ts) out.push_back(t.clone());
  return out;
}

// ---------------------------------------------------------------- layer-normalised input

// Note [layer-normalised LSTM] in cell_math.h: the input side of the gates,
// x_side[:, d] = LN(x W_ih[d]^T) * ln_ih[d] + b_ih[d] + b_hh[d], [N, D*4H].
struct LayerNormInput {
  at::Tensor products;    // x W_ih^T per direction, [N, D, 4H]
  at::Tensor normalized;  // LN(products) without its affine part, [N, D, 4H]
  at::Tensor mean, rstd;  // of each row and direction
};

LayerNormInput normalize_input(const Recurrence& backend, const at::Tensor& x,
                               const LayerWeights& w) {
  const int64_t four_h = w.w_hh[0].size(0);
  LayerNormInput in;
  in.products = backend.project(x, w.w_ih, {}).view({x.size(0), w.directions, four_h});
  std::tie(in.normalized, in.mean, in.rstd) =
      at::native_layer_norm(in.products, {four_h}, {}, {}, math::kLayerNormEps);
  return in;
}

at::Tensor layer_norm_input_side(const LayerNormInput& in, const LayerWeights& w,
                                 at::ScalarType dtype) {
  const at::Tensor gamma = at::stack(w.ln_ih);
  at::Tensor side;
  if (w.b_ih.empty()) {
    side = in.normalized * gamma;
  } else {
    TensorVec bias;
    for (const auto d : c10::irange(w.directions)) bias.push_back(w.b_ih[d] + w.b_hh[d]);
    side = at::addcmul(at::stack(bias), in.normalized, gamma);
  }
  return side.view({in.products.size(0), -1}).to(dtype);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer(
    const Recurrence& backend, c10::string_view mode_name, const at::Tensor& x,
    at::TensorList weights, bool has_biases, bool has_projection, const at::Tensor& h0,
    const OptTensor& c0, const OptTensor& batch_sizes, const OptTensor& zoneout,
    bool need_workspace) {
  const char* op = kForwardOp;
  const Mode mode = parse_mode(op, mode_name);
  const LayerWeights w = split_weights(op, mode, weights, has_biases, has_projection);
  check_c0_for(op, mode, c0);
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape [rows, input_size], got ", x.sizes());
  const at::Tensor no_cell_state = at::empty({0}, h0.options());
  switch (mode) {
    case Mode::kLayerNormLstm: {
      TORCH_CHECK(!zoneout.has_value(), op, ": the layer-normalised LSTM takes no zoneout");
      const at::Tensor x_side =
          layer_norm_input_side(normalize_input(backend, x, w), w, w.w_hh[0].scalar_type());
      return backend.layer_norm_lstm_forward(x_side, w.w_hh, w.ln_hh, w.ln_c_weight,
                                             w.ln_c_bias, h0, require_c0(op, c0),
                                             batch_sizes, need_workspace);
    }
    case Mode::kLstm:
      if (backend.lstm_forward_from_input != nullptr) {
        return backend.lstm_forward_from_input(x, w.w_ih, w.b_ih, w.w_hh, w.b_hh, w.w_hr, h0,
                                               require_c0(op, c0), batch_sizes,
                                               need_workspace, zoneout);
      }
      return backend.lstm_forward(backend.project(x, w.w_ih, w.b_ih), w.w_hh, w.b_hh, w.w_hr, h0,
                                  require_c0(op, c0), batch_sizes, need_workspace, zoneout);
    case Mode::kGru: {
      auto [out, h_n, ws] = backend.gru_forward(backend.project(x, w.w_ih, w.b_ih), w.w_hh,
                                                w.b_hh, h0, batch_sizes, need_workspace, zoneout);
      return {out, h_n, no_cell_state, ws};
    }
    case Mode::kRnnTanh:
    case Mode::kRnnRelu:
      break;
  }
  auto [out, h_n, ws] = backend.rnn_forward(
      backend.project(x, w.w_ih, w.b_ih), w.w_hh, w.b_hh, h0, batch_sizes,
      mode == Mode::kRnnRelu ? "relu" : "tanh", need_workspace, zoneout);
  return {out, h_n, no_cell_state, ws};
}

std::tuple<at::Tensor, TensorVec, at::Tensor, at::Tensor> rnn_layer_backward(
    const Recurrence& backend, c10::string_view mode_name, const at::Tensor& x,
    at::TensorList weights, bool has_biases, bool has_projection, const at::Tensor& h0,
    const OptTensor& c0, const at::Tensor& output, const at::Tensor& workspace,
    const OptTensor& batch_sizes, const OptTensor& zoneout, const OptTensor& grad_output,
    const OptTensor& grad_h_n, const OptTensor& grad_c_n, bool need_input_grad) {
  const char* op = kBackwardOp;
  const Mode mode = parse_mode(op, mode_name);
  const LayerWeights w = split_weights(op, mode, weights, has_biases, has_projection);
  check_c0_for(op, mode, c0);
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape [rows, input_size], got ", x.sizes());
  TORCH_CHECK(workspace.dim() == 3 && workspace.size(1) == output.size(0), op,
              ": the forward ran with need_workspace=False, so its backward cannot run; call "
              "rnn_layer with need_workspace=True when gradients are needed");
  LayerWeights g;
  g.directions = w.directions;
  at::Tensor grad_x_proj, grad_h0, grad_c0 = at::empty({0}, h0.options());
  switch (mode) {
    case Mode::kLayerNormLstm: {
      at::Tensor grad_x_side;
      std::tie(grad_x_side, grad_h0, grad_c0, g.w_hh, g.ln_hh, g.ln_c_weight, g.ln_c_bias) =
          backend.layer_norm_lstm_backward(grad_output, grad_h_n, grad_c_n, w.w_hh, w.ln_hh,
                                           w.ln_c_weight, w.ln_c_bias, h0,
                                           require_c0(op, c0), output, workspace,
                                           batch_sizes);
      // Through x_side = LN(P) * ln_ih + b: the LN statistics again from P = x W_ih^T.
      const LayerNormInput in = normalize_input(backend, x, w);
      const int64_t four_h = in.products.size(2);
      const at::Tensor grad_side =
          grad_x_side.view({x.size(0), w.directions, four_h}).to(in.products.scalar_type());
      const at::Tensor grad_gamma = (grad_side * in.normalized).sum(0);
      const at::Tensor grad_products = std::get<0>(at::native_layer_norm_backward(
          grad_side * at::stack(w.ln_ih), in.products, {four_h}, in.mean, in.rstd, {}, {},
          {true, false, false}));
      const at::Tensor grad_bias = has_biases ? grad_side.sum(0) : at::Tensor();
      // Copies: no two gradients share storage.
      const auto fresh = [](const at::Tensor& t, at::ScalarType dtype) {
        return t.to(dtype, /*non_blocking=*/false, /*copy=*/true);
      };
      for (const auto d : c10::irange(w.directions)) {
        g.ln_ih.push_back(fresh(grad_gamma[d], w.ln_ih[d].scalar_type()));
        if (has_biases) {
          g.b_ih.push_back(fresh(grad_bias[d], w.b_ih[d].scalar_type()));
          g.b_hh.push_back(fresh(grad_bias[d], w.b_hh[d].scalar_type()));
        }
      }
      at::Tensor grad_x;
      TensorVec unused_bias;
      std::tie(grad_x, g.w_ih, unused_bias) = backend.project_backward(
          grad_products.view({x.size(0), -1}), x, w.w_ih, need_input_grad, false);
      return {grad_x, join_weights(g), grad_h0, grad_c0};
    }
    case Mode::kLstm:
      std::tie(grad_x_proj, grad_h0, grad_c0, g.w_hh, g.b_hh, g.w_hr) = backend.lstm_backward(
          grad_output, grad_h_n, grad_c_n, w.w_hh, w.b_hh, w.w_hr, h0, require_c0(op, c0),
          output, workspace, batch_sizes, zoneout);
      break;
    case Mode::kGru:
      std::tie(grad_x_proj, grad_h0, g.w_hh, g.b_hh) =
          backend.gru_backward(grad_output, grad_h_n, w.w_hh, w.b_hh, h0, output, workspace,
                               batch_sizes, zoneout);
      break;
    case Mode::kRnnTanh:
    case Mode::kRnnRelu:
      std::tie(grad_x_proj, grad_h0, g.w_hh, g.b_hh) = backend.rnn_backward(
          grad_output, grad_h_n, w.w_hh, w.b_hh, h0, output, workspace, batch_sizes,
          mode == Mode::kRnnRelu ? "relu" : "tanh", zoneout);
      break;
  }
  // b_ih enters the gates as b_hh does except in the GRU (b_hn sits inside r * (...)), so
  // its gradient is b_hh's: the column sums the recurrence has taken. Copies, so that the
  // two .grad tensors never share storage.
  const bool bias_grad_from_recurrence = has_biases && mode != Mode::kGru;
  at::Tensor grad_x;
  std::tie(grad_x, g.w_ih, g.b_ih) = backend.project_backward(
      grad_x_proj, x, w.w_ih, need_input_grad, has_biases && !bias_grad_from_recurrence);
  if (bias_grad_from_recurrence) g.b_ih = clones(g.b_hh);
  return {grad_x, join_weights(g), grad_h0, grad_c0};
}

}  // namespace rnnkernels::host
