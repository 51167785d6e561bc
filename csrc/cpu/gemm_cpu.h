#pragma once
// CPU matrix products on the fused kernels' register-tiled panel microkernel.

#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

namespace rnnkernels::cpu {

// out = a @ b (+ bias[N]) (+ out when accumulate). a [M, K] and b [K, N] may be any 2-D
// strided views (transposes included); out [M, N] must have unit column stride. float32
// and float64 run the panel kernels; other dtypes go to at::addmm.
void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 const std::optional<at::Tensor>& bias, bool accumulate);

// x [N, I] -> [N, D*G*H]: direction d's columns are x @ w_ih[d]^T + b_ih[d] (one weight,
// and one bias or none, per direction).
at::Tensor input_projection(const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih);

// -> grad_x (empty unless need_input_grad), grad_w_ih[], grad_b_ih[] (empty unless has_bias).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
input_projection_backward(const at::Tensor& grad_x_proj, const at::Tensor& x,
                          at::TensorList w_ih, bool need_input_grad, bool has_bias);

}  // namespace rnnkernels::cpu
