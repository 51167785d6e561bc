#pragma once
// Support for the C++ unit tests of the gate math (csrc/include/rnnkernels/cell_math.h):
// a tiny check registry, long-double references that carry an error bound, and inputs.
//
// Note [reference error bounds]
// A reference is the exact value of a formula on the test's T inputs (computed in long
// double, whose rounding is >= 2^11 times smaller than double's and is neglected) together
// with a bound on the error a T evaluation of that formula may make (u = epsilon(T) / 2):
//   + - *     a polynomial of k operations whose terms, made positive, sum to M errs by
//             at most about k u M in any grouping: n + z (h - n) and (1 - z) n + z h are
//             bounded alike (measured; a bound that followed the reference's own order
//             was too tight for the other). Below the normal range of T a rounding is
//             absolute: half of denorm_min.
//   tanh      3 ulp = 6u relative, plus the argument's bound times the steepest slope of
//             tanh within it (mean value theorem)
//   sigmoid   1 / (1 + exp(-x)): exp's 6u reaches 1 + exp(-x) at most undiminished, then
//             two roundings: 8u relative; plus the argument's bound carried as for tanh
//   and the errors of sigmoid and tanh are carried through the arithmetic after them to
//   first order (|a| e_b + |b| e_a + e_a e_b for a product, with |a| its magnitude).
// 3 ulp covers the elementary functions the kernels use: glibc's expf/exp are below 1 ulp
// and its tanhf/tanh below 2.2 ulp (Zimmermann, "Accuracy of mathematical functions",
// 2021), at::vec's Sleef *_u10 functions below 1 ulp. A result passes when it lies within
// kBoundFactor = 2 bounds of the exact value: the factor covers an implementation that
// takes up to twice the reference's number of operations (the largest error measured on
// the current code is 1.0 bound, half of what passes). Results below the normal range
// of T (sigmoid(-100) in float) are compared with an absolute floor of
// numeric_limits<T>::min(): their relative precision is lost by design and is irrelevant;
// an elementary function's result there also carries min(T) into what uses it.
// A wrong formula (a missing factor, a swapped gate, a sign) is off by O(1) relative, far
// outside these bounds (DEVELOPING.md, "Building with CMake", shows one failing).

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <limits>
#include <initializer_list>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "rnnkernels/cell_math.h"

static_assert(std::numeric_limits<long double>::digits > std::numeric_limits<double>::digits,
              "the references need a long double wider than double (x86-64 or AArch64 Linux)");

namespace rnnkernels::test {

// ---------------------------------------------------------------- checks

// One value as text, with all the digits that identify it.
inline std::string format_value(long double v, int digits) {
  std::ostringstream out;
  out << std::setprecision(digits) << v;
  return out.str();
}
inline std::string format_value(float v) { return format_value(v, 9); }
inline std::string format_value(double v) { return format_value(v, 17); }
inline std::string format_value(long double v) { return format_value(v, 21); }
inline std::string format_value(int v) { return std::to_string(v); }
inline std::string format_value(const char* v) { return v; }
inline std::string format_value(const std::string& v) { return v; }

// Pairs of name and value text: {"x", "1", "c", "2"} -> "x=1 c=2".
[[gnu::noinline, gnu::cold]] inline std::string describe_fields(
    std::initializer_list<std::string> fields) {
  std::string out;
  bool is_name = true;
  for (const std::string& field : fields) {
    out += is_name ? (out.empty() ? "" : " ") + field + "=" : field;
    is_name = !is_name;
  }
  return out;
}

// describe("x", 1.f, "c", 2.0) == "x=1 c=2"; only called on failure.
template <typename... Args>
[[gnu::noinline, gnu::cold]] std::string describe(const Args&... args) {
  return describe_fields({format_value(args)...});
}

class Checker {
 public:
  void pass() { ++checks_; }

  // A failed check: prints the site, the expression and the detail, the first
  // kPrintedPerSite times per site, and counts every failure.
  void fail(const char* what, const char* file, int line, const std::string& detail) {
    ++checks_;
    ++failures_;
    const std::string site = std::string(file) + ":" + std::to_string(line);
    const int seen = ++failures_per_site_[site];
    if (seen <= kPrintedPerSite) {
      std::fprintf(stderr, "FAILED %s: %s\n    %s%s\n", site.c_str(), what, context_.c_str(),
                   detail.c_str());
    } else if (seen == kPrintedPerSite + 1) {
      std::fprintf(stderr, "FAILED %s: more failures here are counted, not printed\n",
                   site.c_str());
    }
  }

  // A check that fails because of a known bug: like pytest.mark.xfail(strict=True), it
  // counts as a failure once it passes, so the mark goes when the bug is fixed.
  void known_bug(bool ok, const char* what, const char* bug, const char* file, int line) {
    ++checks_;
    const std::string site = std::string(file) + ":" + std::to_string(line);
    if (ok) {
      ++failures_;
      std::fprintf(stderr, "FAILED %s: %s passes now, but is marked as the known bug \"%s\"; "
                   "make it a plain check\n", site.c_str(), what, bug);
    } else if (known_bugs_.insert({site, bug}).second) {
      std::fprintf(stderr, "known bug (expected failure) at %s: %s\n    %s\n", site.c_str(),
                   what, bug);
    }
  }

  // Printed before the detail of failures: which type, ISA, seed.
  void set_context(std::string context) { context_ = std::move(context); }

  int finish(const char* program) {
    std::printf("%s: %lld checks, %lld failed, %zu known bugs\n", program, checks_, failures_,
                known_bugs_.size());
    return failures_ == 0 ? 0 : 1;
  }

 private:
  static constexpr int kPrintedPerSite = 5;
  long long checks_ = 0;
  long long failures_ = 0;
  std::map<std::string, int> failures_per_site_;
  std::map<std::string, std::string> known_bugs_;
  std::string context_;
};

inline Checker& checker() {
  static Checker instance;
  return instance;
}

// RNNK_CHECK(condition, "name", value, ...): the names and values are printed on failure.
#define RNNK_CHECK(cond, ...)                                                             \
  do {                                                                                    \
    if (cond) [[likely]] {                                                                \
      ::rnnkernels::test::checker().pass();                                               \
    } else {                                                                              \
      ::rnnkernels::test::checker().fail(#cond, __FILE__, __LINE__,                       \
                                         ::rnnkernels::test::describe(__VA_ARGS__));      \
    }                                                                                     \
  } while (0)

#define RNNK_KNOWN_BUG(cond, bug) \
  ::rnnkernels::test::checker().known_bug(static_cast<bool>(cond), #cond, bug, __FILE__, __LINE__)

// ---------------------------------------------------------------- bounded references

template <typename T>
constexpr long double kUnitRoundoff = std::numeric_limits<T>::epsilon() / 2.0L;

// Note [reference error bounds]
constexpr long double kTanhRelError = 6;     // in units of u
constexpr long double kSigmoidRelError = 8;  // in units of u
constexpr long double kBoundFactor = 2;

// The exact value of a formula on T inputs, and what bounds a T evaluation's error:
//   error      the errors of the elementary functions (and of their arguments), carried
//              through the arithmetic that follows them
//   magnitude  that arithmetic with every operand made positive and every subtraction an
//              addition: the sum of |monomials| of the expanded polynomial
//   roundings  the number of arithmetic operations in it
template <typename T>
struct Ref {
  long double value;
  long double error;
  long double magnitude;
  int roundings;
};

// A non-finite value must be matched exactly (matches()), so it carries no error bound;
// this also keeps inf - inf out of the bounds of what is computed from it.
template <typename T>
Ref<T> arithmetic(long double value, long double error, long double magnitude, int roundings) {
  if (!std::isfinite(value)) return {value, 0.0L, 0.0L, 0};
  return {value, error, magnitude, roundings};
}

template <typename T>
Ref<T> exact(T x) {
  return arithmetic<T>(x, 0.0L, std::fabs(static_cast<long double>(x)), 0);
}

// The bound: k roundings of a polynomial of magnitude M err by at most
// gamma_k M = k u M / (1 - k u) in any grouping (every monomial collects at most k factors
// 1 + delta), plus half of denorm_min per rounding below T's normal range.
template <typename T>
long double bound(const Ref<T>& r) {
  const long double ku = r.roundings * kUnitRoundoff<T>;
  return r.error + ku / (1 - ku) * r.magnitude +
         r.roundings * static_cast<long double>(std::numeric_limits<T>::denorm_min());
}

// |x| * error, where a zero factor wins (0 * inf is 0 here, not NaN).
inline long double carried(long double x, long double error) {
  return (x == 0.0L || error == 0.0L) ? 0.0L : std::fabs(x) * error;
}

template <typename T>
Ref<T> operator+(Ref<T> a, Ref<T> b) {
  return arithmetic<T>(a.value + b.value, a.error + b.error, a.magnitude + b.magnitude,
                       a.roundings + b.roundings + 1);
}

template <typename T>
Ref<T> operator-(Ref<T> a, Ref<T> b) {
  return arithmetic<T>(a.value - b.value, a.error + b.error, a.magnitude + b.magnitude,
                       a.roundings + b.roundings + 1);
}

template <typename T>
Ref<T> operator*(Ref<T> a, Ref<T> b) {
  return arithmetic<T>(
      a.value * b.value,
      carried(a.magnitude, b.error) + carried(b.magnitude, a.error) + a.error * b.error,
      a.magnitude * b.magnitude, a.roundings + b.roundings + 1);
}

// An elementary function's result below T's normal range may be flushed to 0 (sigmoid(x)
// for x < -88.7 in float: exp(-x) overflows), so it is only known to within min(T); this
// absolute error is carried into the products that use it (r * hn in GRU).
template <typename T>
long double underflow_error(long double value) {
  const long double smallest_normal = std::numeric_limits<T>::min();
  return std::fabs(value) < smallest_normal ? smallest_normal : 0.0L;
}

// The point of [x - error, x + error] nearest to 0, where the slopes of sigmoid and tanh
// are largest: by the mean value theorem, the slope there times the argument's error bounds
// the error carried through the function, even when x is far out on a flat tail but the
// T argument is not (1e30 - (1 - 1e-10) 1e30 is 0 in float).
inline long double steepest_point(long double x, long double error) {
  return std::fabs(x) <= error ? 0.0L : x - std::copysign(error, x);
}

// The result of an elementary function starts a new polynomial: its error is its own
// relative error plus its argument's, carried through the slope.
template <typename T>
Ref<T> sigmoid_ref(Ref<T> x) {
  const long double s = 1.0L / (1.0L + std::exp(-x.value));
  const long double x_error = bound(x);
  const long double s_steep = 1.0L / (1.0L + std::exp(-steepest_point(x.value, x_error)));
  return {s,
          carried(s_steep * (1.0L - s_steep), x_error) +
              kSigmoidRelError * kUnitRoundoff<T> * s + underflow_error<T>(s),
          s, 0};
}

template <typename T>
Ref<T> tanh_ref(Ref<T> x) {
  const long double t = std::tanh(x.value);
  const long double x_error = bound(x);
  const long double t_steep = std::tanh(steepest_point(x.value, x_error));
  return {t,
          carried(1.0L - t_steep * t_steep, x_error) +
              kTanhRelError * kUnitRoundoff<T> * std::fabs(t) + underflow_error<T>(t),
          std::fabs(t), 0};
}

// torch.relu: NaN propagates; exact.
template <typename T>
Ref<T> relu_ref(T x) {
  const long double v = x;
  const long double h = std::isnan(v) ? v : (v > 0 ? v : 0.0L);
  return {h, 0.0L, std::fabs(h), 0};
}

// Whether a T result matches its reference (Note [reference error bounds]). Non-finite
// references must be matched exactly (NaN by NaN).
template <typename T>
bool matches(T got, const Ref<T>& ref) {
  if (std::isnan(ref.value)) return std::isnan(got);
  if (std::isinf(ref.value)) return static_cast<long double>(got) == ref.value;
  if (!std::isfinite(got)) return false;
  return std::fabs(static_cast<long double>(got) - ref.value) <=
         kBoundFactor * bound(ref) + static_cast<long double>(std::numeric_limits<T>::min());
}

// Whether two T evaluations (SIMD and scalar) that each match `ref` agree: within twice
// the distance matches() allows each of them.
template <typename T>
bool agree(T got, T other, const Ref<T>& ref) {
  if (std::isnan(got) || std::isnan(other)) return std::isnan(got) && std::isnan(other);
  if (std::isinf(got) || std::isinf(other)) return got == other;
  return std::fabs(static_cast<long double>(got) - static_cast<long double>(other)) <=
         2 * (kBoundFactor * bound(ref) + static_cast<long double>(std::numeric_limits<T>::min()));
}

template <typename T>
std::string mismatch(T got, const Ref<T>& ref) {
  return describe("got", got, "exact", ref.value, "allowed_error", kBoundFactor * bound(ref),
                  "actual_error", std::fabs(static_cast<long double>(got) - ref.value));
}

// RNNK_CHECK_REF(got, ref, "name", value, ...): got matches the bounded reference.
#define RNNK_CHECK_REF(got, ref, ...)                                                       \
  do {                                                                                      \
    const auto got_value_ = (got);                                                          \
    const auto ref_value_ = (ref);                                                          \
    if (::rnnkernels::test::matches(got_value_, ref_value_)) [[likely]] {                   \
      ::rnnkernels::test::checker().pass();                                                 \
    } else {                                                                                \
      ::rnnkernels::test::checker().fail(                                                   \
          #got " matches " #ref, __FILE__, __LINE__,                                        \
          ::rnnkernels::test::mismatch(got_value_, ref_value_) + "; inputs: " +             \
              ::rnnkernels::test::describe(__VA_ARGS__));                                   \
    }                                                                                       \
  } while (0)

// ---------------------------------------------------------------- references of the cells
// Written from the definitions in cell_math.h's header comment (torch.nn's equations) and
// their derivatives: sigmoid' = s (1 - s), tanh' = 1 - t^2.

template <typename T>
struct LstmGatesRef {
  Ref<T> i, f, g, o;
};

template <typename T>
LstmGatesRef<T> lstm_activate_ref(T pre_i, T pre_f, T pre_g, T pre_o) {
  return {sigmoid_ref(exact(pre_i)), sigmoid_ref(exact(pre_f)), tanh_ref(exact(pre_g)),
          sigmoid_ref(exact(pre_o))};
}

template <typename T>
Ref<T> lstm_cell_state_ref(const math::LstmGates<T>& a, T c_prev) {
  return exact(a.f) * exact(c_prev) + exact(a.i) * exact(a.g);
}

template <typename T>
Ref<T> lstm_hidden_ref(const math::LstmGates<T>& a, T c) {
  return exact(a.o) * tanh_ref(exact(c));
}

template <typename T>
struct LstmBackwardRef {
  Ref<T> i, f, g, o;  // dL/d pre-activation
  Ref<T> c_prev;      // dL/d c_prev
};

// L = dh * o tanh(c) + dc * c with c = f c_prev + i g.
template <typename T>
LstmBackwardRef<T> lstm_cell_backward_ref(T dh, T dc, const math::LstmGates<T>& a, T c,
                                          T c_prev) {
  const Ref<T> one = exact(T(1));
  const Ref<T> i = exact(a.i), f = exact(a.f), g = exact(a.g), o = exact(a.o);
  const Ref<T> tanh_c = tanh_ref(exact(c));
  const Ref<T> dc_total = exact(dc) + exact(dh) * o * (one - tanh_c * tanh_c);
  return {dc_total * g * i * (one - i), dc_total * exact(c_prev) * f * (one - f),
          dc_total * i * (one - g * g), exact(dh) * tanh_c * o * (one - o), dc_total * f};
}

template <typename T>
struct GruGatesRef {
  Ref<T> r, z, n;
};

template <typename T>
GruGatesRef<T> gru_activate_ref(T xr, T xz, T xn, T hr, T hz, T hn) {
  const Ref<T> r = sigmoid_ref(exact(xr) + exact(hr));
  const Ref<T> z = sigmoid_ref(exact(xz) + exact(hz));
  return {r, z, tanh_ref(exact(xn) + r * exact(hn))};
}

template <typename T>
Ref<T> gru_hidden_ref(const math::GruGates<T>& a, T h_prev) {
  return exact(a.n) + exact(a.z) * (exact(h_prev) - exact(a.n));
}

template <typename T>
struct GruBackwardRef {
  Ref<T> r, z, n_x, n_h;  // dL/d pre-activation (r and z: either side; n: each side)
  Ref<T> h_prev_direct;   // dL/d h_prev with the gates held fixed
};

// L = dh * ((1 - z) n + z h_prev) with n = tanh(x_n + r hn).
template <typename T>
GruBackwardRef<T> gru_cell_backward_ref(T dh, const math::GruGates<T>& a, T h_prev) {
  const Ref<T> one = exact(T(1));
  const Ref<T> r = exact(a.r), z = exact(a.z), n = exact(a.n);
  const Ref<T> dpre_n = exact(dh) * (one - z) * (one - n * n);
  return {dpre_n * exact(a.hn) * r * (one - r), exact(dh) * (exact(h_prev) - n) * z * (one - z),
          dpre_n, dpre_n * r, exact(dh) * z};
}

// ---------------------------------------------------------------- inputs

// The largest |W_hn h + b_hn| given to the GRU functions after gru_activate: with |h| <= 1
// it is at most the row norm of W_hn plus |b_hn|.
template <typename T>
constexpr T kLargestHn = T(1e4);

inline std::uint64_t test_seed() {
  if (const char* s = std::getenv("RNNK_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

// Random inputs of type T: typical values, wide magnitudes and edge values. Every value
// is finite unless a function says otherwise.
template <typename T>
class Inputs {
 public:
  explicit Inputs(std::uint64_t seed) : rng_(seed) {}

  T uniform(double lo, double hi) { return static_cast<T>(std::uniform_real_distribution<double>(lo, hi)(rng_)); }

  // sign * 10^[lo, hi)
  T log_uniform(double lo, double hi) {
    const double magnitude = std::pow(10.0, uniform(lo, hi));
    return static_cast<T>(coin(0.5) ? magnitude : -magnitude);
  }

  bool coin(double p) { return std::bernoulli_distribution(p)(rng_); }

  // Finite values at which gate math changes regime: saturation of sigmoid and tanh, the
  // overflow of exp(-x) in float (~88.7) and double (~709.8), tiny and huge magnitudes.
  const std::vector<T>& edge_values() {
    static const std::vector<T> values = [] {
      std::vector<T> v;
      for (double x : {0.0, 1e-30, 1e-7, 0.5, 1.0, 3.0, 9.0, 17.0, 20.0, 37.0, 44.0, 88.0,
                       88.8, 89.0, 100.0, 709.0, 710.0, 745.0, 1e4, 1e30}) {
        v.push_back(static_cast<T>(x));
        v.push_back(static_cast<T>(-x));
      }
      v.push_back(std::numeric_limits<T>::denorm_min());
      v.push_back(std::numeric_limits<T>::min());
      v.push_back(std::numeric_limits<T>::max());
      v.push_back(-std::numeric_limits<T>::max());
      return v;
    }();
    return values;
  }

  T edge() { return edge_values()[std::uniform_int_distribution<std::size_t>(0, edge_values().size() - 1)(rng_)]; }

  // A gate pre-activation: mostly typical, some far out, some edge values.
  T pre_activation() {
    const double kind = uniform(0, 1);
    if (kind < 0.6) return uniform(-8, 8);
    if (kind < 0.9) return log_uniform(-8, 2.5);
    return edge();
  }

  // A pre-activation that may also be +-inf or NaN: for the activation functions only.
  T pre_activation_or_special() {
    const double kind = uniform(0, 1);
    if (kind < 0.02) return std::numeric_limits<T>::infinity();
    if (kind < 0.04) return -std::numeric_limits<T>::infinity();
    if (kind < 0.05) return std::numeric_limits<T>::quiet_NaN();
    return pre_activation();
  }

  // A state value (c, h): typical, sometimes large, sometimes 0.
  T state() {
    const double kind = uniform(0, 1);
    if (kind < 0.7) return uniform(-3, 3);
    if (kind < 0.95) return log_uniform(-6, 4);
    return T(0);
  }

  // An incoming gradient: typical, sometimes of another scale, sometimes 0.
  T gradient() {
    const double kind = uniform(0, 1);
    if (kind < 0.7) return uniform(-2, 2);
    if (kind < 0.95) return log_uniform(-6, 6);
    return T(0);
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace rnnkernels::test
