// The extension module rnnkernels._C: the Python bindings. The ops, their schemas
// (csrc/op_library.cpp) and kernels are the op library's objects, which setup.py and
// CMakeLists.txt link into this module and, without Python, into rnnkernels/_ops*.so.

#include <torch/python.h>

#include "cpu/int8_cpu.h"
#include "cpu/memory.h"
#include "cpu/recurrence_cpu.h"
#include "host/recurrence_bindings.h"
#include "rnnkernels/build_info.h"
#include "rnnkernels/cell_math.h"

namespace {

// A packed int8 weight from Python: (panels, scale, sum, units, gates, k, vector_width).
rnnkernels::cpu::PackedInt8 packed_int8(const pybind11::tuple& t) {
  TORCH_CHECK(t.size() == 7, "rnnkernels int8: a packed weight is a 7-tuple, got ", t.size());
  rnnkernels::cpu::PackedInt8 w;
  w.panels = t[0].cast<at::Tensor>();
  w.scale = t[1].cast<at::Tensor>();
  w.sum = t[2].cast<at::Tensor>();
  w.units = t[3].cast<int64_t>();
  w.gates = t[4].cast<int64_t>();
  w.k = t[5].cast<int64_t>();
  w.vector_width = t[6].cast<int64_t>();
  return w;
}

void bind_int8(pybind11::module_& m) {
  namespace cpu = rnnkernels::cpu;
  using pybind11::arg;
  m.def("int8_kernels", &cpu::int8_kernels_name,
        "The int8 kernel variant chosen for this CPU (Note [int8 inference]).");
  m.def("int8_vector_width", &cpu::int8_vector_width,
        "The vector width the active int8 kernels pack weights for.");
  m.def("int8_pack", &cpu::int8_pack, arg("w_q"), arg("scale"), arg("gates"),
        "Packs an int8 weight [gates*units, K] and its row scales for the int8 kernels.");
  m.def("int8_linear", [](const at::Tensor& x, const pybind11::tuple& w,
                          const std::optional<at::Tensor>& bias) {
          return cpu::int8_linear(x, packed_int8(w), bias);
        }, arg("x"), arg("w"), arg("bias"),
        "x float32 [N, K] quantized per row, times the packed weight's transpose, + bias.");
  m.def("int8_recurrence", [](const std::string& cell, const at::Tensor& input,
                              const std::optional<pybind11::tuple>& w_ih,
                              const std::optional<at::Tensor>& b_ih,
                              const pybind11::tuple& w_hh, const std::optional<pybind11::tuple>& w_hr,
                              const std::optional<at::Tensor>& b_hh, const at::Tensor& h0,
                              const std::optional<at::Tensor>& c0,
                              const std::optional<at::Tensor>& batch_sizes, bool reverse) {
          std::optional<cpu::PackedInt8> ih, hr;
          if (w_ih.has_value()) ih = packed_int8(*w_ih);
          if (w_hr.has_value()) hr = packed_int8(*w_hr);
          const cpu::PackedInt8 hh = packed_int8(w_hh);
          pybind11::gil_scoped_release no_gil;
          return cpu::int8_recurrence(cell, input, ih, b_ih, hh, hr, b_hh, h0, c0, batch_sizes,
                                      reverse);
        }, arg("cell"), arg("input"), arg("w_ih"), arg("b_ih"), arg("w_hh"), arg("w_hr"),
        arg("b_hh"), arg("h0"), arg("c0"), arg("batch_sizes"), arg("reverse"),
        "One direction of an int8 LSTM/GRU/RNN layer (Note [int8 inference]): over x_proj "
        "[N, G*H] without w_ih, over x [N, I] with its projection fused in the steps with it.");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkernels: fused RNN, LSTM and GRU kernels (ops live in torch.ops.rnnkernels)";
  rnnkernels::host::bind_recurrence(m, "_cpu_recurrence", rnnkernels::cpu::cpu_recurrence());
  bind_int8(m);
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
