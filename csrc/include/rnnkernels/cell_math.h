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
  static RNNK_FN float sqrt(float x) { return ::sqrtf(x); }
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
  static RNNK_FN double sqrt(double x) { return ::sqrt(x); }
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
// The GRU's row: r, z, n and hn = W_hn h + b_hn (zoneout needs nothing more: h' before
// zoneout is rebuilt from them). The RNN's: nothing, its backward reads the output; with
// zoneout h before zoneout, for the activation's backward. These three and
// ln_lstm_workspace_width are the workspace widths the ops and their fakes
// (rnnkernels/ops.py, through _C._workspace_widths) use.
RNNK_FN int gru_workspace_slots(bool /*zoneout*/) { return 4; }
RNNK_FN int rnn_workspace_slots(bool zoneout) { return zoneout ? 1 : 0; }

// Gradients with respect to the pre-activations of i, f, g, o.
template <typename T>
struct LstmGateGrads {
  T i, f, g, o;
};

// i, f, g of the gate gradients given dc_total, the whole gradient w.r.t. this step's c;
// returns the gradient w.r.t. c_prev.
template <typename T>
RNNK_FN T lstm_state_gates_backward(T dc_total, const LstmGates<T>& a, T c_prev,
                                    LstmGateGrads<T>& d) {
  d.i = dc_total * a.g * a.i * (T(1) - a.i);
  d.f = dc_total * c_prev * a.f * (T(1) - a.f);
  d.g = dc_total * a.i * (T(1) - a.g * a.g);
  return dc_total * a.f;
}

// dh: gradient w.r.t. this step's o*tanh(c); dc: on entry the gradient w.r.t. c arriving
// from the next step, on exit the gradient w.r.t. c_prev.
template <typename T>
RNNK_FN LstmGateGrads<T> lstm_cell_backward(T dh, T& dc, const LstmGates<T>& a, T c, T c_prev) {
  const T tanh_c = tanh(c);
  LstmGateGrads<T> d;
  d.o = dh * tanh_c * a.o * (T(1) - a.o);
  dc = lstm_state_gates_backward(dc + dh * a.o * (T(1) - tanh_c * tanh_c), a, c_prev, d);
  return d;
}

// ---------------------------------------------------------------- layer-normalised LSTM

// Note [layer-normalised LSTM]
// The layer-normalised LSTM of Ba et al. (2016), per row:
//   pre = LN_ih(x W_ih^T) + LN_hh(h_prev W_hh^T) + b_ih + b_hh         [4H: i, f, g, o]
//   i, f, g, o as in the LSTM;  c = f * c_prev + i * g  (the carried c is not normalised)
//   h = o * tanh(LN_c(c))
// LN(v) = gamma * (v - mean(v)) * rstd(v) + beta over the whole vector (4H for the two
// products, H for c), rstd = 1 / sqrt(var + eps) with the biased variance and eps = 1e-5,
// as torch.nn.LayerNorm. The two products' betas would only add constants to pre, so
// b_ih and b_hh take their place; LN_c keeps its beta. The input side needs no
// recurrence: the caller computes x_side = LN_ih(x W_ih^T) + b_ih + b_hh for all steps at
// once; the kernels normalise the recurrent product and the cell state inside the time
// loop. A row's statistics need the whole row, so a step runs in two passes: the
// recurrent product for every row, then per row the normalise-and-gate pass.
// Workspace row (what the backward reads), ln_lstm_workspace_width(H) values:
//   [0, 4H) i, f, g, o | [4H, 8H) the normalised product | [8H, 9H) c |
//   [9H, 10H) the normalised c | 10H: rstd of the product | 10H + 1: rstd of c.
constexpr double kLayerNormEps = 1e-5;
// Offsets in units of H; kLnRstd is also the number of H-wide slots before the rstd values.
enum LnLstmWorkspaceSlot : int {
  kLnGates = 0, kLnProduct = 4, kLnCell = 8, kLnCellNormalized = 9, kLnRstd = 10
};
constexpr int kLnRstdValues = 2;
RNNK_FN long long ln_lstm_workspace_width(long long hidden) {
  return kLnRstd * hidden + kLnRstdValues;
}

// rstd from a row's biased variance (scalar types only).
template <typename T>
RNNK_FN T layer_norm_rstd(T variance) {
  return T(1) / Elementwise<T>::sqrt(variance + T(kLayerNormEps));
}

template <typename T>
RNNK_FN T layer_norm_normalize(T v, T mean, T rstd) {
  return (v - mean) * rstd;
}

// Gradient w.r.t. v of vhat = (v - mean(v)) * rstd(v), from the gradient w.r.t. vhat
// and the row means of dvhat and dvhat * vhat.
template <typename T>
RNNK_FN T layer_norm_backward(T dvhat, T vhat, T rstd, T mean_dvhat, T mean_dvhat_vhat) {
  return rstd * (dvhat - mean_dvhat - vhat * mean_dvhat_vhat);
}

// h = o * tanh(y) with y = LN_c(c).
template <typename T>
RNNK_FN T ln_lstm_hidden(T o, T y) {
  return o * tanh(y);
}

template <typename T>
struct LnLstmOutputGrads {
  T o;  // w.r.t. the pre-activation of o
  T y;  // w.r.t. y = LN_c(c)
};

// dh: gradient w.r.t. h = o * tanh(y); tanh_y = tanh(y).
template <typename T>
RNNK_FN LnLstmOutputGrads<T> ln_lstm_output_backward(T dh, T o, T tanh_y) {
  return {dh * tanh_y * o * (T(1) - o), dh * o * (T(1) - tanh_y * tanh_y)};
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
