// Autograd for the forward recurrence ops, as C++ autograd Functions registered at the
// Autograd dispatch key (one for every backend).
//
// Note [autograd in C++]
// torch.library.register_autograd would do the same from Python, but its wrapper
// (pytree handling of the Tensor[] arguments, defaults, redispatch) cost about 150 us a
// layer per training step, more than a small layer's whole recurrence. Here the
// overhead is a few microseconds. torch.compile and opcheck see an ordinary op with an
// Autograd kernel: AOTAutograd runs this Function on fake tensors, reaching the
// forward and backward ops' fake kernels (rnnkernels/ops.py).
//
// Each forward op saves its inputs' weights, h0 (c0), its output and workspace; the
// backward op returns the gradients of x_proj, h0 (c0) and the recurrent weights. The
// backward ops have no derivative: a backward with create_graph=True recomputes through
// the reference instead (Note [double backward] in double_backward.h).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <c10/util/irange.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "double_backward.h"

namespace rnnkernels {

namespace {
RecomputeFn& recompute_slot() {
  static RecomputeFn fn;
  return fn;
}
}  // namespace

void set_recompute_backward(RecomputeFn fn) { recompute_slot() = std::move(fn); }

std::vector<std::optional<at::Tensor>> recompute_backward(const RecomputeRequest& request) {
  TORCH_CHECK(static_cast<bool>(recompute_slot()), request.op,
              ": a backward with create_graph=True needs the rnnkernels Python package "
              "(import rnnkernels), which registers the reference it recomputes through");
  return recompute_slot()(request);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using TensorVec = std::vector<at::Tensor>;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::make_optional(t) : std::nullopt;
}

// The saved tensors of one forward call, in the order save() stored them.
struct SavedLists {
  std::vector<at::Tensor> all;
  size_t next = 0;
  at::Tensor take() { return all[next++]; }
  TensorVec take(int64_t n) {
    TensorVec out(all.begin() + next, all.begin() + next + n);
    next += n;
    return out;
  }
  // batch_sizes and zoneout, as save_optionals stored them under `flags`.
  std::pair<std::optional<at::Tensor>, std::optional<at::Tensor>> take_optionals(int64_t flags) {
    std::optional<at::Tensor> batch_sizes, zoneout;
    if (flags & 1) batch_sizes = take();
    if (flags & 2) zoneout = take();
    return {batch_sizes, zoneout};
  }
};

// Appends the given optionals; returns the flags SavedLists::take_optionals reads.
int64_t save_optionals(variable_list& saved, const std::optional<at::Tensor>& batch_sizes,
                       const std::optional<at::Tensor>& zoneout) {
  int64_t flags = 0;
  if (batch_sizes.has_value() && batch_sizes->defined()) {
    saved.push_back(*batch_sizes);
    flags |= 1;
  }
  if (zoneout.has_value() && zoneout->defined()) {
    saved.push_back(*zoneout);
    flags |= 2;
  }
  return flags;
}

void append(variable_list& dst, at::TensorList ts) { dst.insert(dst.end(), ts.begin(), ts.end()); }


// create_graph=True: grad mode is on inside the backward.
bool building_graph() { return at::GradMode::is_enabled(); }


// The fused Functions' backward with create_graph=True: gradients of request.inputs from
// the reference, one slot each, then `trailing` empty slots for the non-tensor arguments.
variable_list recompute_grads(AutogradContext* ctx, RecomputeRequest request,
                              std::initializer_list<at::Tensor> output_grads, size_t trailing) {
  for (const auto& g : output_grads) request.grads.push_back(defined_or_none(g));
  for (const auto i : c10::irange(request.inputs.size()))
    request.needs.push_back(ctx->needs_input_grad(i));
  const auto got = recompute_backward(request);
  TORCH_CHECK(got.size() == request.inputs.size(), request.op, ": the reference returned ",
              got.size(), " gradients for ", request.inputs.size(), " inputs");
  variable_list result;
  for (const auto& g : got) result.push_back(g.has_value() ? *g : at::Tensor());
  result.resize(result.size() + trailing);
  return result;
}

TensorVec concat(std::initializer_list<at::TensorList> lists) {
  TensorVec out;
  for (const auto& l : lists) out.insert(out.end(), l.begin(), l.end());
  return out;
}

// ---------------------------------------------------------------- the op pair

using RnnLayerSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    c10::string_view, const at::Tensor&, at::TensorList, bool, bool, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, bool);
using RnnLayerBackwardSig = std::tuple<at::Tensor, TensorVec, at::Tensor, at::Tensor>(
    c10::string_view, const at::Tensor&, at::TensorList, bool, bool, const at::Tensor&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, bool);

bool defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// rnn_layer's autograd: saves x, the weights, h0 (c0), the output and the workspace; the
// backward is rnn_layer_backward, or, with create_graph=True, the reference recomputed from
// the same saved inputs (Note [double backward]), on every device and mode.
class RnnLayerFunction : public torch::autograd::Function<RnnLayerFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, c10::string_view mode, const at::Tensor& x,
                               at::TensorList weights, bool has_biases, bool has_projection,
                               const at::Tensor& h0, const std::optional<at::Tensor>& c0,
                               const std::optional<at::Tensor>& batch_sizes,
                               const std::optional<at::Tensor>& zoneout, bool need_workspace) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<RnnLayerSig>("rnnkernels::rnn_layer");
    auto [out, h_n, c_n, ws] = op.call(mode, x, weights, has_biases, has_projection, h0, c0,
                                       batch_sizes, zoneout, need_workspace);
    const bool has_c0 = defined(c0);
    variable_list saved{x, h0, out, ws};
    if (has_c0) saved.push_back(*c0);
    append(saved, weights);
    const int64_t optionals = save_optionals(saved, batch_sizes, zoneout);
    ctx->save_for_backward(saved);
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["sizes"] = std::vector<int64_t>{static_cast<int64_t>(weights.size()),
                                                    has_c0, has_biases, has_projection,
                                                    optionals};
    ctx->mark_non_differentiable(has_c0 ? variable_list{ws} : variable_list{c_n, ws});
    ctx->set_materialize_grads(false);
    return {out, h_n, c_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const bool has_c0 = sizes[1] != 0, has_biases = sizes[2] != 0, has_projection = sizes[3] != 0;
    SavedLists s{ctx->get_saved_variables()};
    const at::Tensor x = s.take(), h0 = s.take(), out = s.take(), ws = s.take();
    const std::optional<at::Tensor> c0 =
        has_c0 ? std::make_optional(s.take()) : std::optional<at::Tensor>();
    const TensorVec weights = s.take(sizes[0]);
    const auto [batch_sizes, zoneout] = s.take_optionals(sizes[4]);

    at::Tensor grad_x, grad_h0, grad_c0;
    TensorVec grad_weights;
    if (building_graph()) {
      TensorVec inputs = concat({{x}, weights, {h0}});
      if (has_c0) inputs.push_back(*c0);
      const variable_list got = recompute_grads(
          ctx, {"rnnkernels::rnn_layer", inputs, {has_biases, has_projection}, batch_sizes,
                zoneout, mode, {}, {}},
          {grads[0], grads[1], grads[2]}, /*trailing=*/0);
      grad_x = got[0];
      grad_weights.assign(got.begin() + 1, got.begin() + 1 + sizes[0]);
      grad_h0 = got[1 + sizes[0]];
      if (has_c0) grad_c0 = got[2 + sizes[0]];
    } else {
      static const auto op = find_op<RnnLayerBackwardSig>("rnnkernels::rnn_layer_backward");
      const bool need_input_grad = ctx->needs_input_grad(0);
      std::tie(grad_x, grad_weights, grad_h0, grad_c0) =
          op.call(mode, x, weights, has_biases, has_projection, h0, c0, out, ws, batch_sizes,
                  zoneout, defined_or_none(grads[0]), defined_or_none(grads[1]),
                  has_c0 ? defined_or_none(grads[2]) : std::nullopt, need_input_grad);
      if (!need_input_grad) grad_x = at::Tensor();
      if (!has_c0) grad_c0 = at::Tensor();
    }
    // One slot per forward argument, the weights flattened: mode, x, weights,
    // has_biases, has_projection, h0, c0, batch_sizes, zoneout, need_workspace.
    variable_list result{at::Tensor(), grad_x};
    append(result, grad_weights);
    result.insert(result.end(), {at::Tensor(), at::Tensor(), grad_h0, grad_c0, at::Tensor(),
                                 at::Tensor(), at::Tensor()});
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_autograd(
    c10::string_view mode, const at::Tensor& x, at::TensorList weights, bool has_biases,
    bool has_projection, const at::Tensor& h0, const std::optional<at::Tensor>& c0,
    const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& zoneout,
    bool need_workspace) {
  auto r = RnnLayerFunction::apply(mode, x, weights, has_biases, has_projection, h0, c0,
                                   batch_sizes, zoneout, need_workspace);
  return {r[0], r[1], r[2], r[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkernels, Autograd, m) {
  m.impl("rnn_layer", &rnn_layer_autograd);
}

}  // namespace rnnkernels
