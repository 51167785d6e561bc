#pragma once
// Elementary functions of at::vec::Vectorized for the shared gate math (cell_math.h).
// Included only by the per-ISA kernel files, after they define CPU_CAPABILITY.

#include <ATen/cpu/vec/vec.h>

#include "rnnkernels/cell_math.h"

namespace rnnkernels::math {
inline namespace RNNKERNELS_ISA_NAMESPACE {

template <typename S>
struct Elementwise<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static inline V exp(V x) { return x.exp(); }
  static inline V tanh(V x) { return x.tanh(); }
  // at::vec::maximum propagates NaN, as torch.relu does.
  static inline V relu(V x) { return at::vec::maximum(x, V(S(0))); }
  static inline V relu_grad(V grad, V y) { return V::blendv(V(S(0)), grad, y > V(S(0))); }
};

}  // namespace RNNKERNELS_ISA_NAMESPACE
}  // namespace rnnkernels::math
