"""rnnkernels::input_projection (CPU: the panel GEMM of csrc/cpu/gemm_cpu.cpp from depth 256,
MKL below) against torch.addmm, values and gradients, and gradcheck in float64."""

import pytest
import torch

import rnnkernels  # noqa: F401

_ops = torch.ops.rnnkernels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("rows,input_size,gates_hidden", [
    (1, 300, 4), (7, 256, 68), (37, 257, 65), (130, 1000, 131), (9, 33, 51), (0, 300, 8),
])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_addmm(rows, input_size, gates_hidden, directions, bias, dtype):
    x = torch.randn(rows, input_size, dtype=dtype, requires_grad=True)
    w = [torch.randn(gates_hidden, input_size, dtype=dtype, requires_grad=True)
         for _ in range(directions)]
    b = [torch.randn(gates_hidden, dtype=dtype, requires_grad=True) for _ in range(directions)] \
        if bias else []
    ours = _ops.input_projection(x, w, b)
    reference = torch.cat([torch.addmm(b[d], x, w[d].t()) if bias else x @ w[d].t()
                           for d in range(directions)], 1)
    upstream = torch.randn_like(reference)
    leaves = [x, *w, *b]
    got = torch.autograd.grad(ours, leaves, upstream, allow_unused=True)
    want = torch.autograd.grad(reference, leaves, upstream, allow_unused=True)
    # float32 sums over input_size (and rows for the weight gradient) terms: scale atol with it.
    atol = 1e-5 * max(input_size, rows, 1) ** 0.5 if dtype == torch.float32 else None
    rtol = 1.3e-6 if dtype == torch.float32 else None
    torch.testing.assert_close(ours, reference, atol=atol, rtol=rtol)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, atol=atol, rtol=rtol)


@pytest.mark.parametrize("input_size", [5, 260])
def test_gradcheck(input_size):
    x = torch.randn(4, input_size, dtype=torch.float64, requires_grad=True)
    w0 = torch.randn(6, input_size, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(6, input_size, dtype=torch.float64, requires_grad=True)
    b0 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *a: _ops.input_projection(a[0], [a[1], a[2]], [a[3], a[4]]), (x, w0, w1, b0, b1))


def test_input_grad_skipped_when_not_needed():
    x = torch.randn(8, 300)
    w = torch.randn(20, 300, requires_grad=True)
    out = _ops.input_projection(x, [w], [])
    (gw,) = torch.autograd.grad(out.sum(), [w])
    torch.testing.assert_close(gw, torch.ones(8, 20).t() @ x, rtol=1.3e-6, atol=1e-4)
