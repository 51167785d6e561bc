// Test hooks, not ops: one backend's recurrences on the projected input (host::Recurrence)
// bound as Python functions of a submodule, `_C._cpu_recurrence` and the CUDA emulation's
// `_cuda_recurrence`. The tests drive the kernels at that level (x_proj in, the workspace
// out) to compare the backends with each other and with float64; users call the op pair.
#pragma once

#include <torch/python.h>

#include <optional>
#include <string>
#include <vector>

#include "host/layer.h"

namespace rnnkernels::host {

inline void bind_recurrence(pybind11::module_& parent, const char* name,
                            const Recurrence& r) {
  namespace py = pybind11;
  using Tensors = std::vector<at::Tensor>;
  using Opt = std::optional<at::Tensor>;
  py::module_ m = parent.def_submodule(name, "rnnkernels' recurrences on x_proj (tests only)");
  const Recurrence* k = &r;
  m.def("lstm_forward", [k](const at::Tensor& x_proj, const Tensors& w_hh, const Tensors& b_hh,
                            const Tensors& w_hr, const at::Tensor& h0, const at::Tensor& c0,
                            const Opt& batch_sizes, bool need_workspace, const Opt& zoneout) {
    return k->lstm_forward(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace,
                           zoneout);
  }, py::arg("x_proj"), py::arg("w_hh"), py::arg("b_hh"), py::arg("w_hr"), py::arg("h0"),
     py::arg("c0"), py::arg("batch_sizes"), py::arg("need_workspace"),
     py::arg("zoneout") = py::none());
  m.def("lstm_backward", [k](const Opt& grad_out, const Opt& grad_h_n, const Opt& grad_c_n,
                             const Tensors& w_hh, const Tensors& b_hh, const Tensors& w_hr,
                             const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& out,
                             const at::Tensor& ws, const Opt& batch_sizes, const Opt& zoneout) {
    return k->lstm_backward(grad_out, grad_h_n, grad_c_n, w_hh, b_hh, w_hr, h0, c0, out, ws,
                            batch_sizes, zoneout);
  }, py::arg("grad_output"), py::arg("grad_h_n"), py::arg("grad_c_n"), py::arg("w_hh"),
     py::arg("b_hh"), py::arg("w_hr"), py::arg("h0"), py::arg("c0"), py::arg("output"),
     py::arg("workspace"), py::arg("batch_sizes"), py::arg("zoneout") = py::none());
  m.def("gru_forward", [k](const at::Tensor& x_proj, const Tensors& w_hh, const Tensors& b_hh,
                           const at::Tensor& h0, const Opt& batch_sizes, bool need_workspace,
                           const Opt& zoneout) {
    return k->gru_forward(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
  }, py::arg("x_proj"), py::arg("w_hh"), py::arg("b_hh"), py::arg("h0"), py::arg("batch_sizes"),
     py::arg("need_workspace"), py::arg("zoneout") = py::none());
  m.def("gru_backward", [k](const Opt& grad_out, const Opt& grad_h_n, const Tensors& w_hh,
                            const Tensors& b_hh, const at::Tensor& h0, const at::Tensor& out,
                            const at::Tensor& ws, const Opt& batch_sizes, const Opt& zoneout) {
    return k->gru_backward(grad_out, grad_h_n, w_hh, b_hh, h0, out, ws, batch_sizes, zoneout);
  }, py::arg("grad_output"), py::arg("grad_h_n"), py::arg("w_hh"), py::arg("b_hh"),
     py::arg("h0"), py::arg("output"), py::arg("workspace"), py::arg("batch_sizes"),
     py::arg("zoneout") = py::none());
  m.def("rnn_forward", [k](const at::Tensor& x_proj, const Tensors& w_hh, const Tensors& b_hh,
                           const at::Tensor& h0, const Opt& batch_sizes,
                           const std::string& nonlinearity, bool need_workspace,
                           const Opt& zoneout) {
    return k->rnn_forward(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                          zoneout);
  }, py::arg("x_proj"), py::arg("w_hh"), py::arg("b_hh"), py::arg("h0"), py::arg("batch_sizes"),
     py::arg("nonlinearity"), py::arg("need_workspace"), py::arg("zoneout") = py::none());
  m.def("rnn_backward", [k](const Opt& grad_out, const Opt& grad_h_n, const Tensors& w_hh,
                            const Tensors& b_hh, const at::Tensor& h0, const at::Tensor& out,
                            const at::Tensor& ws, const Opt& batch_sizes,
                            const std::string& nonlinearity, const Opt& zoneout) {
    return k->rnn_backward(grad_out, grad_h_n, w_hh, b_hh, h0, out, ws, batch_sizes,
                           nonlinearity, zoneout);
  }, py::arg("grad_output"), py::arg("grad_h_n"), py::arg("w_hh"), py::arg("b_hh"),
     py::arg("h0"), py::arg("output"), py::arg("workspace"), py::arg("batch_sizes"),
     py::arg("nonlinearity"), py::arg("zoneout") = py::none());
  m.def("layer_norm_lstm_forward", [k](const at::Tensor& x_side, const Tensors& w_hh,
                                       const Tensors& ln_hh_weight, const Tensors& ln_c_weight,
                                       const Tensors& ln_c_bias, const at::Tensor& h0,
                                       const at::Tensor& c0, const Opt& batch_sizes,
                                       bool need_workspace) {
    return k->layer_norm_lstm_forward(x_side, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0,
                                      c0, batch_sizes, need_workspace);
  });
  m.def("layer_norm_lstm_backward",
        [k](const Opt& grad_out, const Opt& grad_h_n, const Opt& grad_c_n, const Tensors& w_hh,
            const Tensors& ln_hh_weight, const Tensors& ln_c_weight, const Tensors& ln_c_bias,
            const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& out,
            const at::Tensor& ws, const Opt& batch_sizes) {
          return k->layer_norm_lstm_backward(grad_out, grad_h_n, grad_c_n, w_hh, ln_hh_weight,
                                             ln_c_weight, ln_c_bias, h0, c0, out, ws,
                                             batch_sizes);
        });
  m.def("input_projection", [k](const at::Tensor& x, const Tensors& w_ih, const Tensors& b_ih) {
    return k->project(x, w_ih, b_ih);
  });
  m.def("input_projection_backward", [k](const at::Tensor& grad_x_proj, const at::Tensor& x,
                                         const Tensors& w_ih, bool need_input_grad,
                                         bool has_bias) {
    return k->project_backward(grad_x_proj, x, w_ih, need_input_grad, has_bias);
  });
}

}  // namespace rnnkernels::host
