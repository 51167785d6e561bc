#pragma once
// Elementary functions of at::vec::Vectorized for the shared gate math (cell_math.h).
// Included only by the per-ISA kernel files, after they define CPU_CAPABILITY.
//
// Note [inline exp and tanh]
// at::vec's exp() and tanh() call SLEEF's 1-ulp routines out of line: about 100 cycles a
// vector on the machines we measured, which made the LSTM step (three sigmoids and two
// tanh per unit) cost more in transcendentals than in its matrix product. For float on
// AVX2 and AVX-512 we evaluate them inline instead:
//   exp(x):  x = n ln2 + r with n = round(x log2 e) and a two-part ln2 (Cody-Waite),
//            e^r by a degree-6 polynomial (Cephes expf coefficients), times 2^n;
//            about 1 ulp on [-87.3, 88.7]; arguments are clamped to that range, which
//            only changes results that over- or underflow float anyway.
//   tanh(x): |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf, about 1 ulp);
//            else 1 - 2 / (e^{2|x|} + 1) (no cancellation there: the result is > 0.55),
//            with the sign of x.
// NaN propagates through both. float64 keeps SLEEF (it serves gradcheck, not speed).
// Divisions (in sigmoid and tanh) are slow on every x86 core we target; on AVX-512 a
// 14-bit reciprocal estimate plus one Newton step gives 1/x to about 2^-28 relative.

#include <ATen/cpu/vec/vec.h>

#include "rnnkernels/cell_math.h"

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace rnnkernels::math {
inline namespace RNNKERNELS_ISA_NAMESPACE {

namespace fast {

constexpr float kExpMin = -87.3365478515625f;  // ~ln(FLT_MIN)
constexpr float kExpMax = 88.72283172607422f;  // ~ln(FLT_MAX)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kExpP0 = 1.9875691500e-4f;
constexpr float kExpP1 = 1.3981999507e-3f;
constexpr float kExpP2 = 8.3334519073e-3f;
constexpr float kExpP3 = 4.1665795894e-2f;
constexpr float kExpP4 = 1.6666665459e-1f;
constexpr float kExpP5 = 5.0000001201e-1f;
constexpr float kTanhSmall = 0.625f;
constexpr float kTanhP0 = -5.70498872745e-3f;
constexpr float kTanhP1 = 2.06390887954e-2f;
constexpr float kTanhP2 = -5.37397155531e-2f;
constexpr float kTanhP3 = 1.33314422036e-1f;
constexpr float kTanhP4 = -3.33332819422e-1f;

#if defined(CPU_CAPABILITY_AVX512)

inline __m512 exp_ps(__m512 x) {
  // max/min return their second operand when it is NaN, so NaN passes through.
  x = _mm512_min_ps(_mm512_set1_ps(kExpMax), _mm512_max_ps(_mm512_set1_ps(kExpMin), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpP5));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 reciprocal_ps(__m512 x) {
  const __m512 r = _mm512_rcp14_ps(x);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(1.f)), r);
}

inline __m512 tanh_ps(__m512 x) {
  const __m512 sign_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x80000000));
  const __m512 ax = _mm512_andnot_ps(sign_mask, x);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(kTanhP0);
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(kTanhP1));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(kTanhP2));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(kTanhP3));
  p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(kTanhP4));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
  const __m512 e = exp_ps(_mm512_add_ps(ax, ax));
  const __m512 large_abs = _mm512_fnmadd_ps(
      _mm512_set1_ps(2.f), reciprocal_ps(_mm512_add_ps(e, _mm512_set1_ps(1.f))), _mm512_set1_ps(1.f));
  const __m512 large = _mm512_or_ps(large_abs, _mm512_and_ps(sign_mask, x));
  // NaN compares false, so NaN takes the polynomial branch, which propagates it.
  const __mmask16 is_large = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(kTanhSmall), _CMP_GE_OQ);
  return _mm512_mask_blend_ps(is_large, small, large);
}

#elif defined(CPU_CAPABILITY_AVX2)

inline __m256 exp_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(kExpMax), _mm256_max_ps(_mm256_set1_ps(kExpMin), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpP5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // 2^n for n in [-126, 128]: build the exponent bits; n = 128 (x near kExpMax) is split
  // into two factors so the bit pattern stays finite.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, _mm256_set1_epi32(127)), 23));
  const __m256 s2 = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), _mm256_set1_epi32(127)), 23));
  const __m256 result = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  // Clamping turned NaN into a number above; restore it.
  return _mm256_blendv_ps(result, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

inline __m256 tanh_ps(__m256 x) {
  const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000)));
  const __m256 ax = _mm256_andnot_ps(sign_mask, x);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kTanhP0);
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kTanhP1));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kTanhP2));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kTanhP3));
  p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(kTanhP4));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
  const __m256 e = exp_ps(_mm256_add_ps(ax, ax));
  const __m256 large_abs = _mm256_sub_ps(
      _mm256_set1_ps(1.f), _mm256_div_ps(_mm256_set1_ps(2.f), _mm256_add_ps(e, _mm256_set1_ps(1.f))));
  const __m256 large = _mm256_or_ps(large_abs, _mm256_and_ps(sign_mask, x));
  const __m256 is_large = _mm256_cmp_ps(ax, _mm256_set1_ps(kTanhSmall), _CMP_GE_OQ);
  return _mm256_blendv_ps(small, large, is_large);
}

#endif

}  // namespace fast

template <>
struct Elementwise<at::vec::Vectorized<float>> {
  using V = at::vec::Vectorized<float>;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  static inline V exp(V x) { return V(fast::exp_ps(x)); }
  static inline V tanh(V x) { return V(fast::tanh_ps(x)); }
#else
  static inline V exp(V x) { return x.exp(); }
  static inline V tanh(V x) { return x.tanh(); }
#endif
#if defined(CPU_CAPABILITY_AVX512)
  static inline V reciprocal(V x) { return V(fast::reciprocal_ps(x)); }
#else
  static inline V reciprocal(V x) { return x.reciprocal(); }
#endif
  // at::vec::maximum propagates NaN, as torch.relu does.
  static inline V relu(V x) { return at::vec::maximum(x, V(0.f)); }
  // threshold_backward: y <= 0 ? 0 : grad (a NaN output passes the gradient through).
  static inline V relu_grad(V grad, V y) { return V::blendv(grad, V(0.f), y <= V(0.f)); }
};

template <>
struct Elementwise<at::vec::Vectorized<double>> {
  using V = at::vec::Vectorized<double>;
  static inline V exp(V x) { return x.exp(); }
  static inline V reciprocal(V x) { return x.reciprocal(); }
  static inline V tanh(V x) { return x.tanh(); }
  static inline V relu(V x) { return at::vec::maximum(x, V(0.0)); }
  static inline V relu_grad(V grad, V y) { return V::blendv(grad, V(0.0), y <= V(0.0)); }
};

}  // namespace RNNKERNELS_ISA_NAMESPACE
}  // namespace rnnkernels::math
