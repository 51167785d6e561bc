#pragma once
// int8 inference kernels (Int8Kernels in kernels.h), compiled once per ISA by
// kernels_{default,avx2,avx512,avx512_vnni}.cpp after kernels_isa.h.
//
// Note [int8 inference]
// Weights: per output row n, s_w[n] = max_k |W[n, k]| / 127 and W_q = round(W / s_w) in
// [-127, 127] (rnnkernels/quantized.py quantizes, Int8Kernels::pack packs).
// Activations, per row, when they are used: x before the input projection of all steps,
// h_{t-1} (and LSTM's m_t before the projection) before each step's recurrent product:
//   s_a = max|a| / 127,  a_q = round_half_even(a * (127 / max|a|))  in [-127, 127];
// a row of zeros has s_a = 0, and a row holding a NaN or an infinity s_a = NaN, so what is
// computed from it is NaN, as in float32, never a finite wrong number. Rows are stored as
// u8 a_q + 128 for the u8 x s8 dot products (vpdpbusd); the product takes 128 * colsum back:
//   acc[m, n] = sum_k (a_q + 128) W_q[n, k] - 128 sum_k W_q[n, k] = sum_k a_q W_q[n, k]
// exact in int32 (|sum_k (a_q + 128) W_q| <= 255 * 127 * K: K <= 66000, checked by the host),
//   y[m, n] = float(acc) * s_w[n] * s_a[m]
// and then the biases, the input projection and the gate math in float32 (cell_math.h).
// rnnkernels/reference.py (quantized_*) simulates exactly this in float64.
//
// Products by ISA: avx512_vnni vpdpbusd on 512-bit registers; avx512 and avx2 widen both
// operands to 16 bits and use vpmaddwd (exact, no saturation), adding the two pair sums
// of a column at the end; default scalar. All read the same packed layout.

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "cpu/kernels_isa.h"

namespace rnnkernels::cpu {
inline namespace RNNKERNELS_ISA_NAMESPACE {


namespace int8 {

using Vec = Vectorized<float>;
constexpr int V = Vec::size();

inline int64_t quads(int64_t K) { return (K + 3) / 4; }

template <int NV>
constexpr int64_t block_bytes(int64_t K) {
  return quads(K) * NV * V * 4;
}

// Vector q of packed block blk of a [gates*units, K] weight (Int8Panels in kernels.h):
// its first unit, how many of its V lanes are units (0 past the end), and the column of
// its first lane in the weight's natural order (the row of W; gate q of the unit for
// gate panels, unit vectors side by side for one gate).
struct PanelVector {
  int64_t unit, count, column;
};
inline PanelVector panel_vector(int64_t units, int64_t gates, int64_t blk, int64_t q) {
  const int64_t unit = gates > 1 ? blk * V : (blk * int8_panel_vectors(gates) + q) * V;
  const int64_t count = std::max<int64_t>(0, std::min<int64_t>(V, units - unit));
  return {unit, count, gates > 1 ? q * units + unit : unit};
}

// Rows of one register tile (accumulators, weight vectors and a broadcast fit the file).
template <int NV>
constexpr int rows_per_tile() {
#if defined(__AVX512VNNI__)
  // 16 accumulators (NV = 4: 4 rows; 3: 5), not the 24-28 the register file holds: with
  // more, GCC still copies some accumulators around their vpdpbusd (vnni_dot); measured,
  // 16 / 20 / 24: 793 / 667 / 754 GOP/s at [6400, 2048] x [2048, 2048] and 36 / 51 / 40 ms
  // for the LSTM (100, 64, 512) (Zen 4 VM, 2 threads, noisy).
  return 16 / NV;
#elif defined(CPU_CAPABILITY_AVX512)
  return 6;  // one gate vector at a time: 2 accumulators a row, 2 widened weight vectors
#else
  return 4;
#endif
}

// V int32 -> V float.
inline Vec to_float(const int32_t* p) {
#if defined(CPU_CAPABILITY_AVX512)
  return Vec(_mm512_cvtepi32_ps(_mm512_loadu_si512(p)));
#elif defined(CPU_CAPABILITY_AVX2)
  return Vec(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
  alignas(64) float f[V];
  for (int j = 0; j < V; ++j) f[j] = static_cast<float>(p[j]);
  return Vec::loadu(f);
#endif
}

inline uint32_t load_quad(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// acc[m][q*V + j] = sum_k a[m][k] * W[k][col q*V+j] over the packed block (u8 x s8 sums,
// without the 128 * colsum correction).
#if defined(__AVX512VNNI__)
// c += u8 x s8 dot products of x and w, in place.
inline void dot_accumulate(__m512i& c, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(c) : "v"(x), "v"(w));
}

// The VNNI tile, written with pack expansions so that every accumulator, broadcast and
// weight vector is indexed by a constant from the start: GCC then keeps each in its own
// register. With loops over arrays (unrolled only later) it kept the accumulators in
// registers it copied around every vpdpbusd (a tied operand), about half the loop's
// instructions (310-440 instead of 750 GOP/s on Zen 4, depending on the caller).
template <int MR, int NV, size_t... I, size_t... M, size_t... Q>
inline void vnni_dot(int64_t kq, const uint8_t* a, int64_t lda, const int8_t* panel,
                     int32_t (&acc)[MR][NV * V], std::index_sequence<I...>,
                     std::index_sequence<M...>, std::index_sequence<Q...>) {
  __m512i c[MR * NV];
  ((c[I] = _mm512_setzero_si512()), ...);
  const int8_t* w = panel;
  for (int64_t p = 0; p < kq; ++p, w += NV * 64) {
    const __m512i wv[NV] = {_mm512_loadu_si512(w + Q * 64)...};
    const __m512i x[MR] = {_mm512_set1_epi32(static_cast<int>(load_quad(a + M * lda + 4 * p)))...};
    (dot_accumulate(c[I], x[I / NV], wv[I % NV]), ...);
  }
  (_mm512_storeu_si512(&acc[I / NV][(I % NV) * V], c[I]), ...);
}
#endif

template <int MR, int NV>
inline void block_dot(int64_t K, const uint8_t* a, int64_t lda, const int8_t* panel,
                      int32_t (&acc)[MR][NV * V]) {
  const int64_t kq = quads(K);
#if defined(__AVX512VNNI__)
  vnni_dot<MR, NV>(kq, a, lda, panel, acc, std::make_index_sequence<MR * NV>{},
                   std::make_index_sequence<MR>{}, std::make_index_sequence<NV>{});
#elif defined(CPU_CAPABILITY_AVX512)
  // A quad (a0..a3) as four 16-bit values repeated; the 64 weight bytes of a gate vector
  // (16 columns x 4 k) as two vectors of 16-bit values (columns 0-7, 8-15). vpmaddwd gives
  // lane 2j: a0 w0 + a1 w1 and lane 2j+1: a2 w2 + a3 w3 of column j of its half.
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int q = 0; q < NV; ++q) {
    __m512i lo[MR], hi[MR];
    for (int m = 0; m < MR; ++m) lo[m] = hi[m] = _mm512_setzero_si512();
    const int8_t* w = panel + q * 64;
    for (int64_t p = 0; p < kq; ++p, w += NV * 64) {
      const __m512i bytes = _mm512_loadu_si512(w);
      const __m512i w_lo = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(bytes));
      const __m512i w_hi = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(bytes, 1));
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m128i quad = _mm_cvtsi32_si128(static_cast<int>(load_quad(a + m * lda + 4 * p)));
        const __m512i x = _mm512_broadcastq_epi64(_mm_cvtepu8_epi16(quad));
        lo[m] = _mm512_add_epi32(lo[m], _mm512_madd_epi16(w_lo, x));
        hi[m] = _mm512_add_epi32(hi[m], _mm512_madd_epi16(w_hi, x));
      }
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i s = _mm512_add_epi32(_mm512_permutex2var_epi32(lo[m], even, hi[m]),
                                         _mm512_permutex2var_epi32(lo[m], odd, hi[m]));
      _mm512_storeu_si512(&acc[m][q * V], s);
    }
  }
#elif defined(CPU_CAPABILITY_AVX2)
  // As the avx512 path with 8 columns a gate vector: the 32 weight bytes as two vectors
  // of 16-bit values (columns 0-3, 4-7); hadd then permute puts the pair sums in order.
  for (int q = 0; q < NV; ++q) {
    __m256i lo[MR], hi[MR];
    for (int m = 0; m < MR; ++m) lo[m] = hi[m] = _mm256_setzero_si256();
    const int8_t* w = panel + q * 32;
    for (int64_t p = 0; p < kq; ++p, w += NV * 32) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
      const __m256i w_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(bytes));
      const __m256i w_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(bytes, 1));
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const __m128i quad = _mm_cvtsi32_si128(static_cast<int>(load_quad(a + m * lda + 4 * p)));
        const __m256i x = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(quad));
        lo[m] = _mm256_add_epi32(lo[m], _mm256_madd_epi16(w_lo, x));
        hi[m] = _mm256_add_epi32(hi[m], _mm256_madd_epi16(w_hi, x));
      }
    }
    for (int m = 0; m < MR; ++m) {
      // hadd: [c0 c1 c4 c5 | c2 c3 c6 c7] -> 64-bit lanes (0, 2, 1, 3)
      const __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo[m], hi[m]), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&acc[m][q * V]), s);
    }
  }
#else
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV * V; ++j) acc[m][j] = 0;
  const int8_t* w = panel;
  for (int64_t p = 0; p < kq; ++p, w += NV * V * 4) {
    for (int m = 0; m < MR; ++m) {
      const uint8_t* x = a + m * lda + 4 * p;
      for (int j = 0; j < NV * V; ++j)
        acc[m][j] += x[0] * w[4 * j] + x[1] * w[4 * j + 1] + x[2] * w[4 * j + 2] +
                     x[3] * w[4 * j + 3];
    }
  }
#endif
}

// out[m][q] = dequantized product of rows a [MR, K] (scales a_scale[MR]) with block blk.
template <int MR, int NV>
inline void product(const Int8Panels& w, int64_t blk, const uint8_t* a, int64_t lda,
                    const float* a_scale, Vec (&out)[MR][NV]) {
  alignas(64) int32_t acc[MR][NV * V];
  block_dot<MR, NV>(w.k, a, lda, w.panels + blk * block_bytes<NV>(w.k), acc);
  const float* col_scale = w.scale + blk * NV * V;
  const int32_t* col_sum = w.sum + blk * NV * V;
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV * V; ++j) acc[m][j] -= 128 * col_sum[j];
  for (int q = 0; q < NV; ++q) {
    const Vec scale = Vec::loadu(col_scale + q * V);
    for (int m = 0; m < MR; ++m) out[m][q] = to_float(&acc[m][q * V]) * scale * Vec(a_scale[m]);
  }
}

}  // namespace int8

// ---------------------------------------------------------------- packing, quantizing

inline void int8_pack(const int8_t* w, const float* scale, int64_t units, int64_t gates,
                      int64_t K, int8_t* panels, float* panel_scale, int32_t* panel_sum) {
  constexpr int V = int8::V;
  const int64_t NV = int8_panel_vectors(gates);
  const int64_t blocks = int8_panel_blocks(units, gates, V);
  const int64_t kq = int8::quads(K);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int8_t* panel = panels + blk * kq * NV * V * 4;
    for (int64_t q = 0; q < NV; ++q) {
      const int8::PanelVector pv = int8::panel_vector(units, gates, blk, q);
      for (int v = 0; v < V; ++v) {
        const int64_t row = pv.column + v;
        const int64_t col = q * V + v;
        const int8_t* src = v < pv.count ? w + row * K : nullptr;
        int32_t sum = 0;
        for (int64_t k = 0; k < kq * 4; ++k) {
          const int8_t value = src != nullptr && k < K ? src[k] : int8_t(0);
          panel[(k / 4) * NV * V * 4 + col * 4 + k % 4] = value;
          sum += value;
        }
        panel_scale[blk * NV * V + col] = src != nullptr ? scale[row] : 0.f;
        panel_sum[blk * NV * V + col] = sum;
      }
    }
  }
}

// Note [int8 inference]: rows of x [.., K] -> u8 rows (stride int8_row_stride(K)) + scales.
inline void int8_quantize_rows(const float* x, int64_t ld_x, int64_t K, int64_t row_begin,
                               int64_t row_end, uint8_t* xq, float* scale) {
  using int8::Vec;
  constexpr int V = int8::V;
  const int64_t ld_q = int8_row_stride(K);
  alignas(64) float rounded[V];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* src = x + r * ld_x;
    uint8_t* dst = xq + r * ld_q;
    Vec peak(0.f);
    for (int64_t k = 0; k < K; k += V)
      peak = at::vec::maximum(peak, Vec::loadu(src + k, std::min<int64_t>(V, K - k)).abs());
    alignas(64) float lanes[V];
    peak.store(lanes);
    float max_abs = 0.f;
    bool finite = true;
    for (int j = 0; j < V; ++j) {
      if (!(lanes[j] <= std::numeric_limits<float>::max())) finite = false;  // NaN, inf
      else max_abs = std::max(max_abs, lanes[j]);
    }
    if (!finite || max_abs == 0.f) {
      scale[r] = finite ? 0.f : std::numeric_limits<float>::quiet_NaN();
      std::memset(dst, 128, ld_q);
      continue;
    }
    scale[r] = max_abs / 127.f;
    const Vec inv(127.f / max_abs);
    for (int64_t k = 0; k < K; k += V) {
      const int64_t n = std::min<int64_t>(V, K - k);
      (Vec::loadu(src + k, n) * inv).round().store(rounded, n);
      for (int64_t j = 0; j < n; ++j) {
        const int q = std::max(-127, std::min(127, static_cast<int>(rounded[j])));
        dst[k + j] = static_cast<uint8_t>(q + 128);
      }
    }
    for (int64_t k = K; k < ld_q; ++k) dst[k] = 128;
  }
}

// ---------------------------------------------------------------- input projection

// Note [int8 input projection blocking]
// A work item is a group of kInt8LinearGroupRows rows (u8, a few KB: stays in L1) by a
// segment of weight blocks small enough to stay in L2 (kInt8SegmentBytes); items run
// segment by segment, so a thread streams the segment's panels from L2 for every row
// group and the rows of x from memory once per segment. Block-major order instead read
// all of x once per block: 199 GOP/s at [6400, 512] x [512, 2048] against 600+.
constexpr int64_t kInt8LinearGroupRows = 48;
constexpr int64_t kInt8SegmentBytes = 256 * 1024;

inline int64_t int8_linear_segment_blocks(const Int8LinearArgs& a) {
  const int64_t bytes = int8::quads(a.w.k) * int8_panel_vectors(a.gates) * int8::V * 4;
  return std::max<int64_t>(1, kInt8SegmentBytes / bytes);
}

inline int64_t int8_linear_items(const Int8LinearArgs& a) {
  const int64_t blocks = int8_panel_blocks(a.units, a.gates, int8::V);
  return ceil_div(a.rows, kInt8LinearGroupRows) *
         ceil_div(blocks, int8_linear_segment_blocks(a));
}

template <int NV>
void int8_linear_nv(const Int8LinearArgs& a, int64_t item_begin, int64_t item_end) {
  using int8::Vec;
  constexpr int V = int8::V;
  constexpr int MR = int8::rows_per_tile<NV>();
  const int64_t groups = ceil_div(a.rows, kInt8LinearGroupRows);
  const int64_t blocks = int8_panel_blocks(a.units, a.gates, V);
  const int64_t per_segment = int8_linear_segment_blocks(a);
  const int64_t ld_q = int8_row_stride(a.w.k);
  for (int64_t i = item_begin; i < item_end; ++i) {
    const int64_t segment = i / groups, group = i % groups;
    const int64_t row_end = std::min(a.rows, (group + 1) * kInt8LinearGroupRows);
    const int64_t blk_end = std::min(blocks, (segment + 1) * per_segment);
    for (int64_t blk = segment * per_segment; blk < blk_end; ++blk) {
      for (int64_t r0 = group * kInt8LinearGroupRows; r0 < row_end; r0 += MR) {
        with_tile_rows<MR>(std::min<int64_t>(MR, row_end - r0), [&](auto mr) {
          constexpr int R = decltype(mr)::value;
          Vec acc[R][NV];
          int8::product<R, NV>(a.w, blk, a.xq + r0 * ld_q, ld_q, a.x_scale + r0, acc);
          for (int q = 0; q < NV; ++q) {
            const int8::PanelVector pv = int8::panel_vector(a.units, a.gates, blk, q);
            if (pv.count == 0) break;
            const Vec bias =
                a.bias != nullptr ? Vec::loadu(a.bias + pv.column, pv.count) : Vec(0.f);
            for (int m = 0; m < R; ++m)
              (acc[m][q] + bias).store(a.out + (r0 + m) * a.ld_out + pv.column, pv.count);
          }
        });
      }
    }
  }
}

inline void int8_linear(const Int8LinearArgs& a, int64_t item_begin, int64_t item_end) {
  switch (int8_panel_vectors(a.gates)) {
    case 3: int8_linear_nv<3>(a, item_begin, item_end); break;
    default: int8_linear_nv<4>(a, item_begin, item_end); break;
  }
}

// ---------------------------------------------------------------- time loops

struct Int8Scratch {
  int64_t ld_h, ld_c, ld_hq, ld_mq;
  float *h_state, *c_state, *m, *h_scale, *m_scale;
  uint8_t *hq, *mq;

  Int8Scratch(const Int8RecurrenceArgs& a, ScratchCarver& sc) {
    const int64_t B = a.seq.batch, H = a.hidden, P = a.output;
    const bool proj = a.w_hr.panels != nullptr;
    ld_h = round_up(P, int8::V);
    ld_c = round_up(H, int8::V);
    ld_hq = int8_row_stride(P);
    ld_mq = int8_row_stride(H);
    h_state = sc.take<float>(2 * B * ld_h);
    c_state = sc.take<float>(a.c0 != nullptr || a.c_n != nullptr ? 2 * B * ld_c : 0);
    m = sc.take<float>(proj ? B * ld_c : 0);
    h_scale = sc.take<float>(B);
    m_scale = sc.take<float>(proj ? B : 0);
    hq = sc.take<uint8_t>(B * ld_hq);
    mq = sc.take<uint8_t>(proj ? B * ld_mq : 0);
  }
};

enum class Int8Cell { kLstm, kGru, kRnnTanh, kRnnRelu };

// Note [int8 fused input projection]
// With args.xq set (batches of kMinFusedBatch and more; the host decides), each step's
// tile also computes its input side, the quantized rows of x_t times W_ih's block plus
// b_ih, instead of reading it from an [N, G*H] float32 x_proj written by one large
// product before the loop: that array (52 MB at T = 100, B = 64, H = 512) is never
// written nor read back. The two products keep their own scales (x's and h's rows), so
// they are dequantized one after the other.
template <int MR, int NV>
inline void int8_input_side(const Int8RecurrenceArgs& a, int64_t gates, int64_t blk,
                            int64_t row0, int8::Vec (&xs)[MR][NV]) {
  using int8::Vec;
  if (a.xq != nullptr)
    int8::product<MR, NV>(a.w_ih, blk, a.xq + row0 * a.ld_xq, a.ld_xq, a.x_scale + row0, xs);
  for (int q = 0; q < NV; ++q) {
    const int8::PanelVector pv = int8::panel_vector(a.hidden, gates, blk, q);
    const int64_t n = pv.count, col = pv.column;
    if (a.xq != nullptr) {
      if (a.b_ih != nullptr && n > 0) {
        const Vec bias = Vec::loadu(a.b_ih + col, n);
        for (int m = 0; m < MR; ++m) xs[m][q] = xs[m][q] + bias;
      }
    } else {
      for (int m = 0; m < MR; ++m)
        xs[m][q] = n > 0 ? Vec::loadu(a.x_proj + (row0 + m) * a.ld_x_proj + col, n) : Vec(0.f);
    }
  }
}

// Gate math of one tile: MR rows (batch rows r0.., sequence rows row0..) by block blk.
template <Int8Cell kCell, int MR>
inline void int8_step_tile(const Int8RecurrenceArgs& a, const Int8Scratch& w, int64_t blk,
                           int64_t r0, int64_t row0, const float* h_prev, const float* c_prev,
                           float* h_next, float* c_next) {
  using int8::Vec;
  constexpr int V = int8::V;
  constexpr int NV = kCell == Int8Cell::kGru ? 3 : 4;
  const int64_t H = a.hidden;
  constexpr int64_t gates = kCell == Int8Cell::kLstm ? 4 : kCell == Int8Cell::kGru ? 3 : 1;
  Vec xs[MR][NV];
  int8_input_side<MR, NV>(a, gates, blk, row0, xs);
  Vec acc[MR][NV];
  int8::product<MR, NV>(a.w_hh, blk, w.hq + r0 * w.ld_hq, w.ld_hq, w.h_scale + r0, acc);
  if constexpr (kCell == Int8Cell::kLstm || kCell == Int8Cell::kGru) {
    const int8::PanelVector pv = int8::panel_vector(H, gates, blk, 0);
    const int64_t u0 = pv.unit, nu = pv.count;
    for (int q = 0; q < NV; ++q) {
      const Vec bias = a.b_hh != nullptr ? Vec::loadu(a.b_hh + q * H + u0, nu) : Vec(0.f);
      for (int m = 0; m < MR; ++m) acc[m][q] = acc[m][q] + bias;
    }
    for (int m = 0; m < MR; ++m) {
      const int64_t r = r0 + m, row = row0 + m;
      if constexpr (kCell == Int8Cell::kLstm) {
        const auto g = math::lstm_activate(acc[m][0] + xs[m][0], acc[m][1] + xs[m][1],
                                           acc[m][2] + xs[m][2], acc[m][3] + xs[m][3]);
        const Vec c = math::lstm_cell_state(g, Vec::loadu(c_prev + r * w.ld_c + u0));
        const Vec h = math::lstm_hidden(g, c);
        c.store(c_next + r * w.ld_c + u0);
        if (a.w_hr.panels != nullptr) {
          h.store(w.m + r * w.ld_c + u0);
        } else {
          h.store(h_next + r * w.ld_h + u0);
          h.store(a.out + row * a.ld_out + u0, nu);
        }
      } else {
        const auto g = math::gru_activate(xs[m][0], xs[m][1], xs[m][2], acc[m][0], acc[m][1],
                                          acc[m][2]);
        const Vec h = math::gru_hidden(g, Vec::loadu(h_prev + r * w.ld_h + u0));
        h.store(h_next + r * w.ld_h + u0);
        h.store(a.out + row * a.ld_out + u0, nu);
      }
    }
  } else {
    constexpr auto kAct =
        kCell == Int8Cell::kRnnRelu ? math::Nonlinearity::kRelu : math::Nonlinearity::kTanh;
    for (int q = 0; q < NV; ++q) {
      const int8::PanelVector pv = int8::panel_vector(H, gates, blk, q);
      if (pv.count == 0) break;
      const int64_t u0 = pv.unit, nu = pv.count;
      const Vec bias = a.b_hh != nullptr ? Vec::loadu(a.b_hh + u0, nu) : Vec(0.f);
      for (int m = 0; m < MR; ++m) {
        const Vec pre = acc[m][q] + bias + xs[m][q];
        const Vec h = math::rnn_activate<kAct>(pre);
        h.store(h_next + (r0 + m) * w.ld_h + u0);
        h.store(a.out + (row0 + m) * a.ld_out + u0, nu);
      }
    }
  }
}

// h_t = m_t @ W_hr^T for a block of 4V output columns.
template <int MR>
inline void int8_projection_tile(const Int8RecurrenceArgs& a, const Int8Scratch& w,
                                 int64_t blk, int64_t r0, int64_t row0, float* h_next) {
  using int8::Vec;
  constexpr int V = int8::V;
  Vec acc[MR][4];
  int8::product<MR, 4>(a.w_hr, blk, w.mq + r0 * w.ld_mq, w.ld_mq, w.m_scale + r0, acc);
  for (int q = 0; q < 4; ++q) {
    const int64_t p0 = (blk * 4 + q) * V;
    if (p0 >= a.output) break;
    const int64_t np = std::min<int64_t>(V, a.output - p0);
    for (int m = 0; m < MR; ++m) {
      acc[m][q].store(h_next + (r0 + m) * w.ld_h + p0);
      acc[m][q].store(a.out + (row0 + m) * a.ld_out + p0, np);
    }
  }
}

template <Int8Cell kCell>
void int8_forward(const Int8RecurrenceArgs& a, Team& team, SliceRange mine) {
  constexpr int NV = kCell == Int8Cell::kGru ? 3 : 4;
  constexpr int MR = int8::rows_per_tile<NV>();
  constexpr int64_t gates = kCell == Int8Cell::kLstm ? 4 : kCell == Int8Cell::kGru ? 3 : 1;
  constexpr bool lstm = kCell == Int8Cell::kLstm;
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const Int8Scratch w(a, sc);
  const int64_t H = a.hidden, P = a.output, B = a.seq.batch;
  const bool proj = a.w_hr.panels != nullptr;
  const int64_t gate_blocks = int8_panel_blocks(H, gates, int8::V);
  const int64_t proj_blocks = proj ? int8_panel_blocks(P, 1, int8::V) : 0;
  // Note [row-split teams] in recurrence_common.h: a row-split team's threads own their
  // rows (states, quantized rows, scales) for the whole sequence and never meet.
  const auto own = worker.own_rows(B);
  const auto rows_to_init = team.split_rows ? own : worker.share(B);
  for (int buf = 0; buf < 2; ++buf) {
    init_state_rows(a.h0, P, w.ld_h, rows_to_init.first, rows_to_init.second,
                    w.h_state + buf * B * w.ld_h);
    if (lstm)
      init_state_rows(a.c0, H, w.ld_c, rows_to_init.first, rows_to_init.second,
                      w.c_state + buf * B * w.ld_c);
  }
  worker.step_done();
  // The rows of [0, active) this thread quantizes.
  auto quantized_rows = [&](int64_t active) -> std::pair<int64_t, int64_t> {
    if (!team.split_rows) return worker.share(active);
    return {std::min(own.first, active), std::min(own.second, active)};
  };
  for (int64_t s = 0; s < a.seq.steps; ++s) {
    const int64_t row_off = a.seq.offset_at(s), active = a.seq.rows_at(s);
    const int cur = s & 1;
    const float* h_prev = w.h_state + cur * B * w.ld_h;
    float* h_next = w.h_state + (1 - cur) * B * w.ld_h;
    const float* c_prev = lstm ? w.c_state + cur * B * w.ld_c : nullptr;
    float* c_next = lstm ? w.c_state + (1 - cur) * B * w.ld_c : nullptr;
    {
      const auto [r0, r1] = quantized_rows(active);
      int8_quantize_rows(h_prev, w.ld_h, P, r0, r1, w.hq, w.h_scale);
      worker.step_done();
    }
    StepRows rows(MR, own);
    rows.forward(active);
    const int64_t nch = rows.chunks();
    {
      const auto [i0, i1] = worker.step_items(gate_blocks * nch);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = rows.chunk(i % nch);
        with_tile_rows<MR>(ch.rows, [&](auto mr) {
          int8_step_tile<kCell, decltype(mr)::value>(a, w, i / nch, ch.row, row_off + ch.row,
                                                     h_prev, c_prev, h_next, c_next);
        });
      }
      worker.step_done();
    }
    if (proj) {
      {
        const auto [r0, r1] = quantized_rows(active);
        int8_quantize_rows(w.m, w.ld_c, H, r0, r1, w.mq, w.m_scale);
        worker.step_done();
      }
      constexpr int PR = int8::rows_per_tile<4>();
      StepRows prows(PR, own);
      prows.forward(active);
      const int64_t pch = prows.chunks();
      const auto [i0, i1] = worker.step_items(proj_blocks * pch);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = prows.chunk(i % pch);
        with_tile_rows<PR>(ch.rows, [&](auto mr) {
          int8_projection_tile<decltype(mr)::value>(a, w, i / pch, ch.row, row_off + ch.row,
                                                    h_next);
        });
      }
      worker.step_done();
    }
  }
  const auto [b0, b1] = team.split_rows ? own : worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t buf = final_state_buffer(a.seq, b);
    copy_row(a.h_n + b * P, w.h_state + (buf * B + b) * w.ld_h, P);
    if (lstm) copy_row(a.c_n + b * H, w.c_state + (buf * B + b) * w.ld_c, H);
  }
}

inline void int8_rnn_forward(const Int8RecurrenceArgs& a, Team& team, SliceRange mine) {
  if (a.relu) {
    int8_forward<Int8Cell::kRnnRelu>(a, team, mine);
  } else {
    int8_forward<Int8Cell::kRnnTanh>(a, team, mine);
  }
}

inline Int8Kernels make_int8_kernels(const char* name) {
  return Int8Kernels{name,
                     int8::V,
                     &int8_pack,
                     &int8_quantize_rows,
                     &int8_linear_items,
                     &int8_linear,
                     &measure_scratch<Int8Scratch, Int8RecurrenceArgs>,
                     &int8_forward<Int8Cell::kLstm>,
                     &int8_forward<Int8Cell::kGru>,
                     &int8_rnn_forward};
}

}  // namespace RNNKERNELS_ISA_NAMESPACE
}  // namespace rnnkernels::cpu
