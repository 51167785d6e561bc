// Portable CPU kernels: at::vec's generic Vectorized, no ISA flags.
#define RNNKERNELS_ISA_NAMESPACE isa_default
#include "cpu/kernels_isa.h"

namespace rnnkernels::cpu {
const IsaKernels& isa_kernels_default() {
  static const IsaKernels kernels = isa_default::make_isa_kernels("default");
  return kernels;
}
}  // namespace rnnkernels::cpu
