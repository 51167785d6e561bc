// AVX2 + FMA kernels. Built with -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2
// -DCPU_CAPABILITY_AVX2 (setup.py, CMakeLists.txt); chosen only where ATen reports avx2.
#define RNNKERNELS_ISA_NAMESPACE isa_avx2
#include "cpu/kernels_isa.h"

namespace rnnkernels::cpu {
const IsaKernels& isa_kernels_avx2() {
  static const IsaKernels kernels = isa_avx2::make_isa_kernels("avx2");
  return kernels;
}
}  // namespace rnnkernels::cpu
