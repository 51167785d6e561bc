#pragma once
// The fused CPU time loops, compiled once per ISA by kernels_{default,avx2,avx512}.cpp,
// each of which defines CPU_CAPABILITY(_*) and RNNKERNELS_ISA_NAMESPACE first.
//
// Note [fused step]
// Per time step the recurrent product and the gate math run as one pass over register
// tiles: a tile is MR batch rows times NV vectors of output columns; it starts from the
// step's input projection (forward) or zero (backward), accumulates h_prev @ W over the
// whole K dimension from a packed weight panel, and then applies the cell's gate math
// to the accumulators while they are still in registers, writing h, c and what the
// backward needs. The gate pre-activations never go to memory.
//
// Weight panels (packed once per call, see Note [weight packing] in recurrence_cpu.cpp):
//   gate panels   [blocks][K][NV][V]: column (q, v) of block b is gate q of unit b*V+v
//                 (LSTM NV = 4, GRU NV = 3), or unit (b*NV+q)*V+v for single-gate
//                 matrices (RNN W_hh, LSTM W_hr); built by transposing rows of W.
//   column panels [blocks][K][NV][V]: column (q, v) of block b is column (b*NV+q)*V+v of
//                 a [K, cols] matrix; used by the backward, whose product dG @ W reads W
//                 in its natural layout.
// Both are zero-padded, so the inner loop has no tails; tails are masked loads and
// stores of the user-visible tensors in the epilogue. Internal state rows are padded to
// a multiple of V so their loads and stores are whole vectors.
//
// Backward row kinds (Note [backward rows]): walking s = T-1 .. 0, and once more at
// s = -1, the rows of a step fall in three kinds:
//   kActive      active at s and s+1: dh = grad_out + (dG_{s+1} @ W) + carried state
//   kActiveFirst active at s only (a packed sequence that ends at s): no product; the
//                carried state holds grad_h_n
//   kInitial     active at s+1 only: dG_{s+1} @ W is the gradient w.r.t. h0 (reverse
//                direction of a packed sequence, and every row at s = -1)
// The carried per-row state dh_state holds grad_h_n before a row's last step, GRU's
// direct term z*dh between steps, and finally grad_h0; dc_state holds grad_c_n, the
// cell gradient between steps, and finally grad_c0.

#include <algorithm>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>

#include "cpu/kernels.h"
#include "cpu/vec_math.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace rnnkernels::cpu {
inline namespace RNNKERNELS_ISA_NAMESPACE {

using at::vec::Vectorized;

// Note [storage and compute types] in kernels.h: T is stored, compute_t<T> computed.
template <typename T>
using VecOf = Vectorized<compute_t<T>>;

template <typename T>
constexpr bool is_bf16 = std::is_same_v<T, c10::BFloat16>;

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVectorRegisters = 32;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kVectorRegisters = 16;
#else
constexpr int kVectorRegisters = 8;  // the generic Vectorized spans two SSE registers
#endif

// Rows per register tile with NV accumulator vectors a row: NV*MR accumulators, NV
// weight vectors and one broadcast fit the register file.
template <int NV>
constexpr int tile_rows() {
  constexpr int r = (kVectorRegisters - NV - 1) / NV;
  return r < 1 ? 1 : (r > 8 ? 8 : r);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---------------------------------------------------------------- storage

// Elements of k one panel row holds: bfloat16 dot products take pairs of k.
template <typename T>
constexpr int k_pack() {
  return is_bf16<T> ? 2 : 1;
}

// Elements of one packed block of K rows by NV vectors (K padded to whole k_pack rows).
// Row k of a block (k a multiple of k_pack) starts at k * NV * V.
template <typename T, int NV>
constexpr int64_t panel_elems(int64_t K) {
  return round_up(K, k_pack<T>()) * NV * VecOf<T>::size();
}

#if defined(__AVX512BF16__)
inline __mmask16 lane_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}
#endif

// V (or n < V) values of T as one compute vector, and back (bfloat16: round to nearest
// even, as c10::BFloat16 does).
template <typename T>
inline VecOf<T> load_vec(const T* p, int64_t n = VecOf<T>::size()) {
  if constexpr (is_bf16<T>) {
#if defined(__AVX512BF16__)
    const __m256i bits = _mm256_maskz_loadu_epi16(lane_mask(n), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
#else
    static_assert(!is_bf16<T>, "bfloat16 kernels need AVX512-BF16");
#endif
  } else {
    return VecOf<T>::loadu(p, n);
  }
}

template <typename T>
inline void store_vec(T* p, const VecOf<T>& v, int64_t n = VecOf<T>::size()) {
  if constexpr (is_bf16<T>) {
#if defined(__AVX512BF16__)
    const __m256i bits = (__m256i)_mm512_cvtneps_pbh(v);
    _mm256_mask_storeu_epi16(p, lane_mask(n), bits);
#endif
  } else {
    v.store(p, n);
  }
}

// Converting row copies (states in and out of the kernels' buffers).
template <typename Dst, typename Src>
inline void copy_row(Dst* dst, const Src* src, int64_t n) {
  if constexpr (std::is_same_v<Dst, Src>) {
    std::memcpy(dst, src, n * sizeof(Src));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(static_cast<float>(src[i]));
  }
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// ---------------------------------------------------------------- team

class SliceWorker {
 public:
  SliceWorker(Team& team, SliceRange mine) : team_(team), mine_(mine) {}

  // The items [first, second) of n that this thread's slices own.
  std::pair<int64_t, int64_t> share(int64_t n) const {
    return {n * mine_.begin / team_.size, n * mine_.end / team_.size};
  }

  // The batch rows this thread owns for the whole sequence in a row-split team.
  std::pair<int64_t, int64_t> own_rows(int64_t batch) const {
    return team_.split_rows ? share(batch) : std::pair<int64_t, int64_t>{0, batch};
  }

  // The step's work items [first, second) of n for this thread: all of them in a
  // row-split team (whose StepRows hold only its own rows), else a share.
  std::pair<int64_t, int64_t> step_items(int64_t n) const {
    return team_.split_rows ? std::pair<int64_t, int64_t>{0, n} : share(n);
  }

  // The end of a step: a row-split team's threads never read each other's rows.
  void step_done() {
    if (!team_.split_rows) sync();
  }

  // Every slice of the team has finished the current phase once this returns.
  void sync() {
    ++phase_;
    const int64_t mine = mine_.end - mine_.begin;
    if (mine == team_.size) return;
    const int64_t target = phase_ * team_.size;
    team_.arrived.fetch_add(mine, std::memory_order_acq_rel);
    int spins = 0;
    while (team_.arrived.load(std::memory_order_acquire) < target) {
      if (++spins < (1 << 16)) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  Team& team_;
  SliceRange mine_;
  int64_t phase_ = 0;
};

// Carves 64-byte aligned arrays out of the host's scratch buffer; run with a null base
// it only measures.
class ScratchCarver {
 public:
  explicit ScratchCarver(void* base) : base_(static_cast<char*>(base)) {
    if (base_ != nullptr) {
      const auto addr = reinterpret_cast<uintptr_t>(base_);
      offset_ = static_cast<int64_t>(round_up(static_cast<int64_t>(addr), 64) - addr);
    }
  }
  template <typename T>
  T* take(int64_t count) {
    offset_ = round_up(offset_, 64);
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * static_cast<int64_t>(sizeof(T));
    return p;
  }
  int64_t bytes() const { return offset_ + 64; }

 private:
  char* base_;
  int64_t offset_ = 0;
};

// The scratch bytes a kernel needs: its Scratch layout carved out of nothing.
template <typename Scratch, typename Args>
int64_t measure_scratch(const Args& a, int64_t /*team_size*/) {
  ScratchCarver sc(nullptr);
  Scratch w(a, sc);
  return sc.bytes();
}

// ---------------------------------------------------------------- rows

enum RowKind : int { kActive = 0, kActiveFirst = 1, kInitial = 2 };

struct RowChunk {
  int64_t row = 0;   // first batch row
  int64_t rows = 0;  // at most MR
  int kind = kActive;
  bool has_prev = false;  // the row was active at step s-1 (else its state starts at h0/c0)
};

// The rows of one step as segments of one kind, each cut into balanced chunks of at
// most `max_rows` rows.
class StepRows {
 public:
  // Only rows in [row_lo, row_hi) are kept (a row-split team's own rows).
  explicit StepRows(int64_t max_rows, std::pair<int64_t, int64_t> own = {0, INT64_MAX})
      : max_rows_(max_rows), row_lo_(own.first), row_hi_(own.second) {}

  void add(int64_t begin, int64_t end, int kind, bool has_prev) {
    begin = std::max(begin, row_lo_);
    end = std::min(end, row_hi_);
    if (end <= begin) return;
    Segment& g = seg_[count_++];
    g.begin = begin;
    g.rows = end - begin;
    g.chunks = ceil_div(g.rows, max_rows_);
    g.first_chunk = chunks_;
    g.kind = kind;
    g.has_prev = has_prev;
    chunks_ += g.chunks;
  }

  // Forward: rows [0, active).
  void forward(int64_t active) { add(0, active, kActive, true); }

  // Backward step s: see Note [backward rows].
  void backward(int64_t active, int64_t next_active, int64_t prev_active) {
    int64_t cuts[5] = {0, active, next_active, prev_active, std::max(active, next_active)};
    std::sort(cuts, cuts + 5);
    const int64_t hi = std::max(active, next_active);
    for (int i = 0; i + 1 < 5; ++i) {
      const int64_t a = cuts[i], b = std::min(cuts[i + 1], hi);
      if (a >= b) continue;
      const bool is_active = a < active, has_next = a < next_active;
      const int kind = is_active ? (has_next ? kActive : kActiveFirst) : kInitial;
      add(a, b, kind, a < prev_active);
    }
  }

  int64_t chunks() const { return chunks_; }

  RowChunk chunk(int64_t c) const {
    int i = 0;
    while (c >= seg_[i].first_chunk + seg_[i].chunks) ++i;
    const Segment& g = seg_[i];
    const int64_t k = c - g.first_chunk;
    const int64_t lo = g.begin + g.rows * k / g.chunks;
    const int64_t hi = g.begin + g.rows * (k + 1) / g.chunks;
    return {lo, hi - lo, g.kind, g.has_prev};
  }

 private:
  struct Segment {
    int64_t begin, rows, chunks, first_chunk;
    int kind;
    bool has_prev;
  };
  int64_t max_rows_, row_lo_, row_hi_;
  Segment seg_[5];
  int count_ = 0;
  int64_t chunks_ = 0;
};

// Calls f(std::integral_constant<int, rows>) for a runtime rows in [1, MR].
template <int MR, typename F>
inline void with_tile_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: if constexpr (MR >= 2) f(std::integral_constant<int, 2>{}); break;
    case 3: if constexpr (MR >= 3) f(std::integral_constant<int, 3>{}); break;
    case 4: if constexpr (MR >= 4) f(std::integral_constant<int, 4>{}); break;
    case 5: if constexpr (MR >= 5) f(std::integral_constant<int, 5>{}); break;
    case 6: if constexpr (MR >= 6) f(std::integral_constant<int, 6>{}); break;
    case 7: if constexpr (MR >= 7) f(std::integral_constant<int, 7>{}); break;
    case 8: if constexpr (MR >= 8) f(std::integral_constant<int, 8>{}); break;
    default: break;
  }
}

// Number of processing steps during which batch row b is active, and the state buffer
// (0 or 1) its last step wrote. Step s reads buffer s%2 and writes (s+1)%2.
template <typename Seq>
inline int64_t final_state_buffer(const Seq& seq, int64_t b) {
  // Rows of time t are a prefix; count the times whose batch size exceeds b.
  int64_t lo = 0, hi = seq.steps;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (seq.batch_sizes[mid] > b) lo = mid + 1; else hi = mid;
  }
  const int64_t active_steps = lo;
  if (active_steps == 0) return 0;
  const int64_t last = seq.reverse ? seq.steps - 1 : active_steps - 1;
  return (last + 1) & 1;
}

// ---------------------------------------------------------------- GEMM tile

#if defined(__AVX512BF16__)
// Note [bfloat16 products]
// vdpbf16ps multiplies pairs of bfloat16 and adds both products to a float lane: a panel
// row holds k and k+1 of each column side by side ([K/2][NV*V][2]), and A's pair
// (a[k], a[k+1]) is broadcast as one 32-bit value. An odd K ends with the pair (a[K-1], 0)
// against the zero padding row, so no element past a row of A is read.
template <int MR, int NV>
inline void panel_gemm_bf16(int64_t K, const c10::BFloat16* a, int64_t lda,
                            const c10::BFloat16* panel, Vectorized<float> (&acc)[MR][NV]) {
  constexpr int V = 16;
  __m512 c[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) c[m][q] = acc[m][q];
  const c10::BFloat16* w = panel;
  const int64_t pairs = K / 2;
  for (int64_t p = 0; p < pairs; ++p, w += NV * V * 2) {
    __m512bh wv[NV];
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) wv[q] = (__m512bh)_mm512_loadu_si512(w + q * V * 2);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      uint32_t pair;
      std::memcpy(&pair, a + m * lda + 2 * p, sizeof(pair));
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 8
      for (int q = 0; q < NV; ++q) c[m][q] = _mm512_dpbf16_ps(c[m][q], x, wv[q]);
    }
  }
  if (K % 2 != 0) {
    __m512bh wv[NV];
    for (int q = 0; q < NV; ++q) wv[q] = (__m512bh)_mm512_loadu_si512(w + q * V * 2);
    for (int m = 0; m < MR; ++m) {
      const uint32_t lone = a[m * lda + K - 1].x;
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(lone));
      for (int q = 0; q < NV; ++q) c[m][q] = _mm512_dpbf16_ps(c[m][q], x, wv[q]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) acc[m][q] = c[m][q];
}
#endif

// acc[m][q] += sum_k a[m*lda + k] * B[k][q*V .. +V], B packed as panel_elems<T, NV>.
template <typename T, int MR, int NV>
inline void panel_gemm(int64_t K, const T* a, int64_t lda, const T* panel,
                       VecOf<T> (&acc)[MR][NV]) {
  if constexpr (is_bf16<T>) {
#if defined(__AVX512BF16__)
    panel_gemm_bf16<MR, NV>(K, a, lda, panel, acc);
#endif
  } else {
    using Vec = Vectorized<T>;
    constexpr int V = Vec::size();
    const T* w = panel;
    for (int64_t k = 0; k < K; ++k, w += NV * V) {
      Vec wv[NV];
#pragma GCC unroll 8
      for (int q = 0; q < NV; ++q) wv[q] = Vec::loadu(w + q * V);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const Vec x(a[m * lda + k]);
#pragma GCC unroll 8
        for (int q = 0; q < NV; ++q) acc[m][q] = at::vec::fmadd(x, wv[q], acc[m][q]);
      }
    }
  }
}

// Note [sliced recurrent product]
// A block's panel holds K rows of NV*V columns. Once it outgrows L2 (K = 4H = 4096 for
// float32 at H = 1024: 1 MB), every row chunk of a step streams it again from L3, and
// the product runs ~20% below the machine's matmul rate. Cutting K into slices whose
// panel part fits L2, with the partial sums of each chunk through memory between
// slices, keeps the panel in L2 across a block's chunks. The sums run in the same
// order, so the result is bit-identical to the unsliced product.
template <typename T, int NV>
constexpr int64_t product_k_slice(int64_t K) {
  constexpr int64_t kPanelSliceBytes = 256 * 1024;
  constexpr int64_t slice = kPanelSliceBytes / (NV * VecOf<T>::size() * sizeof(T)) /
                            k_pack<T>() * k_pack<T>();
  return K > 2 * slice ? slice : K;
}

template <typename S, int MR, int NV>
inline void zero_tile(Vectorized<S> (&acc)[MR][NV]) {
  for (int m = 0; m < MR; ++m)
    for (int q = 0; q < NV; ++q) acc[m][q] = Vectorized<S>(S(0));
}

// ---------------------------------------------------------------- packing

// Element (k, column j) of a block in panel_elems layout: whole k_pack rows of NV*V
// columns, the k_pack values of one column adjacent.
template <typename T, int NV>
inline int64_t panel_index(int64_t k, int64_t j) {
  constexpr int KP = k_pack<T>();
  return (k / KP * NV * VecOf<T>::size() + j) * KP + k % KP;
}

// Gate panel block `blk` of W [gates*units, K] (row stride ld_w); see Note [fused step].
template <typename T, int NV>
void pack_gate_panel(const T* w, int64_t ld_w, int64_t units, int64_t gates, int64_t K,
                     int64_t blk, T* panels) {
  constexpr int V = VecOf<T>::size();
  const int64_t K_padded = round_up(K, k_pack<T>());
  T* panel = panels + blk * panel_elems<T, NV>(K);
  for (int q = 0; q < NV; ++q) {
    for (int v = 0; v < V; ++v) {
      const int64_t unit = gates > 1 ? blk * V + v : (blk * NV + q) * V + v;
      const int64_t row = gates > 1 ? q * units + unit : unit;
      const T* src = unit < units ? w + row * ld_w : nullptr;
      for (int64_t k = 0; k < K_padded; ++k)
        panel[panel_index<T, NV>(k, q * V + v)] = src != nullptr && k < K ? src[k] : T(0);
    }
  }
}

// Column panel block `blk` of W [K, cols] (row stride ld_w).
template <typename T, int NV>
void pack_column_panel(const T* w, int64_t ld_w, int64_t cols, int64_t K, int64_t blk,
                       T* panels) {
  constexpr int W = NV * VecOf<T>::size();
  T* panel = panels + blk * panel_elems<T, NV>(K);
  const int64_t c0 = blk * W;
  const int64_t n = std::max<int64_t>(0, std::min<int64_t>(W, cols - c0));
  if constexpr (k_pack<T>() == 1) {
    for (int64_t k = 0; k < K; ++k) {
      T* d = panel + k * W;
      if (n > 0) std::memcpy(d, w + k * ld_w + c0, n * sizeof(T));
      for (int64_t j = n; j < W; ++j) d[j] = T(0);
    }
  } else {
    for (int64_t k = 0; k < round_up(K, k_pack<T>()); ++k)
      for (int64_t j = 0; j < W; ++j)
        panel[panel_index<T, NV>(k, j)] = k < K && j < n ? w[k * ld_w + c0 + j] : T(0);
  }
}

// Copies rows [row_begin, row_end) of src [B, cols] into dst [B, ld] and zeroes the
// padding; a null src gives zeros.
template <typename Dst, typename Src>
void init_state_rows(const Src* src, int64_t cols, int64_t ld, int64_t row_begin,
                     int64_t row_end, Dst* dst) {
  for (int64_t b = row_begin; b < row_end; ++b) {
    Dst* d = dst + b * ld;
    if (src != nullptr) {
      copy_row(d, src + b * cols, cols);
    } else {
      std::fill(d, d + cols, Dst(0));
    }
    std::fill(d + cols, d + ld, Dst(0));
  }
}

template <typename T>
inline VecOf<T> load_or_zero(const T* p, int64_t n) {
  return p != nullptr ? load_vec(p, n) : VecOf<T>(compute_t<T>(0));
}

// ================================================================ LSTM

// Note [fused input projection]
// With args.x set, the forward computes the input projection inside the time loop: a
// tile starts from b_ih + b_hh and accumulates x_t @ W_ih^T (panels of W_ih, K = I) and
// h_{t-1} @ W_hh^T (K = P) before the gate math. Compared with one large GEMM before the
// loop this never writes or reads the [N, 4H] pre-activations (up to tens of MB a layer,
// whose loads cost 10-20% of a step), and the deeper K amortises a tile's fixed costs.
template <typename T>
struct LstmForwardScratch {
  using S = compute_t<T>;
  static constexpr int V = VecOf<T>::size();
  int64_t gate_blocks, proj_blocks, ld_h, ld_c;
  T *packed_hh, *packed_ih, *packed_hr, *h_state, *m;
  S* c_state;

  LstmForwardScratch(const LstmForwardArgs<T>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, P = a.output, B = a.seq.batch;
    const bool proj = a.w_hr != nullptr;
    gate_blocks = ceil_div(H, V);
    proj_blocks = proj ? ceil_div(P, 4 * V) : 0;
    ld_h = round_up(P, V);
    ld_c = round_up(H, V);
    packed_hh = sc.take<T>(gate_blocks * panel_elems<T, 4>(P));
    packed_ih = sc.take<T>(a.x != nullptr ? gate_blocks * panel_elems<T, 4>(a.input) : 0);
    packed_hr = sc.take<T>(proj_blocks * panel_elems<T, 4>(H));
    h_state = sc.take<T>(2 * B * ld_h);
    c_state = sc.take<S>(2 * B * ld_c);
    m = sc.take<T>(proj ? B * ld_c : 0);
  }
};

template <typename T, int MR>
inline void lstm_forward_tile(const LstmForwardArgs<T>& a, const LstmForwardScratch<T>& w,
                              int64_t blk, int64_t r0, int64_t row0, const T* h_prev,
                              const compute_t<T>* c_prev, T* h_next, compute_t<T>* c_next) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden, P = a.output;
  const int64_t u0 = blk * V;
  const int64_t nu = std::min<int64_t>(V, H - u0);
  const bool proj = a.w_hr != nullptr;
  Vec acc[MR][4];
  if (a.h_pre != nullptr) {  // single step: the recurrent product came from the host
    for (int q = 0; q < 4; ++q)
      for (int m = 0; m < MR; ++m)
        acc[m][q] = load_vec(a.x_proj + (row0 + m) * a.ld_x_proj + q * H + u0, nu) +
                    load_vec(a.h_pre + (r0 + m) * 4 * H + q * H + u0, nu);
  } else if (a.x != nullptr) {  // Note [fused input projection]
    for (int q = 0; q < 4; ++q) {
      const Vec bias = load_or_zero(a.b_hh != nullptr ? a.b_hh + q * H + u0 : nullptr, nu) +
                       load_or_zero(a.b_ih != nullptr ? a.b_ih + q * H + u0 : nullptr, nu);
      for (int m = 0; m < MR; ++m) acc[m][q] = bias;
    }
    panel_gemm<T, MR, 4>(a.input, a.x + row0 * a.ld_x, a.ld_x,
                         w.packed_ih + blk * panel_elems<T, 4>(a.input), acc);
    panel_gemm<T, MR, 4>(P, h_prev + r0 * w.ld_h, w.ld_h,
                         w.packed_hh + blk * panel_elems<T, 4>(P), acc);
  } else {
    for (int q = 0; q < 4; ++q) {
      const Vec bias = load_or_zero(a.b_hh != nullptr ? a.b_hh + q * H + u0 : nullptr, nu);
      for (int m = 0; m < MR; ++m)
        acc[m][q] = load_vec(a.x_proj + (row0 + m) * a.ld_x_proj + q * H + u0, nu) + bias;
    }
    panel_gemm<T, MR, 4>(P, h_prev + r0 * w.ld_h, w.ld_h,
                         w.packed_hh + blk * panel_elems<T, 4>(P), acc);
  }
  // Stage by stage over the tile's rows (not row by row): each stage's MR rows are
  // independent, so their long exp/tanh chains overlap instead of waiting on each other.
  math::LstmGates<Vec> g[MR];
  Vec c[MR], h[MR];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
    g[m] = math::lstm_activate(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
    c[m] = math::lstm_cell_state(g[m], Vec::loadu(c_prev + (r0 + m) * w.ld_c + u0));
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) h[m] = math::lstm_hidden(g[m], c[m]);
  const int64_t ws_width = math::lstm_workspace_slots(a.zoneout != nullptr) * H;
  for (int m = 0; m < MR; ++m) {
    const int64_t r = r0 + m, row = row0 + m;
    Vec c_state = c[m], h_state = h[m];
    if (a.zoneout != nullptr) {  // Note [zoneout]: h and c both from c before zoneout
      const S* keep = a.zoneout + row * a.ld_zoneout;
      c_state = math::zoneout(c[m], Vec::loadu(c_prev + r * w.ld_c + u0),
                              Vec::loadu(keep + P + u0, nu));
      if (!proj)
        h_state = math::zoneout(h[m], load_vec(h_prev + r * w.ld_h + u0),
                                Vec::loadu(keep + u0, nu));
    }
    c_state.store(c_next + r * w.ld_c + u0);
    if (!proj) {
      store_vec(h_next + r * w.ld_h + u0, h_state);
      store_vec(a.out + row * a.ld_out + u0, h_state, nu);
    } else {
      store_vec(w.m + r * w.ld_c + u0, h[m]);
    }
    if (a.workspace != nullptr) {
      S* ws = a.workspace + row * ws_width + u0;
      g[m].i.store(ws, nu);
      g[m].f.store(ws + H, nu);
      g[m].g.store(ws + 2 * H, nu);
      g[m].o.store(ws + 3 * H, nu);
      c[m].store(ws + 4 * H, nu);
      if (a.zoneout != nullptr) c_state.store(ws + math::lstm_workspace_state_slot(true) * H, nu);
    }
  }
}

// h_t = m_t @ W_hr^T for an output block of 4V columns (then zoneout on h_t).
template <typename T, int MR>
inline void lstm_projection_tile(const LstmForwardArgs<T>& a, const LstmForwardScratch<T>& w,
                                 int64_t blk, int64_t r0, int64_t row0, const T* h_prev,
                                 T* h_next) {
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden, P = a.output;
  Vec acc[MR][4];
  zero_tile(acc);
  panel_gemm<T, MR, 4>(H, w.m + r0 * w.ld_c, w.ld_c, w.packed_hr + blk * panel_elems<T, 4>(H),
                       acc);
  for (int m = 0; m < MR; ++m) {
    for (int q = 0; q < 4; ++q) {
      const int64_t p0 = (blk * 4 + q) * V;
      if (p0 >= P) break;
      const int64_t np = std::min<int64_t>(V, P - p0);
      Vec h = acc[m][q];
      if (a.zoneout != nullptr)
        h = math::zoneout(h, load_vec(h_prev + (r0 + m) * w.ld_h + p0),
                          Vec::loadu(a.zoneout + (row0 + m) * a.ld_zoneout + p0, np));
      store_vec(h_next + (r0 + m) * w.ld_h + p0, h);
      store_vec(a.out + (row0 + m) * a.ld_out + p0, h, np);
    }
  }
}

template <typename T>
void lstm_forward(const LstmForwardArgs<T>& a, Team& team, SliceRange mine) {
  using S = compute_t<T>;
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const LstmForwardScratch<T> w(a, sc);
  const int64_t H = a.hidden, P = a.output, B = a.seq.batch, steps = a.seq.steps;
  const bool proj = a.w_hr != nullptr;

  {  // pack W_hh (and W_hr^T), load h0 and c0 into both state buffers
    const int64_t gate_blocks = a.h_pre != nullptr ? 0 : w.gate_blocks;
    const int64_t input_blocks = a.x != nullptr ? w.gate_blocks : 0;
    const int64_t items = gate_blocks + input_blocks + w.proj_blocks + 1;
    const auto [i0, i1] = worker.share(items);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < gate_blocks) {
        pack_gate_panel<T, 4>(a.w_hh, P, H, 4, P, i, w.packed_hh);
      } else if (i < gate_blocks + input_blocks) {
        pack_gate_panel<T, 4>(a.w_ih, a.input, H, 4, a.input, i - gate_blocks, w.packed_ih);
      } else if (i < gate_blocks + input_blocks + w.proj_blocks) {
        pack_gate_panel<T, 4>(a.w_hr, H, P, 1, H, i - gate_blocks - input_blocks, w.packed_hr);
      } else {
        for (int buf = 0; buf < 2; ++buf) {
          init_state_rows(a.h0, P, w.ld_h, 0, B, w.h_state + buf * B * w.ld_h);
          init_state_rows(a.c0, H, w.ld_c, 0, B, w.c_state + buf * B * w.ld_c);
        }
      }
    }
    worker.sync();
  }

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t row_off = a.seq.offset_at(s);
    const int cur = s & 1;
    const T* h_prev = w.h_state + cur * B * w.ld_h;
    const S* c_prev = w.c_state + cur * B * w.ld_c;
    T* h_next = w.h_state + (1 - cur) * B * w.ld_h;
    S* c_next = w.c_state + (1 - cur) * B * w.ld_c;
    StepRows rows(MR, worker.own_rows(B));
    rows.forward(a.seq.rows_at(s));
    const int64_t nch = rows.chunks();
    {
      const auto [i0, i1] = worker.step_items(w.gate_blocks * nch);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = rows.chunk(i % nch);
        with_tile_rows<MR>(ch.rows, [&](auto mr) {
          lstm_forward_tile<T, decltype(mr)::value>(a, w, i / nch, ch.row, row_off + ch.row,
                                                    h_prev, c_prev, h_next, c_next);
        });
      }
      worker.step_done();
    }
    if (proj) {
      const auto [i0, i1] = worker.step_items(w.proj_blocks * nch);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = rows.chunk(i % nch);
        with_tile_rows<MR>(ch.rows, [&](auto mr) {
          lstm_projection_tile<T, decltype(mr)::value>(a, w, i / nch, ch.row, row_off + ch.row,
                                                       h_prev, h_next);
        });
      }
      worker.step_done();
    }
  }

  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t buf = final_state_buffer(a.seq, b);
    copy_row(a.h_n + b * P, w.h_state + (buf * B + b) * w.ld_h, P);
    copy_row(a.c_n + b * H, w.c_state + (buf * B + b) * w.ld_c, H);
  }
}

template <typename T>
struct LstmBackwardScratch {
  using S = compute_t<T>;
  static constexpr int V = VecOf<T>::size();
  int64_t out_blocks, hidden_blocks, ld_h, ld_c, k_slice;
  T *packed_hh, *packed_hr;
  S *dh_state, *dc_state, *dh_partial;

  LstmBackwardScratch(const LstmBackwardArgs<T>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, P = a.output, B = a.seq.batch;
    const bool proj = a.w_hr != nullptr;
    out_blocks = ceil_div(P, 4 * V);
    hidden_blocks = ceil_div(H, 4 * V);
    ld_h = round_up(P, 4 * V);
    ld_c = round_up(H, 4 * V);
    packed_hh = sc.take<T>(out_blocks * panel_elems<T, 4>(4 * H));
    packed_hr = sc.take<T>(proj ? hidden_blocks * panel_elems<T, 4>(P) : 0);
    dh_state = sc.take<S>(B * ld_h);
    dc_state = sc.take<S>(B * ld_c);
    k_slice = product_k_slice<T, 4>(4 * H);
    dh_partial = sc.take<S>(k_slice < 4 * H ? B * ld_h : 0);
  }
};

// The cell backward for 4V hidden units of a chunk's rows. dh_partial holds the
// product part of dL/d(o*tanh c); with `add_carried` the carried state and grad_out are
// added (no projection), otherwise dh_partial is complete (projection: dm).
template <typename T, int MR>
inline void lstm_cell_backward_tile(const LstmBackwardArgs<T>& a,
                                    const LstmBackwardScratch<T>& w, int64_t s, int64_t blk,
                                    const RowChunk& ch, VecOf<T> (&dh_partial)[MR][4],
                                    bool add_carried) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  const int64_t row_off = a.seq.offset_at(s);
  const int64_t prev_off = ch.has_prev ? a.seq.offset_at(s - 1) : 0;
  const bool zoneout = a.zoneout != nullptr;
  const int64_t ws_width = math::lstm_workspace_slots(zoneout) * H;
  const int64_t c_state_slot = math::lstm_workspace_state_slot(zoneout) * H;
  for (int m = 0; m < MR; ++m) {
    const int64_t r = ch.row + m, row = row_off + r;
    const S* ws = a.workspace + row * ws_width;
    const S* keep = zoneout ? a.zoneout + row * a.ld_zoneout : nullptr;
    const S* c_prev_ws = ch.has_prev ? a.workspace + (prev_off + r) * ws_width + c_state_slot
                                     : nullptr;
    T* gx = a.grad_x_proj + row * a.ld_grad_x_proj;
    for (int q = 0; q < 4; ++q) {
      const int64_t u0 = (blk * 4 + q) * V;
      if (u0 >= H) break;
      const int64_t nu = std::min<int64_t>(V, H - u0);
      Vec dh = dh_partial[m][q];
      if (add_carried) {
        S* carried = w.dh_state + r * w.ld_h + u0;
        dh = dh + Vec::loadu(carried) +
             load_or_zero(a.grad_out != nullptr ? a.grad_out + row * a.ld_grad_out + u0 : nullptr,
                          nu);
        if (zoneout) {  // Note [zoneout]: the unit's share that skips the cell
          const Vec keep_h = Vec::loadu(keep + u0, nu);
          math::zoneout_carried_grad(dh, keep_h).store(carried);
          dh = math::zoneout_candidate_grad(dh, keep_h);
        } else {
          Vec(S(0)).store(carried);
        }
      }
      S* dc_ptr = w.dc_state + r * w.ld_c + u0;
      Vec dc = Vec::loadu(dc_ptr);
      Vec dc_skip(S(0));
      if (zoneout) {
        const Vec keep_c = Vec::loadu(keep + a.output + u0, nu);
        dc_skip = math::zoneout_carried_grad(dc, keep_c);
        dc = math::zoneout_candidate_grad(dc, keep_c);
      }
      const math::LstmGates<Vec> g{Vec::loadu(ws + u0, nu), Vec::loadu(ws + H + u0, nu),
                                   Vec::loadu(ws + 2 * H + u0, nu),
                                   Vec::loadu(ws + 3 * H + u0, nu)};
      const Vec c = Vec::loadu(ws + 4 * H + u0, nu);
      const Vec c_prev = c_prev_ws != nullptr ? Vec::loadu(c_prev_ws + u0, nu)
                                              : load_vec(a.c0 + r * H + u0, nu);
      const auto d = math::lstm_cell_backward(dh, dc, g, c, c_prev);
      store_vec(gx + u0, d.i, nu);
      store_vec(gx + H + u0, d.f, nu);
      store_vec(gx + 2 * H + u0, d.g, nu);
      store_vec(gx + 3 * H + u0, d.o, nu);
      (zoneout ? dc + dc_skip : dc).store(dc_ptr);
    }
  }
}

// Phase A of step s: the product dG_{s+1} @ W_hh for a block of 4V output columns, over
// the K slice [k0, k1) of 4H (Note [sliced recurrent product]); the last slice runs the
// cell backward.
template <typename T, int MR>
inline void lstm_backward_tile(const LstmBackwardArgs<T>& a, const LstmBackwardScratch<T>& w,
                               int64_t s, int64_t blk, const RowChunk& ch, int64_t k0,
                               int64_t k1) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden, P = a.output;
  const bool proj = a.w_hr != nullptr;
  if (ch.kind == kActiveFirst && k1 < 4 * H) return;  // no product, nothing to slice
  S* partial = w.dh_partial != nullptr ? w.dh_partial + ch.row * w.ld_h + blk * 4 * V : nullptr;
  Vec acc[MR][4];
  if (k0 == 0 || ch.kind == kActiveFirst) {
    zero_tile(acc);
  } else {
    for (int m = 0; m < MR; ++m)
      for (int q = 0; q < 4; ++q) acc[m][q] = Vec::loadu(partial + m * w.ld_h + q * V);
  }
  if (ch.kind != kActiveFirst) {
    const int64_t next_off = a.seq.offset_at(s + 1);
    panel_gemm<T, MR, 4>(k1 - k0,
                         a.grad_x_proj + (next_off + ch.row) * a.ld_grad_x_proj + k0,
                         a.ld_grad_x_proj,
                         w.packed_hh + blk * panel_elems<T, 4>(4 * H) + k0 * 4 * V, acc);
  }
  if (k1 < 4 * H) {
    for (int m = 0; m < MR; ++m)
      for (int q = 0; q < 4; ++q) acc[m][q].store(partial + m * w.ld_h + q * V);
    return;
  }
  if (ch.kind == kInitial) {
    for (int m = 0; m < MR; ++m) {
      S* carried = w.dh_state + (ch.row + m) * w.ld_h + blk * 4 * V;
      for (int q = 0; q < 4; ++q)
        (Vec::loadu(carried + q * V) + acc[m][q]).store(carried + q * V);
    }
    return;
  }
  if (!proj) {
    lstm_cell_backward_tile<T, MR>(a, w, s, blk, ch, acc, /*add_carried=*/true);
    return;
  }
  // Projection: complete dL/dh_t and keep it for phase B and for dW_hr.
  const int64_t row_off = a.seq.offset_at(s);
  for (int m = 0; m < MR; ++m) {
    const int64_t r = ch.row + m, row = row_off + r;
    for (int q = 0; q < 4; ++q) {
      const int64_t p0 = (blk * 4 + q) * V;
      if (p0 >= P) break;
      const int64_t np = std::min<int64_t>(V, P - p0);
      S* carried = w.dh_state + r * w.ld_h + p0;
      Vec dh =
          acc[m][q] + Vec::loadu(carried) +
          load_or_zero(a.grad_out != nullptr ? a.grad_out + row * a.ld_grad_out + p0 : nullptr,
                       np);
      if (a.zoneout != nullptr) {  // grad_h then holds the projection output's share
        const Vec keep_h = Vec::loadu(a.zoneout + row * a.ld_zoneout + p0, np);
        math::zoneout_carried_grad(dh, keep_h).store(carried);
        dh = math::zoneout_candidate_grad(dh, keep_h);
      } else {
        Vec(S(0)).store(carried);
      }
      store_vec(a.grad_h + row * P + p0, dh, np);
    }
  }
}

// Phase B of step s (projection only): dm = dh_t @ W_hr, then the cell backward.
template <typename T, int MR>
inline void lstm_backward_projection_tile(const LstmBackwardArgs<T>& a,
                                          const LstmBackwardScratch<T>& w, int64_t s,
                                          int64_t blk, const RowChunk& ch) {
  const int64_t P = a.output;
  VecOf<T> acc[MR][4];
  zero_tile(acc);
  const int64_t row_off = a.seq.offset_at(s);
  panel_gemm<T, MR, 4>(P, a.grad_h + (row_off + ch.row) * P, P,
                       w.packed_hr + blk * panel_elems<T, 4>(P), acc);
  lstm_cell_backward_tile<T, MR>(a, w, s, blk, ch, acc, /*add_carried=*/false);
}

template <typename T>
void lstm_backward(const LstmBackwardArgs<T>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const LstmBackwardScratch<T> w(a, sc);
  const int64_t H = a.hidden, P = a.output, B = a.seq.batch, steps = a.seq.steps;
  const bool proj = a.w_hr != nullptr;
  {
    const int64_t out_blocks = a.skip_initial_product ? 0 : w.out_blocks;
    const int64_t items = out_blocks + (proj ? w.hidden_blocks : 0) + 1;
    const auto [i0, i1] = worker.share(items);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < out_blocks) {
        pack_column_panel<T, 4>(a.w_hh, P, P, 4 * H, i, w.packed_hh);
      } else if (proj && i < out_blocks + w.hidden_blocks) {
        pack_column_panel<T, 4>(a.w_hr, H, H, P, i - out_blocks, w.packed_hr);
      } else {
        init_state_rows(a.grad_h_n, P, w.ld_h, 0, B, w.dh_state);
        init_state_rows(a.grad_c_n, H, w.ld_c, 0, B, w.dc_state);
      }
    }
    worker.sync();
  }

  const int64_t last_step = a.skip_initial_product ? 0 : -1;
  for (int64_t s = steps - 1; s >= last_step; --s) {
    const int64_t active = a.seq.rows_at(s);
    StepRows rows(MR, worker.own_rows(B));
    rows.backward(active, a.seq.rows_at(s + 1), a.seq.rows_at(s - 1));
    const int64_t nch = rows.chunks();
    {
      const auto [i0, i1] = worker.step_items(w.out_blocks * nch);
      for (int64_t run = i0; run < i1;) {  // the chunks of one block, slice by slice
        const int64_t blk = run / nch, run_end = std::min(i1, (blk + 1) * nch);
        for (int64_t k0 = 0; k0 < 4 * H; k0 += w.k_slice) {
          const int64_t k1 = std::min(4 * H, k0 + w.k_slice);
          for (int64_t i = run; i < run_end; ++i) {
            const RowChunk ch = rows.chunk(i % nch);
            with_tile_rows<MR>(ch.rows, [&](auto mr) {
              lstm_backward_tile<T, decltype(mr)::value>(a, w, s, blk, ch, k0, k1);
            });
          }
        }
        run = run_end;
      }
      worker.step_done();
    }
    if (proj && s >= 0) {
      StepRows cell_rows(MR, worker.own_rows(B));
      const int64_t prev_active = a.seq.rows_at(s - 1);
      cell_rows.add(0, std::min(active, prev_active), kActive, true);
      cell_rows.add(std::min(active, prev_active), active, kActive, false);
      const int64_t n = cell_rows.chunks();
      const auto [i0, i1] = worker.step_items(w.hidden_blocks * n);
      for (int64_t i = i0; i < i1; ++i) {
        const RowChunk ch = cell_rows.chunk(i % n);
        with_tile_rows<MR>(ch.rows, [&](auto mr) {
          lstm_backward_projection_tile<T, decltype(mr)::value>(a, w, s, i / n, ch);
        });
      }
      worker.step_done();
    }
  }

  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    copy_row(a.grad_h0 + b * P, w.dh_state + b * w.ld_h, P);
    copy_row(a.grad_c0 + b * H, w.dc_state + b * w.ld_c, H);
  }
}

// ================================================================ layer-normalised LSTM

#include "cpu/ln_lstm_isa.h"

// ================================================================ GRU

template <typename T>
struct GruForwardScratch {
  static constexpr int V = VecOf<T>::size();
  int64_t gate_blocks, ld_h;
  T *packed_hh, *h_state;

  GruForwardScratch(const GruForwardArgs<T>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, B = a.seq.batch;
    gate_blocks = ceil_div(H, V);
    ld_h = round_up(H, V);
    packed_hh = sc.take<T>(gate_blocks * panel_elems<T, 3>(H));
    h_state = sc.take<T>(2 * B * ld_h);
  }
};

template <typename T, int MR>
inline void gru_forward_tile(const GruForwardArgs<T>& a, const GruForwardScratch<T>& w,
                             int64_t blk, int64_t r0, int64_t row0, const T* h_prev,
                             T* h_next) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  const int64_t u0 = blk * V;
  const int64_t nu = std::min<int64_t>(V, H - u0);
  Vec acc[MR][3];
  if (a.h_pre != nullptr) {  // single step: the recurrent product came from the host
    for (int q = 0; q < 3; ++q)
      for (int m = 0; m < MR; ++m)
        acc[m][q] = load_vec(a.h_pre + (r0 + m) * 3 * H + q * H + u0, nu);
  } else {
    for (int q = 0; q < 3; ++q) {
      const Vec bias = load_or_zero(a.b_hh != nullptr ? a.b_hh + q * H + u0 : nullptr, nu);
      for (int m = 0; m < MR; ++m) acc[m][q] = bias;
    }
    panel_gemm<T, MR, 3>(H, h_prev + r0 * w.ld_h, w.ld_h,
                         w.packed_hh + blk * panel_elems<T, 3>(H), acc);
  }
  // Row by row: unlike the LSTM tile (Note in lstm_forward_tile), staging all 8 rows of
  // r, z, n, hn would need the whole register file and measured slower.
  for (int m = 0; m < MR; ++m) {
    const int64_t r = r0 + m, row = row0 + m;
    const T* x = a.x_proj + row * a.ld_x_proj + u0;
    const auto g = math::gru_activate(load_vec(x, nu), load_vec(x + H, nu),
                                      load_vec(x + 2 * H, nu), acc[m][0], acc[m][1], acc[m][2]);
    const Vec h_before = load_vec(h_prev + r * w.ld_h + u0);
    Vec h = math::gru_hidden(g, h_before);
    if (a.zoneout != nullptr)  // Note [zoneout]
      h = math::zoneout(h, h_before, Vec::loadu(a.zoneout + row * a.ld_zoneout + u0, nu));
    store_vec(h_next + r * w.ld_h + u0, h);
    store_vec(a.out + row * a.ld_out + u0, h, nu);
    if (a.workspace != nullptr) {
      S* ws = a.workspace + row * 4 * H + u0;
      g.r.store(ws, nu);
      g.z.store(ws + H, nu);
      g.n.store(ws + 2 * H, nu);
      g.hn.store(ws + 3 * H, nu);
    }
  }
}

template <typename T>
void gru_forward(const GruForwardArgs<T>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<3>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const GruForwardScratch<T> w(a, sc);
  const int64_t H = a.hidden, B = a.seq.batch, steps = a.seq.steps;
  {
    const int64_t gate_blocks = a.h_pre != nullptr ? 0 : w.gate_blocks;
    const auto [i0, i1] = worker.share(gate_blocks + 1);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < gate_blocks) {
        pack_gate_panel<T, 3>(a.w_hh, H, H, 3, H, i, w.packed_hh);
      } else {
        for (int buf = 0; buf < 2; ++buf)
          init_state_rows(a.h0, H, w.ld_h, 0, B, w.h_state + buf * B * w.ld_h);
      }
    }
    worker.sync();
  }
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t row_off = a.seq.offset_at(s);
    const int cur = s & 1;
    const T* h_prev = w.h_state + cur * B * w.ld_h;
    T* h_next = w.h_state + (1 - cur) * B * w.ld_h;
    StepRows rows(MR, worker.own_rows(B));
    rows.forward(a.seq.rows_at(s));
    const int64_t nch = rows.chunks();
    const auto [i0, i1] = worker.step_items(w.gate_blocks * nch);
    for (int64_t i = i0; i < i1; ++i) {
      const RowChunk ch = rows.chunk(i % nch);
      with_tile_rows<MR>(ch.rows, [&](auto mr) {
        gru_forward_tile<T, decltype(mr)::value>(a, w, i / nch, ch.row, row_off + ch.row, h_prev,
                                                 h_next);
      });
    }
    worker.step_done();
  }
  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t buf = final_state_buffer(a.seq, b);
    copy_row(a.h_n + b * H, w.h_state + (buf * B + b) * w.ld_h, H);
  }
}

template <typename T>
struct GruBackwardScratch {
  using S = compute_t<T>;
  static constexpr int V = VecOf<T>::size();
  int64_t blocks, ld_h;
  T* packed_hh;
  S* dh_state;

  GruBackwardScratch(const GruBackwardArgs<T>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, B = a.seq.batch;
    blocks = ceil_div(H, 4 * V);
    ld_h = round_up(H, 4 * V);
    packed_hh = sc.take<T>(blocks * panel_elems<T, 4>(3 * H));
    dh_state = sc.take<S>(B * ld_h);
  }
};

template <typename T, int MR>
inline void gru_backward_tile(const GruBackwardArgs<T>& a, const GruBackwardScratch<T>& w,
                              int64_t s, int64_t blk, const RowChunk& ch) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  Vec acc[MR][4];
  zero_tile(acc);
  if (ch.kind != kActiveFirst) {
    const int64_t next_off = a.seq.offset_at(s + 1);
    panel_gemm<T, MR, 4>(3 * H, a.grad_hidden_pre + (next_off + ch.row) * 3 * H, 3 * H,
                         w.packed_hh + blk * panel_elems<T, 4>(3 * H), acc);
  }
  if (ch.kind == kInitial) {
    for (int m = 0; m < MR; ++m) {
      S* carried = w.dh_state + (ch.row + m) * w.ld_h + blk * 4 * V;
      for (int q = 0; q < 4; ++q)
        (Vec::loadu(carried + q * V) + acc[m][q]).store(carried + q * V);
    }
    return;
  }
  const int64_t row_off = a.seq.offset_at(s);
  const int64_t prev_off = ch.has_prev ? a.seq.offset_at(s - 1) : 0;
  for (int m = 0; m < MR; ++m) {
    const int64_t r = ch.row + m, row = row_off + r;
    const S* ws = a.workspace + row * 4 * H;
    const T* h_prev_src = ch.has_prev ? a.out + (prev_off + r) * a.ld_out : a.h0 + r * H;
    T* gx = a.grad_x_proj + row * a.ld_grad_x_proj;
    T* gh = a.grad_hidden_pre + row * 3 * H;
    for (int q = 0; q < 4; ++q) {
      const int64_t u0 = (blk * 4 + q) * V;
      if (u0 >= H) break;
      const int64_t nu = std::min<int64_t>(V, H - u0);
      S* carried = w.dh_state + r * w.ld_h + u0;
      Vec dh =
          acc[m][q] + Vec::loadu(carried) +
          load_or_zero(a.grad_out != nullptr ? a.grad_out + row * a.ld_grad_out + u0 : nullptr,
                       nu);
      Vec dh_skip(S(0));
      if (a.zoneout != nullptr) {  // Note [zoneout]
        const Vec keep = Vec::loadu(a.zoneout + row * a.ld_zoneout + u0, nu);
        dh_skip = math::zoneout_carried_grad(dh, keep);
        dh = math::zoneout_candidate_grad(dh, keep);
      }
      const math::GruGates<Vec> g{Vec::loadu(ws + u0, nu), Vec::loadu(ws + H + u0, nu),
                                  Vec::loadu(ws + 2 * H + u0, nu),
                                  Vec::loadu(ws + 3 * H + u0, nu)};
      Vec direct;
      const auto d = math::gru_cell_backward(dh, g, load_vec(h_prev_src + u0, nu), direct);
      store_vec(gx + u0, d.r, nu);
      store_vec(gx + H + u0, d.z, nu);
      store_vec(gx + 2 * H + u0, d.n_x, nu);
      store_vec(gh + u0, d.r, nu);
      store_vec(gh + H + u0, d.z, nu);
      store_vec(gh + 2 * H + u0, d.n_h, nu);
      (a.zoneout != nullptr ? direct + dh_skip : direct).store(carried);
    }
  }
}

template <typename T>
void gru_backward(const GruBackwardArgs<T>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const GruBackwardScratch<T> w(a, sc);
  const int64_t H = a.hidden, B = a.seq.batch, steps = a.seq.steps;
  {
    const int64_t blocks = a.skip_initial_product ? 0 : w.blocks;
    const auto [i0, i1] = worker.share(blocks + 1);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < blocks) {
        pack_column_panel<T, 4>(a.w_hh, H, H, 3 * H, i, w.packed_hh);
      } else {
        init_state_rows(a.grad_h_n, H, w.ld_h, 0, B, w.dh_state);
      }
    }
    worker.sync();
  }
  const int64_t last_step = a.skip_initial_product ? 0 : -1;
  for (int64_t s = steps - 1; s >= last_step; --s) {
    StepRows rows(MR, worker.own_rows(B));
    rows.backward(a.seq.rows_at(s), a.seq.rows_at(s + 1), a.seq.rows_at(s - 1));
    const int64_t nch = rows.chunks();
    const auto [i0, i1] = worker.step_items(w.blocks * nch);
    for (int64_t i = i0; i < i1; ++i) {
      const RowChunk ch = rows.chunk(i % nch);
      with_tile_rows<MR>(ch.rows, [&](auto mr) {
        gru_backward_tile<T, decltype(mr)::value>(a, w, s, i / nch, ch);
      });
    }
    worker.step_done();
  }
  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) copy_row(a.grad_h0 + b * H, w.dh_state + b * w.ld_h, H);
}

// ================================================================ RNN

template <typename T>
struct RnnForwardScratch {
  static constexpr int V = VecOf<T>::size();
  int64_t blocks, ld_h;
  T *packed_hh, *h_state;

  RnnForwardScratch(const RnnForwardArgs<T>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, B = a.seq.batch;
    blocks = ceil_div(H, 4 * V);
    ld_h = round_up(H, 4 * V);
    packed_hh = sc.take<T>(blocks * panel_elems<T, 4>(H));
    h_state = sc.take<T>(2 * B * ld_h);
  }
};

template <typename T, int MR, math::Nonlinearity kAct>
inline void rnn_forward_tile(const RnnForwardArgs<T>& a, const RnnForwardScratch<T>& w,
                             int64_t blk, int64_t r0, int64_t row0, const T* h_prev,
                             T* h_next) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  Vec acc[MR][4];
  for (int q = 0; q < 4; ++q) {
    const int64_t u0 = (blk * 4 + q) * V;
    const int64_t nu = std::max<int64_t>(0, std::min<int64_t>(V, H - u0));
    // Single step: the host's h0 @ W_hh^T + b_hh replaces the bias and the product.
    const Vec bias = load_or_zero(a.b_hh != nullptr && nu > 0 && a.h_pre == nullptr
                                      ? a.b_hh + u0 : nullptr, nu);
    for (int m = 0; m < MR; ++m) {
      if (nu <= 0) {
        acc[m][q] = Vec(S(0));
        continue;
      }
      acc[m][q] = load_vec(a.x_proj + (row0 + m) * a.ld_x_proj + u0, nu) +
                  (a.h_pre != nullptr ? load_vec(a.h_pre + (r0 + m) * H + u0, nu) : bias);
    }
  }
  if (a.h_pre == nullptr)
    panel_gemm<T, MR, 4>(H, h_prev + r0 * w.ld_h, w.ld_h,
                         w.packed_hh + blk * panel_elems<T, 4>(H), acc);
  for (int m = 0; m < MR; ++m) {
    for (int q = 0; q < 4; ++q) {
      const int64_t u0 = (blk * 4 + q) * V;
      if (u0 >= H) break;
      const int64_t nu = std::min<int64_t>(V, H - u0);
      Vec h = math::rnn_activate<kAct>(acc[m][q]);
      if (a.zoneout != nullptr) {  // Note [zoneout]; the backward needs h before it
        if (a.workspace != nullptr) h.store(a.workspace + (row0 + m) * H + u0, nu);
        h = math::zoneout(h, load_vec(h_prev + (r0 + m) * w.ld_h + u0),
                          Vec::loadu(a.zoneout + (row0 + m) * a.ld_zoneout + u0, nu));
      }
      store_vec(h_next + (r0 + m) * w.ld_h + u0, h);
      store_vec(a.out + (row0 + m) * a.ld_out + u0, h, nu);
    }
  }
}

template <typename T, math::Nonlinearity kAct>
void rnn_forward_impl(const RnnForwardArgs<T>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const RnnForwardScratch<T> w(a, sc);
  const int64_t H = a.hidden, B = a.seq.batch, steps = a.seq.steps;
  {
    const int64_t blocks = a.h_pre != nullptr ? 0 : w.blocks;
    const auto [i0, i1] = worker.share(blocks + 1);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < blocks) {
        pack_gate_panel<T, 4>(a.w_hh, H, H, 1, H, i, w.packed_hh);
      } else {
        for (int buf = 0; buf < 2; ++buf)
          init_state_rows(a.h0, H, w.ld_h, 0, B, w.h_state + buf * B * w.ld_h);
      }
    }
    worker.sync();
  }
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t row_off = a.seq.offset_at(s);
    const int cur = s & 1;
    const T* h_prev = w.h_state + cur * B * w.ld_h;
    T* h_next = w.h_state + (1 - cur) * B * w.ld_h;
    StepRows rows(MR, worker.own_rows(B));
    rows.forward(a.seq.rows_at(s));
    const int64_t nch = rows.chunks();
    const auto [i0, i1] = worker.step_items(w.blocks * nch);
    for (int64_t i = i0; i < i1; ++i) {
      const RowChunk ch = rows.chunk(i % nch);
      with_tile_rows<MR>(ch.rows, [&](auto mr) {
        rnn_forward_tile<T, decltype(mr)::value, kAct>(a, w, i / nch, ch.row, row_off + ch.row,
                                                       h_prev, h_next);
      });
    }
    worker.step_done();
  }
  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t buf = final_state_buffer(a.seq, b);
    copy_row(a.h_n + b * H, w.h_state + (buf * B + b) * w.ld_h, H);
  }
}

template <typename T>
void rnn_forward(const RnnForwardArgs<T>& a, Team& team, SliceRange mine) {
  if (a.relu) {
    rnn_forward_impl<T, math::Nonlinearity::kRelu>(a, team, mine);
  } else {
    rnn_forward_impl<T, math::Nonlinearity::kTanh>(a, team, mine);
  }
}

template <typename T>
struct RnnBackwardScratch {
  using S = compute_t<T>;
  static constexpr int V = VecOf<T>::size();
  int64_t blocks, ld_h;
  T* packed_hh;
  S* dh_state;

  RnnBackwardScratch(const RnnBackwardArgs<T>& a, ScratchCarver& sc) {
    const int64_t H = a.hidden, B = a.seq.batch;
    blocks = ceil_div(H, 4 * V);
    ld_h = round_up(H, 4 * V);
    packed_hh = sc.take<T>(blocks * panel_elems<T, 4>(H));
    dh_state = sc.take<S>(B * ld_h);
  }
};

template <typename T, int MR, math::Nonlinearity kAct>
inline void rnn_backward_tile(const RnnBackwardArgs<T>& a, const RnnBackwardScratch<T>& w,
                              int64_t s, int64_t blk, const RowChunk& ch) {
  using S = compute_t<T>;
  using Vec = VecOf<T>;
  constexpr int V = Vec::size();
  const int64_t H = a.hidden;
  Vec acc[MR][4];
  zero_tile(acc);
  if (ch.kind != kActiveFirst) {
    const int64_t next_off = a.seq.offset_at(s + 1);
    panel_gemm<T, MR, 4>(H, a.grad_x_proj + (next_off + ch.row) * a.ld_grad_x_proj,
                         a.ld_grad_x_proj, w.packed_hh + blk * panel_elems<T, 4>(H), acc);
  }
  if (ch.kind == kInitial) {
    for (int m = 0; m < MR; ++m) {
      S* carried = w.dh_state + (ch.row + m) * w.ld_h + blk * 4 * V;
      for (int q = 0; q < 4; ++q)
        (Vec::loadu(carried + q * V) + acc[m][q]).store(carried + q * V);
    }
    return;
  }
  const int64_t row_off = a.seq.offset_at(s);
  for (int m = 0; m < MR; ++m) {
    const int64_t r = ch.row + m, row = row_off + r;
    for (int q = 0; q < 4; ++q) {
      const int64_t u0 = (blk * 4 + q) * V;
      if (u0 >= H) break;
      const int64_t nu = std::min<int64_t>(V, H - u0);
      S* carried = w.dh_state + r * w.ld_h + u0;
      Vec dh =
          acc[m][q] + Vec::loadu(carried) +
          load_or_zero(a.grad_out != nullptr ? a.grad_out + row * a.ld_grad_out + u0 : nullptr,
                       nu);
      Vec h;
      if (a.zoneout != nullptr) {  // Note [zoneout]
        const Vec keep = Vec::loadu(a.zoneout + row * a.ld_zoneout + u0, nu);
        math::zoneout_carried_grad(dh, keep).store(carried);
        dh = math::zoneout_candidate_grad(dh, keep);
        h = Vec::loadu(a.workspace + row * H + u0, nu);
      } else {
        Vec(S(0)).store(carried);
        h = load_vec(a.out + row * a.ld_out + u0, nu);
      }
      store_vec(a.grad_x_proj + row * a.ld_grad_x_proj + u0,
                math::rnn_activate_backward<kAct>(dh, h), nu);
    }
  }
}

template <typename T, math::Nonlinearity kAct>
void rnn_backward_impl(const RnnBackwardArgs<T>& a, Team& team, SliceRange mine) {
  constexpr int MR = tile_rows<4>();
  SliceWorker worker(team, mine);
  ScratchCarver sc(a.scratch);
  const RnnBackwardScratch<T> w(a, sc);
  const int64_t H = a.hidden, B = a.seq.batch, steps = a.seq.steps;
  {
    const int64_t blocks = a.skip_initial_product ? 0 : w.blocks;
    const auto [i0, i1] = worker.share(blocks + 1);
    for (int64_t i = i0; i < i1; ++i) {
      if (i < blocks) {
        pack_column_panel<T, 4>(a.w_hh, H, H, H, i, w.packed_hh);
      } else {
        init_state_rows(a.grad_h_n, H, w.ld_h, 0, B, w.dh_state);
      }
    }
    worker.sync();
  }
  const int64_t last_step = a.skip_initial_product ? 0 : -1;
  for (int64_t s = steps - 1; s >= last_step; --s) {
    StepRows rows(MR, worker.own_rows(B));
    rows.backward(a.seq.rows_at(s), a.seq.rows_at(s + 1), a.seq.rows_at(s - 1));
    const int64_t nch = rows.chunks();
    const auto [i0, i1] = worker.step_items(w.blocks * nch);
    for (int64_t i = i0; i < i1; ++i) {
      const RowChunk ch = rows.chunk(i % nch);
      with_tile_rows<MR>(ch.rows, [&](auto mr) {
        rnn_backward_tile<T, decltype(mr)::value, kAct>(a, w, s, i / nch, ch);
      });
    }
    worker.step_done();
  }
  const auto [b0, b1] = worker.share(B);
  for (int64_t b = b0; b < b1; ++b) copy_row(a.grad_h0 + b * H, w.dh_state + b * w.ld_h, H);
}

template <typename T>
void rnn_backward(const RnnBackwardArgs<T>& a, Team& team, SliceRange mine) {
  if (a.relu) {
    rnn_backward_impl<T, math::Nonlinearity::kRelu>(a, team, mine);
  } else {
    rnn_backward_impl<T, math::Nonlinearity::kTanh>(a, team, mine);
  }
}

// ================================================================ GEMM

// acc[m][q] += sum_k A[m][k] * panel[(k*NV + q)*V ..], A[m][k] = a[m*a_rs + k*a_cs].
template <typename S, int MR, int NV>
inline void panel_gemm_strided(int64_t K, const S* a, int64_t a_rs, int64_t a_cs,
                               const S* panel, Vectorized<S> (&acc)[MR][NV]) {
  if (a_cs == 1) {
    panel_gemm<S, MR, NV>(K, a, a_rs, panel, acc);
    return;
  }
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  const S* w = panel;
  for (int64_t k = 0; k < K; ++k, w += NV * V, a += a_cs) {
    Vec wv[NV];
#pragma GCC unroll 8
    for (int q = 0; q < NV; ++q) wv[q] = Vec::loadu(w + q * V);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const Vec x(a[m * a_rs]);
#pragma GCC unroll 8
      for (int q = 0; q < NV; ++q) acc[m][q] = at::vec::fmadd(x, wv[q], acc[m][q]);
    }
  }
}

constexpr int kGemmPanelVectors = 4;

template <typename S>
void gemm_pack(const GemmArgs<S>& g, S* panels, int64_t block_begin, int64_t block_end) {
  constexpr int V = Vectorized<S>::size();
  constexpr int W = kGemmPanelVectors * V;
  for (int64_t blk = block_begin; blk < block_end; ++blk) {
    S* panel = panels + blk * g.k * W;
    const int64_t c0 = blk * W;
    const int64_t cols = std::max<int64_t>(0, std::min<int64_t>(W, g.n - c0));
    if (g.b_cs == 1) {  // rows of B are contiguous
      for (int64_t k = 0; k < g.k; ++k) {
        S* d = panel + k * W;
        std::memcpy(d, g.b + k * g.b_rs + c0, cols * sizeof(S));
        std::fill(d + cols, d + W, S(0));
      }
    } else {  // columns of B are contiguous (B = W^T): transpose one column at a time
      for (int64_t j = 0; j < W; ++j) {
        S* d = panel + j;
        if (j < cols) {
          const S* src = g.b + (c0 + j) * g.b_cs;
          for (int64_t k = 0; k < g.k; ++k) d[k * W] = src[k * g.b_rs];
        } else {
          for (int64_t k = 0; k < g.k; ++k) d[k * W] = S(0);
        }
      }
    }
  }
}

// One register tile of C: rows [r0, r0+MR) by panel blk, over K range [k0, k0+kn).
template <typename S, int MR>
inline void gemm_tile(const GemmArgs<S>& g, const S* panels, int64_t blk, int64_t r0, int64_t k0,
                      int64_t kn) {
  using Vec = Vectorized<S>;
  constexpr int V = Vec::size();
  constexpr int NV = kGemmPanelVectors;
  const int64_t c0 = blk * NV * V;
  const bool partial = k0 > 0 || g.accumulate;
  Vec acc[MR][NV];
  for (int q = 0; q < NV; ++q) {
    const int64_t col = c0 + q * V;
    const int64_t nc = std::max<int64_t>(0, std::min<int64_t>(V, g.n - col));
    for (int m = 0; m < MR; ++m) {
      if (nc == 0) {
        acc[m][q] = Vec(S(0));
      } else if (partial) {
        acc[m][q] = Vec::loadu(g.c + (r0 + m) * g.ldc + col, nc);
      } else {
        acc[m][q] = load_or_zero(g.bias != nullptr ? g.bias + col : nullptr, nc);
      }
    }
  }
  panel_gemm_strided<S, MR, NV>(kn, g.a + r0 * g.a_rs + k0 * g.a_cs, g.a_rs, g.a_cs,
                                panels + (blk * g.k + k0) * NV * V, acc);
  for (int q = 0; q < NV; ++q) {
    const int64_t col = c0 + q * V;
    const int64_t nc = std::min<int64_t>(V, g.n - col);
    if (nc <= 0) break;
    for (int m = 0; m < MR; ++m) acc[m][q].store(g.c + (r0 + m) * g.ldc + col, nc);
  }
}

// Note [GEMM blocking]
// A work item is a group of rows_per_group rows of C and a segment of its panels. For
// each K pass the item's A block (rows x k_per_pass) stays in L2 while the panels'
// K-slices stream past it; partial sums go through C between passes. Items own disjoint
// tiles of C, so threads never synchronise.
template <typename S>
void gemm_compute(const GemmArgs<S>& g, const S* panels, int64_t item_begin, int64_t item_end) {
  constexpr int MR = tile_rows<kGemmPanelVectors>();
  constexpr int W = kGemmPanelVectors * Vectorized<S>::size();
  const int64_t blocks = ceil_div(g.n, W);
  for (int64_t i = item_begin; i < item_end; ++i) {
    const int64_t group = i / g.segments, segment = i % g.segments;
    const int64_t row_begin = group * g.rows_per_group;
    const int64_t row_end = std::min(g.m, row_begin + g.rows_per_group);
    const int64_t blk_begin = blocks * segment / g.segments;
    const int64_t blk_end = blocks * (segment + 1) / g.segments;
    const int64_t passes = std::max<int64_t>(1, ceil_div(g.k, g.k_per_pass));
    for (int64_t p = 0; p < passes; ++p) {
      const int64_t k0 = p * g.k_per_pass;
      const int64_t kn = std::max<int64_t>(0, std::min(g.k_per_pass, g.k - k0));
      for (int64_t blk = blk_begin; blk < blk_end; ++blk) {
        for (int64_t r0 = row_begin; r0 < row_end; r0 += MR) {
          with_tile_rows<MR>(std::min<int64_t>(MR, row_end - r0), [&](auto mr) {
            gemm_tile<S, decltype(mr)::value>(g, panels, blk, r0, k0, kn);
          });
        }
      }
    }
  }
}

// ---------------------------------------------------------------- table

template <typename S>
constexpr CellKernels<S> make_cell_kernels() {
  return CellKernels<S>{
      &measure_scratch<LstmForwardScratch<S>, LstmForwardArgs<S>>, &lstm_forward<S>,
      &measure_scratch<LstmBackwardScratch<S>, LstmBackwardArgs<S>>, &lstm_backward<S>,
      &measure_scratch<LnLstmForwardScratch<S>, LnLstmForwardArgs<S>>, &ln_lstm_forward<S>,
      &measure_scratch<LnLstmBackwardScratch<S>, LnLstmBackwardArgs<S>>, &ln_lstm_backward<S>,
      &measure_scratch<GruForwardScratch<S>, GruForwardArgs<S>>, &gru_forward<S>,
      &measure_scratch<GruBackwardScratch<S>, GruBackwardArgs<S>>, &gru_backward<S>,
      &measure_scratch<RnnForwardScratch<S>, RnnForwardArgs<S>>, &rnn_forward<S>,
      &measure_scratch<RnnBackwardScratch<S>, RnnBackwardArgs<S>>, &rnn_backward<S>,
      kGemmPanelVectors * Vectorized<S>::size(), tile_rows<kGemmPanelVectors>(),
      &gemm_pack<S>, &gemm_compute<S>,
  };
}

#if defined(__AVX512BF16__)
// The bfloat16 table: the LSTM, GRU and RNN loops only (kernels.h, CellKernels).
inline CellKernels<c10::BFloat16> make_bf16_kernels() {
  using T = c10::BFloat16;
  return CellKernels<T>{
      &measure_scratch<LstmForwardScratch<T>, LstmForwardArgs<T>>, &lstm_forward<T>,
      &measure_scratch<LstmBackwardScratch<T>, LstmBackwardArgs<T>>, &lstm_backward<T>,
      nullptr, nullptr, nullptr, nullptr,
      &measure_scratch<GruForwardScratch<T>, GruForwardArgs<T>>, &gru_forward<T>,
      &measure_scratch<GruBackwardScratch<T>, GruBackwardArgs<T>>, &gru_backward<T>,
      &measure_scratch<RnnForwardScratch<T>, RnnForwardArgs<T>>, &rnn_forward<T>,
      &measure_scratch<RnnBackwardScratch<T>, RnnBackwardArgs<T>>, &rnn_backward<T>,
      0, 0, nullptr, nullptr,
  };
}
#endif

inline IsaKernels make_isa_kernels(const char* name) {
  return IsaKernels{name, static_cast<int>(sizeof(Vectorized<float>)),
                    make_cell_kernels<float>(), make_cell_kernels<double>()};
}

}  // namespace RNNKERNELS_ISA_NAMESPACE
}  // namespace rnnkernels::cpu
