// Unit tests of the SIMD gate math (csrc/cpu/vec_math.h: Elementwise<at::vec::Vectorized<T>>
// feeding the cell_math.h templates), in float and double: every function, lane by lane,
// against the scalar gate math compiled with the same flags and against the bounded
// long-double references (Note [reference error bounds] in gate_test_support.h).
//
// Built once per ISA with exactly the flags of csrc/cpu/kernels_<isa>.cpp (CMakeLists.txt
// passes CPU_CAPABILITY*, -m... and RNNKERNELS_ISA_NAMESPACE, and RNNK_TEST_ISA names it);
// exits with 77 (ctest: skipped) on a CPU without that ISA.

#include "cpu/vec_math.h"

#include <array>

#include "gate_test_support.h"

#ifndef RNNK_TEST_ISA
#error "RNNK_TEST_ISA (default, avx2 or avx512) must name the ISA this file is compiled for"
#endif

// cpu_support.cpp, compiled without ISA flags so that it runs on any x86-64 CPU.
bool rnnk_cpu_supports(const char* isa);

namespace {

using namespace rnnkernels::test;
namespace math = rnnkernels::math;
using math::Nonlinearity;

constexpr int kVectors = 4000;

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
constexpr int kLanes = Vec<T>::size();

template <typename T>
using Lanes = std::array<T, kLanes<T>>;

template <typename T>
Vec<T> load(const Lanes<T>& lanes) {
  return Vec<T>::loadu(lanes.data());
}

template <typename T>
Lanes<T> store(const Vec<T>& v) {
  Lanes<T> lanes;
  v.store(lanes.data());
  return lanes;
}

template <typename T, typename Generate>
Lanes<T> fill(Generate generate) {
  Lanes<T> lanes;
  for (T& x : lanes) x = generate();
  return lanes;
}

// Lane `lane` of a SIMD result: it matches the reference and agrees with the scalar path.
#define CHECK_LANE(simd, scalar, ref, ...)                                                    \
  do {                                                                                        \
    RNNK_CHECK_REF(simd, ref, "lane", lane, __VA_ARGS__);                                     \
    RNNK_CHECK(agree(simd, scalar, ref), "simd", simd, "scalar", scalar, "lane", lane,        \
               __VA_ARGS__);                                                                  \
  } while (0)

template <typename T>
void check_activations(Inputs<T>& in) {
  // Every edge value once, then random vectors.
  std::vector<T> xs = in.edge_values();
  xs.insert(xs.end(), {std::numeric_limits<T>::infinity(), -std::numeric_limits<T>::infinity(),
                       std::numeric_limits<T>::quiet_NaN(), T(-0.0)});
  while (xs.size() % kLanes<T> != 0) xs.push_back(in.pre_activation_or_special());
  for (int k = 0; k < kVectors * kLanes<T>; ++k) xs.push_back(in.pre_activation_or_special());
  for (std::size_t begin = 0; begin < xs.size(); begin += kLanes<T>) {
    Lanes<T> x;
    std::copy_n(xs.begin() + begin, kLanes<T>, x.begin());
    const Lanes<T> s = store(math::sigmoid(load(x)));
    const Lanes<T> t = store(math::tanh(load(x)));
    const Lanes<T> h_tanh = store(math::rnn_activate<Nonlinearity::kTanh>(load(x)));
    const Lanes<T> h_relu = store(math::rnn_activate<Nonlinearity::kRelu>(load(x)));
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      CHECK_LANE(s[lane], math::sigmoid(x[lane]), sigmoid_ref(exact(x[lane])), "x", x[lane]);
      CHECK_LANE(t[lane], math::tanh(x[lane]), tanh_ref(exact(x[lane])), "x", x[lane]);
      CHECK_LANE(h_tanh[lane], math::rnn_activate<Nonlinearity::kTanh>(x[lane]),
                 tanh_ref(exact(x[lane])), "x", x[lane]);
      CHECK_LANE(h_relu[lane], math::rnn_activate<Nonlinearity::kRelu>(x[lane]),
                 relu_ref(x[lane]), "x", x[lane]);
    }
  }
}

template <typename T>
void check_rnn_backward(Inputs<T>& in) {
  const Ref<T> one = exact(T(1));
  for (int k = 0; k < kVectors; ++k) {
    const Lanes<T> pre = fill<T>([&] { return in.pre_activation_or_special(); });
    const Lanes<T> dh = fill<T>([&] { return in.gradient(); });
    Lanes<T> h_tanh, h_relu;
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      h_tanh[lane] = math::rnn_activate<Nonlinearity::kTanh>(pre[lane]);
      h_relu[lane] = math::rnn_activate<Nonlinearity::kRelu>(pre[lane]);
    }
    const Lanes<T> d_tanh =
        store(math::rnn_activate_backward<Nonlinearity::kTanh>(load(dh), load(h_tanh)));
    const Lanes<T> d_relu =
        store(math::rnn_activate_backward<Nonlinearity::kRelu>(load(dh), load(h_relu)));
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      const T h = h_tanh[lane], g = dh[lane];
      if (!std::isnan(h)) {
        CHECK_LANE(d_tanh[lane], math::rnn_activate_backward<Nonlinearity::kTanh>(g, h),
                   exact(g) * (one - exact(h) * exact(h)), "dh", g, "h", h);
      }
      // torch: threshold_backward(dh, h, 0) = (h <= 0 ? 0 : dh), exactly; the SIMD and
      // scalar paths must agree exactly too, NaN h included.
      const T scalar = math::rnn_activate_backward<Nonlinearity::kRelu>(g, h_relu[lane]);
      RNNK_CHECK(d_relu[lane] == scalar, "lane", lane, "dh", g, "h", h_relu[lane], "simd",
                 d_relu[lane], "scalar", scalar);
      if (!std::isnan(h_relu[lane])) {
        RNNK_CHECK(d_relu[lane] == (h_relu[lane] > T(0) ? g : T(0)), "lane", lane, "dh", g, "h",
                   h_relu[lane], "simd", d_relu[lane]);
      } else if (g != T(0)) {
        // NaN <= 0 is false, so torch passes dh through where relu's output is NaN.
        RNNK_CHECK(d_relu[lane] == g, "lane", lane, "dh", g, "simd", d_relu[lane]);
      }
    }
  }
}

template <typename T>
void check_lstm(Inputs<T>& in) {
  for (int k = 0; k < kVectors; ++k) {
    const auto pre = [&] { return in.pre_activation_or_special(); };
    const Lanes<T> pre_i = fill<T>(pre), pre_f = fill<T>(pre), pre_g = fill<T>(pre),
                   pre_o = fill<T>(pre);
    const math::LstmGates<Vec<T>> a =
        math::lstm_activate(load(pre_i), load(pre_f), load(pre_g), load(pre_o));
    const Lanes<T> i = store(a.i), f = store(a.f), g = store(a.g), o = store(a.o);

    // The scalar gates of each lane feed both paths of the functions that take gates, so
    // each function is compared on identical inputs.
    Lanes<T> si, sf, sg, so;
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      const auto scalar = math::lstm_activate(pre_i[lane], pre_f[lane], pre_g[lane], pre_o[lane]);
      const auto ref = lstm_activate_ref(pre_i[lane], pre_f[lane], pre_g[lane], pre_o[lane]);
      CHECK_LANE(i[lane], scalar.i, ref.i, "pre_i", pre_i[lane]);
      CHECK_LANE(f[lane], scalar.f, ref.f, "pre_f", pre_f[lane]);
      CHECK_LANE(g[lane], scalar.g, ref.g, "pre_g", pre_g[lane]);
      CHECK_LANE(o[lane], scalar.o, ref.o, "pre_o", pre_o[lane]);
      // NaN gates are covered above; below, lanes get finite gates.
      const bool finite = !std::isnan(scalar.i) && !std::isnan(scalar.f) &&
                          !std::isnan(scalar.g) && !std::isnan(scalar.o);
      si[lane] = finite ? scalar.i : T(0.25);
      sf[lane] = finite ? scalar.f : T(0.5);
      sg[lane] = finite ? scalar.g : T(-0.75);
      so[lane] = finite ? scalar.o : T(0.125);
    }
    const math::LstmGates<Vec<T>> va{load(si), load(sf), load(sg), load(so)};
    const Lanes<T> c_prev = fill<T>([&] { return in.state(); });
    const Lanes<T> c = store(math::lstm_cell_state(va, load(c_prev)));
    Lanes<T> sc;  // scalar c: the input of the hidden output and the backward
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      const math::LstmGates<T> sa{si[lane], sf[lane], sg[lane], so[lane]};
      sc[lane] = math::lstm_cell_state(sa, c_prev[lane]);
      CHECK_LANE(c[lane], sc[lane], lstm_cell_state_ref(sa, c_prev[lane]), "i", sa.i, "f", sa.f,
                 "g", sa.g, "c_prev", c_prev[lane]);
    }
    const Lanes<T> h = store(math::lstm_hidden(va, load(sc)));
    const Lanes<T> dh = fill<T>([&] { return in.gradient(); });
    const Lanes<T> dc = fill<T>([&] { return in.gradient(); });
    Vec<T> dc_io = load(dc);
    const math::LstmGateGrads<Vec<T>> d =
        math::lstm_cell_backward(load(dh), dc_io, va, load(sc), load(c_prev));
    const Lanes<T> di = store(d.i), df = store(d.f), dg = store(d.g), d_o = store(d.o),
                   dc_prev = store(dc_io);
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      const math::LstmGates<T> sa{si[lane], sf[lane], sg[lane], so[lane]};
      CHECK_LANE(h[lane], math::lstm_hidden(sa, sc[lane]), lstm_hidden_ref(sa, sc[lane]), "o",
                 sa.o, "c", sc[lane]);
      T scalar_dc = dc[lane];
      const auto sd = math::lstm_cell_backward(dh[lane], scalar_dc, sa, sc[lane], c_prev[lane]);
      const auto ref = lstm_cell_backward_ref(dh[lane], dc[lane], sa, sc[lane], c_prev[lane]);
#define LSTM_BACKWARD_INPUTS                                                                  \
  "dh", dh[lane], "dc", dc[lane], "i", sa.i, "f", sa.f, "g", sa.g, "o", sa.o, "c", sc[lane], \
      "c_prev", c_prev[lane]
      CHECK_LANE(di[lane], sd.i, ref.i, LSTM_BACKWARD_INPUTS);
      CHECK_LANE(df[lane], sd.f, ref.f, LSTM_BACKWARD_INPUTS);
      CHECK_LANE(dg[lane], sd.g, ref.g, LSTM_BACKWARD_INPUTS);
      CHECK_LANE(d_o[lane], sd.o, ref.o, LSTM_BACKWARD_INPUTS);
      CHECK_LANE(dc_prev[lane], scalar_dc, ref.c_prev, LSTM_BACKWARD_INPUTS);
#undef LSTM_BACKWARD_INPUTS
    }
  }
}

template <typename T>
void check_gru(Inputs<T>& in) {
  for (int k = 0; k < kVectors; ++k) {
    const auto pre = [&] { return in.pre_activation_or_special(); };
    // hn = W_hn h + b_hn is finite; the other pre-activations may be +-inf or NaN.
    const Lanes<T> xr = fill<T>(pre), xz = fill<T>(pre), xn = fill<T>(pre), hr = fill<T>(pre),
                   hz = fill<T>(pre), hn = fill<T>([&] { return in.pre_activation(); });
    const math::GruGates<Vec<T>> a = math::gru_activate(load(xr), load(xz), load(xn), load(hr),
                                                        load(hz), load(hn));
    const Lanes<T> r = store(a.r), z = store(a.z), n = store(a.n), a_hn = store(a.hn);
    Lanes<T> sr, sz, sn, shn;
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      const auto scalar = math::gru_activate(xr[lane], xz[lane], xn[lane], hr[lane], hz[lane],
                                             hn[lane]);
      const auto ref = gru_activate_ref(xr[lane], xz[lane], xn[lane], hr[lane], hz[lane],
                                        hn[lane]);
      CHECK_LANE(r[lane], scalar.r, ref.r, "xr", xr[lane], "hr", hr[lane]);
      CHECK_LANE(z[lane], scalar.z, ref.z, "xz", xz[lane], "hz", hz[lane]);
      CHECK_LANE(n[lane], scalar.n, ref.n, "xn", xn[lane], "r", scalar.r, "hn", hn[lane]);
      RNNK_CHECK(a_hn[lane] == hn[lane] || (std::isnan(a_hn[lane]) && std::isnan(hn[lane])),
                 "lane", lane, "hn", hn[lane], "a.hn", a_hn[lane]);
      // As in test_cell_math: finite gates and a realistic hn for the rest.
      const bool finite = std::isfinite(scalar.r) && std::isfinite(scalar.z) &&
                          std::isfinite(scalar.n) && std::fabs(scalar.hn) <= kLargestHn<T>;
      sr[lane] = finite ? scalar.r : T(0.25);
      sz[lane] = finite ? scalar.z : T(0.5);
      sn[lane] = finite ? scalar.n : T(-0.75);
      shn[lane] = finite ? scalar.hn : T(1.5);
    }
    const math::GruGates<Vec<T>> va{load(sr), load(sz), load(sn), load(shn)};
    const Lanes<T> h_prev = fill<T>([&] { return in.state(); });
    const Lanes<T> dh = fill<T>([&] { return in.gradient(); });
    const Lanes<T> h = store(math::gru_hidden(va, load(h_prev)));
    Vec<T> direct;
    const math::GruGateGrads<Vec<T>> d = math::gru_cell_backward(load(dh), va, load(h_prev), direct);
    const Lanes<T> dr = store(d.r), dz = store(d.z), dn_x = store(d.n_x), dn_h = store(d.n_h),
                   h_prev_direct = store(direct);
    for (int lane = 0; lane < kLanes<T>; ++lane) {
      const math::GruGates<T> sa{sr[lane], sz[lane], sn[lane], shn[lane]};
      CHECK_LANE(h[lane], math::gru_hidden(sa, h_prev[lane]), gru_hidden_ref(sa, h_prev[lane]),
                 "n", sa.n, "z", sa.z, "h_prev", h_prev[lane]);
      T scalar_direct;
      const auto sd = math::gru_cell_backward(dh[lane], sa, h_prev[lane], scalar_direct);
      const auto ref = gru_cell_backward_ref(dh[lane], sa, h_prev[lane]);
#define GRU_BACKWARD_INPUTS \
  "dh", dh[lane], "r", sa.r, "z", sa.z, "n", sa.n, "hn", sa.hn, "h_prev", h_prev[lane]
      CHECK_LANE(dr[lane], sd.r, ref.r, GRU_BACKWARD_INPUTS);
      CHECK_LANE(dz[lane], sd.z, ref.z, GRU_BACKWARD_INPUTS);
      CHECK_LANE(dn_x[lane], sd.n_x, ref.n_x, GRU_BACKWARD_INPUTS);
      CHECK_LANE(dn_h[lane], sd.n_h, ref.n_h, GRU_BACKWARD_INPUTS);
      CHECK_LANE(h_prev_direct[lane], scalar_direct, ref.h_prev_direct, GRU_BACKWARD_INPUTS);
#undef GRU_BACKWARD_INPUTS
    }
  }
}

template <typename T>
void check_type(std::uint64_t seed, const char* type) {
  checker().set_context(std::string("[") + RNNK_TEST_ISA + ", " + type + ", " +
                        std::to_string(kLanes<T>) + " lanes, seed " + std::to_string(seed) + "] ");
  Inputs<T> in(seed);
  check_activations(in);
  check_rnn_backward(in);
  check_lstm(in);
  check_gru(in);
}

}  // namespace

int main() {
  if (!rnnk_cpu_supports(RNNK_TEST_ISA)) {
    std::printf("test_vec_math_%s: skipped, this CPU lacks %s\n", RNNK_TEST_ISA, RNNK_TEST_ISA);
    return 77;
  }
  const std::uint64_t seed = test_seed();
  std::printf("test_vec_math_%s: seed %llu (RNNK_TEST_SEED=%llu repeats this run)\n",
              RNNK_TEST_ISA, static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  check_type<float>(seed, "float");
  check_type<double>(seed + 1, "double");
  const std::string program = std::string("test_vec_math_") + RNNK_TEST_ISA;
  return checker().finish(program.c_str());
}
