#pragma once
// Gate math of the three recurrent cells, written once for every backend.
//
// Every function is a template over the value type T: float or double for the CUDA
// kernels and the scalar parts of the CPU kernels, at::vec::Vectorized<float|double>
// for the SIMD body of the CPU kernels (cpu/vec_math.h specialises Elementwise for it).
// Half and bfloat16 are computed in float by the callers.
//
// Conventions follow torch.nn:
//   LSTM gates (i, f, g, o):  c' = f*c + i*g,  h' = o*tanh(c')
//   GRU gates (r, z, n):      n = tanh(x_n + r*(W_hn h + b_hn)),  h' = n + z*(h - n)
//   RNN:                      h' = tanh(pre) or relu(pre)
// "pre" values already contain both biases; GRU keeps its hidden-side n pre-activation
// (hn = W_hn h + b_hn) separate because r multiplies it.

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RNNK_FN __host__ __device__ __forceinline__
#else
#define RNNK_FN inline
#endif

// Each CPU ISA translation unit defines its own namespace so that the scalar
// instantiations it emits never collide with those of another ISA (ODR).
#ifndef RNNKERNELS_ISA_NAMESPACE
#define RNNKERNELS_ISA_NAMESPACE portable
#endif

namespace rnnkernels::math {
inline namespace RNNKERNELS_ISA_NAMESPACE {

// The elementary functions of a value type.
template <typename T>
struct Elementwise;

template <>
struct Elementwise<float> {
  static RNNK_FN float exp(float x) { return ::expf(x); }
  static RNNK_FN float reciprocal(float x) { return 1.f / x; }
  static RNNK_FN float tanh(float x) { return ::tanhf(x); }
  // NaN propagates, as in torch.relu.
  static RNNK_FN float relu(float x) { return (x > 0.f || x != x) ? x : 0.f; }
  // Gradient of relu given its output y, as torch's threshold_backward(grad, y, 0):
  // y <= 0 ? 0 : grad, so a NaN output passes the gradient through.
  static RNNK_FN float relu_grad(float grad, float y) { return y <= 0.f ? 0.f : grad; }
};

template <>
struct Elementwise<double> {
  static RNNK_FN double exp(double x) { return ::exp(x); }
  static RNNK_FN double reciprocal(double x) { return 1.0 / x; }
  static RNNK_FN double tanh(double x) { return ::tanh(x); }
  static RNNK_FN double relu(double x) { return (x > 0.0 || x != x) ? x : 0.0; }
  static RNNK_FN double relu_grad(double grad, double y) { return y <= 0.0 ? 0.0 : grad; }
};

template <typename T>
RNNK_FN T sigmoid(T x) {
  return Elementwise<T>::reciprocal(T(1) + Elementwise<T>::exp(T(0) - x));
}

template <typename T>
RNNK_FN T tanh(T x) {
  return Elementwise<T>::tanh(x);
}

// ---------------------------------------------------------------- LSTM

template <typename T>
struct LstmGates {
  T i, f, g, o;  // activations: sigmoid, sigmoid, tanh, sigmoid
};

template <typename T>
RNNK_FN LstmGates<T> lstm_activate(T pre_i, T pre_f, T pre_g, T pre_o) {
  return {sigmoid(pre_i), sigmoid(pre_f), tanh(pre_g), sigmoid(pre_o)};
}

template <typename T>
RNNK_FN T lstm_cell_state(const LstmGates<T>& a, T c_prev) {
  return a.f * c_prev + a.i * a.g;
}

// The cell's hidden output before the optional projection: o * tanh(c).
template <typename T>
RNNK_FN T lstm_hidden(const LstmGates<T>& a, T c) {
  return a.o * tanh(c);
}

// The row of the LSTM workspace (what the forward saves for the backward), in units of H:
// i, f, g, o, then c as the gates produced it (before zoneout); with zoneout (Note
// [zoneout]) also c after zoneout, the state the next step reads as c_prev.
RNNK_FN int lstm_workspace_slots(bool zoneout) { return zoneout ? 6 : 5; }
RNNK_FN int lstm_workspace_state_slot(bool zoneout) { return zoneout ? 5 : 4; }

// Gradients with respect to the pre-activations of i, f, g, o.
template <typename T>
struct LstmGateGrads {
  T i, f, g, o;
};

// dh: gradient w.r.t. this step's o*tanh(c); dc: on entry the gradient w.r.t. c arriving
// from the next step, on exit the gradient w.r.t. c_prev.
template <typename T>
RNNK_FN LstmGateGrads<T> lstm_cell_backward(T dh, T& dc, const LstmGates<T>& a, T c, T c_prev) {
  const T tanh_c = tanh(c);
  const T dc_total = dc + dh * a.o * (T(1) - tanh_c * tanh_c);
  LstmGateGrads<T> d;
  d.i = dc_total * a.g * a.i * (T(1) - a.i);
  d.f = dc_total * c_prev * a.f * (T(1) - a.f);
  d.g = dc_total * a.i * (T(1) - a.g * a.g);
  d.o = dh * tanh_c * a.o * (T(1) - a.o);
  dc = dc_total * a.f;
  return d;
}

// ---------------------------------------------------------------- GRU

template <typename T>
struct GruGates {
  T r, z, n;
  T hn;  // W_hn h + b_hn, kept for the backward of r
};

// x*: input-side pre-activations (with b_ih); h*: hidden-side ones (with b_hh).
template <typename T>
RNNK_FN GruGates<T> gru_activate(T xr, T xz, T xn, T hr, T hz, T hn) {
  GruGates<T> a;
  a.r = sigmoid(xr + hr);
  a.z = sigmoid(xz + hz);
  a.n = tanh(xn + a.r * hn);
  a.hn = hn;
  return a;
}

template <typename T>
RNNK_FN T gru_hidden(const GruGates<T>& a, T h_prev) {
  return a.n + a.z * (h_prev - a.n);
}

// Gradients w.r.t. the input-side pre-activations (r, z, n_x) and the hidden-side ones
// (r, z, n_h); the r and z parts are the same on both sides.
template <typename T>
struct GruGateGrads {
  T r, z, n_x, n_h;
};

// dh: gradient w.r.t. h'; dh_prev_direct receives the part of dh/dh_prev that does not
// flow through W_hh (z * dh).
template <typename T>
RNNK_FN GruGateGrads<T> gru_cell_backward(T dh, const GruGates<T>& a, T h_prev, T& dh_prev_direct) {
  const T dn = dh * (T(1) - a.z);
  const T dz = dh * (h_prev - a.n);
  dh_prev_direct = dh * a.z;
  const T dpre_n = dn * (T(1) - a.n * a.n);
  GruGateGrads<T> d;
  d.n_x = dpre_n;
  d.n_h = dpre_n * a.r;
  d.r = dpre_n * a.hn * a.r * (T(1) - a.r);
  d.z = dz * a.z * (T(1) - a.z);
  return d;
}

// ---------------------------------------------------------------- RNN

enum class Nonlinearity { kTanh = 0, kRelu = 1 };

template <Nonlinearity kAct, typename T>
RNNK_FN T rnn_activate(T pre) {
  if constexpr (kAct == Nonlinearity::kTanh) {
    return tanh(pre);
  } else {
    return Elementwise<T>::relu(pre);
  }
}

// Gradient w.r.t. the pre-activation given dh and the activation's output h.
template <Nonlinearity kAct, typename T>
RNNK_FN T rnn_activate_backward(T dh, T h) {
  if constexpr (kAct == Nonlinearity::kTanh) {
    return dh * (T(1) - h * h);
  } else {
    return Elementwise<T>::relu_grad(dh, h);
  }
}

// ---------------------------------------------------------------- zoneout

// Note [zoneout]
// Zoneout (Krueger et al., 2016) lets each unit of a state keep its previous value:
//   state = m * prev + (1 - m) * candidate
// with m a Bernoulli(p) draw per row, unit and step in training (1 keeps the previous
// value) and m = p, the expectation, in evaluation. The candidate is the cell's usual
// update (LSTM: h and c from the gates, both before zoneout; GRU, RNN: h). Written as a
// weighted sum, m = 1 gives prev and m = 0 the candidate exactly. The kernels take m as
// a tensor, so the draws come from torch's generator and the backward sees the same
// ones. The backward splits the state's gradient into the candidate's share
// (1 - m) * grad and the share m * grad carried straight to the previous state.
template <typename T>
RNNK_FN T zoneout(T candidate, T prev, T m) {
  return m * prev + (T(1) - m) * candidate;
}

template <typename T>
RNNK_FN T zoneout_candidate_grad(T grad, T m) {
  return (T(1) - m) * grad;
}

template <typename T>
RNNK_FN T zoneout_carried_grad(T grad, T m) {
  return m * grad;
}

}  // namespace RNNKERNELS_ISA_NAMESPACE
}  // namespace rnnkernels::math
