// Whether this CPU runs code built with the flags of csrc/cpu/kernels_<isa>.cpp
// (setup.py's ISA_FLAGS). Compiled without those flags, so it runs anywhere.

#include <cstring>

bool rnnk_cpu_supports(const char* isa) {
  if (std::strcmp(isa, "default") == 0) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (std::strcmp(isa, "avx2") == 0) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  if (std::strcmp(isa, "avx512") == 0) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  }
#endif
  return false;
}
