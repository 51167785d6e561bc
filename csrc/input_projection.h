// lstm_forward_fused as its two ops, input_projection then lstm_forward, through the
// dispatcher: the composite kernel of other devices, and the CPU kernel's path for the
// cases it does not fuse.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace rnnkernels {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_unfused(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout);

}  // namespace rnnkernels
