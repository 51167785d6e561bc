#pragma once
// CPU emulation stand-in for the CUDA runtime API (tests/test_cuda_compile.py): just what
// csrc/cuda/kernels.h and the host code use. Never on the include path of a real build.

struct CUstream_st;
using cudaStream_t = CUstream_st*;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };

namespace rnnkernels_emulation {
inline cudaError_t& last_error() {
  static thread_local cudaError_t error = cudaSuccess;
  return error;
}
}  // namespace rnnkernels_emulation

inline cudaError_t cudaGetLastError() {
  const cudaError_t error = rnnkernels_emulation::last_error();
  rnnkernels_emulation::last_error() = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    default:
      return "invalid configuration argument";
  }
}

#define CUDART_VERSION 0
