// The CPU backend's recurrences in every storage dtype: the kernels' own dtypes directly,
// the rest widened to float32 and rounded back (Note [reduced precision on CPU]), and the
// table the op pair runs on.

#include "cpu/recurrence_common.h"

namespace rnnkernels::cpu::detail {

// ---------------------------------------------------------------- reduced precision

bool is_reduced_float(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

at::Tensor widen(const at::Tensor& t) { return t.to(at::kFloat); }

std::vector<at::Tensor> widen(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(widen(t));
  return out;
}

std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return widen(*t);
  return t;
}

std::vector<at::Tensor> narrow_to(std::vector<at::Tensor> ts, at::ScalarType dtype) {
  for (auto& t : ts) t = t.to(dtype);
  return ts;
}

void check_optional_same(const char* op, const char* name, const std::optional<at::Tensor>& t,
                         const at::Tensor& ref, const char* ref_name) {
  if (t.has_value() && t->defined()) check_same(op, name, *t, ref, ref_name);
}

void check_float32_workspace(const char* op, const at::Tensor& ws) {
  TORCH_CHECK(ws.scalar_type() == at::kFloat, op,
              ": the workspace of a bfloat16/float16 call is float32, got ", ws.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  const auto dtype = x_proj.scalar_type();
  if (has_native_kernels(dtype))
    return lstm_forward_cpu(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace,
                            zoneout);
  constexpr const char* op = "rnnkernels::lstm_forward";
  check_weights(op, Cell::kLstm, x_proj, "x_proj", w_hh, b_hh, w_hr, h0);
  check_same(op, "c0", c0, x_proj, "x_proj");
  check_optional_same(op, "zoneout", zoneout, x_proj, "x_proj");
  auto [out, h_n, c_n, ws] = lstm_forward_cpu(widen(x_proj), widen(w_hh), widen(b_hh),
                                              widen(w_hr), widen(h0), widen(c0), batch_sizes,
                                              need_workspace, widen(zoneout));
  return {out.to(dtype), h_n.to(dtype), c_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  const auto dtype = x_proj.scalar_type();
  if (has_native_kernels(dtype))
    return gru_forward_cpu(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
  check_weights("rnnkernels::gru_forward", Cell::kGru, x_proj, "x_proj", w_hh, b_hh, {}, h0);
  check_optional_same("rnnkernels::gru_forward", "zoneout", zoneout, x_proj, "x_proj");
  auto [out, h_n, ws] = gru_forward_cpu(widen(x_proj), widen(w_hh), widen(b_hh), widen(h0),
                                        batch_sizes, need_workspace, widen(zoneout));
  return {out.to(dtype), h_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_entry(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, c10::string_view nonlinearity,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  const auto dtype = x_proj.scalar_type();
  if (has_native_kernels(dtype))
    return rnn_forward_cpu(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                           zoneout);
  check_weights("rnnkernels::rnn_forward", Cell::kRnn, x_proj, "x_proj", w_hh, b_hh, {}, h0);
  check_optional_same("rnnkernels::rnn_forward", "zoneout", zoneout, x_proj, "x_proj");
  auto [out, h_n, ws] = rnn_forward_cpu(widen(x_proj), widen(w_hh), widen(b_hh), widen(h0),
                                        batch_sizes, nonlinearity, need_workspace,
                                        widen(zoneout));
  return {out.to(dtype), h_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>>
lstm_backward_entry(const std::optional<at::Tensor>& grad_out,
                    const std::optional<at::Tensor>& grad_h_n,
                    const std::optional<at::Tensor>& grad_c_n, at::TensorList w_hh,
                    at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                    const at::Tensor& c0, const at::Tensor& out, const at::Tensor& ws,
                    const std::optional<at::Tensor>& batch_sizes,
                    const std::optional<at::Tensor>& zoneout) {
  const auto dtype = out.scalar_type();
  if (has_native_kernels(dtype))
    return lstm_backward_cpu(grad_out, grad_h_n, grad_c_n, w_hh, b_hh, w_hr, h0, c0, out, ws,
                             batch_sizes, zoneout);
  constexpr const char* op = "rnnkernels::lstm_backward";
  check_weights(op, Cell::kLstm, out, "output", w_hh, b_hh, w_hr, h0);
  check_same(op, "c0", c0, out, "output");
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "grad_c_n", grad_c_n, out, "output");
  check_optional_same(op, "zoneout", zoneout, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gc0, gw_hh, gb_hh, gw_hr] =
      lstm_backward_cpu(widen(grad_out), widen(grad_h_n), widen(grad_c_n), widen(w_hh),
                        widen(b_hh), widen(w_hr), widen(h0), widen(c0), widen(out), ws,
                        batch_sizes, widen(zoneout));
  return {gx.to(dtype), gh0.to(dtype), gc0.to(dtype), narrow_to(gw_hh, dtype),
          narrow_to(gb_hh, dtype), narrow_to(gw_hr, dtype)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
gru_backward_entry(const std::optional<at::Tensor>& grad_out,
                   const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                   at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                   const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                   const std::optional<at::Tensor>& zoneout) {
  const auto dtype = out.scalar_type();
  if (has_native_kernels(dtype))
    return gru_backward_cpu(grad_out, grad_h_n, w_hh, b_hh, h0, out, ws, batch_sizes, zoneout);
  constexpr const char* op = "rnnkernels::gru_backward";
  check_weights(op, Cell::kGru, out, "output", w_hh, b_hh, {}, h0);
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "zoneout", zoneout, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gw_hh, gb_hh] = gru_backward_cpu(widen(grad_out), widen(grad_h_n), widen(w_hh),
                                                  widen(b_hh), widen(h0), widen(out), ws,
                                                  batch_sizes, widen(zoneout));
  return {gx.to(dtype), gh0.to(dtype), narrow_to(gw_hh, dtype), narrow_to(gb_hh, dtype)};
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
rnn_backward_entry(const std::optional<at::Tensor>& grad_out,
                   const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                   at::TensorList b_hh, const at::Tensor& h0, const at::Tensor& out,
                   const at::Tensor& ws, const std::optional<at::Tensor>& batch_sizes,
                   c10::string_view nonlinearity, const std::optional<at::Tensor>& zoneout) {
  const auto dtype = out.scalar_type();
  if (has_native_kernels(dtype))
    return rnn_backward_cpu(grad_out, grad_h_n, w_hh, b_hh, h0, out, ws, batch_sizes,
                            nonlinearity, zoneout);
  constexpr const char* op = "rnnkernels::rnn_backward";
  check_weights(op, Cell::kRnn, out, "output", w_hh, b_hh, {}, h0);
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "zoneout", zoneout, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gw_hh, gb_hh] = rnn_backward_cpu(widen(grad_out), widen(grad_h_n), widen(w_hh),
                                                  widen(b_hh), widen(h0), widen(out), ws,
                                                  batch_sizes, nonlinearity, widen(zoneout));
  return {gx.to(dtype), gh0.to(dtype), narrow_to(gw_hh, dtype), narrow_to(gb_hh, dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward_entry(
    const at::Tensor& x_side, at::TensorList w_hh, at::TensorList ln_hh_weight,
    at::TensorList ln_c_weight, at::TensorList ln_c_bias, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes, bool need_workspace) {
  const auto dtype = x_side.scalar_type();
  if (!is_reduced_float(dtype))
    return layer_norm_lstm_forward_cpu(x_side, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0,
                                       batch_sizes, need_workspace);
  constexpr const char* op = "rnnkernels::layer_norm_lstm_forward";
  const Dims d = check_weights(op, Cell::kLstm, x_side, "x_side", w_hh, {}, {}, h0);
  check_layer_norm_params(op, d, ln_hh_weight, ln_c_weight, ln_c_bias, x_side, "x_side");
  check_same(op, "c0", c0, x_side, "x_side");
  auto [out, h_n, c_n, ws] = layer_norm_lstm_forward_cpu(
      widen(x_side), widen(w_hh), widen(ln_hh_weight), widen(ln_c_weight), widen(ln_c_bias),
      widen(h0), widen(c0), batch_sizes, need_workspace);
  return {out.to(dtype), h_n.to(dtype), c_n.to(dtype), ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
           std::vector<at::Tensor>, std::vector<at::Tensor>>
layer_norm_lstm_backward_entry(const std::optional<at::Tensor>& grad_out,
                               const std::optional<at::Tensor>& grad_h_n,
                               const std::optional<at::Tensor>& grad_c_n, at::TensorList w_hh,
                               at::TensorList ln_hh_weight, at::TensorList ln_c_weight,
                               at::TensorList ln_c_bias, const at::Tensor& h0,
                               const at::Tensor& c0, const at::Tensor& out, const at::Tensor& ws,
                               const std::optional<at::Tensor>& batch_sizes) {
  const auto dtype = out.scalar_type();
  if (!is_reduced_float(dtype))
    return layer_norm_lstm_backward_cpu(grad_out, grad_h_n, grad_c_n, w_hh, ln_hh_weight,
                                        ln_c_weight, ln_c_bias, h0, c0, out, ws, batch_sizes);
  constexpr const char* op = "rnnkernels::layer_norm_lstm_backward";
  const Dims d = check_weights(op, Cell::kLstm, out, "output", w_hh, {}, {}, h0);
  check_layer_norm_params(op, d, ln_hh_weight, ln_c_weight, ln_c_bias, out, "output");
  check_same(op, "c0", c0, out, "output");
  check_optional_same(op, "grad_output", grad_out, out, "output");
  check_optional_same(op, "grad_h_n", grad_h_n, out, "output");
  check_optional_same(op, "grad_c_n", grad_c_n, out, "output");
  check_float32_workspace(op, ws);
  auto [gx, gh0, gc0, gw_hh, g_ln_hh, g_ln_c, g_ln_c_bias] = layer_norm_lstm_backward_cpu(
      widen(grad_out), widen(grad_h_n), widen(grad_c_n), widen(w_hh), widen(ln_hh_weight),
      widen(ln_c_weight), widen(ln_c_bias), widen(h0), widen(c0), widen(out), ws, batch_sizes);
  return {gx.to(dtype),           gh0.to(dtype),           gc0.to(dtype),
          narrow_to(gw_hh, dtype), narrow_to(g_ln_hh, dtype), narrow_to(g_ln_c, dtype),
          narrow_to(g_ln_c_bias, dtype)};
}

const host::Recurrence& recurrence_table() {
  static const host::Recurrence table{
      &lstm_forward_entry,  &lstm_backward_entry,       &gru_forward_entry,
      &gru_backward_entry,  &rnn_forward_entry,         &rnn_backward_entry,
      &layer_norm_lstm_forward_entry, &layer_norm_lstm_backward_entry,
      &input_projection,    &input_projection_backward, &lstm_forward_fused_cpu};
  return table;
}

}  // namespace rnnkernels::cpu::detail
