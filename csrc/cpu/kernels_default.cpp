// Portable CPU kernels: at::vec's generic Vectorized, no ISA flags.
#define RNNKERNELS_ISA_NAMESPACE isa_default
#include "cpu/kernels_isa.h"

namespace rnnkernels::cpu {
namespace {
const IsaKernels kKernels = isa_default::make_isa_kernels("default");
[[maybe_unused]] const bool kRegistered = (register_isa_kernels(IsaLevel::kDefault, kKernels), true);
}  // namespace
}  // namespace rnnkernels::cpu
