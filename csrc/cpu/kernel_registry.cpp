// The CPU kernel variants this build holds (Note [kernel registry] in kernels.h) and the
// choice of one for this machine.

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace rnnkernels::cpu {
namespace {

constexpr int kLevels = 3;

struct Bf16Entry {
  const CellKernels<c10::BFloat16>* kernels = nullptr;
  const char* name = "";
  bool (*cpu_supports)() = nullptr;
};

struct Int8Entry {
  const Int8Kernels* kernels = nullptr;
  bool (*cpu_supports)() = nullptr;
};

struct Registry {
  std::array<const IsaKernels*, kLevels> isa{};
  std::array<Bf16Entry, kLevels> bf16{};
  std::array<Int8Entry, kLevels> int8{};
  std::array<Int8Entry, kLevels> int8_dot{};
};

Registry& registry() {
  static Registry r;
  return r;
}

IsaLevel capability_level() {
  std::string cap = at::get_cpu_capability();  // "AVX512", "AVX2", "DEFAULT", ...
  std::transform(cap.begin(), cap.end(), cap.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  if (cap == "avx512") return IsaLevel::kAvx512;
  if (cap == "avx2") return IsaLevel::kAvx2;
  return IsaLevel::kDefault;
}

// The best registered variant at or below the CPU's capability.
int active_level() {
  static const int level = [] {
    for (int l = static_cast<int>(capability_level()); l >= 0; --l)
      if (registry().isa[l] != nullptr) return l;
    TORCH_CHECK(false, "rnnkernels: no CPU kernel variant was built into this extension");
    return 0;
  }();
  return level;
}

}  // namespace

void register_isa_kernels(IsaLevel level, const IsaKernels& kernels) {
  registry().isa[static_cast<int>(level)] = &kernels;
}

void register_bf16_kernels(IsaLevel level, const CellKernels<c10::BFloat16>& kernels,
                           const char* name, bool (*cpu_supports)()) {
  registry().bf16[static_cast<int>(level)] = Bf16Entry{&kernels, name, cpu_supports};
}

const IsaKernels& active_isa_kernels() { return *registry().isa[active_level()]; }

const CellKernels<c10::BFloat16>* active_bf16_kernels() {
  static const CellKernels<c10::BFloat16>* kernels = []() -> const CellKernels<c10::BFloat16>* {
    const Bf16Entry& e = registry().bf16[active_level()];
    return e.kernels != nullptr && e.cpu_supports() ? e.kernels : nullptr;
  }();
  return kernels;
}

const char* active_bf16_kernels_name() {
  return active_bf16_kernels() != nullptr ? registry().bf16[active_level()].name : "";
}

void register_int8_kernels(IsaLevel level, const Int8Kernels& kernels, bool dot_product,
                           bool (*cpu_supports)()) {
  auto& slots = dot_product ? registry().int8_dot : registry().int8;
  slots[static_cast<int>(level)] = Int8Entry{&kernels, cpu_supports};
}

const Int8Kernels& active_int8_kernels() {
  static const Int8Kernels* kernels = [] {
    const int level = active_level();
    const Int8Entry& dot = registry().int8_dot[level];
    const char* no_dot = std::getenv("RNNKERNELS_INT8_NO_VNNI");
    const bool dot_allowed = no_dot == nullptr || std::string(no_dot).empty() ||
                             std::string(no_dot) == "0";
    if (dot.kernels != nullptr && dot_allowed && dot.cpu_supports()) return dot.kernels;
    TORCH_CHECK(registry().int8[level].kernels != nullptr,
                "rnnkernels: no int8 kernels were built for the CPU variant ",
                registry().isa[level]->name);
    return registry().int8[level].kernels;
  }();
  return *kernels;
}

std::vector<std::string> built_isa_names() {
  std::vector<std::string> names;
  for (int l = 0; l < kLevels; ++l) {
    if (registry().isa[l] != nullptr) names.emplace_back(registry().isa[l]->name);
    if (registry().bf16[l].kernels != nullptr) names.emplace_back(registry().bf16[l].name);
    if (registry().int8_dot[l].kernels != nullptr)
      names.emplace_back(registry().int8_dot[l].kernels->name);
  }
  return names;
}

}  // namespace rnnkernels::cpu
