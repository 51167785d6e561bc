"""The CPU input projection of the op pair (csrc/cpu/gemm_cpu.cpp: the panel GEMM from depth
256, MKL below), through the test hook rnnkernels._C._cpu_recurrence, against torch.addmm
and the gradient formulas; what it does inside rnn_layer is covered by the op's tests."""

import pytest
import torch

from rnnkernels import _C

_cpu = _C._cpu_recurrence


def _tolerances(dtype, input_size, rows):
    # float32 sums over input_size (and rows for the weight gradient) terms: scale atol with it.
    if dtype == torch.float64:
        return dict()
    return dict(atol=1e-5 * max(input_size, rows, 1) ** 0.5, rtol=1.3e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("rows,input_size,gates_hidden", [
    (1, 300, 4), (7, 256, 68), (37, 257, 65), (130, 1000, 131), (9, 33, 51), (0, 300, 8),
])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_addmm(rows, input_size, gates_hidden, directions, bias, dtype):
    x = torch.randn(rows, input_size, dtype=dtype)
    w = [torch.randn(gates_hidden, input_size, dtype=dtype) for _ in range(directions)]
    b = [torch.randn(gates_hidden, dtype=dtype) for _ in range(directions)] if bias else []
    tol = _tolerances(dtype, input_size, rows)
    reference = torch.cat([torch.addmm(b[d], x, w[d].t()) if bias else x @ w[d].t()
                           for d in range(directions)], 1)
    torch.testing.assert_close(_cpu.input_projection(x, w, b), reference, **tol)

    grad = torch.randn_like(reference)
    grad_x, grad_w, grad_b = _cpu.input_projection_backward(grad, x, w, True, bias)
    parts = grad.split(gates_hidden, 1)
    torch.testing.assert_close(grad_x, sum(g @ wd for g, wd in zip(parts, w)), **tol)
    assert len(grad_w) == directions and len(grad_b) == (directions if bias else 0)
    for d in range(directions):
        torch.testing.assert_close(grad_w[d], parts[d].t() @ x, **tol)
        if bias:
            torch.testing.assert_close(grad_b[d], parts[d].sum(0), **tol)


def test_input_grad_skipped_when_not_needed():
    x = torch.randn(8, 300)
    w = torch.randn(20, 300)
    grad_x, (gw,), grad_b = _cpu.input_projection_backward(torch.ones(8, 20), x, [w], False, False)
    assert grad_x.numel() == 0 and grad_b == []
    torch.testing.assert_close(gw, torch.ones(8, 20).t() @ x, rtol=1.3e-6, atol=1e-4)


@pytest.mark.parametrize("bad,match", [
    ("x_rank", "expected x of shape"),
    ("w_width", r"expected w_ih\[0\] of shape"),
    ("b_count", "b_ih must be empty or hold one bias per direction"),
    ("dtype", r"w_ih\[0\] is Float"),
])
def test_bad_arguments_raise(bad, match):
    x, w, b = torch.randn(4, 6, dtype=torch.float64), [torch.randn(8, 6, dtype=torch.float64)], []
    if bad == "x_rank":
        x = x[None]
    elif bad == "w_width":
        w = [torch.randn(8, 5, dtype=torch.float64)]
    elif bad == "b_count":
        b = [torch.randn(8, dtype=torch.float64)] * 2
    else:
        w = [w[0].float()]
    with pytest.raises(RuntimeError, match=match):
        _cpu.input_projection(x, w, b)
