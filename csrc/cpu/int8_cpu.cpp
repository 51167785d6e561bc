// Host side of the int8 inference kernels: argument checks, allocation, threads.

#include "cpu/int8_cpu.h"

#include "cpu/recurrence_common.h"

namespace rnnkernels::cpu {
namespace {

using detail::scratch_bytes;

constexpr const char* kOp = "rnnkernels::int8";
// Note [int8 inference]: sum_k (a_q + 128) W_q stays within int32 up to this K.
constexpr int64_t kMaxInt8K = 65536;

void check_float_matrix(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, kOp, ": ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 2 && (rows < 0 || t.size(0) == rows) && t.size(1) == cols, kOp, ": ",
              name, " must have shape [", rows < 0 ? std::string("N") : std::to_string(rows),
              ", ", cols, "], got ", t.sizes());
}

void check_packed(const PackedInt8& w, const char* name) {
  const Int8Kernels& kern = active_int8_kernels();
  TORCH_CHECK(w.vector_width == kern.vector_width, kOp, ": ", name, " was packed for vector "
              "width ", w.vector_width, ", the active int8 kernels (", kern.name, ") use ",
              kern.vector_width, "; pack it again");
  TORCH_CHECK(w.k >= 1 && w.k <= kMaxInt8K, kOp, ": ", name, " has K = ", w.k,
              "; the int8 kernels take 1 <= K <= ", kMaxInt8K);
  const int64_t V = kern.vector_width;
  const int64_t cols = int8_panel_blocks(w.units, w.gates, V) * int8_panel_vectors(w.gates) * V;
  const int64_t bytes = cols * int8_row_stride(w.k);
  TORCH_CHECK(w.panels.scalar_type() == at::kChar && w.panels.is_contiguous() &&
                  w.panels.numel() == bytes && w.scale.scalar_type() == at::kFloat &&
                  w.scale.is_contiguous() && w.scale.numel() == cols &&
                  w.sum.scalar_type() == at::kInt && w.sum.is_contiguous() &&
                  w.sum.numel() == cols,
              kOp, ": ", name, " is not a packed weight of ", w.gates, "x", w.units, " by ", w.k,
              " for vector width ", V);
}

Int8Panels panels_of(const PackedInt8& w) {
  Int8Panels p;
  p.panels = w.panels.data_ptr<int8_t>();
  p.scale = w.scale.data_ptr<float>();
  p.sum = w.sum.data_ptr<int32_t>();
  p.k = w.k;
  return p;
}

// Rows [N, K] of x quantized per row: (u8 [N, int8_row_stride(K)], scales [N]).
std::pair<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x) {
  const Int8Kernels& kern = active_int8_kernels();
  const int64_t N = x.size(0), K = x.size(1);
  at::Tensor xq = empty_large({N, int8_row_stride(K)}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({N}, x.options());
  const float* src = x.data_ptr<float>();
  uint8_t* q = xq.data_ptr<uint8_t>();
  float* s = scale.data_ptr<float>();
  const int64_t ld = x.stride(0);
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)),
                   [&](int64_t b, int64_t e) { kern.quantize_rows(src, ld, K, b, e, q, s); });
  return {xq, scale};
}

}  // namespace

std::string int8_kernels_name() { return active_int8_kernels().name; }
int64_t int8_vector_width() { return active_int8_kernels().vector_width; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_pack(const at::Tensor& w_q,
                                                         const at::Tensor& scale,
                                                         int64_t gates) {
  TORCH_CHECK(w_q.device().is_cpu() && w_q.scalar_type() == at::kChar && w_q.dim() == 2, kOp,
              ": the weight to pack must be a 2-D int8 CPU tensor, got ", w_q.dim(), "-D ",
              w_q.scalar_type(), " on ", w_q.device());
  TORCH_CHECK(gates >= 1 && w_q.size(0) % gates == 0 && w_q.size(0) > 0, kOp,
              ": the weight's rows (", w_q.size(0), ") must be ", gates, " gates of equal size");
  TORCH_CHECK(scale.device().is_cpu() && scale.scalar_type() == at::kFloat && scale.dim() == 1 &&
                  scale.numel() == w_q.size(0),
              kOp, ": the weight scale must be a float32 CPU tensor of ", w_q.size(0),
              " values, got ", scale.scalar_type(), " ", scale.sizes());
  const Int8Kernels& kern = active_int8_kernels();
  const int64_t units = w_q.size(0) / gates, K = w_q.size(1), V = kern.vector_width;
  TORCH_CHECK(K >= 1 && K <= kMaxInt8K, kOp, ": K = ", K, "; the int8 kernels take 1 <= K <= ",
              kMaxInt8K);
  const int64_t cols = int8_panel_blocks(units, gates, V) * int8_panel_vectors(gates) * V;
  const at::Tensor w = w_q.contiguous(), s = scale.contiguous();
  at::Tensor panels = at::empty({cols * int8_row_stride(K)}, w.options());
  at::Tensor panel_scale = at::empty({cols}, s.options());
  at::Tensor panel_sum = at::empty({cols}, w.options().dtype(at::kInt));
  kern.pack(w.data_ptr<int8_t>(), s.data_ptr<float>(), units, gates, K,
            panels.data_ptr<int8_t>(), panel_scale.data_ptr<float>(),
            panel_sum.data_ptr<int32_t>());
  return {panels, panel_scale, panel_sum};
}

at::Tensor int8_linear(const at::Tensor& x_in, const PackedInt8& w,
                       const std::optional<at::Tensor>& bias) {
  check_packed(w, "the input weight");
  check_float_matrix(x_in, "x", -1, w.k);
  const int64_t cols = w.units * w.gates;
  if (bias.has_value() && bias->defined())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->numel() == cols &&
                    bias->device().is_cpu(),
                kOp, ": the input bias must be a float32 CPU tensor of ", cols, " values, got ",
                bias->scalar_type(), " ", bias->sizes());
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t N = x.size(0);
  at::Tensor out = empty_large({N, cols}, x.options());
  if (N == 0) return out;
  const auto [xq, x_scale] = quantize_rows(x);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  Int8LinearArgs a;
  a.rows = N;
  a.units = w.units;
  a.gates = w.gates;
  a.xq = xq.data_ptr<uint8_t>();
  a.ld_xq = xq.size(1);
  a.x_scale = x_scale.data_ptr<float>();
  a.w = panels_of(w);
  a.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  a.out = out.data_ptr<float>();
  a.ld_out = cols;
  const Int8Kernels& kern = active_int8_kernels();
  at::parallel_for(0, kern.linear_items(a), 1,
                   [&](int64_t i0, int64_t i1) { kern.linear(a, i0, i1); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_recurrence(
    const std::string& cell, const at::Tensor& input, const std::optional<PackedInt8>& w_ih,
    const std::optional<at::Tensor>& b_ih, const PackedInt8& w_hh,
    const std::optional<PackedInt8>& w_hr, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0_in, const std::optional<at::Tensor>& c0,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  const bool lstm = cell == "lstm";
  const int64_t gates = lstm ? 4 : cell == "gru" ? 3 : 1;
  TORCH_CHECK(lstm || cell == "gru" || cell == "rnn_tanh" || cell == "rnn_relu", kOp,
              ": unknown cell '", cell, "' (lstm, gru, rnn_tanh, rnn_relu)");
  check_packed(w_hh, "W_hh");
  TORCH_CHECK(w_hh.gates == gates, kOp, ": W_hh was packed as ", w_hh.gates,
              " gates, a ", cell, " has ", gates);
  const int64_t H = w_hh.units;
  const bool proj = w_hr.has_value();
  TORCH_CHECK(!proj || lstm, kOp, ": only the LSTM has a projection");
  const int64_t P = proj ? w_hr->units : H;
  if (proj) {
    check_packed(*w_hr, "W_hr");
    TORCH_CHECK(w_hr->gates == 1 && w_hr->k == H, kOp, ": W_hr must be [P, ", H, "]");
  }
  TORCH_CHECK(w_hh.k == P, kOp, ": W_hh must be [", gates * H, ", ", P, "], got K = ", w_hh.k);
  const bool fused = w_ih.has_value();
  if (fused) {
    check_packed(*w_ih, "W_ih");
    TORCH_CHECK(w_ih->gates == gates && w_ih->units == H, kOp, ": W_ih must be [", gates * H,
                ", I], packed as ", gates, " gates");
    check_float_matrix(input, "x", -1, w_ih->k);
    if (b_ih.has_value() && b_ih->defined())
      TORCH_CHECK(b_ih->scalar_type() == at::kFloat && b_ih->numel() == gates * H, kOp,
                  ": b_ih must be float32 with ", gates * H, " values, got ",
                  b_ih->scalar_type(), " ", b_ih->sizes());
  } else {
    check_float_matrix(input, "x_proj", -1, gates * H);
  }
  check_float_matrix(h0_in, "h0", -1, P);
  const int64_t B = h0_in.size(0), N = input.size(0);
  if (B == 0) {  // an empty batch, as torch.nn allows: empty outputs
    TORCH_CHECK(N == 0, kOp, ": ", N, " input rows for a batch of 0");
    const auto opts = input.options();
    return {at::empty({0, P}, opts), at::empty({0, P}, opts),
            lstm ? at::empty({0, H}, opts) : at::empty({0}, opts)};
  }
  const detail::Sequence seq = [&] {
    if (batch_sizes.has_value() && batch_sizes->defined())
      return host::make_sequence(kOp, N, B, batch_sizes);
    TORCH_CHECK(N % B == 0, kOp, ": the input has ", N, " rows, not a multiple of the batch "
                "size ", B);
    detail::Sequence s;
    s.batch = B;
    s.rows = N;
    s.batch_sizes.assign(N / B, B);
    s.offsets.resize(N / B);
    for (int64_t t = 0; t < N / B; ++t) s.offsets[t] = t * B;
    return s;
  }();
  at::Tensor c0_t;
  if (lstm) {
    TORCH_CHECK(c0.has_value() && c0->defined(), kOp, ": the LSTM needs c0");
    check_float_matrix(*c0, "c0", B, H);
    c0_t = c0->contiguous();
  }
  if (b_hh.has_value() && b_hh->defined())
    TORCH_CHECK(b_hh->scalar_type() == at::kFloat && b_hh->numel() == gates * H, kOp,
                ": b_hh must be float32 with ", gates * H, " values, got ", b_hh->scalar_type(),
                " ", b_hh->sizes());
  // x_proj [N, G*H], or x [N, I] when fused.
  const at::Tensor rows = input.stride(1) == 1 ? input : input.contiguous();
  const at::Tensor h0 = h0_in.contiguous();
  const at::Tensor bias = b_hh.has_value() && b_hh->defined() ? b_hh->contiguous() : at::Tensor();
  const auto opts = rows.options();
  at::Tensor out = empty_large({N, P}, opts);
  at::Tensor h_n = at::empty({B, P}, opts);
  at::Tensor c_n = lstm ? at::empty({B, H}, opts) : at::empty({0}, opts);

  Int8RecurrenceArgs a;
  a.seq = detail::layout_of(seq, reverse);
  a.hidden = H;
  a.output = P;
  at::Tensor xq, x_scale, b_ih_t;
  if (fused) {
    std::tie(xq, x_scale) = quantize_rows(rows);
    a.xq = xq.data_ptr<uint8_t>();
    a.ld_xq = xq.size(1);
    a.x_scale = x_scale.data_ptr<float>();
    a.w_ih = panels_of(*w_ih);
    if (b_ih.has_value() && b_ih->defined()) {
      b_ih_t = b_ih->contiguous();
      a.b_ih = b_ih_t.data_ptr<float>();
    }
  } else {
    a.x_proj = rows.data_ptr<float>();
    a.ld_x_proj = rows.stride(0);
  }
  a.w_hh = panels_of(w_hh);
  if (proj) a.w_hr = panels_of(*w_hr);
  a.b_hh = bias.defined() ? bias.data_ptr<float>() : nullptr;
  a.relu = cell == "rnn_relu";
  a.h0 = h0.data_ptr<float>();
  a.c0 = lstm ? c0_t.data_ptr<float>() : nullptr;
  a.out = out.data_ptr<float>();
  a.ld_out = P;
  a.h_n = h_n.data_ptr<float>();
  a.c_n = lstm ? c_n.data_ptr<float>() : nullptr;
  const Int8Kernels& kern = active_int8_kernels();
  at::Tensor scratch = scratch_bytes(kern.recurrence_scratch(a, 1), rows);
  a.scratch = scratch.data_ptr();
  if (seq.steps() == 0) {
    h_n.copy_(h0);
    if (lstm) c_n.copy_(c0_t);
    return {out, h_n, c_n};
  }
  const auto run = lstm ? kern.lstm_forward : cell == "gru" ? kern.gru_forward : kern.rnn_forward;
  const int64_t step_macs =
      B * gates * H * (P + (fused ? w_ih->k : 0)) + (proj ? B * H * P : 0);
  const char* split = std::getenv("RNNKERNELS_INT8_ROW_SPLIT");  // A/B measurements only
  const bool row_split = split == nullptr || std::string(split) != "0";
  detail::run_directions(kOp, 1, step_macs,
                         [&](int64_t, Team& team, SliceRange mine) { run(a, team, mine); },
                         detail::RowSplit{row_split ? B : 0, 1});
  return {out, h_n, c_n};
}

}  // namespace rnnkernels::cpu
