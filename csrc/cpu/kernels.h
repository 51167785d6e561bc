#pragma once
// Interface between the CPU host code (recurrence_cpu.cpp: checks, allocation, threads,
// weight-gradient GEMMs) and the fused time loops, compiled once per ISA
// (kernels_isa.h included by kernels_{default,avx2,avx512}.cpp).
//
// All arguments are sizes and raw pointers. Matrices are row-major; ld_* is a row
// stride in elements. A direction's columns of a shared [N, D*X] tensor are passed as
// the pointer to its first column with the full row stride.

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include <c10/util/BFloat16.h>

namespace rnnkernels::cpu {

// Note [storage and compute types]
// A kernel is instantiated for the storage type T of the user-visible tensors (x, the
// weights, states, outputs, gradients) and computes in compute_t<T>: float for bfloat16.
// The products read T operands and accumulate in compute_t<T> (bfloat16: AVX512-BF16 dot
// products on pairs of k); gates, cell state, the workspace, biases and zoneout weights
// are compute_t<T>, so a bfloat16 step rounds only what the module's dtype must hold
// (h, c_n, outputs, gradients), as torch.nn's bfloat16 modules do.
template <typename T>
struct ComputeType {
  using type = T;
};
template <>
struct ComputeType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using compute_t = typename ComputeType<T>::type;

// Rows of a time-major sequence: time t owns rows [offsets[t], offsets[t] + batch_sizes[t])
// of every [N, ...] tensor; batch_sizes is non-increasing (PackedSequence order), and
// an unpacked [T, B] sequence has batch_sizes[t] = B, offsets[t] = t*B.
struct SequenceLayout {
  int64_t steps = 0;                      // T
  int64_t batch = 0;                      // B = batch_sizes[0]
  const int64_t* batch_sizes = nullptr;   // [T]
  const int64_t* offsets = nullptr;       // [T]
  bool reverse = false;                   // process t = T-1 .. 0

  // Processing step s (0 .. T-1) -> time index.
  int64_t time_at(int64_t s) const { return reverse ? steps - 1 - s : s; }
  // Rows active at processing step s; 0 outside [0, T).
  int64_t rows_at(int64_t s) const {
    return (s < 0 || s >= steps) ? 0 : batch_sizes[time_at(s)];
  }
  int64_t offset_at(int64_t s) const { return offsets[time_at(s)]; }
};

// The threads that run one direction's time loop together. The host starts one
// parallel region; each thread owns a contiguous range of the team's slices and
// meets the others at a barrier after every step (see Note [time loop threads] in
// recurrence_cpu.cpp).
struct Team {
  std::atomic<int64_t> arrived{0};
  int64_t size = 1;  // slices
  bool split_rows = false;  // Note [row-split teams]
};

struct SliceRange {
  int64_t begin = 0;
  int64_t end = 1;
};

// Pointers to T or S: see Note [storage and compute types].
template <typename T>
struct LstmForwardArgs {
  using S = compute_t<T>;
  SequenceLayout seq;
  int64_t hidden = 0;   // H
  int64_t output = 0;   // P: proj_size, or H without projection
  const T* x_proj = nullptr;  int64_t ld_x_proj = 0;   // [N, 4H], b_ih included
  const T* w_hh = nullptr;                             // [4H, P] contiguous
  const S* b_hh = nullptr;                             // [4H] or null
  const T* w_hr = nullptr;                             // [P, H] contiguous or null
  const T* h0 = nullptr;                               // [B, P] contiguous
  const T* c0 = nullptr;                               // [B, H] contiguous
  T* out = nullptr;  int64_t ld_out = 0;               // [N, P]
  T* h_n = nullptr;                                    // [B, P]
  T* c_n = nullptr;                                    // [B, H]
  S* workspace = nullptr;  // [N, 5H]: i, f, g, o, c; with zoneout [N, 6H]: i, f, g, o,
                           // c before zoneout, c after; or null
  // Zoneout (Note [zoneout] in cell_math.h): row n holds the weights of the previous h
  // (columns [0, P)) and c (columns [P, P+H)); row stride ld_zoneout, 0 for one row shared
  // by all (evaluation). Null without zoneout. The workspace then holds 6H per row.
  const S* zoneout = nullptr;  int64_t ld_zoneout = 0;
  // Single-step calls (T = 1, no projection): h0 @ W_hh^T + b_hh computed by the host,
  // [B, 4H]; the kernel then packs nothing and runs only the gate math.
  const T* h_pre = nullptr;
  // Fused input projection (x_proj is then null): every step's tile also accumulates
  // x_t @ W_ih^T + b_ih (Note [fused input projection] in kernels_isa.h).
  const T* x = nullptr;  int64_t ld_x = 0;             // [N, I]
  int64_t input = 0;                                   // I
  const T* w_ih = nullptr;                             // [4H, I] contiguous
  const S* b_ih = nullptr;                             // [4H] or null
  void* scratch = nullptr;                             // forward_scratch_bytes(args)
};

template <typename T>
struct LstmBackwardArgs {
  using S = compute_t<T>;
  SequenceLayout seq;
  int64_t hidden = 0;
  int64_t output = 0;
  const T* grad_out = nullptr;  int64_t ld_grad_out = 0;  // [N, P] or null
  const T* grad_h_n = nullptr;                            // [B, P] or null
  const T* grad_c_n = nullptr;                            // [B, H] or null
  const T* w_hh = nullptr;                                // [4H, P]
  const T* w_hr = nullptr;                                // [P, H] or null
  const T* c0 = nullptr;                                  // [B, H]
  const S* workspace = nullptr;                           // [N, 5H] (zoneout: [N, 6H])
  const S* zoneout = nullptr;  int64_t ld_zoneout = 0;    // as in LstmForwardArgs
  T* grad_x_proj = nullptr;  int64_t ld_grad_x_proj = 0;  // [N, 4H]
  T* grad_h0 = nullptr;                                   // [B, P]
  T* grad_c0 = nullptr;                                   // [B, H]
  T* grad_h = nullptr;                                    // [N, P] dL/dh_t (projection only)
  // T = 1: skip dG_0 @ W_hh (no packed weights); the host adds it to grad_h0.
  bool skip_initial_product = false;
  void* scratch = nullptr;
};

// Layer-normalised LSTM (Note [layer-normalised LSTM] in cell_math.h); no projection.
template <typename S>
struct LnLstmForwardArgs {
  SequenceLayout seq;
  int64_t hidden = 0;                                   // H
  const S* x_side = nullptr;  int64_t ld_x_side = 0;    // [N, 4H]: LN_ih(x W_ih^T) + biases
  const S* w_hh = nullptr;                              // [4H, H] contiguous
  const S* ln_hh_weight = nullptr;                      // [4H]
  const S* ln_c_weight = nullptr;                       // [H]
  const S* ln_c_bias = nullptr;                         // [H] or null (beta 0)
  const S* h0 = nullptr;                                // [B, H]
  const S* c0 = nullptr;                                // [B, H]
  S* out = nullptr;  int64_t ld_out = 0;                // [N, H]
  S* h_n = nullptr;                                     // [B, H]
  S* c_n = nullptr;                                     // [B, H]
  S* workspace = nullptr;  // [N, ln_lstm_workspace_width(H)], or null
  void* scratch = nullptr;
};

template <typename S>
struct LnLstmBackwardArgs {
  SequenceLayout seq;
  int64_t hidden = 0;
  const S* grad_out = nullptr;  int64_t ld_grad_out = 0;    // [N, H] or null
  const S* grad_h_n = nullptr;                              // [B, H] or null
  const S* grad_c_n = nullptr;                              // [B, H] or null
  const S* w_hh = nullptr;                                  // [4H, H]
  const S* ln_hh_weight = nullptr;                          // [4H]
  const S* ln_c_weight = nullptr;                           // [H]
  const S* ln_c_bias = nullptr;                             // [H] or null
  const S* c0 = nullptr;                                    // [B, H]
  const S* workspace = nullptr;                             // [N, ln_lstm_workspace_width(H)]
  S* grad_x_side = nullptr;  int64_t ld_grad_x_side = 0;    // [N, 4H]: d pre-activations
  S* grad_product = nullptr;                                // [N, 4H]: d (h_prev W_hh^T)
  S* grad_cell_norm = nullptr;                              // [N, H]: d LN_c(c), for its params
  S* grad_h0 = nullptr;                                     // [B, H]
  S* grad_c0 = nullptr;                                     // [B, H]
  void* scratch = nullptr;
};

template <typename T>
struct GruForwardArgs {
  using S = compute_t<T>;
  SequenceLayout seq;
  int64_t hidden = 0;
  const T* x_proj = nullptr;  int64_t ld_x_proj = 0;  // [N, 3H]
  const T* w_hh = nullptr;                            // [3H, H]
  const S* b_hh = nullptr;                            // [3H] or null
  const T* h0 = nullptr;                              // [B, H]
  T* out = nullptr;  int64_t ld_out = 0;              // [N, H]
  T* h_n = nullptr;                                   // [B, H]
  S* workspace = nullptr;                             // [N, 4H]: r, z, n, hn; or null
  const T* h_pre = nullptr;  // T = 1: h0 @ W_hh^T + b_hh [B, 3H] from the host
  // Zoneout (Note [zoneout] in cell_math.h): [N, H] weights of the previous h, row stride
  // ld_zoneout (0: one row for all); null without zoneout.
  const S* zoneout = nullptr;  int64_t ld_zoneout = 0;
  void* scratch = nullptr;
};

template <typename T>
struct GruBackwardArgs {
  using S = compute_t<T>;
  SequenceLayout seq;
  int64_t hidden = 0;
  const T* grad_out = nullptr;  int64_t ld_grad_out = 0;
  const T* grad_h_n = nullptr;
  const T* w_hh = nullptr;
  const T* h0 = nullptr;
  const T* out = nullptr;  int64_t ld_out = 0;        // forward output: h_t
  const S* workspace = nullptr;                       // [N, 4H]
  T* grad_x_proj = nullptr;  int64_t ld_grad_x_proj = 0;  // [N, 3H]: r, z, n_x
  T* grad_hidden_pre = nullptr;                       // [N, 3H]: r, z, n_h (for dW_hh, db_hh)
  T* grad_h0 = nullptr;
  const S* zoneout = nullptr;  int64_t ld_zoneout = 0;    // as in GruForwardArgs
  // T = 1: skip dG_0 @ W_hh (no packed weights); the host adds it to grad_h0.
  bool skip_initial_product = false;
  void* scratch = nullptr;
};

template <typename T>
struct RnnForwardArgs {
  using S = compute_t<T>;
  SequenceLayout seq;
  int64_t hidden = 0;
  bool relu = false;
  const T* x_proj = nullptr;  int64_t ld_x_proj = 0;  // [N, H]
  const T* w_hh = nullptr;                            // [H, H]
  const S* b_hh = nullptr;
  const T* h0 = nullptr;
  T* out = nullptr;  int64_t ld_out = 0;
  T* h_n = nullptr;
  const T* h_pre = nullptr;  // T = 1: h0 @ W_hh^T + b_hh [B, H] from the host
  const S* zoneout = nullptr;  int64_t ld_zoneout = 0;    // as in GruForwardArgs
  S* workspace = nullptr;  // zoneout only: [N, H] h before zoneout (its activation's
                           // backward needs it); or null
  void* scratch = nullptr;
};

template <typename T>
struct RnnBackwardArgs {
  using S = compute_t<T>;
  SequenceLayout seq;
  int64_t hidden = 0;
  bool relu = false;
  const T* grad_out = nullptr;  int64_t ld_grad_out = 0;
  const T* grad_h_n = nullptr;
  const T* w_hh = nullptr;
  const T* out = nullptr;  int64_t ld_out = 0;
  T* grad_x_proj = nullptr;  int64_t ld_grad_x_proj = 0;  // [N, H]
  T* grad_h0 = nullptr;
  const S* zoneout = nullptr;  int64_t ld_zoneout = 0;    // as in GruForwardArgs
  const S* workspace = nullptr;  // zoneout only: [N, H] h before zoneout
  // T = 1: skip dG_0 @ W_hh (no packed weights); the host adds it to grad_h0.
  bool skip_initial_product = false;
  void* scratch = nullptr;
};

// C[M, N] = A[M, K] @ B[K, N] (+ bias[N]) (+ C with accumulate), with element strides:
// A[m][k] = a[m*a_rs + k*a_cs], B[k][n] = b[k*b_rs + n*b_cs], C row-major with ldc.
// B is packed into column panels first (gemm_pack), then C is computed in register
// tiles of MR rows by one panel (gemm_compute); see gemm_cpu.cpp.
template <typename S>
struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const S* a = nullptr;  int64_t a_rs = 0, a_cs = 1;
  const S* b = nullptr;  int64_t b_rs = 0, b_cs = 1;
  S* c = nullptr;  int64_t ldc = 0;
  const S* bias = nullptr;
  bool accumulate = false;
  // Blocking, chosen by the host (gemm_cpu.cpp): rows per group (a multiple of the tile
  // rows), K per pass, and how many segments the panels of one row group are split in.
  // Work item i is row group i / segments with its panel segment i % segments.
  int64_t rows_per_group = 0, k_per_pass = 0, segments = 1;
};

// One ISA's kernels for one storage type. *_scratch returns the bytes the host must
// allocate for args.scratch; the run functions are called by every thread of the team
// with the slices it owns. The bfloat16 tables hold the LSTM, GRU and RNN loops only
// (the layer-normalised LSTM and the GEMM entries are null: the host widens those).
template <typename T>
struct CellKernels {
  int64_t (*lstm_forward_scratch)(const LstmForwardArgs<T>&, int64_t team_size);
  void (*lstm_forward)(const LstmForwardArgs<T>&, Team&, SliceRange);
  int64_t (*lstm_backward_scratch)(const LstmBackwardArgs<T>&, int64_t team_size);
  void (*lstm_backward)(const LstmBackwardArgs<T>&, Team&, SliceRange);
  int64_t (*ln_lstm_forward_scratch)(const LnLstmForwardArgs<T>&, int64_t team_size);
  void (*ln_lstm_forward)(const LnLstmForwardArgs<T>&, Team&, SliceRange);
  int64_t (*ln_lstm_backward_scratch)(const LnLstmBackwardArgs<T>&, int64_t team_size);
  void (*ln_lstm_backward)(const LnLstmBackwardArgs<T>&, Team&, SliceRange);
  int64_t (*gru_forward_scratch)(const GruForwardArgs<T>&, int64_t team_size);
  void (*gru_forward)(const GruForwardArgs<T>&, Team&, SliceRange);
  int64_t (*gru_backward_scratch)(const GruBackwardArgs<T>&, int64_t team_size);
  void (*gru_backward)(const GruBackwardArgs<T>&, Team&, SliceRange);
  int64_t (*rnn_forward_scratch)(const RnnForwardArgs<T>&, int64_t team_size);
  void (*rnn_forward)(const RnnForwardArgs<T>&, Team&, SliceRange);
  int64_t (*rnn_backward_scratch)(const RnnBackwardArgs<T>&, int64_t team_size);
  void (*rnn_backward)(const RnnBackwardArgs<T>&, Team&, SliceRange);
  int64_t gemm_panel_width;  // columns of one packed panel of B
  int64_t gemm_tile_rows;    // rows of one register tile of C
  void (*gemm_pack)(const GemmArgs<T>&, T* panels, int64_t block_begin, int64_t block_end);
  void (*gemm_compute)(const GemmArgs<T>&, const T* panels, int64_t item_begin, int64_t item_end);
};

// ---------------------------------------------------------------- int8 inference
// Note [int8 inference] in int8_isa.h has the scheme. A weight W [gates*units, K] is
// quantized per row (int8, scale[n] = max|W[n, :]| / 127) and packed by one int8 table
// into blocks of NV vectors of V columns (NV = gates, or 4 unit vectors for one gate, as
// the float gate panels): [blocks][ceil(K/4)][NV*V][4] bytes, k in quads for the dot
// product instructions; scale and column sum in the same column order.
struct Int8Panels {
  const int8_t* panels = nullptr;
  const float* scale = nullptr;   // [blocks * NV * V], 0 in the padding
  const int32_t* sum = nullptr;   // [blocks * NV * V]: sum over k of the column's int8s
  int64_t k = 0;                  // K
};

// Vectors per block and blocks of a packed [gates*units, K] weight for vector width V.
inline int64_t int8_panel_vectors(int64_t gates) { return gates > 1 ? gates : 4; }
inline int64_t int8_panel_blocks(int64_t units, int64_t gates, int64_t V) {
  const int64_t per_block = V * (gates > 1 ? 1 : 4);
  return (units + per_block - 1) / per_block;
}
// Row stride of a quantized activation matrix [rows, K] (u8, K padded to whole quads).
inline int64_t int8_row_stride(int64_t K) { return (K + 3) / 4 * 4; }

// out [rows, gates*units] = dequantized (xq @ W^T) + bias, in W's natural column order.
struct Int8LinearArgs {
  int64_t rows = 0, units = 0, gates = 0;
  const uint8_t* xq = nullptr;  int64_t ld_xq = 0;  // [rows, K]: q + 128
  const float* x_scale = nullptr;                     // [rows]
  Int8Panels w;
  const float* bias = nullptr;                        // [gates*units] or null
  float* out = nullptr;  int64_t ld_out = 0;
};

// One direction of one layer over a sequence, float32 states and outputs.
struct Int8RecurrenceArgs {
  SequenceLayout seq;
  int64_t hidden = 0;   // H
  int64_t output = 0;   // P (LSTM with projection), else H
  const float* x_proj = nullptr;  int64_t ld_x_proj = 0;  // [N, G*H], with b_ih
  // Fused input projection instead (x_proj null): the rows of x quantized, times W_ih,
  // + b_ih, computed in each step's tiles (Note [int8 fused input projection]).
  const uint8_t* xq = nullptr;  int64_t ld_xq = 0;         // [N, I]: q + 128
  const float* x_scale = nullptr;                          // [N]
  Int8Panels w_ih;                                         // [G*H, I]
  const float* b_ih = nullptr;                             // [G*H] or null
  Int8Panels w_hh;                                         // [G*H, P]
  Int8Panels w_hr;                                         // [P, H] (LSTM projection) or null
  const float* b_hh = nullptr;                             // [G*H] or null
  bool relu = false;                                       // RNN nonlinearity
  const float* h0 = nullptr;                               // [B, P]
  const float* c0 = nullptr;                               // [B, H] (LSTM)
  float* out = nullptr;  int64_t ld_out = 0;               // [N, P]
  float* h_n = nullptr;                                    // [B, P]
  float* c_n = nullptr;                                    // [B, H] (LSTM)
  void* scratch = nullptr;
};

struct Int8Kernels {
  const char* name;      // "avx512_vnni", "avx512", "avx2", "default"
  int64_t vector_width;  // V
  void (*pack)(const int8_t* w, const float* scale, int64_t units, int64_t gates, int64_t k,
               int8_t* panels, float* panel_scale, int32_t* panel_sum);
  // Quantizes rows [row_begin, row_end) of x [rows, K] (row stride ld_x) into xq (row
  // stride int8_row_stride(K)) and their scales.
  void (*quantize_rows)(const float* x, int64_t ld_x, int64_t k, int64_t row_begin,
                        int64_t row_end, uint8_t* xq, float* scale);
  int64_t (*linear_items)(const Int8LinearArgs&);
  void (*linear)(const Int8LinearArgs&, int64_t item_begin, int64_t item_end);
  int64_t (*recurrence_scratch)(const Int8RecurrenceArgs&, int64_t team_size);
  void (*lstm_forward)(const Int8RecurrenceArgs&, Team&, SliceRange);
  void (*gru_forward)(const Int8RecurrenceArgs&, Team&, SliceRange);
  void (*rnn_forward)(const Int8RecurrenceArgs&, Team&, SliceRange);
};

// Note [kernel registry]
// Each kernels_<isa>.cpp that was built registers its table at load time (a static
// registrar, as ATen's REGISTER_DISPATCH does), so the host names no ISA symbol and a
// build with any subset of the variants links and runs. The bfloat16 kernels are a
// variant of their own (kernels_avx512_bf16.cpp, built with -mavx512bf16) that extends the
// avx512 table on CPUs with AVX512-BF16.
struct IsaKernels {
  const char* name;       // "avx512", "avx2", "default"
  int vector_bytes;       // SIMD register width used
  CellKernels<float> f32;
  CellKernels<double> f64;
};

enum class IsaLevel : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

void register_isa_kernels(IsaLevel level, const IsaKernels& kernels);
// bfloat16 kernels for `level`; `cpu_supports` is asked once, when the table is first used.
void register_bf16_kernels(IsaLevel level, const CellKernels<c10::BFloat16>& kernels,
                           const char* name, bool (*cpu_supports)());

// The variant for this machine, chosen once from at::get_cpu_capability() among the
// registered ones (the best one at or below it).
const IsaKernels& active_isa_kernels();
// The native bfloat16 kernels of the active variant, or null (the host then widens).
const CellKernels<c10::BFloat16>* active_bf16_kernels();
// "avx512_bf16" or "" (none).
const char* active_bf16_kernels_name();
// int8 kernels: every variant registers a table for its level; a dot-product variant
// (avx512_vnni) replaces it where `cpu_supports` says yes and RNNKERNELS_INT8_NO_VNNI is
// unset (which forces the level's own table, for tests).
void register_int8_kernels(IsaLevel level, const Int8Kernels& kernels, bool dot_product,
                           bool (*cpu_supports)());
const Int8Kernels& active_int8_kernels();
// The variants this build holds, e.g. "default", "avx2", "avx512", "avx512_bf16".
std::vector<std::string> built_isa_names();

}  // namespace rnnkernels::cpu
