// Unit tests of the scalar gate math (csrc/include/rnnkernels/cell_math.h), the code the
// CUDA kernels and the scalar tails of the CPU kernels run:
//   - in float and double, every function against bounded long-double references on
//     random and edge inputs (Note [reference error bounds] in gate_test_support.h);
//   - every backward function against central finite differences of its forward, in long
//     double (Note [finite differences]).
// Exit status 0 when every check passed; failures are printed with their inputs.
// RNNK_TEST_SEED=<n> repeats a run.

#include <algorithm>
#include <array>

#include "gate_test_support.h"

// The long double instantiation used by the finite-difference checks.
namespace rnnkernels::math {
inline namespace RNNKERNELS_ISA_NAMESPACE {
template <>
struct Elementwise<long double> {
  static long double exp(long double x) { return std::exp(x); }
  static long double reciprocal(long double x) { return 1 / x; }
  static long double tanh(long double x) { return std::tanh(x); }
  static long double sqrt(long double x) { return std::sqrt(x); }
};
}  // namespace RNNKERNELS_ISA_NAMESPACE
}  // namespace rnnkernels::math

namespace {

using namespace rnnkernels::test;
namespace math = rnnkernels::math;
using math::Nonlinearity;

constexpr int kSamples = 20000;

template <typename T>
T infinity() {
  return std::numeric_limits<T>::infinity();
}

template <typename T>
T nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

// ---------------------------------------------------------------- against references

template <typename T>
void check_activations(Inputs<T>& in) {
  std::vector<T> xs = in.edge_values();
  xs.insert(xs.end(), {infinity<T>(), -infinity<T>(), nan<T>(), T(-0.0)});
  for (int k = 0; k < kSamples; ++k) xs.push_back(in.pre_activation_or_special());
  for (const T x : xs) {
    RNNK_CHECK_REF(math::sigmoid(x), sigmoid_ref(exact(x)), "x", x);
    RNNK_CHECK_REF(math::tanh(x), tanh_ref(exact(x)), "x", x);
  }
  // The limits exactly: saturated gates must be exactly 0 and 1 (a forget gate of 1 keeps
  // the cell unchanged), not merely close.
  RNNK_CHECK(math::sigmoid(infinity<T>()) == T(1));
  RNNK_CHECK(math::sigmoid(-infinity<T>()) == T(0));
  RNNK_CHECK(math::tanh(infinity<T>()) == T(1));
  RNNK_CHECK(math::tanh(-infinity<T>()) == T(-1));
  RNNK_CHECK(math::sigmoid(T(0)) == T(0.5));
}

template <typename T>
void check_lstm(Inputs<T>& in) {
  for (int k = 0; k < kSamples; ++k) {
    const T pre_i = in.pre_activation_or_special(), pre_f = in.pre_activation_or_special();
    const T pre_g = in.pre_activation_or_special(), pre_o = in.pre_activation_or_special();
    const math::LstmGates<T> a = math::lstm_activate(pre_i, pre_f, pre_g, pre_o);
    const LstmGatesRef<T> a_ref = lstm_activate_ref(pre_i, pre_f, pre_g, pre_o);
    RNNK_CHECK_REF(a.i, a_ref.i, "pre_i", pre_i);
    RNNK_CHECK_REF(a.f, a_ref.f, "pre_f", pre_f);
    RNNK_CHECK_REF(a.g, a_ref.g, "pre_g", pre_g);
    RNNK_CHECK_REF(a.o, a_ref.o, "pre_o", pre_o);
    if (std::isnan(a.i) || std::isnan(a.f) || std::isnan(a.g) || std::isnan(a.o)) continue;

    // From here on the gates are the T values the cell computed, as in the kernels.
    const T c_prev = in.state();
    const T c = math::lstm_cell_state(a, c_prev);
    RNNK_CHECK_REF(c, lstm_cell_state_ref(a, c_prev), "i", a.i, "f", a.f, "g", a.g, "c_prev",
                   c_prev);
    const T h = math::lstm_hidden(a, c);
    RNNK_CHECK_REF(h, lstm_hidden_ref(a, c), "o", a.o, "c", c);

    const T dh = in.gradient(), dc = in.gradient();
    T dc_io = dc;  // in: dL/dc, out: dL/dc_prev
    const math::LstmGateGrads<T> d = math::lstm_cell_backward(dh, dc_io, a, c, c_prev);
    const LstmBackwardRef<T> d_ref = lstm_cell_backward_ref(dh, dc, a, c, c_prev);
#define LSTM_BACKWARD_INPUTS \
  "dh", dh, "dc", dc, "i", a.i, "f", a.f, "g", a.g, "o", a.o, "c", c, "c_prev", c_prev
    RNNK_CHECK_REF(d.i, d_ref.i, LSTM_BACKWARD_INPUTS);
    RNNK_CHECK_REF(d.f, d_ref.f, LSTM_BACKWARD_INPUTS);
    RNNK_CHECK_REF(d.g, d_ref.g, LSTM_BACKWARD_INPUTS);
    RNNK_CHECK_REF(d.o, d_ref.o, LSTM_BACKWARD_INPUTS);
    RNNK_CHECK_REF(dc_io, d_ref.c_prev, LSTM_BACKWARD_INPUTS);
#undef LSTM_BACKWARD_INPUTS
  }
}

template <typename T>
void check_gru(Inputs<T>& in) {
  for (int k = 0; k < kSamples; ++k) {
    const T xr = in.pre_activation_or_special(), xz = in.pre_activation_or_special();
    const T xn = in.pre_activation_or_special(), hr = in.pre_activation_or_special();
    // hn = W_hn h + b_hn is finite; the other pre-activations may be +-inf or NaN.
    const T hz = in.pre_activation_or_special(), hn = in.pre_activation();
    const math::GruGates<T> a = math::gru_activate(xr, xz, xn, hr, hz, hn);
    const GruGatesRef<T> a_ref = gru_activate_ref(xr, xz, xn, hr, hz, hn);
    RNNK_CHECK_REF(a.r, a_ref.r, "xr", xr, "hr", hr);
    RNNK_CHECK_REF(a.z, a_ref.z, "xz", xz, "hz", hz);
    RNNK_CHECK_REF(a.n, a_ref.n, "xn", xn, "r", a.r, "hn", hn);
    RNNK_CHECK(a.hn == hn || (std::isnan(a.hn) && std::isnan(hn)), "hn", hn, "a.hn", a.hn);
    // The rest takes finite gates and a realistic |W_hn h + b_hn| (a product of a huge hn
    // with a gradient overflows T, where the long-double reference does not).
    if (!std::isfinite(a.r) || !std::isfinite(a.z) || !std::isfinite(a.n) ||
        !(std::fabs(a.hn) <= kLargestHn<T>)) {
      continue;
    }

    const T h_prev = in.state();
    const T h = math::gru_hidden(a, h_prev);
    RNNK_CHECK_REF(h, gru_hidden_ref(a, h_prev), "n", a.n, "z", a.z, "h_prev", h_prev);

    const T dh = in.gradient();
    T h_prev_direct = nan<T>();
    const math::GruGateGrads<T> d = math::gru_cell_backward(dh, a, h_prev, h_prev_direct);
    const GruBackwardRef<T> d_ref = gru_cell_backward_ref(dh, a, h_prev);
#define GRU_BACKWARD_INPUTS "dh", dh, "r", a.r, "z", a.z, "n", a.n, "hn", a.hn, "h_prev", h_prev
    RNNK_CHECK_REF(d.r, d_ref.r, GRU_BACKWARD_INPUTS);
    RNNK_CHECK_REF(d.z, d_ref.z, GRU_BACKWARD_INPUTS);
    RNNK_CHECK_REF(d.n_x, d_ref.n_x, GRU_BACKWARD_INPUTS);
    RNNK_CHECK_REF(d.n_h, d_ref.n_h, GRU_BACKWARD_INPUTS);
    RNNK_CHECK_REF(h_prev_direct, d_ref.h_prev_direct, GRU_BACKWARD_INPUTS);
#undef GRU_BACKWARD_INPUTS
  }
}

template <typename T>
void check_rnn(Inputs<T>& in) {
  const Ref<T> one = exact(T(1));
  std::vector<T> pres = in.edge_values();
  pres.insert(pres.end(), {infinity<T>(), -infinity<T>(), nan<T>(), T(-0.0)});
  for (int k = 0; k < kSamples; ++k) pres.push_back(in.pre_activation_or_special());
  for (const T pre : pres) {
    const T h_tanh = math::rnn_activate<Nonlinearity::kTanh>(pre);
    RNNK_CHECK_REF(h_tanh, tanh_ref(exact(pre)), "pre", pre);
    const T h_relu = math::rnn_activate<Nonlinearity::kRelu>(pre);
    RNNK_CHECK_REF(h_relu, relu_ref(pre), "pre", pre);

    const T dh = in.gradient();
    if (!std::isnan(h_tanh)) {
      const T got = math::rnn_activate_backward<Nonlinearity::kTanh>(dh, h_tanh);
      RNNK_CHECK_REF(got, exact(dh) * (one - exact(h_tanh) * exact(h_tanh)), "dh", dh, "h",
                     h_tanh);
    }
    // torch: threshold_backward(dh, h, 0) = (h <= 0 ? 0 : dh), exactly.
    const T got = math::rnn_activate_backward<Nonlinearity::kRelu>(dh, h_relu);
    if (!std::isnan(h_relu)) {
      RNNK_CHECK(got == (h_relu > T(0) ? dh : T(0)), "dh", dh, "h", h_relu, "got", got);
    } else if (dh != T(0)) {
      // NaN <= 0 is false, so torch passes dh through where relu's output is NaN.
      RNNK_CHECK(got == dh, "dh", dh, "h", h_relu, "got", got);
    }
  }
  // relu: NaN propagates (torch.relu), -inf -> 0, +inf -> +inf; gradient 0 at h = +-0.
  RNNK_CHECK(std::isnan(math::rnn_activate<Nonlinearity::kRelu>(nan<T>())));
  RNNK_CHECK(math::rnn_activate<Nonlinearity::kRelu>(-infinity<T>()) == T(0));
  RNNK_CHECK(math::rnn_activate<Nonlinearity::kRelu>(infinity<T>()) == infinity<T>());
  RNNK_CHECK(math::rnn_activate_backward<Nonlinearity::kRelu>(T(3), T(0)) == T(0));
  RNNK_CHECK(math::rnn_activate_backward<Nonlinearity::kRelu>(T(3), T(-0.0)) == T(0));
  RNNK_CHECK(std::isnan(math::rnn_activate<Nonlinearity::kTanh>(nan<T>())));
}

// zoneout: m = 0 gives the candidate and m = 1 the previous state exactly (a unit that
// zones out must carry its value unchanged), and its two gradient shares are the central
// differences of dstate * zoneout(candidate, prev, m) w.r.t. candidate and prev.
template <typename T>
void check_zoneout_exact(Inputs<T>& in) {
  for (int k = 0; k < kSamples; ++k) {
    const T candidate = in.state(), prev = in.state();
    RNNK_CHECK(math::zoneout(candidate, prev, T(0)) == candidate, "candidate", candidate,
               "prev", prev);
    RNNK_CHECK(math::zoneout(candidate, prev, T(1)) == prev, "candidate", candidate, "prev",
               prev);
    const T grad = in.gradient();
    RNNK_CHECK(math::zoneout_carried_grad(grad, T(0)) == T(0), "grad", grad);
    RNNK_CHECK(math::zoneout_carried_grad(grad, T(1)) == grad, "grad", grad);
    RNNK_CHECK(math::zoneout_candidate_grad(grad, T(0)) == grad, "grad", grad);
    RNNK_CHECK(math::zoneout_candidate_grad(grad, T(1)) == T(0), "grad", grad);
  }
}

template <typename T>
void check_against_references(std::uint64_t seed, const char* type) {
  checker().set_context(std::string("[") + type + ", seed " + std::to_string(seed) + "] ");
  Inputs<T> in(seed);
  check_activations(in);
  check_lstm(in);
  check_gru(in);
  check_rnn(in);
  check_zoneout_exact(in);
}

// ---------------------------------------------------------------- finite differences
//
// Note [finite differences]
// Each backward is compared with the central difference (L(x+h) - L(x-h)) / (x+h - (x-h))
// of a scalar loss L built from the forward functions, evaluated in long double with
// h = cbrt(eps) max(1, |x|) ~ 5e-7 max(1, |x|): the truncation error h^2/6 |L'''| and the
// rounding error eps |L| / h are each below ~1e-10 for these inputs (|inputs| <= 6, so
// |L'''| <= ~100; measured: at most ~2e-12 relative). A derivative passes within
// 1e-9 (1 + |L| + |dL/dx|), 10x above that estimate and far below the O(1) error of a
// wrong formula.

using Real = long double;
constexpr Real kDifferenceTolerance = 1e-9L;
constexpr int kDifferenceSamples = 2000;

template <std::size_t N, typename Loss>
Real central_difference(const Loss& loss, std::array<Real, N> x, std::size_t j) {
  const Real h = std::cbrt(std::numeric_limits<Real>::epsilon()) * std::max(Real(1), std::fabs(x[j]));
  const Real at = x[j];
  x[j] = at + h;
  const Real plus_x = x[j];
  const Real plus = loss(x);
  x[j] = at - h;
  const Real minus_x = x[j];
  const Real minus = loss(x);
  return (plus - minus) / (plus_x - minus_x);
}

bool difference_matches(Real analytic, Real difference, Real loss) {
  return std::fabs(analytic - difference) <=
         kDifferenceTolerance * (1 + std::fabs(loss) + std::fabs(analytic));
}

template <std::size_t N>
std::string describe_point(const std::array<Real, N>& x, Real dh, Real dc) {
  std::string out = describe("dh", dh, "dc", dc) + " x=(";
  for (std::size_t j = 0; j < N; ++j) out += format_value(x[j]) + (j + 1 < N ? ", " : ")");
  return out;
}

void check_lstm_backward_by_differences(Inputs<Real>& in) {
  static const char* const kNames[] = {"pre_i", "pre_f", "pre_g", "pre_o", "c_prev"};
  for (int k = 0; k < kDifferenceSamples; ++k) {
    const std::array<Real, 5> x = {in.uniform(-6, 6), in.uniform(-6, 6), in.uniform(-6, 6),
                                   in.uniform(-6, 6), in.uniform(-3, 3)};
    const Real dh = in.uniform(-2, 2), dc = in.uniform(-2, 2);
    // L = dh * h + dc * c: dh and dc are the gradients arriving at this step's h and c.
    const auto loss = [&](const std::array<Real, 5>& v) {
      const auto a = math::lstm_activate(v[0], v[1], v[2], v[3]);
      const Real c = math::lstm_cell_state(a, v[4]);
      return dh * math::lstm_hidden(a, c) + dc * c;
    };
    const auto a = math::lstm_activate(x[0], x[1], x[2], x[3]);
    const Real c = math::lstm_cell_state(a, x[4]);
    Real dc_io = dc;
    const auto d = math::lstm_cell_backward(dh, dc_io, a, c, x[4]);
    const std::array<Real, 5> analytic = {d.i, d.f, d.g, d.o, dc_io};
    for (std::size_t j = 0; j < 5; ++j) {
      const Real difference = central_difference(loss, x, j);
      RNNK_CHECK(difference_matches(analytic[j], difference, loss(x)), "wrt", kNames[j],
                 "analytic", analytic[j], "difference", difference, "at", describe_point(x, dh, dc));
    }
  }
}

void check_gru_backward_by_differences(Inputs<Real>& in) {
  static const char* const kNames[] = {"xr", "xz", "xn", "hr", "hz", "hn", "h_prev"};
  for (int k = 0; k < kDifferenceSamples; ++k) {
    std::array<Real, 7> x;
    for (std::size_t j = 0; j < 6; ++j) x[j] = in.uniform(-6, 6);
    x[6] = in.uniform(-3, 3);
    const Real dh = in.uniform(-2, 2);
    // L = dh * h'; the gates do not depend on h_prev here (that path goes through W_hh).
    const auto loss = [&](const std::array<Real, 7>& v) {
      return dh * math::gru_hidden(math::gru_activate(v[0], v[1], v[2], v[3], v[4], v[5]), v[6]);
    };
    const auto a = math::gru_activate(x[0], x[1], x[2], x[3], x[4], x[5]);
    Real h_prev_direct = 0;
    const auto d = math::gru_cell_backward(dh, a, x[6], h_prev_direct);
    // r and z enter through the sum of their input- and hidden-side pre-activations.
    const std::array<Real, 7> analytic = {d.r, d.z, d.n_x, d.r, d.z, d.n_h, h_prev_direct};
    for (std::size_t j = 0; j < 7; ++j) {
      const Real difference = central_difference(loss, x, j);
      RNNK_CHECK(difference_matches(analytic[j], difference, loss(x)), "wrt", kNames[j],
                 "analytic", analytic[j], "difference", difference, "at", describe_point(x, dh, 0));
    }
  }
}

void check_rnn_backward_by_differences(Inputs<Real>& in) {
  for (int k = 0; k < kDifferenceSamples; ++k) {
    const std::array<Real, 1> x = {in.uniform(-6, 6)};
    const Real dh = in.uniform(-2, 2);
    const auto loss = [&](const std::array<Real, 1>& v) {
      return dh * math::rnn_activate<Nonlinearity::kTanh>(v[0]);
    };
    const Real analytic =
        math::rnn_activate_backward<Nonlinearity::kTanh>(dh, math::rnn_activate<Nonlinearity::kTanh>(x[0]));
    const Real difference = central_difference(loss, x, 0);
    RNNK_CHECK(difference_matches(analytic, difference, loss(x)), "analytic", analytic,
               "difference", difference, "at", describe_point(x, dh, 0));
  }
}

// relu is piecewise linear, so away from 0 the central difference of the shipped float and
// double code is exactly 1 or 0 (x +- h are representable differences of positive or of
// negative numbers), and the backward must be exactly dh times it.
template <typename T>
void check_relu_backward_by_differences(Inputs<T>& in) {
  for (int k = 0; k < kDifferenceSamples; ++k) {
    const T x = in.coin(0.5) ? in.uniform(-6, 6) : in.log_uniform(-3, 3);
    const T h = T(1e-4) * std::max(T(1), std::fabs(x));
    if (std::fabs(x) <= 2 * h) continue;
    const T dh = in.uniform(-2, 2);
    const T plus_x = x + h, minus_x = x - h;
    const T difference = (math::rnn_activate<Nonlinearity::kRelu>(plus_x) -
                          math::rnn_activate<Nonlinearity::kRelu>(minus_x)) /
                         (plus_x - minus_x);
    const T analytic =
        math::rnn_activate_backward<Nonlinearity::kRelu>(dh, math::rnn_activate<Nonlinearity::kRelu>(x));
    RNNK_CHECK(analytic == dh * difference, "x", x, "dh", dh, "analytic", analytic,
               "difference", difference);
  }
}

void check_zoneout_backward_by_differences(Inputs<Real>& in) {
  for (int k = 0; k < kDifferenceSamples; ++k) {
    const std::array<Real, 2> x = {in.uniform(-3, 3), in.uniform(-3, 3)};
    const Real m = in.uniform(0, 1), grad = in.uniform(-2, 2);
    const auto loss = [&](const std::array<Real, 2>& v) {
      return grad * math::zoneout(v[0], v[1], m);
    };
    const std::array<Real, 2> analytic = {math::zoneout_candidate_grad(grad, m),
                                          math::zoneout_carried_grad(grad, m)};
    for (std::size_t j = 0; j < 2; ++j) {
      const Real difference = central_difference(loss, x, j);
      RNNK_CHECK(difference_matches(analytic[j], difference, loss(x)), "wrt",
                 j == 0 ? "candidate" : "prev", "analytic", analytic[j], "difference",
                 difference, "m", m, "grad", grad);
    }
  }
}

// LayerNorm over a row of 7: L = sum_j g_j * vhat_j; layer_norm_backward from the row
// means of g and g * vhat must be dL/dv_j, with mean and rstd computed as the kernels do.
void check_layer_norm_backward_by_differences(Inputs<Real>& in) {
  constexpr std::size_t n = 7;
  for (int k = 0; k < kDifferenceSamples / 10; ++k) {
    std::array<Real, n> x, g;
    for (std::size_t j = 0; j < n; ++j) {
      x[j] = in.uniform(-3, 3);
      g[j] = in.uniform(-2, 2);
    }
    const auto stats = [&](const std::array<Real, n>& v) {
      Real mean = 0, var = 0;
      for (const Real e : v) mean += e / n;
      for (const Real e : v) var += (e - mean) * (e - mean) / n;
      return std::make_pair(mean, math::layer_norm_rstd(var));
    };
    const auto loss = [&](const std::array<Real, n>& v) {
      const auto [mean, rstd] = stats(v);
      Real sum = 0;
      for (std::size_t j = 0; j < n; ++j) sum += g[j] * math::layer_norm_normalize(v[j], mean, rstd);
      return sum;
    };
    const auto [mean, rstd] = stats(x);
    Real mean_g = 0, mean_g_vhat = 0;
    for (std::size_t j = 0; j < n; ++j) {
      mean_g += g[j] / n;
      mean_g_vhat += g[j] * math::layer_norm_normalize(x[j], mean, rstd) / n;
    }
    for (std::size_t j = 0; j < n; ++j) {
      const Real analytic = math::layer_norm_backward(
          g[j], math::layer_norm_normalize(x[j], mean, rstd), rstd, mean_g, mean_g_vhat);
      const Real difference = central_difference(loss, x, j);
      RNNK_CHECK(difference_matches(analytic, difference, loss(x)), "layer norm wrt",
                 static_cast<int>(j),
                 "analytic", analytic, "difference", difference);
    }
  }
}

// h = sigmoid(pre_o) * tanh(y): ln_lstm_output_backward w.r.t. pre_o and y.
void check_ln_lstm_output_backward_by_differences(Inputs<Real>& in) {
  for (int k = 0; k < kDifferenceSamples; ++k) {
    const std::array<Real, 2> x = {in.uniform(-6, 6), in.uniform(-4, 4)};
    const Real dh = in.uniform(-2, 2);
    const auto loss = [&](const std::array<Real, 2>& v) {
      return dh * math::ln_lstm_hidden(math::sigmoid(v[0]), v[1]);
    };
    const auto d = math::ln_lstm_output_backward(dh, math::sigmoid(x[0]), math::tanh(x[1]));
    const std::array<Real, 2> analytic = {d.o, d.y};
    for (std::size_t j = 0; j < 2; ++j) {
      const Real difference = central_difference(loss, x, j);
      RNNK_CHECK(difference_matches(analytic[j], difference, loss(x)), "wrt",
                 j == 0 ? "pre_o" : "y", "analytic", analytic[j], "difference", difference,
                 "dh", dh);
    }
  }
}

void check_against_differences(std::uint64_t seed) {
  checker().set_context("[finite differences, seed " + std::to_string(seed) + "] ");
  Inputs<Real> in(seed);
  check_lstm_backward_by_differences(in);
  check_gru_backward_by_differences(in);
  check_rnn_backward_by_differences(in);
  check_zoneout_backward_by_differences(in);
  check_layer_norm_backward_by_differences(in);
  check_ln_lstm_output_backward_by_differences(in);
  Inputs<float> in_float(seed + 1);
  check_relu_backward_by_differences(in_float);
  Inputs<double> in_double(seed + 2);
  check_relu_backward_by_differences(in_double);
}

}  // namespace

int main() {
  const std::uint64_t seed = test_seed();
  std::printf("test_cell_math: seed %llu (RNNK_TEST_SEED=%llu repeats this run)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  check_against_references<float>(seed, "float");
  check_against_references<double>(seed + 1, "double");
  check_against_differences(seed + 2);
  return checker().finish("test_cell_math");
}
