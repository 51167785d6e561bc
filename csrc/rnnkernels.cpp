// The extension module rnnkernels._C: the Python bindings. The ops, their schemas
// (csrc/op_library.cpp) and kernels are the op library's objects, which setup.py and
// CMakeLists.txt link into this module and, without Python, into rnnkernels/_ops*.so.

#include <torch/python.h>

#include "cpu/memory.h"
#include "cpu/recurrence_cpu.h"
#include "host/recurrence_bindings.h"
#include "rnnkernels/build_info.h"
#include "rnnkernels/cell_math.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkernels: fused RNN, LSTM and GRU kernels (ops live in torch.ops.rnnkernels)";
  rnnkernels::host::bind_recurrence(m, "_cpu_recurrence", rnnkernels::cpu::cpu_recurrence());
  m.def("build_info", &rnnkernels::build_info_dict,
        "Which backends, CPU ISAs and dtypes this build contains, and what it was built with.");
  m.def("cpu_capability", &rnnkernels::active_cpu_capability,
        "The CPU kernel variant chosen at run time (honours ATEN_CPU_CAPABILITY).");
  m.def("cpu_cache_stats", [] {
        const auto s = rnnkernels::cpu::buffer_cache_stats();
        pybind11::dict d;
        d["cached_bytes"] = s.cached_bytes;
        d["in_use_bytes"] = s.in_use_bytes;
        d["limit_bytes"] = s.limit_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      }, "The large-CPU-buffer cache (Note [buffer cache] in csrc/cpu/memory.h).");
  m.def("empty_cpu_cache", &rnnkernels::cpu::empty_buffer_cache,
        "Returns the cached CPU buffers to the system.");
  m.def("set_cpu_cache_limit", &rnnkernels::cpu::set_buffer_cache_limit, pybind11::arg("bytes"),
        "Caps the bytes of freed CPU buffers kept for reuse (0: keep none).");
  m.def("_workspace_widths", [] {
        namespace math = rnnkernels::math;
        pybind11::dict slots;  // H-wide slots per row: (without zoneout, with zoneout)
        slots["lstm"] = pybind11::make_tuple(math::lstm_workspace_slots(false),
                                             math::lstm_workspace_slots(true));
        slots["gru"] = pybind11::make_tuple(math::gru_workspace_slots(false),
                                            math::gru_workspace_slots(true));
        slots["rnn"] = pybind11::make_tuple(math::rnn_workspace_slots(false),
                                            math::rnn_workspace_slots(true));
        // layer_norm_lstm: ln_lstm_workspace_width(H) = slots * H + extra.
        slots["layer_norm_lstm"] =
            pybind11::make_tuple(static_cast<int>(math::kLnRstd), math::kLnRstdValues);
        return slots;
      }, "The workspace widths of the ops, from include/rnnkernels/cell_math.h (their fakes "
         "in rnnkernels/ops.py read them here).");
}
