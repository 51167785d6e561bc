// The extension module rnnkernels._C and the op schemas of the rnnkernels namespace.
//
// One op pair, after ATen's _cudnn_rnn: rnn_layer runs one layer of any mode, one or both
// directions, over the whole sequence, from its input x; rnn_layer_backward returns the
// gradients of x, of every weight, of h0 (and c0). csrc/host/layer.h holds the weights'
// layout and the shapes; N rows (T*B, time-major, or sum(batch_sizes) for packed input),
// D directions, hidden size H, output size P (proj_size or H):
//   x [N, I], h0 [D, B, P], c0 [D, B, H] (LSTM modes) -> output [N, D*P], h_n [D, B, P],
//   c_n [D, B, H] (LSTM modes; [0] otherwise), workspace [D, N, S]: what the backward needs
//   (S from the workspace widths of include/rnnkernels/cell_math.h), [D, 0, S] when
//   need_workspace is false.
// zoneout (optional) [D, N, P] (LSTM [D, N, P+H]: h's then c's): the weight of the
// previous state per row and unit (Note [zoneout] in include/rnnkernels/cell_math.h); a
// row stride of 0 broadcasts one row.

#include <torch/library.h>
#include <torch/python.h>

#include "cpu/memory.h"
#include "cpu/recurrence_cpu.h"
#include "host/recurrence_bindings.h"
#include "rnnkernels/build_info.h"
#include "rnnkernels/cell_math.h"

TORCH_LIBRARY(rnnkernels, m) {
  // The op pair (csrc/host/layer.h has the weights' layout and the shapes): one layer of
  // any mode (lstm, gru, rnn_tanh, rnn_relu, ln_lstm) from its input x. c_n is [0] for
  // GRU and RNN; the backward's grad_weights match weights one for one.
  m.def(
      "rnn_layer(str mode, Tensor x, Tensor[] weights, bool has_biases, bool has_projection, "
      "Tensor h0, Tensor? c0, Tensor? batch_sizes, Tensor? zoneout, bool need_workspace) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "rnn_layer_backward(str mode, Tensor x, Tensor[] weights, bool has_biases, "
      "bool has_projection, Tensor h0, Tensor? c0, Tensor output, Tensor workspace, "
      "Tensor? batch_sizes, Tensor? zoneout, Tensor? grad_output, Tensor? grad_h_n, "
      "Tensor? grad_c_n, bool need_input_grad) "
      "-> (Tensor grad_x, Tensor[] grad_weights, Tensor grad_h0, Tensor grad_c0)");
}

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
