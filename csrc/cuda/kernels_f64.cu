// float64 instantiations of the CUDA kernels (kernels.h).
#include "cuda/instantiate.cuh"

namespace rnnkernels::cuda {
RNNKERNELS_INSTANTIATE_CELLS(double, double)
RNNKERNELS_INSTANTIATE_STORAGE(double)
}  // namespace rnnkernels::cuda
