// AVX-512 kernels. Built with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma
// -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 (setup.py, CMakeLists.txt); chosen
// only where ATen reports avx512.
#define RNNKERNELS_ISA_NAMESPACE isa_avx512
#include "cpu/kernels_isa.h"

namespace rnnkernels::cpu {
const IsaKernels& isa_kernels_avx512() {
  static const IsaKernels kernels = isa_avx512::make_isa_kernels("avx512");
  return kernels;
}
}  // namespace rnnkernels::cpu
