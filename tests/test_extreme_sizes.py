"""Extreme but valid sizes and layouts, and non-finite values, against float64 torch.nn:
hidden and input size 1, one step, very long sequences at a tiny batch, stride-0 and
non-contiguous inputs, states and weights, and NaN / inf landing in exactly the rows and
steps where torch.nn's land. Element offsets past 2**31 need more memory than CI has:
bench/extreme_sizes.py runs that case (its result is in the README's Reliability section).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnkernels
from rnnkernels import functional as RF

F64 = torch.float64
LAYERS = [("LSTM", {}), ("LSTM", dict(proj_size=1)), ("GRU", {}), ("RNN", {}),
          ("RNN", dict(nonlinearity="relu"))]


def _pair(cls, *args, **kwargs):
    golden = getattr(nn, cls)(*args, dtype=F64, **kwargs)
    ours = getattr(rnnkernels, cls)(*args, dtype=F64, **kwargs)
    ours.load_state_dict(golden.state_dict())
    return golden, ours


def _outputs_and_grads(module, x, hx=None):
    x = x.detach().clone().requires_grad_()
    out, hidden = module(x, hx)
    flat = [out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    gen = torch.Generator().manual_seed(7)
    upstream = [torch.randn(t.shape, generator=gen, dtype=F64) for t in flat]
    grads = torch.autograd.grad(flat, [x, *module.parameters()], upstream)
    return flat + list(grads)


def _assert_all_close(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, msg=lambda m: f"tensor {i}: {m}")


@pytest.mark.parametrize("cls,kwargs", LAYERS, ids=str)
@pytest.mark.parametrize("input_size,hidden_size", [(1, 1), (1, 9), (9, 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_size_one_dimensions(cls, kwargs, input_size, hidden_size, bidirectional):
    if kwargs.get("proj_size", 0) >= hidden_size:
        pytest.skip("proj_size must be smaller than hidden_size")
    torch.manual_seed(input_size * 10 + hidden_size)
    golden, ours = _pair(cls, input_size, hidden_size, num_layers=2,
                         bidirectional=bidirectional, **kwargs)
    x = torch.randn(6, 3, input_size, dtype=F64)
    _assert_all_close(_outputs_and_grads(ours, x), _outputs_and_grads(golden, x))


@pytest.mark.parametrize("cls,kwargs", LAYERS, ids=str)
@pytest.mark.parametrize("batch", [1, 9])
def test_one_step(cls, kwargs, batch):
    torch.manual_seed(batch)
    golden, ours = _pair(cls, 5, 7, bidirectional=True, **kwargs)
    x = torch.randn(1, batch, 5, dtype=F64)
    _assert_all_close(_outputs_and_grads(ours, x), _outputs_and_grads(golden, x))


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_ten_thousand_steps_at_batch_one(cls):
    # Every per-step bookkeeping (row offsets, state buffers, the backward's row kinds)
    # over a sequence far longer than any other test's; float64, so the values must agree
    # to rounding after 10000 steps (bench/extreme_sizes.py runs 300000: torch.nn's float64
    # backward takes about 0.45 ms a step here, too long for CI).
    torch.manual_seed(0)
    golden, ours = _pair(cls, 2, 3)
    x = torch.randn(10_000, 1, 2, dtype=F64)
    _assert_all_close(_outputs_and_grads(ours, x), _outputs_and_grads(golden, x))


def _strided_variants(x, h0):
    """(name, input, h0) with stride-0 and transposed, non-contiguous layouts."""
    T, B, I = x.shape
    return [
        ("stride0_time", x[:1].expand(T, B, I), h0),
        ("stride0_batch", x[:, :1].expand(T, B, I), h0),
        ("transposed", x.transpose(0, 1).contiguous().transpose(0, 1), h0),
        ("every_other_feature", torch.cat([x, x], 2)[:, :, ::2], h0),
        ("stride0_state", x, h0[:, :1].expand_as(h0)),
        ("non_contiguous_state", x, h0.transpose(1, 2).contiguous().transpose(1, 2)),
    ]


@pytest.mark.parametrize("cls,kwargs", [c for c in LAYERS if "proj_size" not in c[1]], ids=str)
def test_strided_inputs_and_states(cls, kwargs):
    torch.manual_seed(1)
    golden, ours = _pair(cls, 5, 7, num_layers=2, **kwargs)
    x = torch.randn(6, 4, 5, dtype=F64)
    h0 = torch.randn(2, 4, 7, dtype=F64)
    for name, xi, hi in _strided_variants(x, h0):
        hx = (hi, hi.clone()) if cls == "LSTM" else hi
        _assert_all_close(_outputs_and_grads(ours, xi, hx), _outputs_and_grads(golden, xi, hx))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_non_contiguous_weights_in_the_functional_api(cell):
    # The functional form takes any weight tensors (a user's own flat weights, views of
    # a larger buffer): every weight here is a transposed or strided view.
    torch.manual_seed(2)
    H, I = 7, 5
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[cell]
    w_ih = torch.randn(I, gates * H, dtype=F64).t()
    w_hh = torch.randn(2 * gates * H, H, dtype=F64)[::2]
    b_ih, b_hh = torch.randn(2 * gates * H, dtype=F64)[::2], torch.randn(gates * H, dtype=F64)
    params = [w_ih, w_hh, b_ih, b_hh]
    assert not w_ih.is_contiguous() and not w_hh.is_contiguous() and not b_ih.is_contiguous()
    x = torch.randn(6, 3, I, dtype=F64)
    h0 = torch.randn(1, 3, H, dtype=F64)
    hx = (h0, h0.clone()) if cell == "lstm" else h0
    ours = {"lstm": RF.lstm, "gru": RF.gru, "rnn_tanh": RF.rnn}[cell](x, hx, params, True, 1, 0.0,
                                                                         False, False)
    golden = {"lstm": torch._VF.lstm, "gru": torch._VF.gru, "rnn_tanh": torch._VF.rnn_tanh}[cell](
        x, hx, [p.contiguous() for p in params], True, 1, 0.0, False, False, False)
    _assert_all_close(list(ours), list(golden))


@pytest.mark.parametrize("cls,kwargs", LAYERS, ids=str)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch", [3, 16])
def test_non_finite_inputs_reach_the_rows_and_steps_torch_reaches(cls, kwargs, value,
                                                                   bidirectional, batch):
    # A non-finite input at (step 2, row 1): which outputs turn NaN or infinite must be
    # exactly torch.nn's (batch 16 runs the fused input projection and the row split).
    torch.manual_seed(3)
    golden, ours = _pair(cls, 5, 7, bidirectional=bidirectional, **kwargs)
    x = torch.randn(6, batch, 5, dtype=F64)
    x[2, 1, 3] = value
    with torch.no_grad():
        got, want = ours(x), golden(x)
    for g, w in zip([got[0], *got[1]] if cls == "LSTM" else [got[0], got[1]],
                    [want[0], *want[1]] if cls == "LSTM" else [want[0], want[1]]):
        assert torch.equal(torch.isnan(g), torch.isnan(w))
        assert torch.equal(torch.isinf(g), torch.isinf(w))
        finite = torch.isfinite(w)
        torch.testing.assert_close(g[finite], w[finite])


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_non_finite_weight_reaches_every_row_as_torch_does(cls):
    torch.manual_seed(4)
    golden, ours = _pair(cls, 5, 7)
    with torch.no_grad():
        for module in (golden, ours):
            module.weight_hh_l0[0, 0] = float("nan")
        x = torch.randn(4, 3, 5, dtype=F64)
        got, want = ours(x)[0], golden(x)[0]
    assert torch.equal(torch.isnan(got), torch.isnan(want))
