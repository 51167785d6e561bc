// rnnkernels._C.build_info(): what was compiled in, so users and bug reports can tell.

#include "rnnkernels/build_info.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/headeronly/version.h>

#include "cpu/kernels.h"

#ifndef RNNKERNELS_SOURCE_HASH
#define RNNKERNELS_SOURCE_HASH "unknown"
#endif

namespace rnnkernels {

#ifdef RNNKERNELS_WITH_CUDA
// Defined in cuda/recurrence_cuda.cpp.
pybind11::dict cuda_build_info();
#endif

std::string active_cpu_capability() { return cpu::active_isa_kernels().name; }

pybind11::dict build_info_dict() {
  pybind11::dict info;
  pybind11::list isas;
  isas.append("default");
#if defined(__x86_64__) || defined(_M_X64)
  isas.append("avx2");
  isas.append("avx512");
#endif
  info["cpu_isas"] = isas;
  info["cpu_capability"] = active_cpu_capability();
  info["cpu_dtypes"] = pybind11::make_tuple("float32", "float64");
  info["torch_version"] = TORCH_VERSION;
  info["source_hash"] = RNNKERNELS_SOURCE_HASH;
  info["parallel"] = at::get_parallel_info();
#ifdef RNNKERNELS_WITH_CUDA
  info["cuda"] = cuda_build_info();
#else
  info["cuda"] = pybind11::none();
#endif
  return info;
}

}  // namespace rnnkernels
