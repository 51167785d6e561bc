// The extension module rnnkernels._C and every op schema of the rnnkernels namespace.
//
// One recurrence op per cell and pass. It runs one layer, both directions when two
// weight lists are given, over the whole sequence; the input projection of all steps
// (x @ W_ih^T + b_ih) is computed by the caller as one GEMM. Shapes, with D directions,
// G gates (LSTM 4, GRU 3, RNN 1), hidden size H, output size P (proj_size or H), batch B
// and N rows (T*B, time-major, or sum(batch_sizes) for packed input):
//   x_proj [N, D*G*H], w_hh[d] [G*H, P], b_hh[d] [G*H], w_hr[d] [P, H] (LSTM only)
//   h0 [D, B, P], c0 [D, B, H] -> output [N, D*P], h_n [D, B, P], c_n [D, B, H]
//   workspace [D, N, S]: what the backward needs (LSTM: i, f, g, o, c -> S = 5H;
//   GRU: r, z, n, W_hn h + b_hn -> S = 4H; RNN: nothing, S = 0), empty when
//   need_workspace is false.
// zoneout (optional, forward and backward alike) [D, N, P] (LSTM [D, N, P+H]: h's then
// c's): the weight of the previous state per row and unit (Note [zoneout] in
// include/rnnkernels/cell_math.h); a row stride of 0 broadcasts one row. With it the LSTM
// workspace holds c after zoneout too (S = 6H) and the RNN's h before zoneout (S = H).
// The backward op returns the gradients of x_proj, h0 (c0) and the recurrent weights;
// autograd derives those of the input, W_ih and b_ih from grad_x_proj.

#include <torch/library.h>
#include <torch/python.h>

#include "cpu/memory.h"
#include "double_backward.h"
#include "rnnkernels/build_info.h"
#include "rnnkernels/cell_math.h"

TORCH_LIBRARY(rnnkernels, m) {
  // x [N, I] -> x_proj [N, D*G*H]: direction d's columns are x @ w_ih[d]^T + b_ih[d].
  // The backward returns grad_x (empty when need_input_grad is false), grad_w_ih[] and
  // grad_b_ih[] (empty when has_bias is false).
  m.def("input_projection(Tensor x, Tensor[] w_ih, Tensor[] b_ih) -> Tensor");
  m.def(
      "input_projection_backward(Tensor grad_x_proj, Tensor x, Tensor[] w_ih, "
      "bool need_input_grad, bool has_bias) -> (Tensor grad_x, Tensor[] grad_w_ih, "
      "Tensor[] grad_b_ih)");
  m.def(
      "lstm_forward(Tensor x_proj, Tensor[] w_hh, Tensor[] b_hh, Tensor[] w_hr, Tensor h0, "
      "Tensor c0, Tensor? batch_sizes, bool need_workspace, Tensor? zoneout=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  // lstm_forward with the input projection inside the time loop: x [N, I], w_ih[d]
  // [4H, I], b_ih[d] [4H] instead of x_proj; same outputs. Its backward is lstm_backward
  // followed by input_projection_backward.
  m.def(
      "lstm_forward_fused(Tensor x, Tensor[] w_ih, Tensor[] b_ih, Tensor[] w_hh, Tensor[] b_hh, "
      "Tensor[] w_hr, Tensor h0, Tensor c0, Tensor? batch_sizes, bool need_workspace, "
      "Tensor? zoneout=None) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "lstm_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor[] w_hh, "
      "Tensor[] b_hh, Tensor[] w_hr, Tensor h0, Tensor c0, Tensor output, Tensor workspace, "
      "Tensor? batch_sizes, Tensor? zoneout=None) -> (Tensor grad_x_proj, Tensor grad_h0, "
      "Tensor grad_c0, "
      "Tensor[] grad_w_hh, Tensor[] grad_b_hh, Tensor[] grad_w_hr)");
  // The layer-normalised LSTM (Note [layer-normalised LSTM] in cell_math.h): x_side
  // [N, D*4H] = LN_ih(x W_ih^T) + b_ih + b_hh from the caller; ln_hh_weight[d] [4H] (the
  // gamma of the recurrent product), ln_c_weight[d] [H], ln_c_bias[d] [H] (LN_c's gamma
  // and beta; the list may be empty: beta 0). No projection, no zoneout. workspace
  // [D, N, 10H + 2]. The backward returns the gradients of x_side, h0, c0, w_hh and the
  // three LN parameter lists (grad_ln_c_bias empty when ln_c_bias is).
  m.def(
      "layer_norm_lstm_forward(Tensor x_side, Tensor[] w_hh, Tensor[] ln_hh_weight, "
      "Tensor[] ln_c_weight, Tensor[] ln_c_bias, Tensor h0, Tensor c0, Tensor? batch_sizes, "
      "bool need_workspace) -> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)");
  m.def(
      "layer_norm_lstm_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
      "Tensor[] w_hh, Tensor[] ln_hh_weight, Tensor[] ln_c_weight, Tensor[] ln_c_bias, "
      "Tensor h0, Tensor c0, Tensor output, Tensor workspace, Tensor? batch_sizes) "
      "-> (Tensor grad_x_side, Tensor grad_h0, Tensor grad_c0, Tensor[] grad_w_hh, "
      "Tensor[] grad_ln_hh_weight, Tensor[] grad_ln_c_weight, Tensor[] grad_ln_c_bias)");
  m.def(
      "gru_forward(Tensor x_proj, Tensor[] w_hh, Tensor[] b_hh, Tensor h0, Tensor? batch_sizes, "
      "bool need_workspace, Tensor? zoneout=None) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "gru_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor[] w_hh, Tensor[] b_hh, "
      "Tensor h0, Tensor output, Tensor workspace, Tensor? batch_sizes, Tensor? zoneout=None) "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor[] grad_w_hh, Tensor[] grad_b_hh)");
  m.def(
      "rnn_forward(Tensor x_proj, Tensor[] w_hh, Tensor[] b_hh, Tensor h0, Tensor? batch_sizes, "
      "str nonlinearity, bool need_workspace, Tensor? zoneout=None) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "rnn_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor[] w_hh, Tensor[] b_hh, "
      "Tensor h0, Tensor output, Tensor workspace, Tensor? batch_sizes, str nonlinearity, "
      "Tensor? zoneout=None) "
      "-> (Tensor grad_x_proj, Tensor grad_h0, Tensor[] grad_w_hh, Tensor[] grad_b_hh)");
  // gru_forward and rnn_forward from x [N, I], w_ih[d] [G*H, I], b_ih[d] [G*H]: the two
  // ops input_projection then *_forward as one autograd node, which keeps x and W_ih
  // (alive anyway) instead of x_proj; the backward is *_backward followed by
  // input_projection_backward.
  m.def(
      "gru_forward_fused(Tensor x, Tensor[] w_ih, Tensor[] b_ih, Tensor[] w_hh, Tensor[] b_hh, "
      "Tensor h0, Tensor? batch_sizes, bool need_workspace, Tensor? zoneout=None) "
      "-> (Tensor output, Tensor h_n, Tensor workspace)");
  m.def(
      "rnn_forward_fused(Tensor x, Tensor[] w_ih, Tensor[] b_ih, Tensor[] w_hh, Tensor[] b_hh, "
      "Tensor h0, Tensor? batch_sizes, str nonlinearity, bool need_workspace, "
      "Tensor? zoneout=None) -> (Tensor output, Tensor h_n, Tensor workspace)");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnkernels: fused RNN, LSTM and GRU kernels (ops live in torch.ops.rnnkernels)";
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
  m.def("_set_recompute_backward", [](pybind11::function fn) {
        // Kept for the life of the process: a Python object must not be released after
        // the interpreter has gone (static destruction at exit).
        auto* keep = new pybind11::function(std::move(fn));
        rnnkernels::set_recompute_backward([keep](const rnnkernels::RecomputeRequest& r) {
          pybind11::gil_scoped_acquire gil;
          try {
            std::vector<bool> needs(r.needs.begin(), r.needs.end());
            return (*keep)(r.op, r.inputs, r.counts, r.batch_sizes, r.zoneout, r.nonlinearity,
                           r.grads, needs)
                .cast<std::vector<std::optional<at::Tensor>>>();
          } catch (pybind11::error_already_set& e) {
            // The autograd engine reports C++ exceptions; keep Python's message.
            throw std::runtime_error(e.what());
          }
        });
      }, "Registers the reference that fused ops recompute through for create_graph=True "
         "(Note [double backward] in csrc/double_backward.h).");
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
