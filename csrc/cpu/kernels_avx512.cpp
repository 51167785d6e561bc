// AVX-512 kernels. Built with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma
// -DCPU_CAPABILITY=AVX512 -DCPU_CAPABILITY_AVX512 (setup.py, CMakeLists.txt); chosen
// only where ATen reports avx512.
#define RNNKERNELS_ISA_NAMESPACE isa_avx512
#include "cpu/int8_isa.h"

namespace rnnkernels::cpu {
namespace {
const IsaKernels kKernels = isa_avx512::make_isa_kernels("avx512");
const Int8Kernels kInt8Kernels = isa_avx512::make_int8_kernels("avx512");
bool always() { return true; }
[[maybe_unused]] const bool kInt8Registered =
    (register_int8_kernels(IsaLevel::kAvx512, kInt8Kernels, /*dot_product=*/false, &always), true);
[[maybe_unused]] const bool kRegistered = (register_isa_kernels(IsaLevel::kAvx512, kKernels), true);
}  // namespace
}  // namespace rnnkernels::cpu
