#include "host/arguments.h"

#include <c10/util/irange.h>

namespace rnnkernels::host {

Sequence make_sequence(const char* op, int64_t rows, int64_t batch,
                       const std::optional<at::Tensor>& batch_sizes) {
  Sequence seq;
  seq.batch = batch;
  seq.rows = rows;
  if (batch_sizes.has_value() && batch_sizes->defined()) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1, op,
                ": batch_sizes must be a 1-D int64 CPU tensor (PackedSequence.batch_sizes), got ",
                bs.dim(), "-D ", bs.scalar_type(), " on ", bs.device());
    const at::Tensor bsc = bs.contiguous();
    const int64_t* p = bsc.data_ptr<int64_t>();
    const int64_t steps = bsc.numel();
    seq.batch_sizes.assign(p, p + steps);
    seq.offsets.resize(steps);
    int64_t total = 0;
    for (const auto t : c10::irange(steps)) {
      const int64_t b = seq.batch_sizes[t];
      TORCH_CHECK(b >= 1 && b <= batch, op, ": batch_sizes[", t, "] = ", b,
                  " must be in [1, ", batch, "] (the batch size of h0)");
      TORCH_CHECK(t == 0 || b <= seq.batch_sizes[t - 1], op,
                  ": batch_sizes must be non-increasing, got batch_sizes[", t - 1,
                  "] = ", seq.batch_sizes[t - 1], " and batch_sizes[", t, "] = ", b);
      seq.offsets[t] = total;
      total += b;
    }
    TORCH_CHECK(steps == 0 || seq.batch_sizes[0] == batch, op, ": batch_sizes[0] = ",
                steps == 0 ? 0 : seq.batch_sizes[0], " must equal the batch size of h0 (",
                batch, ")");
    TORCH_CHECK(total == rows, op, ": batch_sizes sum to ", total, " but x_proj has ", rows,
                " rows");
  } else {
    TORCH_CHECK(batch > 0 || rows == 0, op, ": h0 has batch size 0 but x_proj has ", rows,
                " rows");
    const int64_t steps = batch > 0 ? rows / batch : 0;
    TORCH_CHECK(steps * batch == rows, op, ": x_proj has ", rows,
                " rows, not a multiple of the batch size ", batch);
    seq.batch_sizes.assign(steps, batch);
    seq.offsets.resize(steps);
    for (const auto t : c10::irange(steps)) seq.offsets[t] = t * batch;
  }
  return seq;
}

void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but ", ref_name, " has dtype ", ref.scalar_type());
}

void check_shape(const char* op, const std::string& name, const at::Tensor& t,
                 at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected,
              ", got ", t.sizes());
}

Dims check_weights(const char* op, Cell cell, const at::Tensor& ref, const char* ref_name,
                   at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                   const at::Tensor& h0) {
  Dims d;
  d.gates = gate_count(cell);
  d.directions = static_cast<int64_t>(w_hh.size());
  TORCH_CHECK(d.directions == 1 || d.directions == 2, op,
              ": w_hh must hold one weight per direction (1 or 2), got ", d.directions);
  TORCH_CHECK(w_hh[0].dim() == 2 && w_hh[0].size(0) % d.gates == 0 && w_hh[0].size(0) > 0, op,
              ": w_hh[0] must be [", d.gates, "*hidden_size, output_size], got ",
              w_hh[0].sizes());
  d.hidden = w_hh[0].size(0) / d.gates;
  d.output = w_hh[0].size(1);
  TORCH_CHECK(b_hh.empty() || static_cast<int64_t>(b_hh.size()) == d.directions, op,
              ": b_hh must be empty or hold one bias per direction, got ", b_hh.size());
  TORCH_CHECK(w_hr.empty() || static_cast<int64_t>(w_hr.size()) == d.directions, op,
              ": w_hr must be empty or hold one weight per direction, got ", w_hr.size());
  if (w_hr.empty()) {
    TORCH_CHECK(d.output == d.hidden, op, ": w_hh[0] is ", w_hh[0].sizes(),
                "; without w_hr its second dimension must equal hidden_size ", d.hidden);
  }
  for (const auto i : c10::irange(d.directions)) {
    const std::string idx = "[" + std::to_string(i) + "]";
    check_same(op, "w_hh", w_hh[i], ref, ref_name);
    check_shape(op, "w_hh" + idx, w_hh[i], {d.gates * d.hidden, d.output});
    if (!b_hh.empty()) {
      check_same(op, "b_hh", b_hh[i], ref, ref_name);
      check_shape(op, "b_hh" + idx, b_hh[i], {d.gates * d.hidden});
    }
    if (!w_hr.empty()) {
      check_same(op, "w_hr", w_hr[i], ref, ref_name);
      check_shape(op, "w_hr" + idx, w_hr[i], {d.output, d.hidden});
    }
  }
  check_same(op, "h0", h0, ref, ref_name);
  TORCH_CHECK(h0.dim() == 3, op, ": expected h0 of shape [directions, batch, ", d.output,
              "], got ", h0.sizes());
  d.batch = h0.size(1);
  check_shape(op, "h0", h0, {d.directions, d.batch, d.output});
  return d;
}

at::Tensor check_c0(const char* op, const Dims& d, const at::Tensor& c0, const at::Tensor& ref,
                    const char* ref_name) {
  check_same(op, "c0", c0, ref, ref_name);
  check_shape(op, "c0", c0, {d.directions, d.batch, d.hidden});
  return c0.contiguous();
}

std::optional<at::Tensor> check_grad_c_n(const char* op, const Dims& d,
                                         const std::optional<at::Tensor>& grad_c_n,
                                         const at::Tensor& out) {
  if (!grad_c_n.has_value() || !grad_c_n->defined()) return std::nullopt;
  check_same(op, "grad_c_n", *grad_c_n, out, "output");
  check_shape(op, "grad_c_n", *grad_c_n, {d.directions, d.batch, d.hidden});
  return grad_c_n->contiguous();
}

LayerNormParams check_layer_norm_params(const char* op, const Dims& d, const at::Tensor& ref,
                                        const char* ref_name, at::TensorList ln_hh_weight,
                                        at::TensorList ln_c_weight, at::TensorList ln_c_bias) {
  const auto check_list = [&](const char* name, at::TensorList ts, int64_t size, bool optional) {
    TORCH_CHECK(static_cast<int64_t>(ts.size()) == d.directions || (optional && ts.empty()), op,
                ": ", name, " must hold one tensor per direction (", d.directions, ")",
                optional ? " or be empty" : "", ", got ", ts.size());
    for (const auto i : c10::irange(ts.size())) {
      check_same(op, name, ts[i], ref, ref_name);
      check_shape(op, std::string(name) + "[" + std::to_string(i) + "]", ts[i], {size});
    }
  };
  check_list("ln_hh_weight", ln_hh_weight, 4 * d.hidden, false);
  check_list("ln_c_weight", ln_c_weight, d.hidden, false);
  check_list("ln_c_bias", ln_c_bias, d.hidden, true);
  return {contiguous_all(ln_hh_weight), contiguous_all(ln_c_weight), contiguous_all(ln_c_bias)};
}

bool parse_nonlinearity(const char* op, c10::string_view nonlinearity) {
  TORCH_CHECK(nonlinearity == "tanh" || nonlinearity == "relu", op,
              ": nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
  return nonlinearity == "relu";
}

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

std::optional<at::Tensor> contiguous_opt(const std::optional<at::Tensor>& t) {
  if (t.has_value() && t->defined()) return t->contiguous();
  return std::nullopt;
}

std::vector<at::Tensor> empty_like_all(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(at::empty_like(t, at::MemoryFormat::Contiguous));
  return out;
}

void check_device_and_dtype(const Backend& backend, const char* op, const at::Tensor& t,
                            const char* name) {
  TORCH_CHECK(backend.on_device(t), op, ": the ", backend.name, " kernel got ", name, " on ",
              t.device());
  TORCH_CHECK(backend.supports(t.scalar_type()), op, ": ", backend.name, " kernels support ",
              backend.supported, ", got ", name, " of dtype ", t.scalar_type());
}

namespace {

// The recurrence's arguments of a call whose rows are `rows` [N, width] (x_proj in a
// forward: width D*G*H; the output in a backward: D*P); the weights and h0 share ref's
// device and dtype.
void prepare_recurrence(RecurrenceInputs& in, const Backend& backend, const char* op, Cell cell,
                        const at::Tensor& rows, const char* rows_name, bool rows_are_gates,
                        at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                        const at::Tensor& h0, const std::optional<at::Tensor>& batch_sizes,
                        const at::Tensor& ref, const char* ref_name) {
  check_device_and_dtype(backend, op, rows, rows_name);
  in.d = check_weights(op, cell, ref, ref_name, w_hh, b_hh, w_hr, h0);
  TORCH_CHECK(rows.device() == ref.device(), op, ": ", rows_name, " is on ", rows.device(),
              " but ", ref_name, " is on ", ref.device());
  const Dims& d = in.d;
  const int64_t width = rows_are_gates ? d.directions * d.gates * d.hidden
                                       : d.directions * d.output;
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == width, op, ": expected ", rows_name,
              " of shape [rows, ", width, "] (",
              rows_are_gates ? "directions * gates * hidden_size" : "directions * output_size",
              "), got ", rows.sizes());
  in.d.rows = rows.size(0);
  in.seq = make_sequence(op, in.d.rows, d.batch, batch_sizes);
  in.h0 = h0.contiguous();
  in.w_hh = contiguous_all(w_hh);
  in.b_hh = contiguous_all(b_hh);
  in.w_hr = contiguous_all(w_hr);
}

}  // namespace

ForwardInputs prepare_forward(const Backend& backend, const char* op, Cell cell,
                              const at::Tensor& x_proj, const char* x_name, at::TensorList w_hh,
                              at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                              const std::optional<at::Tensor>& batch_sizes,
                              const at::Tensor& ref, const char* ref_name) {
  ForwardInputs in;
  prepare_recurrence(in, backend, op, cell, x_proj, x_name, /*rows_are_gates=*/true, w_hh, b_hh,
                     w_hr, h0, batch_sizes, ref, ref_name);
  in.x_proj = x_proj.contiguous();
  return in;
}

BackwardInputs prepare_backward(const Backend& backend, const char* op, Cell cell,
                                const std::optional<at::Tensor>& grad_out,
                                const std::optional<at::Tensor>& grad_h_n, at::TensorList w_hh,
                                at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0,
                                const at::Tensor& out, const at::Tensor& ws,
                                const std::optional<at::Tensor>& batch_sizes,
                                int64_t ws_per_hidden, int64_t ws_extra) {
  BackwardInputs in;
  prepare_recurrence(in, backend, op, cell, out, "output", /*rows_are_gates=*/false, w_hh, b_hh,
                     w_hr, h0, batch_sizes, out, "output");
  const Dims& d = in.d;
  TORCH_CHECK(ws.device() == out.device(), op, ": workspace is on ", ws.device(),
              " but output is on ", out.device());
  const at::ScalarType ws_dtype = backend.workspace_dtype(out.scalar_type());
  TORCH_CHECK(ws.scalar_type() == ws_dtype, op, ": workspace has dtype ", ws.scalar_type(),
              " but output of dtype ", out.scalar_type(), " needs a ", ws_dtype,
              " workspace (float32 for float16/bfloat16, else the output's dtype)");
  check_shape(op, "workspace", ws, {d.directions, d.rows, ws_per_hidden * d.hidden + ws_extra});
  if (grad_out.has_value() && grad_out->defined()) {
    check_same(op, "grad_output", *grad_out, out, "output");
    check_shape(op, "grad_output", *grad_out, out.sizes());
  }
  if (grad_h_n.has_value() && grad_h_n->defined()) {
    check_same(op, "grad_h_n", *grad_h_n, out, "output");
    check_shape(op, "grad_h_n", *grad_h_n, h0.sizes());
  }
  in.out = out.contiguous();
  in.ws = ws.contiguous();
  in.grad_out = contiguous_opt(grad_out);
  in.grad_h_n = contiguous_opt(grad_h_n);
  return in;
}

}  // namespace rnnkernels::host
