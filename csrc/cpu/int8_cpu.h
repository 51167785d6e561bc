// int8 inference on the CPU (Note [int8 inference] in int8_isa.h): the host side of the
// quantized modules of rnnkernels/quantized.py, bound in rnnkernels._C.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace rnnkernels::cpu {

// The int8 kernel variant chosen for this machine ("avx512_vnni", "avx512", "avx2",
// "default") and its vector width V, which the packed layout depends on.
std::string int8_kernels_name();
int64_t int8_vector_width();

// w_q int8 [gates*units, K], scale float32 [gates*units] -> (panels int8, panel scale
// float32, panel column sums int32), packed for the active int8 kernels.
std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_pack(const at::Tensor& w_q,
                                                         const at::Tensor& scale,
                                                         int64_t gates);

// A packed weight as the Python modules hold it.
struct PackedInt8 {
  at::Tensor panels, scale, sum;
  int64_t units = 0, gates = 0, k = 0, vector_width = 0;
};

// x float32 [N, K] -> [N, gates*units]: x quantized per row, times W^T, + bias.
at::Tensor int8_linear(const at::Tensor& x, const PackedInt8& w,
                       const std::optional<at::Tensor>& bias);

// One direction of one layer. cell: "lstm", "gru", "rnn_tanh", "rnn_relu".
// input: without w_ih, x_proj float32 [N, G*H] (the input projection with b_ih); with
// w_ih, x float32 [N, I], whose projection (+ b_ih) runs inside the steps (Note [int8
// fused input projection]). h0 [B, P], c0 [B, H] (LSTM), batch_sizes: PackedSequence's,
// or none for [T, B] rows (N = T*B).
// -> out [N, P], h_n [B, P], c_n [B, H] (LSTM; else empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_recurrence(
    const std::string& cell, const at::Tensor& input, const std::optional<PackedInt8>& w_ih,
    const std::optional<at::Tensor>& b_ih, const PackedInt8& w_hh,
    const std::optional<PackedInt8>& w_hr, const std::optional<at::Tensor>& b_hh,
    const at::Tensor& h0, const std::optional<at::Tensor>& c0,
    const std::optional<at::Tensor>& batch_sizes, bool reverse);

}  // namespace rnnkernels::cpu
