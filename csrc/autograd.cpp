// The op pair's autograd: one C++ autograd Function for rnn_layer, registered at the
// Autograd dispatch key (one for every backend).
//
// Note [autograd in C++]
// torch.library.register_autograd would do the same from Python, but its wrapper
// (pytree handling of the Tensor[] arguments, defaults, redispatch) cost about 150 us a
// layer per training step, more than a small layer's whole recurrence. Here the
// overhead is a few microseconds. torch.compile and opcheck see an ordinary op with an
// Autograd kernel: AOTAutograd runs this Function on fake tensors, reaching the op pair's
// fake kernels (rnnkernels/ops.py).
//
// rnn_layer saves x, the weights, h0 (c0), its output and workspace; its backward is
// rnn_layer_backward, below autograd, or, when the backward builds a graph
// (create_graph=True), through autograd: rnn_layer_backward's own derivative is
// registered from Python (Note [double backward] in rnnkernels/_double_backward.py).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace rnnkernels {
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

bool defined(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The saved tensors of one forward call, in the order forward() stored them.
struct SavedTensors {
  std::vector<at::Tensor> all;
  size_t next = 0;
  at::Tensor take() { return all[next++]; }
  std::optional<at::Tensor> take_if(bool present) {
    return present ? std::make_optional(take()) : std::nullopt;
  }
  TensorVec take(int64_t n) {
    TensorVec out(all.begin() + next, all.begin() + next + n);
    next += n;
    return out;
  }
};

void append(variable_list& dst, at::TensorList ts) { dst.insert(dst.end(), ts.begin(), ts.end()); }

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
    const bool has_c0 = defined(c0), has_sizes = defined(batch_sizes),
               has_zoneout = defined(zoneout);
    variable_list saved{x, h0, out, ws};
    if (has_c0) saved.push_back(*c0);
    if (has_sizes) saved.push_back(*batch_sizes);
    if (has_zoneout) saved.push_back(*zoneout);
    append(saved, weights);
    ctx->save_for_backward(saved);
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["layout"] = std::vector<int64_t>{
        static_cast<int64_t>(weights.size()), has_biases, has_projection, has_c0, has_sizes,
        has_zoneout};
    ctx->mark_non_differentiable(has_c0 ? variable_list{ws} : variable_list{c_n, ws});
    ctx->set_materialize_grads(false);
    return {out, h_n, c_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    const auto layout = ctx->saved_data["layout"].toIntVector();
    const bool has_biases = layout[1] != 0, has_projection = layout[2] != 0;
    const bool has_c0 = layout[3] != 0;
    SavedTensors s{ctx->get_saved_variables()};
    const at::Tensor x = s.take(), h0 = s.take(), out = s.take(), ws = s.take();
    const std::optional<at::Tensor> c0 = s.take_if(has_c0), batch_sizes = s.take_if(layout[4]),
                                    zoneout = s.take_if(layout[5]);
    const TensorVec weights = s.take(layout[0]);
    const bool need_input_grad = ctx->needs_input_grad(0);

    static const auto op = find_op<RnnLayerBackwardSig>("rnnkernels::rnn_layer_backward");
    const auto call = [&] {
      return op.call(mode, x, weights, has_biases, has_projection, h0, c0, out, ws,
                     batch_sizes, zoneout, defined_or_none(grads[0]), defined_or_none(grads[1]),
                     has_c0 ? defined_or_none(grads[2]) : std::nullopt, need_input_grad);
    };
    at::Tensor grad_x, grad_h0, grad_c0;
    TensorVec grad_weights;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: through autograd, whose kernel for the backward op differentiates
      // it (Note [double backward]).
      std::tie(grad_x, grad_weights, grad_h0, grad_c0) = call();
    } else {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(grad_x, grad_weights, grad_h0, grad_c0) = call();
    }
    // One slot per forward argument, the weights flattened: mode, x, weights,
    // has_biases, has_projection, h0, c0, batch_sizes, zoneout, need_workspace.
    variable_list result{at::Tensor(), need_input_grad ? grad_x : at::Tensor()};
    append(result, grad_weights);
    result.insert(result.end(), {at::Tensor(), at::Tensor(), grad_h0,
                                 has_c0 ? grad_c0 : at::Tensor(), at::Tensor(), at::Tensor(),
                                 at::Tensor()});
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
