// The precision policy of every backend's recurrences (Note [precision policy]).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "host/layer.h"

namespace rnnkernels::host {

// Note [precision policy]
// Every backend's kernels store float32 and float64 and compute in them. A 16-bit float
// call (float16, bfloat16) runs one of two ways, decided here for every recurrence of
// every backend:
//  - stored: the backend's own kernels read and write the 16-bit tensors and compute,
//    accumulate and keep the workspace in float32 (Note [storage and compute types] in
//    cpu/kernels.h; CUDA's <S, G> kernels). CUDA stores both 16-bit dtypes; the CPU
//    stores bfloat16 where it has AVX512-BF16 dot products, except in the layer-normalised
//    LSTM.
//  - widened: the call's 16-bit tensors go to float32, the float32 kernels run, and the
//    results are rounded back once (the workspace stays float32, as a stored call's does).
// A backend says which by a predicate `stores(dtype)` per recurrence; `with_precision`
// wraps the recurrence with it, so no backend repeats the rule per cell. Before widening,
// every tensor of the call is checked to share one dtype (the workspace: float32), since
// widening would otherwise hide a mismatch the kernels refuse.

// The floating dtypes the op pair takes, as build_info names them.
inline constexpr std::array<std::pair<at::ScalarType, const char*>, 4> kFloatingDtypes{{
    {at::kFloat, "float32"},
    {at::kDouble, "float64"},
    {at::kBFloat16, "bfloat16"},
    {at::kHalf, "float16"},
}};

// The op name and argument names of a recurrence's function type, for messages.
template <typename Fn>
struct Signature;

template <>
struct Signature<LstmForward> {
  static constexpr const char* op = "rnnkernels::lstm_forward";
  static constexpr std::array<const char*, 9> args{
      "x_proj", "w_hh", "b_hh", "w_hr", "h0", "c0", "batch_sizes", "need_workspace", "zoneout"};
  static constexpr bool returns_workspace = true;  // last
};

template <>
struct Signature<GruForward> {
  static constexpr const char* op = "rnnkernels::gru_forward";
  static constexpr std::array<const char*, 7> args{
      "x_proj", "w_hh", "b_hh", "h0", "batch_sizes", "need_workspace", "zoneout"};
  static constexpr bool returns_workspace = true;
};

template <>
struct Signature<RnnForward> {
  static constexpr const char* op = "rnnkernels::rnn_forward";
  static constexpr std::array<const char*, 8> args{
      "x_proj", "w_hh", "b_hh", "h0", "batch_sizes", "nonlinearity", "need_workspace",
      "zoneout"};
  static constexpr bool returns_workspace = true;
};

template <>
struct Signature<LayerNormLstmForward> {
  static constexpr const char* op = "rnnkernels::layer_norm_lstm_forward";
  static constexpr std::array<const char*, 9> args{
      "x_side", "w_hh", "ln_hh_weight", "ln_c_weight", "ln_c_bias", "h0", "c0", "batch_sizes",
      "need_workspace"};
  static constexpr bool returns_workspace = true;
};

template <>
struct Signature<LstmBackward> {
  static constexpr const char* op = "rnnkernels::lstm_backward";
  static constexpr std::array<const char*, 12> args{
      "grad_output", "grad_h_n", "grad_c_n", "w_hh", "b_hh", "w_hr", "h0", "c0", "output",
      "workspace", "batch_sizes", "zoneout"};
  static constexpr bool returns_workspace = false;
};

template <>
struct Signature<GruBackward> {
  static constexpr const char* op = "rnnkernels::gru_backward";
  static constexpr std::array<const char*, 9> args{
      "grad_output", "grad_h_n", "w_hh", "b_hh", "h0", "output", "workspace", "batch_sizes",
      "zoneout"};
  static constexpr bool returns_workspace = false;
};

template <>
struct Signature<RnnBackward> {
  static constexpr const char* op = "rnnkernels::rnn_backward";
  static constexpr std::array<const char*, 10> args{
      "grad_output", "grad_h_n", "w_hh", "b_hh", "h0", "output", "workspace", "batch_sizes",
      "nonlinearity", "zoneout"};
  static constexpr bool returns_workspace = false;
};

template <>
struct Signature<LayerNormLstmBackward> {
  static constexpr const char* op = "rnnkernels::layer_norm_lstm_backward";
  static constexpr std::array<const char*, 12> args{
      "grad_output", "grad_h_n", "grad_c_n", "w_hh", "ln_hh_weight", "ln_c_weight",
      "ln_c_bias", "h0", "c0", "output", "workspace", "batch_sizes"};
  static constexpr bool returns_workspace = false;
};

namespace precision_detail {

inline bool is_16bit_float(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

inline bool is_workspace(const char* name) { return std::string_view(name) == "workspace"; }

// f(tensor, item) for each defined tensor of one argument; item is the list index, or -1.
template <typename Arg, typename F>
void for_each_tensor(const Arg& arg, F&& f) {
  using T = std::decay_t<Arg>;
  if constexpr (std::is_same_v<T, at::Tensor>) {
    if (arg.defined()) f(arg, -1);
  } else if constexpr (std::is_same_v<T, at::TensorList>) {
    for (size_t i = 0; i < arg.size(); ++i) f(arg[i], static_cast<int64_t>(i));
  } else if constexpr (std::is_same_v<T, OptTensor>) {
    if (arg.has_value() && arg->defined()) f(*arg, -1);
  }
}

inline at::Tensor to_float(const at::Tensor& t) {
  return t.defined() && is_16bit_float(t.scalar_type()) ? t.to(at::kFloat) : t;
}

template <typename Arg>
auto widened(const Arg& arg) {
  using T = std::decay_t<Arg>;
  if constexpr (std::is_same_v<T, at::Tensor>) {
    return to_float(arg);
  } else if constexpr (std::is_same_v<T, at::TensorList>) {
    std::vector<at::Tensor> out;
    out.reserve(arg.size());
    for (const auto& t : arg) out.push_back(to_float(t));
    return out;
  } else if constexpr (std::is_same_v<T, OptTensor>) {
    return arg.has_value() ? OptTensor(to_float(*arg)) : arg;
  } else {
    return arg;
  }
}

inline void round_to(at::Tensor& t, at::ScalarType dtype) {
  if (t.defined()) t = t.to(dtype);
}

inline void round_to(TensorVec& ts, at::ScalarType dtype) {
  for (auto& t : ts) round_to(t, dtype);
}

// "w_hh[1]" or "h0".
inline std::string item_name(const char* name, int64_t item) {
  return item < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(item) + "]";
}

}  // namespace precision_detail

template <typename Fn>
struct Precision;

template <typename R, typename... A>
struct Precision<R(A...)> {
  using Sig = Signature<R(A...)>;
  static_assert(Sig::args.size() == sizeof...(A), "one name per argument");

  template <R (*fn)(A...), bool (*stores)(at::ScalarType)>
  static R call(A... args) {
    namespace pd = precision_detail;
    // The storage dtype: the first floating tensor's, the workspace aside.
    at::ScalarType dtype = at::ScalarType::Undefined;
    const char* dtype_from = nullptr;
    int64_t dtype_item = -1;
    each_named(
        [&](const char* name, const at::Tensor& t, int64_t item) {
          if (dtype_from == nullptr && !pd::is_workspace(name) && t.is_floating_point()) {
            dtype = t.scalar_type();
            dtype_from = name;
            dtype_item = item;
          }
        },
        args...);
    if (!pd::is_16bit_float(dtype) || stores(dtype)) return fn(args...);
    each_named(
        [&](const char* name, const at::Tensor& t, int64_t item) {
          if (!t.is_floating_point()) return;
          if (pd::is_workspace(name)) {
            TORCH_CHECK(t.scalar_type() == at::kFloat, Sig::op, ": the workspace of a ", dtype,
                        " call is float32, got ", t.scalar_type());
          } else {
            TORCH_CHECK(t.scalar_type() == dtype, Sig::op, ": expected ",
                        pd::item_name(name, item), " of dtype ", dtype, " (as ",
                        pd::item_name(dtype_from, dtype_item), "), got ", t.scalar_type());
          }
        },
        args...);
    R result = fn(pd::widened(args)...);
    std::apply(
        [&](auto&... parts) {
          size_t index = 0;
          const size_t workspace = Sig::returns_workspace ? sizeof...(parts) - 1 : sizeof...(parts);
          ((index++ != workspace ? pd::round_to(parts, dtype) : void()), ...);
        },
        result);
    return result;
  }

 private:
  // f(argument name, tensor, item) over every defined tensor of the call, in order.
  template <typename F>
  static void each_named(F&& f, const std::remove_reference_t<A>&... args) {
    size_t index = 0;
    ((precision_detail::for_each_tensor(
          args, [&](const at::Tensor& t, int64_t item) { f(Sig::args[index], t, item); }),
      ++index),
     ...);
  }
};

// A backend's recurrence `fn` under the precision policy, with `stores` saying which
// 16-bit dtypes its kernels store (the rest run widened).
template <auto fn, bool (*stores)(at::ScalarType)>
inline constexpr auto with_precision =
    &Precision<std::remove_pointer_t<decltype(fn)>>::template call<fn, stores>;

}  // namespace rnnkernels::host
