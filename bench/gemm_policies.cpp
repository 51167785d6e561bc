// Per-step product policies, one thread (bench/gemm_policies.py builds and runs this).
// C[M, N] (float32) += A[M, K] @ B[K, N] as a time step issues it: rnnkernels' own
// register tiles (panel_gemm of csrc/cpu/kernels_isa.h, the product code itself) against
// torch's at::native::cpublas::brgemm (oneDNN's ukernel; AMX tiles where the CPU has them).
#include <ATen/native/CPUBlas.h>
#include <torch/extension.h>

#include <chrono>
#include <functional>
#include <vector>

#include "cpu/kernels_isa.h"

namespace {

using namespace rnnkernels::cpu::RNNKERNELS_ISA_NAMESPACE;
using Clock = std::chrono::steady_clock;

double median_seconds(const std::function<void()>& fn, double min_seconds) {
  fn();
  std::vector<double> samples;
  const auto start = Clock::now();
  while (samples.size() < 5 ||
         std::chrono::duration<double>(Clock::now() - start).count() < min_seconds) {
    const auto t0 = Clock::now();
    fn();
    samples.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// C over row chunks of MR and column blocks of 4 vectors, K whole, as a forward step runs.
template <typename T>
double own_tiles(int64_t M, int64_t N, int64_t K, const std::vector<T>& a,
                 const std::vector<T>& b_rows, std::vector<float>& c, double min_seconds) {
  constexpr int V = VecOf<T>::size();
  constexpr int MR = tile_rows<4>();
  const int64_t blocks = N / (4 * V);
  std::vector<T> panels(blocks * panel_elems<T, 4>(K));
  for (int64_t blk = 0; blk < blocks; ++blk)  // b_rows is W [N, K]: gate panels of 1 gate
    pack_gate_panel<T, 4>(b_rows.data(), K, N, 1, K, blk, panels.data());
  return median_seconds([&] {
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t r0 = 0; r0 < M; r0 += MR)
        with_tile_rows<MR>(std::min<int64_t>(MR, M - r0), [&](auto mr) {
          constexpr int R = decltype(mr)::value;
          VecOf<T> acc[R][4];
          zero_tile(acc);
          panel_gemm<T, R, 4>(K, a.data() + r0 * K, K, panels.data() + blk * panel_elems<T, 4>(K),
                              acc);
          for (int m = 0; m < R; ++m)
            for (int q = 0; q < 4; ++q) acc[m][q].store(c.data() + (r0 + m) * N + blk * 4 * V + q * V);
        });
  }, min_seconds);
}

// brgemm on column blocks of `block` (its B is [K, block], VNNI-packed for 16-bit types
// where cpublas::could_pack says the platform wants it).
template <typename T>
double brgemm_blocks(int64_t M, int64_t N, int64_t K, int64_t block, const std::vector<T>& a,
                     const std::vector<T>& b_kn, std::vector<float>& c, double min_seconds,
                     bool& packed) {
  const int64_t blocks = N / block;
  const at::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  packed = dtype != at::kFloat && at::native::cpublas::could_pack(dtype);
  std::vector<T> b_blocks(K * N);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    T* dst = b_blocks.data() + blk * K * block;
    if (packed) {
      at::native::cpublas::pack(K, block, N, block, dtype, dtype, b_kn.data() + blk * block, dst);
    } else {
      for (int64_t k = 0; k < K; ++k)
        std::copy_n(b_kn.data() + k * N + blk * block, block, dst + k * block);
    }
  }
  const double seconds = median_seconds([&] {
    for (int64_t blk = 0; blk < blocks; ++blk)
      at::native::cpublas::brgemm(M, block, K, K, block, N, /*add_C=*/false, a.data(),
                                  b_blocks.data() + blk * K * block, c.data() + blk * block,
                                  packed);
  }, min_seconds);
  at::native::cpublas::brgemm_release(packed);
  return seconds;
}

template <typename T>
std::vector<T> random_values(int64_t n, uint32_t seed) {
  std::vector<T> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<T>(static_cast<float>(seed >> 8) / 16777216.0f - 0.5f);
  }
  return v;
}

// GFLOP/s of each policy for one shape: {"own_f32", "own_bf16", "brgemm_f32",
// "brgemm_bf16"}; own_bf16 is absent without AVX512-BF16.
std::map<std::string, double> measure(int64_t M, int64_t N, int64_t K, int64_t block,
                                      double min_seconds) {
  TORCH_CHECK(N % 64 == 0 && N % block == 0, "N must be a multiple of 64 and of block");
  at::set_num_threads(1);
  const double flop = 2.0 * M * N * K;
  std::vector<float> c(M * N);
  std::map<std::string, double> out;
  const auto a32 = random_values<float>(M * K, 1), b32 = random_values<float>(K * N, 2);
  std::vector<float> w32(N * K);  // W = B^T, the layout of a weight matrix
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) w32[n * K + k] = b32[k * N + n];
  out["own_f32"] = flop / own_tiles<float>(M, N, K, a32, w32, c, min_seconds) / 1e9;
  bool packed = false;
  out["brgemm_f32"] = flop / brgemm_blocks<float>(M, N, K, block, a32, b32, c, min_seconds, packed) / 1e9;
  std::vector<c10::BFloat16> a16(a32.begin(), a32.end()), b16(b32.begin(), b32.end()),
      w16(w32.begin(), w32.end());
#if defined(__AVX512BF16__)
  if (__builtin_cpu_supports("avx512bf16"))
    out["own_bf16"] = flop / own_tiles<c10::BFloat16>(M, N, K, a16, w16, c, min_seconds) / 1e9;
#endif
  out["brgemm_bf16"] = flop / brgemm_blocks<c10::BFloat16>(M, N, K, block, a16, b16, c, min_seconds, packed) / 1e9;
  out["brgemm_bf16_vnni_packed"] = packed ? 1.0 : 0.0;
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("measure", &measure); }
