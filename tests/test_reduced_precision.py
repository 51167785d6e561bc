"""bfloat16 and float16 on CPU: error against a float64 torch.nn reference at most twice
torch.nn's own error in that dtype, for outputs, final states and every gradient."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import rnnkernels

CASES = [
    ("LSTM", dict(num_layers=2)),
    ("LSTM", dict(proj_size=5)),
    ("GRU", dict(bidirectional=True)),
    ("RNN", dict(nonlinearity="relu")),
    ("RNN", dict(num_layers=2, batch_first=True)),
]


def _outputs_and_grads(module, x, hx):
    out, hidden = module(x, hx)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)).sum()
               for t in (out, *states))
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [out, *states, *grads]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cls,kwargs", CASES, ids=lambda c: str(c))
def test_error_at_most_twice_torch_nn(cls, kwargs, dtype):
    torch.manual_seed(0)
    gold_module = getattr(nn, cls)(33, 17, **kwargs).double()
    T, B = 40, 6
    x = torch.randn((B, T, 33) if kwargs.get("batch_first") else (T, B, 33), dtype=torch.float64)
    layers = gold_module.num_layers * (2 if gold_module.bidirectional else 1)
    h0 = torch.randn(layers, B, gold_module.proj_size or 17, dtype=torch.float64) * 0.5
    c0 = torch.randn(layers, B, 17, dtype=torch.float64) * 0.5
    hx = (h0, c0) if cls == "LSTM" else h0
    gold = _outputs_and_grads(gold_module, x.clone().requires_grad_(), hx)

    def in_dtype(factory):
        module = getattr(factory, cls)(33, 17, **kwargs)
        module.load_state_dict(gold_module.state_dict())
        module = module.to(dtype)
        state = tuple(t.to(dtype) for t in hx) if cls == "LSTM" else hx.to(dtype)
        return _outputs_and_grads(module, x.to(dtype).requires_grad_(), state)

    theirs = in_dtype(nn)
    ours = in_dtype(rnnkernels)
    for name, g, t, o in zip(range(len(gold)), gold, theirs, ours):
        assert o.dtype == t.dtype == dtype
        err_nn = (t.double() - g).abs().max().item()
        err_ours = (o.double() - g).abs().max().item()
        assert err_ours <= 2 * err_nn + 1e-6, (
            f"tensor {name}: our {dtype} error {err_ours:.3g} exceeds twice torch.nn's {err_nn:.3g}")


def test_workspace_is_float32():
    x = torch.randn(6, 3, dtype=torch.bfloat16)
    w = [torch.randn(4 * 5, 3, dtype=torch.bfloat16), torch.randn(4 * 5, 5, dtype=torch.bfloat16)]
    h0 = torch.zeros(1, 2, 5, dtype=torch.bfloat16)
    out, h_n, c_n, ws = torch.ops.rnnkernels.rnn_layer("lstm", x, w, False, False, h0, h0, None,
                                                       None, True)
    assert (out.dtype, h_n.dtype, c_n.dtype, ws.dtype) == (torch.bfloat16,) * 3 + (torch.float32,)


# Note [precision policy] (csrc/host/precision.h): float16 always runs widened on CPU. The
# widening must not hide a dtype mismatch: each tensor is checked against the call's dtype
# before it is widened, and the message names the tensor.
_recurrence = rnnkernels._C._cpu_recurrence


def _gru_forward_args(dtype=torch.float16):
    B, H = 2, 5
    return dict(x_proj=torch.randn(6, 3 * H, dtype=dtype), w_hh=[torch.randn(3 * H, H, dtype=dtype)],
                b_hh=[torch.randn(3 * H, dtype=dtype)], h0=torch.zeros(1, B, H, dtype=dtype),
                batch_sizes=None, need_workspace=True)


@pytest.mark.parametrize("name, wrong, shown_dtype", [("w_hh", torch.bfloat16, "BFloat16"),
                                                      ("b_hh", torch.float32, "Float"),
                                                      ("h0", torch.float64, "Double")])
def test_widened_call_refuses_mixed_dtypes(name, wrong, shown_dtype):
    args = _gru_forward_args()
    value = args[name]
    args[name] = [t.to(wrong) for t in value] if isinstance(value, list) else value.to(wrong)
    shown = name + "[0]" if isinstance(value, list) else name
    with pytest.raises(RuntimeError, match=rf"gru_forward: expected {re.escape(shown)} of dtype "
                                            rf"Half \(as x_proj\), got {shown_dtype}"):
        _recurrence.gru_forward(**args)


def test_widened_backward_needs_float32_workspace():
    args = _gru_forward_args()
    out, h_n, ws = _recurrence.gru_forward(**args)
    assert ws.dtype == torch.float32 and out.dtype == h_n.dtype == torch.float16
    common = dict(grad_output=torch.ones_like(out), grad_h_n=None, w_hh=args["w_hh"],
                  b_hh=args["b_hh"], h0=args["h0"], output=out, batch_sizes=None)
    grads = _recurrence.gru_backward(workspace=ws, **common)
    assert all(g.dtype == torch.float16 for g in [grads[0], grads[1], *grads[2], *grads[3]])
    with pytest.raises(RuntimeError, match="the workspace of a Half call is float32, got Half"):
        _recurrence.gru_backward(workspace=ws.half(), **common)


def test_op_pair_refuses_mixed_dtypes_in_float16():
    x = torch.randn(6, 3, dtype=torch.float16)
    w = [torch.randn(3 * 5, 3, dtype=torch.float16), torch.randn(3 * 5, 5, dtype=torch.float16)]
    h0 = torch.zeros(1, 2, 5)  # float32
    with pytest.raises(RuntimeError, match=r"expected h0 of dtype Half \(as x_proj\), got Float"):
        torch.ops.rnnkernels.rnn_layer("gru", x, w, False, False, h0, None, None, None, True)
