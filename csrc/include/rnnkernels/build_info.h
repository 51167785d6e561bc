#pragma once
// What this build of the extension contains (rnnkernels._C.build_info()).

#include <string>

#include <pybind11/pybind11.h>

namespace rnnkernels {

pybind11::dict build_info_dict();

// "avx512", "avx2" or "default": the CPU kernels chosen for this process.
std::string active_cpu_capability();

}  // namespace rnnkernels
