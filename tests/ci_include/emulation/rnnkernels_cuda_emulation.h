#pragma once
// Included by csrc/cuda/recurrence_cuda.cpp in the CPU emulation build only: the ops
// register for CPU tensors in their own namespace (schemas: rnnkernels_cuda_emulation.cpp),
// and a failed emulated launch raises.

#include <c10/util/Exception.h>

#include "cuda_runtime_api.h"

#define RNNKERNELS_CUDA_LIBRARY rnnkernels_cuda_emulation
#define RNNKERNELS_CUDA_KEY CPU
#define RNNKERNELS_CUDA_CHECK(expr)                                                   \
  do {                                                                                \
    const cudaError_t rnnkernels_error = (expr);                                      \
    TORCH_CHECK(rnnkernels_error == cudaSuccess, "emulated CUDA launch failed: ",     \
                cudaGetErrorString(rnnkernels_error));                                \
  } while (false)
