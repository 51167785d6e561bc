// The op pair under torch's legacy vmap (the `Batched` dispatch key), which batched
// gradients run on: autograd.grad(..., is_grads_batched=True), gradcheck's
// check_batched_grad and autograd.functional.jacobian(vectorize=True) vmap the backward
// graph with it, so RnnLayerFunction's backward calls rnn_layer_backward on batched grads.
// torch's own fallback loops only over ops whose returns are all Tensors; the backward
// returns a Tensor[] too. So this kernel peels the innermost vmap level off every argument,
// runs the op once per sample and stacks the results back into that level. A loop, not a
// fold into the batch: the weight gradients are per sample. (torch.func.vmap, the other
// vmap, uses the rules of rnnkernels/_vmap.py, Note [vmap rules].)

#include <ATen/ATen.h>
#include <ATen/LegacyBatchedTensorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <vector>

namespace rnnkernels {
namespace {

// The innermost (highest) vmap level of a tensor, or -1 when it is not batched.
int64_t innermost_level(const at::Tensor& t) {
  const auto* batched = at::maybeGetBatchedImpl(t);
  int64_t level = -1;
  if (batched != nullptr) {
    for (const auto& bdim : batched->bdims()) level = std::max(level, bdim.level());
  }
  return level;
}

// Sample v of t at `level` (t itself when not batched there), still batched at the other
// levels.
at::Tensor sample_of(const at::Tensor& t, int64_t level, int64_t v) {
  const auto* batched = at::maybeGetBatchedImpl(t);
  if (batched == nullptr) return t;
  at::BatchDims rest;
  int64_t dim = -1;
  for (const auto& bdim : batched->bdims()) {
    if (bdim.level() == level) dim = bdim.dim();
  }
  if (dim < 0) return t;
  for (const auto& bdim : batched->bdims()) {
    if (bdim.level() != level) {
      rest.emplace_back(bdim.level(), bdim.dim() > dim ? bdim.dim() - 1 : bdim.dim());
    }
  }
  at::Tensor value = batched->value().select(dim, v);
  return rest.empty() ? value : at::makeBatched(value, rest);
}

int64_t batch_size_at(const at::Tensor& t, int64_t level) {
  const auto* batched = at::maybeGetBatchedImpl(t);
  for (const auto& bdim : batched->bdims()) {
    if (bdim.level() == level) return batched->value().size(bdim.dim());
  }
  TORCH_INTERNAL_ASSERT(false, "rnnkernels: no batch dimension at level ", level);
}

template <typename F>
void for_each_tensor(const c10::IValue& value, F&& f) {
  if (value.isTensor()) {
    f(value.toTensor());
  } else if (value.isTensorList()) {
    for (const at::Tensor& t : value.toTensorVector()) f(t);
  }
}

c10::IValue sample_of(const c10::IValue& value, int64_t level, int64_t v) {
  if (value.isTensor()) return sample_of(value.toTensor(), level, v);
  if (value.isTensorList()) {
    std::vector<at::Tensor> out;
    for (const at::Tensor& t : value.toTensorVector()) out.push_back(sample_of(t, level, v));
    return out;
  }
  return value;
}

void loop_over_samples(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t num_args = schema.arguments().size();
  const auto args = torch::jit::last(*stack, num_args);
  int64_t level = -1;
  for (const auto& arg : args) {
    for_each_tensor(arg, [&](const at::Tensor& t) { level = std::max(level, innermost_level(t)); });
  }
  TORCH_INTERNAL_ASSERT(level >= 0, op.schema().name(), ": batched kernel without a batched argument");
  int64_t size = 0;
  for (const auto& arg : args) {
    for_each_tensor(arg, [&](const at::Tensor& t) {
      if (size == 0 && innermost_level(t) == level) size = batch_size_at(t, level);
    });
  }
  TORCH_CHECK_VALUE(size > 0, schema.name(), ": cannot run a vmapped batch of size 0");
  // results[r][v]: return r of sample v.
  const size_t num_returns = schema.returns().size();
  std::vector<std::vector<c10::IValue>> results(num_returns);
  for (const auto v : c10::irange(size)) {
    torch::jit::Stack sample;
    for (const auto& arg : args) sample.push_back(sample_of(arg, level, v));
    op.callBoxed(&sample);
    for (const auto r : c10::irange(num_returns)) results[r].push_back(std::move(sample[r]));
  }
  torch::jit::drop(*stack, num_args);
  for (auto& per_sample : results) {
    if (per_sample.front().isTensor()) {
      std::vector<at::Tensor> parts;
      for (const auto& value : per_sample) parts.push_back(value.toTensor());
      torch::jit::push(*stack, at::addBatchDim(at::stack(parts), level, 0));
    } else {
      const size_t count = per_sample.front().toTensorVector().size();
      std::vector<at::Tensor> stacked;
      for (const auto i : c10::irange(count)) {
        std::vector<at::Tensor> parts;
        for (const auto& value : per_sample) parts.push_back(value.toTensorVector()[i]);
        stacked.push_back(at::addBatchDim(at::stack(parts), level, 0));
      }
      torch::jit::push(*stack, stacked);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkernels, Batched, m) {
  m.impl("rnn_layer", torch::CppFunction::makeFromBoxedFunction<&loop_over_samples>());
  m.impl("rnn_layer_backward", torch::CppFunction::makeFromBoxedFunction<&loop_over_samples>());
}

}  // namespace rnnkernels
