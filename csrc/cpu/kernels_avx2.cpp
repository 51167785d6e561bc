// AVX2 + FMA kernels. Built with -mavx2 -mfma -mf16c -DCPU_CAPABILITY=AVX2
// -DCPU_CAPABILITY_AVX2 (setup.py, CMakeLists.txt); chosen only where ATen reports avx2.
#define RNNKERNELS_ISA_NAMESPACE isa_avx2
#include "cpu/int8_isa.h"

namespace rnnkernels::cpu {
namespace {
const IsaKernels kKernels = isa_avx2::make_isa_kernels("avx2");
const Int8Kernels kInt8Kernels = isa_avx2::make_int8_kernels("avx2");
bool always() { return true; }
[[maybe_unused]] const bool kInt8Registered =
    (register_int8_kernels(IsaLevel::kAvx2, kInt8Kernels, /*dot_product=*/false, &always), true);
[[maybe_unused]] const bool kRegistered = (register_isa_kernels(IsaLevel::kAvx2, kKernels), true);
}  // namespace
}  // namespace rnnkernels::cpu
