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

void check_workspace(const char* op, const at::Tensor& workspace, const at::Tensor& output) {
  TORCH_CHECK(workspace.size(1) == output.size(0), op,
              " ran with need_workspace=False, so its backward cannot run; call it with "
              "need_workspace=True when gradients are needed");
}

// create_graph=True: grad mode is on inside the backward.
bool building_graph() { return at::GradMode::is_enabled(); }

// The Functions that take x_proj cannot recompute (Note [double backward]).
void refuse_double_backward(const char* op) {
  TORCH_CHECK(false, op,
              ": a backward with create_graph=True (double backward) is not supported on this "
              "path (CUDA layers and cells, the layer-normalised LSTM), which keeps no input "
              "to recompute from; rnnkernels' CPU layers and cells support it, as torch.nn's "
              "CPU path does (torch.nn's cuDNN RNNs refuse it too)");
}

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

// ---------------------------------------------------------------- LSTM

using LstmForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, const at::Tensor&,
    const at::Tensor&, const std::optional<at::Tensor>&, bool, const std::optional<at::Tensor>&);
using LstmBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, TensorVec, TensorVec, TensorVec>(
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, at::TensorList, at::TensorList, at::TensorList,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

class LstmFunction : public torch::autograd::Function<LstmFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_proj,
                               at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
                               const at::Tensor& h0, const at::Tensor& c0,
                               const std::optional<at::Tensor>& batch_sizes,
                               bool need_workspace, const std::optional<at::Tensor>& zoneout) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<LstmForwardSig>("rnnkernels::lstm_forward");
    auto [out, h_n, c_n, ws] =
        op.call(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace, zoneout);
    variable_list saved{h0, c0, out, ws};
    append(saved, w_hh);
    append(saved, b_hh);
    append(saved, w_hr);
    const int64_t optionals = save_optionals(saved, batch_sizes, zoneout);
    ctx->save_for_backward(saved);
    ctx->saved_data["sizes"] = std::vector<int64_t>{static_cast<int64_t>(w_hh.size()),
                                                    static_cast<int64_t>(b_hh.size()),
                                                    static_cast<int64_t>(w_hr.size()), optionals};
    ctx->mark_non_differentiable({ws});
    ctx->set_materialize_grads(false);
    return {out, h_n, c_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    SavedLists s{ctx->get_saved_variables()};
    const at::Tensor h0 = s.take(), c0 = s.take(), out = s.take(), ws = s.take();
    const TensorVec w_hh = s.take(sizes[0]), b_hh = s.take(sizes[1]), w_hr = s.take(sizes[2]);
    const auto [batch_sizes, zoneout] = s.take_optionals(sizes[3]);
    if (building_graph()) refuse_double_backward("rnnkernels::lstm_forward");
    check_workspace("rnnkernels::lstm_forward", ws, out);
    static const auto op = find_op<LstmBackwardSig>("rnnkernels::lstm_backward");
    auto [gx, gh0, gc0, gw_hh, gb_hh, gw_hr] =
        op.call(defined_or_none(grads[0]), defined_or_none(grads[1]), defined_or_none(grads[2]),
                w_hh, b_hh, w_hr, h0, c0, out, ws, batch_sizes, zoneout);
    // One slot per forward argument, list arguments flattened.
    variable_list result{gx};
    append(result, gw_hh);
    append(result, gb_hh);
    append(result, gw_hr);
    // batch_sizes, need_workspace, zoneout: no gradient.
    result.insert(result.end(), {gh0, gc0, at::Tensor(), at::Tensor(), at::Tensor()});
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_autograd(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, at::TensorList w_hr,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  auto r = LstmFunction::apply(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace,
                               zoneout);
  return {r[0], r[1], r[2], r[3]};
}

// lstm_forward_fused: x and W_ih instead of x_proj. The backward is lstm_backward, whose
// grad_x_proj then goes through input_projection_backward.
using LstmFusedSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
    at::TensorList, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, bool,
    const std::optional<at::Tensor>&);
using ProjectionBackwardSig = std::tuple<at::Tensor, TensorVec, TensorVec>(
    const at::Tensor&, const at::Tensor&, at::TensorList, bool, bool);

class LstmFusedFunction : public torch::autograd::Function<LstmFusedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList w_ih,
                               at::TensorList b_ih, at::TensorList w_hh, at::TensorList b_hh,
                               at::TensorList w_hr, const at::Tensor& h0, const at::Tensor& c0,
                               const std::optional<at::Tensor>& batch_sizes,
                               bool need_workspace, const std::optional<at::Tensor>& zoneout) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<LstmFusedSig>("rnnkernels::lstm_forward_fused");
    auto [out, h_n, c_n, ws] =
        op.call(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace, zoneout);
    variable_list saved{x, h0, c0, out, ws};
    append(saved, w_ih);
    append(saved, b_ih);
    append(saved, w_hh);
    append(saved, b_hh);
    append(saved, w_hr);
    const int64_t optionals = save_optionals(saved, batch_sizes, zoneout);
    ctx->save_for_backward(saved);
    ctx->saved_data["sizes"] = std::vector<int64_t>{
        static_cast<int64_t>(w_ih.size()), static_cast<int64_t>(b_ih.size()),
        static_cast<int64_t>(b_hh.size()), static_cast<int64_t>(w_hr.size()), optionals};
    ctx->mark_non_differentiable({ws});
    ctx->set_materialize_grads(false);
    return {out, h_n, c_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t D = sizes[0], n_b_ih = sizes[1], n_b_hh = sizes[2], n_w_hr = sizes[3];
    SavedLists s{ctx->get_saved_variables()};
    const at::Tensor x = s.take(), h0 = s.take(), c0 = s.take(), out = s.take(), ws = s.take();
    const TensorVec w_ih = s.take(D), b_ih = s.take(n_b_ih), w_hh = s.take(D),
                    b_hh = s.take(n_b_hh), w_hr = s.take(n_w_hr);
    const auto [batch_sizes, zoneout] = s.take_optionals(sizes[4]);
    if (building_graph()) {
      return recompute_grads(
          ctx,
          {"rnnkernels::lstm_forward_fused", concat({{x}, w_ih, b_ih, w_hh, b_hh, w_hr, {h0, c0}}),
           {D, n_b_ih, n_w_hr}, batch_sizes, zoneout, "", {}, {}},
          {grads[0], grads[1], grads[2]}, /*batch_sizes, need_workspace, zoneout*/ 3);
    }
    check_workspace("rnnkernels::lstm_forward_fused", ws, out);
    static const auto recurrence = find_op<LstmBackwardSig>("rnnkernels::lstm_backward");
    static const auto projection =
        find_op<ProjectionBackwardSig>("rnnkernels::input_projection_backward");
    auto [gx_proj, gh0, gc0, gw_hh, gb_hh, gw_hr] =
        recurrence.call(defined_or_none(grads[0]), defined_or_none(grads[1]),
                        defined_or_none(grads[2]), w_hh, b_hh, w_hr, h0, c0, out, ws, batch_sizes,
                        zoneout);
    const bool need_input_grad = ctx->needs_input_grad(0);
    // b_ih and b_hh enter the gates the same way, so their gradients are equal: the column
    // sums of grad_x_proj, which lstm_backward has already taken. Copies, so that the two
    // .grad tensors never share storage.
    const bool reuse_bias_grad = n_b_ih > 0 && n_b_ih == n_b_hh;
    auto [gx, gw_ih, gb_ih] =
        projection.call(gx_proj, x, w_ih, need_input_grad, n_b_ih > 0 && !reuse_bias_grad);
    if (reuse_bias_grad) {
      gb_ih.clear();
      for (const auto& g : gb_hh) gb_ih.push_back(g.clone());
    }
    // One slot per forward argument, list arguments flattened.
    variable_list result{need_input_grad ? gx : at::Tensor()};
    append(result, gw_ih);
    append(result, gb_ih);
    append(result, gw_hh);
    append(result, gb_hh);
    append(result, gw_hr);
    result.insert(result.end(), {gh0, gc0, at::Tensor(), at::Tensor(), at::Tensor()});
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_forward_fused_autograd(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, at::TensorList w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  auto r = LstmFusedFunction::apply(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, batch_sizes,
                                    need_workspace, zoneout);
  return {r[0], r[1], r[2], r[3]};
}

// ---------------------------------------------------------------- layer-normalised LSTM

using LnLstmForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, bool);
using LnLstmBackwardSig =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, TensorVec, TensorVec, TensorVec, TensorVec>(
        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
        const std::optional<at::Tensor>&, at::TensorList, at::TensorList, at::TensorList,
        at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const std::optional<at::Tensor>&);

class LnLstmFunction : public torch::autograd::Function<LnLstmFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_side,
                               at::TensorList w_hh, at::TensorList ln_hh_weight,
                               at::TensorList ln_c_weight, at::TensorList ln_c_bias,
                               const at::Tensor& h0, const at::Tensor& c0,
                               const std::optional<at::Tensor>& batch_sizes,
                               bool need_workspace) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<LnLstmForwardSig>("rnnkernels::layer_norm_lstm_forward");
    auto [out, h_n, c_n, ws] = op.call(x_side, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0,
                                       c0, batch_sizes, need_workspace);
    variable_list saved{h0, c0, out, ws};
    append(saved, w_hh);
    append(saved, ln_hh_weight);
    append(saved, ln_c_weight);
    append(saved, ln_c_bias);
    const int64_t optionals = save_optionals(saved, batch_sizes, std::nullopt);
    ctx->save_for_backward(saved);
    ctx->saved_data["sizes"] = std::vector<int64_t>{static_cast<int64_t>(w_hh.size()),
                                                    static_cast<int64_t>(ln_c_bias.size()),
                                                    optionals};
    ctx->mark_non_differentiable({ws});
    ctx->set_materialize_grads(false);
    return {out, h_n, c_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t D = sizes[0];
    SavedLists s{ctx->get_saved_variables()};
    const at::Tensor h0 = s.take(), c0 = s.take(), out = s.take(), ws = s.take();
    const TensorVec w_hh = s.take(D), ln_hh = s.take(D), ln_c = s.take(D),
                    ln_c_bias = s.take(sizes[1]);
    const auto batch_sizes = s.take_optionals(sizes[2]).first;
    if (building_graph()) refuse_double_backward("rnnkernels::layer_norm_lstm_forward");
    check_workspace("rnnkernels::layer_norm_lstm_forward", ws, out);
    static const auto op = find_op<LnLstmBackwardSig>("rnnkernels::layer_norm_lstm_backward");
    auto [gx, gh0, gc0, gw_hh, g_ln_hh, g_ln_c, g_ln_c_bias] =
        op.call(defined_or_none(grads[0]), defined_or_none(grads[1]), defined_or_none(grads[2]),
                w_hh, ln_hh, ln_c, ln_c_bias, h0, c0, out, ws, batch_sizes);
    // One slot per forward argument, list arguments flattened.
    variable_list result{gx};
    append(result, gw_hh);
    append(result, g_ln_hh);
    append(result, g_ln_c);
    append(result, g_ln_c_bias);
    // batch_sizes, need_workspace: no gradient.
    result.insert(result.end(), {gh0, gc0, at::Tensor(), at::Tensor()});
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_lstm_forward_autograd(
    const at::Tensor& x_side, at::TensorList w_hh, at::TensorList ln_hh_weight,
    at::TensorList ln_c_weight, at::TensorList ln_c_bias, const at::Tensor& h0,
    const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes, bool need_workspace) {
  auto r = LnLstmFunction::apply(x_side, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0,
                                 batch_sizes, need_workspace);
  return {r[0], r[1], r[2], r[3]};
}

// ---------------------------------------------------------------- GRU and RNN

// GRU and RNN share the argument layout (x_proj, w_hh[], b_hh[], h0, batch_sizes, ...);
// RNN adds its nonlinearity.
using GruForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&,
    const std::optional<at::Tensor>&, bool, const std::optional<at::Tensor>&);
using GruBackwardSig = std::tuple<at::Tensor, at::Tensor, TensorVec, TensorVec>(
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::TensorList,
    at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
using RnnForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, const at::Tensor&,
    const std::optional<at::Tensor>&, c10::string_view, bool, const std::optional<at::Tensor>&);
using RnnBackwardSig = std::tuple<at::Tensor, at::Tensor, TensorVec, TensorVec>(
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::TensorList,
    at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, c10::string_view, const std::optional<at::Tensor>&);

// The single-state Functions' saved tensors. The fused ones (x and W_ih in) also keep
// their input side, x, w_ih[D] and b_ih[nb] (as many as w_hh and b_hh: the ops check
// it), after the rest; the others pass none.
struct SingleStateSaved {
  at::Tensor h0, out, ws;
  TensorVec w_hh, b_hh;
  std::optional<at::Tensor> batch_sizes, zoneout;
  at::Tensor x;  // fused only
  TensorVec w_ih, b_ih;

  // The fused Functions' differentiable inputs in slot order (Note [double backward]).
  TensorVec fused_inputs() const { return concat({{x}, w_ih, b_ih, w_hh, b_hh, {h0}}); }
};

void save_single_state(AutogradContext* ctx, const at::Tensor& h0, const at::Tensor& out,
                       const at::Tensor& ws, at::TensorList w_hh, at::TensorList b_hh,
                       const std::optional<at::Tensor>& batch_sizes,
                       const std::optional<at::Tensor>& zoneout, const at::Tensor& x = {},
                       at::TensorList w_ih = {}, at::TensorList b_ih = {}) {
  variable_list saved{h0, out, ws};
  append(saved, w_hh);
  append(saved, b_hh);
  const int64_t optionals = save_optionals(saved, batch_sizes, zoneout);
  if (x.defined()) {
    saved.push_back(x);
    append(saved, w_ih);
    append(saved, b_ih);
  }
  ctx->save_for_backward(saved);
  ctx->saved_data["sizes"] =
      std::vector<int64_t>{static_cast<int64_t>(w_hh.size()), static_cast<int64_t>(b_hh.size()),
                           optionals, static_cast<int64_t>(x.defined())};
  ctx->mark_non_differentiable({ws});
  ctx->set_materialize_grads(false);
}

SingleStateSaved load_single_state(AutogradContext* ctx) {
  const auto sizes = ctx->saved_data["sizes"].toIntVector();
  SavedLists s{ctx->get_saved_variables()};
  SingleStateSaved r;
  r.h0 = s.take();
  r.out = s.take();
  r.ws = s.take();
  r.w_hh = s.take(sizes[0]);
  r.b_hh = s.take(sizes[1]);
  std::tie(r.batch_sizes, r.zoneout) = s.take_optionals(sizes[2]);
  if (sizes[3] != 0) {
    r.x = s.take();
    r.w_ih = s.take(sizes[0]);
    r.b_ih = s.take(sizes[1]);
  }
  return r;
}

variable_list single_state_grads(const at::Tensor& gx, const TensorVec& gw_hh,
                                 const TensorVec& gb_hh, const at::Tensor& gh0,
                                 int64_t trailing_args) {
  variable_list result{gx};
  append(result, gw_hh);
  append(result, gb_hh);
  result.push_back(gh0);
  for (int64_t i = 0; i < trailing_args; ++i) result.emplace_back();
  return result;
}

class GruFunction : public torch::autograd::Function<GruFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_proj,
                               at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
                               const std::optional<at::Tensor>& batch_sizes,
                               bool need_workspace, const std::optional<at::Tensor>& zoneout) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<GruForwardSig>("rnnkernels::gru_forward");
    auto [out, h_n, ws] = op.call(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
    save_single_state(ctx, h0, out, ws, w_hh, b_hh, batch_sizes, zoneout);
    return {out, h_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (building_graph()) refuse_double_backward("rnnkernels::gru_forward");
    const SingleStateSaved s = load_single_state(ctx);
    check_workspace("rnnkernels::gru_forward", s.ws, s.out);
    static const auto op = find_op<GruBackwardSig>("rnnkernels::gru_backward");
    auto [gx, gh0, gw_hh, gb_hh] = op.call(defined_or_none(grads[0]), defined_or_none(grads[1]),
                                           s.w_hh, s.b_hh, s.h0, s.out, s.ws, s.batch_sizes,
                                           s.zoneout);
    return single_state_grads(gx, gw_hh, gb_hh, gh0, /*batch_sizes, need_workspace, zoneout*/ 3);
  }
};

class RnnFunction : public torch::autograd::Function<RnnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x_proj,
                               at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
                               const std::optional<at::Tensor>& batch_sizes,
                               c10::string_view nonlinearity, bool need_workspace,
                               const std::optional<at::Tensor>& zoneout) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<RnnForwardSig>("rnnkernels::rnn_forward");
    auto [out, h_n, ws] =
        op.call(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace, zoneout);
    save_single_state(ctx, h0, out, ws, w_hh, b_hh, batch_sizes, zoneout);
    ctx->saved_data["nonlinearity"] = std::string(nonlinearity);
    return {out, h_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (building_graph()) refuse_double_backward("rnnkernels::rnn_forward");
    const SingleStateSaved s = load_single_state(ctx);
    check_workspace("rnnkernels::rnn_forward", s.ws, s.out);
    const std::string nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
    static const auto op = find_op<RnnBackwardSig>("rnnkernels::rnn_backward");
    auto [gx, gh0, gw_hh, gb_hh] =
        op.call(defined_or_none(grads[0]), defined_or_none(grads[1]), s.w_hh, s.b_hh, s.h0,
                s.out, s.ws, s.batch_sizes, nonlinearity, s.zoneout);
    return single_state_grads(gx, gw_hh, gb_hh, gh0,
                              /*batch_sizes, nonlinearity, need_workspace, zoneout*/ 4);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_autograd(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  auto r = GruFunction::apply(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_autograd(
    const at::Tensor& x_proj, at::TensorList w_hh, at::TensorList b_hh, const at::Tensor& h0,
    const std::optional<at::Tensor>& batch_sizes, c10::string_view nonlinearity,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  auto r = RnnFunction::apply(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity,
                              need_workspace, zoneout);
  return {r[0], r[1], r[2]};
}

// gru_forward_fused / rnn_forward_fused: x and W_ih instead of x_proj. The backward is
// gru_backward / rnn_backward, whose grad_x_proj then goes through
// input_projection_backward.
using GruFusedSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
    const at::Tensor&, const std::optional<at::Tensor>&, bool, const std::optional<at::Tensor>&);
using RnnFusedSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
    const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view, bool,
    const std::optional<at::Tensor>&);

// From the recurrence's gradients to one slot per forward argument: grad_x_proj through
// input_projection_backward. equal_bias_grads: b_ih enters like b_hh (RNN), so its
// gradient is a copy of b_hh's (copies: the two .grad tensors never share storage).
variable_list fused_single_state_grads(AutogradContext* ctx, const SingleStateSaved& s,
                                       const at::Tensor& gx_proj, const at::Tensor& gh0,
                                       const TensorVec& gw_hh, const TensorVec& gb_hh,
                                       bool equal_bias_grads, int64_t trailing_args) {
  static const auto projection =
      find_op<ProjectionBackwardSig>("rnnkernels::input_projection_backward");
  const bool need_input_grad = ctx->needs_input_grad(0);
  const bool has_bias = !s.b_ih.empty();
  auto [gx, gw_ih, gb_ih] =
      projection.call(gx_proj, s.x, s.w_ih, need_input_grad, has_bias && !equal_bias_grads);
  if (has_bias && equal_bias_grads) {
    gb_ih.clear();
    for (const auto& g : gb_hh) gb_ih.push_back(g.clone());
  }
  variable_list result = single_state_grads(need_input_grad ? gx : at::Tensor(), gw_hh, gb_hh,
                                            gh0, trailing_args);
  // x's slot, then W_ih's and b_ih's before the recurrent weights'.
  result.insert(result.begin() + 1, gw_ih.begin(), gw_ih.end());
  result.insert(result.begin() + 1 + static_cast<std::ptrdiff_t>(gw_ih.size()), gb_ih.begin(),
                gb_ih.end());
  return result;
}

// A fused single-state Function's backward with create_graph=True (Note [double backward]).
variable_list recompute_single_state(AutogradContext* ctx, const char* op,
                                     const SingleStateSaved& s, const variable_list& grads,
                                     const std::string& nonlinearity, size_t trailing_args) {
  return recompute_grads(ctx,
                         {op, s.fused_inputs(),
                          {static_cast<int64_t>(s.w_ih.size()), static_cast<int64_t>(s.b_ih.size())},
                          s.batch_sizes, s.zoneout, nonlinearity, {}, {}},
                         {grads[0], grads[1]}, trailing_args);
}

class GruFusedFunction : public torch::autograd::Function<GruFusedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList w_ih,
                               at::TensorList b_ih, at::TensorList w_hh, at::TensorList b_hh,
                               const at::Tensor& h0,
                               const std::optional<at::Tensor>& batch_sizes,
                               bool need_workspace, const std::optional<at::Tensor>& zoneout) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<GruFusedSig>("rnnkernels::gru_forward_fused");
    auto [out, h_n, ws] =
        op.call(x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout);
    save_single_state(ctx, h0, out, ws, w_hh, b_hh, batch_sizes, zoneout, x, w_ih, b_ih);
    return {out, h_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    constexpr int64_t kTrailing = 3;  // batch_sizes, need_workspace, zoneout
    const SingleStateSaved s = load_single_state(ctx);
    if (building_graph()) {
      return recompute_single_state(ctx, "rnnkernels::gru_forward_fused", s, grads, "",
                                    kTrailing);
    }
    check_workspace("rnnkernels::gru_forward_fused", s.ws, s.out);
    static const auto op = find_op<GruBackwardSig>("rnnkernels::gru_backward");
    auto [gx_proj, gh0, gw_hh, gb_hh] =
        op.call(defined_or_none(grads[0]), defined_or_none(grads[1]), s.w_hh, s.b_hh, s.h0,
                s.out, s.ws, s.batch_sizes, s.zoneout);
    // GRU: b_hn sits inside r * (W_hn h + b_hn), so b_ih's gradient differs from b_hh's.
    return fused_single_state_grads(ctx, s, gx_proj, gh0, gw_hh, gb_hh,
                                    /*equal_bias_grads=*/false, kTrailing);
  }
};

class RnnFusedFunction : public torch::autograd::Function<RnnFusedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList w_ih,
                               at::TensorList b_ih, at::TensorList w_hh, at::TensorList b_hh,
                               const at::Tensor& h0,
                               const std::optional<at::Tensor>& batch_sizes,
                               c10::string_view nonlinearity, bool need_workspace,
                               const std::optional<at::Tensor>& zoneout) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<RnnFusedSig>("rnnkernels::rnn_forward_fused");
    auto [out, h_n, ws] = op.call(x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, nonlinearity,
                                  need_workspace, zoneout);
    save_single_state(ctx, h0, out, ws, w_hh, b_hh, batch_sizes, zoneout, x, w_ih, b_ih);
    ctx->saved_data["nonlinearity"] = std::string(nonlinearity);
    return {out, h_n, ws};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    constexpr int64_t kTrailing = 4;  // batch_sizes, nonlinearity, need_workspace, zoneout
    const SingleStateSaved s = load_single_state(ctx);
    const std::string nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
    if (building_graph()) {
      return recompute_single_state(ctx, "rnnkernels::rnn_forward_fused", s, grads, nonlinearity,
                                    kTrailing);
    }
    check_workspace("rnnkernels::rnn_forward_fused", s.ws, s.out);
    static const auto op = find_op<RnnBackwardSig>("rnnkernels::rnn_backward");
    auto [gx_proj, gh0, gw_hh, gb_hh] =
        op.call(defined_or_none(grads[0]), defined_or_none(grads[1]), s.w_hh, s.b_hh, s.h0,
                s.out, s.ws, s.batch_sizes, nonlinearity, s.zoneout);
    return fused_single_state_grads(ctx, s, gx_proj, gh0, gw_hh, gb_hh,
                                    /*equal_bias_grads=*/true, kTrailing);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_fused_autograd(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, const at::Tensor& h0, const std::optional<at::Tensor>& batch_sizes,
    bool need_workspace, const std::optional<at::Tensor>& zoneout) {
  auto r = GruFusedFunction::apply(x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, need_workspace,
                                   zoneout);
  return {r[0], r[1], r[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_fused_autograd(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList b_ih, at::TensorList w_hh,
    at::TensorList b_hh, const at::Tensor& h0, const std::optional<at::Tensor>& batch_sizes,
    c10::string_view nonlinearity, bool need_workspace,
    const std::optional<at::Tensor>& zoneout) {
  auto r = RnnFusedFunction::apply(x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, nonlinearity,
                                   need_workspace, zoneout);
  return {r[0], r[1], r[2]};
}

// ---------------------------------------------------------------- input projection

using ProjectionSig = at::Tensor(const at::Tensor&, at::TensorList, at::TensorList);

class ProjectionFunction : public torch::autograd::Function<ProjectionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList w_ih,
                               at::TensorList b_ih) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<ProjectionSig>("rnnkernels::input_projection");
    variable_list saved{x};
    append(saved, w_ih);
    ctx->save_for_backward(saved);
    ctx->saved_data["sizes"] = std::vector<int64_t>{static_cast<int64_t>(w_ih.size()),
                                                    static_cast<int64_t>(b_ih.size())};
    return {op.call(x, w_ih, b_ih)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    SavedLists s{ctx->get_saved_variables()};
    const at::Tensor x = s.take();
    const TensorVec w_ih = s.take(sizes[0]);
    const bool need_input_grad = ctx->needs_input_grad(0);
    variable_list result;
    if (!grads[0].defined()) {
      result.resize(1 + sizes[0] + sizes[1]);
      return result;
    }
    if (building_graph()) {
      // x_proj is linear in x, W_ih and b_ih: its gradients as differentiable ATen ops.
      const int64_t GH = w_ih[0].size(0);
      at::Tensor gx;
      TensorVec gw, gb;
      for (const auto d : c10::irange(w_ih.size())) {
        const at::Tensor g = grads[0].narrow(1, d * GH, GH);
        if (need_input_grad) gx = gx.defined() ? gx + g.mm(w_ih[d]) : g.mm(w_ih[d]);
        gw.push_back(g.t().mm(x));
        if (sizes[1] > 0) gb.push_back(g.sum(0));
      }
      result.push_back(gx);
      append(result, gw);
      append(result, gb);
      return result;
    }
    static const auto op = find_op<ProjectionBackwardSig>("rnnkernels::input_projection_backward");
    auto [gx, gw, gb] = op.call(grads[0], x, w_ih, need_input_grad, sizes[1] > 0);
    result.push_back(need_input_grad ? gx : at::Tensor());
    append(result, gw);
    append(result, gb);
    return result;
  }
};

at::Tensor input_projection_autograd(const at::Tensor& x, at::TensorList w_ih,
                                     at::TensorList b_ih) {
  return ProjectionFunction::apply(x, w_ih, b_ih)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkernels, Autograd, m) {
  m.impl("input_projection", &input_projection_autograd);
  m.impl("lstm_forward", &lstm_forward_autograd);
  m.impl("lstm_forward_fused", &lstm_forward_fused_autograd);
  m.impl("layer_norm_lstm_forward", &layer_norm_lstm_forward_autograd);
  m.impl("gru_forward", &gru_forward_autograd);
  m.impl("rnn_forward", &rnn_forward_autograd);
  m.impl("gru_forward_fused", &gru_forward_fused_autograd);
  m.impl("rnn_forward_fused", &rnn_forward_fused_autograd);
}

}  // namespace rnnkernels
