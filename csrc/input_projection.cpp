// input_projection and lstm_forward_fused on devices without kernels of their own: ATen
// GEMMs (cuBLAS on CUDA), and the fused op as input_projection then lstm_forward. The CPU
// kernels (cpu/gemm_cpu.cpp, cpu/recurrence_cpu.cpp) take precedence on CPU.
// gru_forward_fused and rnn_forward_fused are input_projection then gru_forward /
// rnn_forward on every device (fused for autograd, not in the time loop).

#include "input_projection.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace rnnkernels {
namespace {

at::Tensor input_projection_aten(const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih) {
  TORCH_CHECK(!w_ih.empty() && w_ih.size() <= 2 && (b_ih.empty() || b_ih.size() == w_ih.size()),
              "rnnkernels::input_projection: expected 1 or 2 weights and as many biases or none, "
              "got ", w_ih.size(), " and ", b_ih.size());
  std::vector<at::Tensor> parts;
  for (const auto d : c10::irange(w_ih.size()))
    parts.push_back(b_ih.empty() ? at::mm(x, w_ih[d].t()) : at::addmm(b_ih[d], x, w_ih[d].t()));
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
input_projection_backward_aten(const at::Tensor& grad, const at::Tensor& x, at::TensorList w_ih,
                               bool need_input_grad, bool has_bias) {
  const int64_t GH = w_ih[0].size(0);
  at::Tensor grad_x = need_input_grad ? at::zeros_like(x, at::MemoryFormat::Contiguous)
                                      : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_w, grad_b;
  for (const auto d : c10::irange(w_ih.size())) {
    const at::Tensor g = grad.narrow(1, d * GH, GH);
    if (need_input_grad) grad_x.addmm_(g, w_ih[d]);
    grad_w.push_back(at::mm(g.t(), x));
    if (has_bias) grad_b.push_back(g.sum(0));
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_unfused(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  static const auto projection = c10::Dispatcher::singleton()
      .findSchemaOrThrow("rnnkernels::input_projection", "")
      .typed<at::Tensor(const at::Tensor&, at::TensorList, at::TensorList)>();
  static const auto forward = c10::Dispatcher::singleton()
      .findSchemaOrThrow("rnnkernels::lstm_forward", "")
      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
          const at::Tensor&, const std::optional<at::Tensor>&, bool,
          const std::optional<at::Tensor>&)>();
  return forward.call(projection.call(x, w_ih, b_ih), w_hh, b_hh, w_hr, h0, c0, batch_sizes,
                      need_workspace, zoneout);
}

namespace {

at::Tensor project_for(const char* op, const at::Tensor& x, at::TensorList w_ih,
                       at::TensorList b_ih, at::TensorList w_hh, at::TensorList b_hh) {
  TORCH_CHECK(w_ih.size() == w_hh.size(), op, ": w_ih has ", w_ih.size(),
              " weights but w_hh has ", w_hh.size());
  TORCH_CHECK(b_ih.size() == b_hh.size(), op, ": b_ih has ", b_ih.size(),
              " biases but b_hh has ", b_hh.size());
  static const auto projection = c10::Dispatcher::singleton()
      .findSchemaOrThrow("rnnkernels::input_projection", "")
      .typed<at::Tensor(const at::Tensor&, at::TensorList, at::TensorList)>();
  return projection.call(x, w_ih, b_ih);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_composite(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, const at::Tensor& h0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  static const auto forward = c10::Dispatcher::singleton()
      .findSchemaOrThrow("rnnkernels::gru_forward", "")
      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&,
          const std::optional<at::Tensor>&, bool, const std::optional<at::Tensor>&)>();
  const at::Tensor x_proj = project_for("rnnkernels::gru_forward_fused", x, w_ih, b_ih, w_hh, b_hh);
  return forward.call(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_composite(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, const at::Tensor& h0, const std::optional<at::Tensor>& batch_sizes,
    c10::string_view nonlinearity, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  static const auto forward = c10::Dispatcher::singleton()
      .findSchemaOrThrow("rnnkernels::rnn_forward", "")
      .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
          const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&,
          const std::optional<at::Tensor>&, c10::string_view, bool,
          const std::optional<at::Tensor>&)>();
  const at::Tensor x_proj = project_for("rnnkernels::rnn_forward_fused", x, w_ih, b_ih, w_hh, b_hh);
  return forward.call(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                      zoneout);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkernels, CompositeExplicitAutograd, m) {
  m.impl("lstm_forward_fused", &lstm_forward_unfused);
  m.impl("gru_forward_fused", &gru_forward_composite);
  m.impl("rnn_forward_fused", &rnn_forward_composite);
  m.impl("input_projection", &input_projection_aten);
  m.impl("input_projection_backward", &input_projection_backward_aten);
}

}  // namespace rnnkernels
