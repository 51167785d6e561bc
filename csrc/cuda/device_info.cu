// What the CUDA part was compiled for, read back by build_info() (recurrence_cuda.cpp).
#include <cuda_runtime_api.h>

#include "cuda/kernels.h"

#define RNNKERNELS_STRINGIFY_(...) #__VA_ARGS__
#define RNNKERNELS_STRINGIFY(...) RNNKERNELS_STRINGIFY_(__VA_ARGS__)

namespace rnnkernels::cuda {

const char* compiled_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return RNNKERNELS_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

int compiled_cuda_version() { return CUDART_VERSION; }

}  // namespace rnnkernels::cuda
