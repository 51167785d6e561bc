"""The input projection of the CUDA layers and cells: x_proj = x W_ih^T + b_ih, all steps in
one GEMM, handed to the x_proj ops (rnnkernels.ops.lstm_forward, gru_forward, rnn_forward).

For 16-bit x the product is kept in float32 (Note [cuda x_proj in float32] in
csrc/cuda/recurrence_cuda.cpp): its fp32 sums join the kernels' fp32 gate math without a
rounding to 16 bits, which cost a fifth or more of extra error in every cell's output.
The GEMM itself stays a 16-bit one (tensor cores) with a float32 result (mm.dtype).
"""

from __future__ import annotations

import torch
from torch import Tensor

_16BIT = (torch.float16, torch.bfloat16)


def x_proj(x: Tensor, w_ih: list[Tensor], b_ih: list[Tensor] | None) -> Tensor:
    """x [N, I] -> [N, D*G*H] = x @ [W_ih_0; W_ih_1]^T + [b_ih_0; b_ih_1] (one weight and
    bias per direction, b_ih None without biases); float32 for float16/bfloat16 x, else x's
    dtype."""
    w = w_ih[0] if len(w_ih) == 1 else torch.cat(w_ih, 0)
    b = None if not b_ih else (b_ih[0] if len(b_ih) == 1 else torch.cat(b_ih, 0))
    if x.dtype in _16BIT:
        return _Float32Projection.apply(x, w, b)
    if b is None:
        return torch.mm(x, w.t())
    return torch.addmm(b, x, w.t())


def _mm_float32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b of 16-bit matrices with float32 sums and a float32 result: mm.dtype on CUDA
    (CUDA-only in torch); elsewhere (the CPU emulation of the CUDA path in the tests) the
    product of the widened operands, the same values."""
    if a.device.type == "cuda":
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


class _Float32Projection(torch.autograd.Function):
    """x W^T + b in float32 for 16-bit x, W and b. Backward: grad_x from the gradient in x's
    dtype (what the recurrence ops return, exactly), as torch's own 16-bit addmm computes
    it; grad_W summed over all N rows in float32 and rounded once (as Note [cuda weight
    gradients] does for W_hh); grad_b the float32 column sums, rounded once."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        out = _mm_float32(x, w.t())
        return out if b is None else out.add_(b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b = inputs
        ctx.save_for_backward(x, w)
        ctx.bias_dtype = None if b is None else b.dtype

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, w = ctx.saved_tensors
        rounded = grad.to(x.dtype)
        grad_x = torch.mm(rounded, w) if ctx.needs_input_grad[0] else None
        grad_w = _mm_float32(rounded.t(), x).to(w.dtype) if ctx.needs_input_grad[1] else None
        grad_b = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b
