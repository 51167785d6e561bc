// The CPU backend's recurrences on the projected input, for the op pair's host layer and
// the tests' hooks (host/recurrence_bindings.h).
#pragma once

#include "host/layer.h"

namespace rnnkernels::cpu {

const host::Recurrence& cpu_recurrence();

// Whether the CPU kernels store dtype t themselves (else the precision policy widens it;
// Note [precision policy]): the predicate the table above is built with.
bool stores(at::ScalarType t);

}  // namespace rnnkernels::cpu
