// The CPU backend's recurrences on the projected input, for the op pair's host layer and
// the tests' hooks (host/recurrence_bindings.h).
#pragma once

#include "host/layer.h"

namespace rnnkernels::cpu {

const host::Recurrence& cpu_recurrence();

}  // namespace rnnkernels::cpu
