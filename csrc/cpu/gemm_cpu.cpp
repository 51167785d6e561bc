// The CPU GEMM (panel packing and register tiles from kernels_isa.h) and the input
// projection ops built on it.
//
// Note [own GEMM]
// The recurrence's register tile is a complete GEMM microkernel: packed column panels of
// B, MR broadcast rows of A, NV*V accumulators. For the input projection and
// weight-gradient shapes it outruns MKL's sgemm where K >= 256 (as oneDNN's own GEMM under
// torch.nn's LSTM does), so those products run here; below that MKL's small-K kernels win
// (bench/results/design-notes-measurements.md; bench/gemm_policies.py re-measures).

#include "cpu/gemm_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/memory.h"

namespace rnnkernels::cpu {
namespace {

template <typename S>
const CellKernels<S>& kernels_for() {
  if constexpr (std::is_same_v<S, float>) {
    return active_isa_kernels().f32;
  } else {
    return active_isa_kernels().f64;
  }
}

template <typename S>
void run_gemm(GemmArgs<S> g) {
  if (g.m == 0 || g.n == 0) return;
  const CellKernels<S>& k = kernels_for<S>();
  const int64_t width = k.gemm_panel_width, tile_rows = k.gemm_tile_rows;
  const int64_t blocks = (g.n + width - 1) / width;
  // See Note [GEMM blocking] in kernels_isa.h: a 128 KB slice of a panel per K pass and an
  // A block of about 384 KB, both in a 1-2 MB L2 with room to spare.
  g.k_per_pass = std::max<int64_t>(1, std::min<int64_t>(g.k, (128 << 10) / (width * sizeof(S))));
  const int64_t max_group_rows = std::max<int64_t>(
      tile_rows, (int64_t{384} << 10) / (g.k_per_pass * sizeof(S)) / tile_rows * tile_rows);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  // Groups of equal height, a multiple of the thread count, so that parallel_for's equal
  // split of the items gives every thread the same rows (5 groups on 2 threads ran at
  // 60% of the balanced speed). Tiles stay whole: heights are multiples of tile_rows.
  const int64_t tiles = (g.m + tile_rows - 1) / tile_rows;
  int64_t groups = (g.m + max_group_rows - 1) / max_group_rows;
  groups = std::min(tiles, (groups + threads - 1) / threads * threads);
  g.rows_per_group = (tiles + groups - 1) / groups * tile_rows;
  groups = (g.m + g.rows_per_group - 1) / g.rows_per_group;
  g.segments = std::clamp<int64_t>((2 * threads + groups - 1) / groups, 1, blocks);

  const at::Tensor panel_storage = empty_large(
      {blocks * g.k * width}, at::TensorOptions().dtype(c10::CppTypeToScalarType<S>::value));
  S* panels = panel_storage.data_ptr<S>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) { k.gemm_pack(g, panels, b0, b1); });
  at::parallel_for(0, groups * g.segments, 1, [&](int64_t i0, int64_t i1) {
    k.gemm_compute(g, panels, i0, i1);
  });
}

}  // namespace

void matmul_into(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                 const std::optional<at::Tensor>& bias, bool accumulate) {
  TORCH_INTERNAL_ASSERT(a.dim() == 2 && b.dim() == 2 && out.dim() == 2);
  TORCH_INTERNAL_ASSERT(a.size(0) == out.size(0) && b.size(1) == out.size(1) &&
                        a.size(1) == b.size(0));
  const auto dtype = out.scalar_type();
  // Below K = 256 the tile's fixed costs (bias/C loads, stores) are not amortised and MKL's
  // small-K kernels measured faster. Packing b costs about one pass over it, paid back
  // over the M rows of a: against at::addmm the panel kernel wins from M = 256 where b is
  // row-major (dW = g^T x) but only from M ~ 1024 where b is a transposed weight (x W^T),
  // which is where a cell step or a short batch-1 sequence lands (Note [own GEMM]; the
  // figures: bench/results/design-notes-measurements.md).
  constexpr int64_t kMinDepth = 256;
  const int64_t min_rows = b.stride(1) == 1 ? 256 : 1024;
  if ((dtype != at::kFloat && dtype != at::kDouble) || out.stride(1) != 1 ||
      a.size(1) < kMinDepth || a.size(0) < min_rows) {
    if (accumulate) {
      out.addmm_(a, b);
    } else if (bias.has_value()) {
      at::addmm_out(out, *bias, a, b);
    } else {
      at::mm_out(out, a, b);
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "rnnkernels_matmul", [&] {
    GemmArgs<scalar_t> g;
    g.m = out.size(0);
    g.n = out.size(1);
    g.k = a.size(1);
    g.a = a.data_ptr<scalar_t>();
    g.a_rs = a.stride(0);
    g.a_cs = a.stride(1);
    g.b = b.data_ptr<scalar_t>();
    g.b_rs = b.stride(0);
    g.b_cs = b.stride(1);
    g.c = out.data_ptr<scalar_t>();
    g.ldc = out.stride(0);
    const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
    g.bias = bias.has_value() ? bias_c.data_ptr<scalar_t>() : nullptr;
    g.accumulate = accumulate;
    run_gemm(g);
  });
}

namespace {

// ---------------------------------------------------------------- input projection

void check_projection_args(const char* op, const at::Tensor& x, at::TensorList w_ih,
                           at::TensorList b_ih) {
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape [rows, input_size], got ", x.sizes());
  TORCH_CHECK(!w_ih.empty() && w_ih.size() <= 2, op,
              ": w_ih must hold one weight per direction (1 or 2), got ", w_ih.size());
  TORCH_CHECK(b_ih.empty() || b_ih.size() == w_ih.size(), op,
              ": b_ih must be empty or hold one bias per direction, got ", b_ih.size());
  for (const auto d : c10::irange(w_ih.size())) {
    TORCH_CHECK(w_ih[d].dim() == 2 && w_ih[d].size(1) == x.size(1) &&
                    w_ih[d].sizes() == w_ih[0].sizes(),
                op, ": expected w_ih[", d, "] of shape [gates*hidden_size, ", x.size(1),
                "] like w_ih[0], got ", w_ih[d].sizes());
    TORCH_CHECK(w_ih[d].scalar_type() == x.scalar_type() && w_ih[d].device() == x.device(), op,
                ": w_ih[", d, "] is ", w_ih[d].scalar_type(), " on ", w_ih[d].device(),
                " but x is ", x.scalar_type(), " on ", x.device());
    if (!b_ih.empty()) {
      TORCH_CHECK(b_ih[d].dim() == 1 && b_ih[d].size(0) == w_ih[0].size(0), op,
                  ": expected b_ih[", d, "] of shape [", w_ih[0].size(0), "], got ",
                  b_ih[d].sizes());
      TORCH_CHECK(b_ih[d].scalar_type() == x.scalar_type() && b_ih[d].device() == x.device(),
                  op, ": b_ih[", d, "] is ", b_ih[d].scalar_type(), " on ", b_ih[d].device(),
                  " but x is ", x.scalar_type(), " on ", x.device());
    }
  }
}

}  // namespace

at::Tensor input_projection(const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih) {
  check_projection_args("rnnkernels::input_projection", x, w_ih, b_ih);
  const int64_t D = static_cast<int64_t>(w_ih.size()), GH = w_ih[0].size(0);
  at::Tensor out = empty_large({x.size(0), D * GH}, x.options());
  const at::Tensor xc = x.contiguous();
  for (const auto d : c10::irange(D)) {
    at::Tensor cols = out.narrow(1, d * GH, GH);
    const std::optional<at::Tensor> bias =
        b_ih.empty() ? std::nullopt : std::make_optional(b_ih[d]);
    matmul_into(cols, xc, w_ih[d].t(), bias, /*accumulate=*/false);
  }
  return out;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>
input_projection_backward(const at::Tensor& grad_in, const at::Tensor& x_in,
                              at::TensorList w_ih, bool need_input_grad, bool has_bias) {
  constexpr const char* op = "rnnkernels::input_projection_backward";
  check_projection_args(op, x_in, w_ih, {});
  const int64_t D = static_cast<int64_t>(w_ih.size()), GH = w_ih[0].size(0);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == x_in.size(0) &&
                  grad_in.size(1) == D * GH && grad_in.scalar_type() == x_in.scalar_type(),
              op, ": expected grad of shape [", x_in.size(0), ", ", D * GH, "] and dtype ",
              x_in.scalar_type(), ", got ", grad_in.sizes(), " ", grad_in.scalar_type());
  const at::Tensor grad = grad_in.contiguous(), x = x_in.contiguous();
  at::Tensor grad_x = need_input_grad ? empty_large(x.sizes(), x.options()) : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_w, grad_b;
  for (const auto d : c10::irange(D)) {
    const at::Tensor g = grad.narrow(1, d * GH, GH);
    if (need_input_grad) matmul_into(grad_x, g, w_ih[d], std::nullopt, /*accumulate=*/d > 0);
    at::Tensor gw = at::empty_like(w_ih[d], at::MemoryFormat::Contiguous);
    matmul_into(gw, g.t(), x, std::nullopt, /*accumulate=*/false);
    grad_w.push_back(gw);
    if (has_bias) grad_b.push_back(g.sum(0));
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace rnnkernels::cpu
