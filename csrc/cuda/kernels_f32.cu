// float32 instantiations of the CUDA kernels (kernels.h).
#include "cuda/instantiate.cuh"

namespace rnnkernels::cuda {
RNNKERNELS_INSTANTIATE_CELLS(float, float)
RNNKERNELS_INSTANTIATE_STORAGE(float)
}  // namespace rnnkernels::cuda
