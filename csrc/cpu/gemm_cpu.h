#pragma once
// CPU matrix products on the fused kernels' register-tiled panel microkernel.

#include <ATen/ATen.h>

#include <optional>

namespace rnnkernels::cpu {

// out = a @ b (+ bias[N]) (+ out when accumulate). a [M, K] and b [K, N] may be any 2-D
// strided views (transposes included); out [M, N] must have unit column stride. float32
// and float64 run the panel kernels; other dtypes go to at::addmm.
void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 const std::optional<at::Tensor>& bias, bool accumulate);

}  // namespace rnnkernels::cpu
