// bfloat16 kernels on AVX512-BF16 dot products (Note [bfloat16 products] in kernels_isa.h).
// Built with the avx512 flags plus -mavx512bf16 and CPU_CAPABILITY=AVX512_BF16 (setup.py
// ISA_FLAGS, CMakeLists.txt): a namespace of their own for at::vec, so no inline function
// compiled with -mavx512bf16 can stand in for the avx512 variant's copy. Used only where
// the avx512 variant runs and the CPU reports avx512_bf16.
#define RNNKERNELS_ISA_NAMESPACE isa_avx512_bf16
#include "cpu/kernels_isa.h"

namespace rnnkernels::cpu {
namespace {
const CellKernels<c10::BFloat16> kKernels = isa_avx512_bf16::make_bf16_kernels();
bool cpu_has_avx512_bf16() { return __builtin_cpu_supports("avx512bf16"); }
[[maybe_unused]] const bool kRegistered =
    (register_bf16_kernels(IsaLevel::kAvx512, kKernels, "avx512_bf16", &cpu_has_avx512_bf16),
     true);
}  // namespace
}  // namespace rnnkernels::cpu
