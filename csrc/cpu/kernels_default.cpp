// Portable CPU kernels: at::vec's generic Vectorized, no ISA flags.
#define RNNKERNELS_ISA_NAMESPACE isa_default
#include "cpu/int8_isa.h"

namespace rnnkernels::cpu {
namespace {
const IsaKernels kKernels = isa_default::make_isa_kernels("default");
const Int8Kernels kInt8Kernels = isa_default::make_int8_kernels("default");
bool always() { return true; }
[[maybe_unused]] const bool kInt8Registered =
    (register_int8_kernels(IsaLevel::kDefault, kInt8Kernels, /*dot_product=*/false, &always), true);
[[maybe_unused]] const bool kRegistered = (register_isa_kernels(IsaLevel::kDefault, kKernels), true);
}  // namespace
}  // namespace rnnkernels::cpu
