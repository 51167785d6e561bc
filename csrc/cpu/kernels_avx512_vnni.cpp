// int8 kernels on AVX512-VNNI dot products (Note [int8 inference] in int8_isa.h). Built
// with the avx512 flags plus -mavx512vnni and CPU_CAPABILITY=AVX512_VNNI (setup.py
// ISA_FLAGS, CMakeLists.txt): a namespace of their own, as kernels_avx512_bf16.cpp explains.
// Used only where the avx512 variant runs and the CPU reports avx512_vnni.
#define RNNKERNELS_ISA_NAMESPACE isa_avx512_vnni
#include "cpu/int8_isa.h"

namespace rnnkernels::cpu {
namespace {
const Int8Kernels kKernels = isa_avx512_vnni::make_int8_kernels("avx512_vnni");
bool cpu_has_avx512_vnni() { return __builtin_cpu_supports("avx512vnni"); }
[[maybe_unused]] const bool kRegistered =
    (register_int8_kernels(IsaLevel::kAvx512, kKernels, /*dot_product=*/true,
                           &cpu_has_avx512_vnni),
     true);
}  // namespace
}  // namespace rnnkernels::cpu
