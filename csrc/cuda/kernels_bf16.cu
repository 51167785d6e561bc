// bfloat16 instantiations of the CUDA kernels (kernels.h): GEMM results read in fp32
// (the usual path) or in bf16 (when ATen cannot write a bf16 product in fp32); the forward
// steps also with x_proj in fp32 (what the layers and cells pass).
#include "cuda/instantiate.cuh"

namespace rnnkernels::cuda {
RNNKERNELS_INSTANTIATE_CELLS(bfloat16_t, float)
RNNKERNELS_INSTANTIATE_CELLS(bfloat16_t, bfloat16_t)
RNNKERNELS_INSTANTIATE_FLOAT_INPUT(bfloat16_t, float)
RNNKERNELS_INSTANTIATE_FLOAT_INPUT(bfloat16_t, bfloat16_t)
RNNKERNELS_INSTANTIATE_STORAGE(bfloat16_t)
}  // namespace rnnkernels::cuda
