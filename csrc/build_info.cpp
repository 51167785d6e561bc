// rnnkernels._C.build_info(): what was compiled in, so users and bug reports can tell.

#include "rnnkernels/build_info.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/headeronly/version.h>

#include "cpu/kernels.h"
#include "cpu/recurrence_cpu.h"
#include "host/precision.h"

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
  for (const auto& name : cpu::built_isa_names()) isas.append(name);
  info["cpu_isas"] = isas;
  info["cpu_capability"] = active_cpu_capability();
  // Storage dtypes the CPU kernels run natively, and those they widen to float32 first:
  // the predicate the CPU's recurrence table is built with (Note [precision policy] in
  // host/precision.h).
  info["cpu_bf16_kernels"] = cpu::active_bf16_kernels_name();
  pybind11::list native, widened;
  for (const auto& [dtype, name] : host::kFloatingDtypes) {
    (cpu::stores(dtype) ? native : widened).append(name);
  }
  info["cpu_dtypes"] = pybind11::tuple(native);
  info["cpu_widened_dtypes"] = pybind11::tuple(widened);
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
