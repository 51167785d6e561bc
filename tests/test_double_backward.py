"""Gradients of gradients (backward with create_graph=True) through the CPU layers and cells.

torch.nn's CPU recurrent modules support double backward (gradient penalties,
Hessian-vector products); ours recompute through the reference for it (Note [double
backward] in rnnkernels/_double_backward.py). Checked here: a gradient penalty's gradients with
respect to the input, the initial state and every parameter against a float64 torch.nn
module over cells and options; a Hessian-vector product; gradgradcheck of rnn_layer in
four modes (dense, packed, two directions, zoneout); a tensor passed in two argument
slots; inputs that do not require grad; the layer-normalised LSTM against the reference;
and the first-order backward after.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from equivalence import assert_matches, module_pair

F64 = torch.float64
TOL64 = dict(rtol=1e-7, atol=1e-7)

SEQUENCE_CASES = [
    ("LSTM", {}), ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=3, bias=False)), ("LSTM", dict(batch_first=True, num_layers=2)),
    ("GRU", {}), ("GRU", dict(num_layers=2, bidirectional=True)), ("GRU", dict(bias=False)),
    ("RNN", {}), ("RNN", dict(nonlinearity="relu", bidirectional=True)),
    ("RNN", dict(num_layers=2, bias=False)),
]
CELL_CASES = [("LSTMCell", True), ("LSTMCell", False), ("GRUCell", True), ("GRUCell", False),
              ("RNNCell", True), ("RNNCell", False)]


def _pair(name, dtype, **kwargs):
    """(float64 torch.nn, ours in dtype), input size 5, hidden size 7."""
    torch.manual_seed(0)
    return module_pair(name, dtype, input_size=5, hidden_size=7, **kwargs)


def _initial_state(name, kwargs, batch, dtype):
    if "Cell" in name:
        h = torch.randn(batch, 7, dtype=dtype)
        return (h, torch.randn(batch, 7, dtype=dtype)) if name == "LSTMCell" else h
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    h = torch.randn(layers, batch, kwargs.get("proj_size", 0) or 7, dtype=dtype)
    return (h, torch.randn(layers, batch, 7, dtype=dtype)) if name == "LSTM" else h


def _penalty_grads(module, x, hx, packed_lengths=None):
    """Gradients of |d(sum of squared outputs)/dx|^2 w.r.t. x, hx and the parameters."""
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() for s in (hx if isinstance(hx, tuple) else (hx,))]
    state = tuple(states) if isinstance(hx, tuple) else states[0]
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, enforce_sorted=False)
    out = module(inp, state)
    first = out[0] if isinstance(out, tuple) else out
    first = first.data if packed_lengths is not None else first
    h_last = out[1][0] if isinstance(out, tuple) and isinstance(out[1], tuple) else (
        out[1] if isinstance(out, tuple) else None)
    loss = first.pow(2).sum() + (h_last.pow(3).sum() if h_last is not None else 0)
    grad_x, = torch.autograd.grad(loss, x, create_graph=True)
    penalty = grad_x.pow(2).sum()
    wrt = [x, *states, *module.parameters()]
    return torch.autograd.grad(penalty, wrt)


def _compare(reference_grads, our_grads, tol):
    assert len(reference_grads) == len(our_grads)
    for i, (expected, actual) in enumerate(zip(reference_grads, our_grads)):
        torch.testing.assert_close(actual.to(F64), expected, **tol, msg=lambda m: f"grad {i}: {m}")


@pytest.mark.parametrize("name,kwargs", SEQUENCE_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
                              for n, kw in SEQUENCE_CASES])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_gradient_penalty_matches_torch_nn(name, kwargs, dtype):
    """float32: the error rule of the equivalence tests (equivalence.assert_matches):
    within the float32 defaults plus twice torch.nn's own float32 error on the case."""
    reference, ours = _pair(name, dtype, **kwargs)
    torch.manual_seed(1)
    shape = (3, 6, 5) if kwargs.get("batch_first") else (6, 3, 5)
    x = torch.randn(*shape, dtype=F64)
    hx = _initial_state(name, kwargs, 3, F64)
    expected = _penalty_grads(reference, x, hx)
    cast = tuple(s.to(dtype) for s in hx) if isinstance(hx, tuple) else hx.to(dtype)
    actual = _penalty_grads(ours, x.to(dtype), cast)
    if dtype == F64:
        _compare(expected, actual, TOL64)
        return
    torch_fp32 = _penalty_grads(reference.float(), x.float(), cast)
    for i, (e, a, t) in enumerate(zip(expected, actual, torch_fp32)):
        assert_matches(f"grad {i}", a, e, torch.float32, torch_fp32=t)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_gradient_penalty_packed(name):
    reference, ours = _pair(name, F64, bidirectional=True)
    torch.manual_seed(2)
    x = torch.randn(6, 4, 5, dtype=F64)
    lengths = torch.tensor([3, 6, 1, 4])
    hx = _initial_state(name, dict(bidirectional=True), 4, F64)
    _compare(_penalty_grads(reference, x, hx, lengths), _penalty_grads(ours, x, hx, lengths),
             TOL64)


@pytest.mark.parametrize("name,bias", CELL_CASES)
def test_cell_gradient_penalty_matches_torch_nn(name, bias):
    reference, ours = _pair(name, F64, bias=bias)
    torch.manual_seed(3)
    x = torch.randn(4, 5, dtype=F64)
    hx = _initial_state(name, {}, 4, F64)
    _compare(_penalty_grads(reference, x, hx), _penalty_grads(ours, x, hx), TOL64)


def test_hessian_vector_product_matches_torch_nn():
    reference, ours = _pair("LSTM", F64, num_layers=2)
    torch.manual_seed(4)
    x = torch.randn(5, 2, 5, dtype=F64)
    vector = [torch.randn_like(p) for p in reference.parameters()]

    def hvp(module):
        params = list(module.parameters())
        loss = module(x)[0].tanh().sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        return torch.autograd.grad(dot, params)

    _compare(hvp(reference), hvp(ours), TOL64)


def test_inputs_without_grad_and_frozen_parameters():
    reference, ours = _pair("GRU", F64, num_layers=2)
    for module in (reference, ours):
        module.weight_hh_l0.requires_grad_(False)
        module.bias_ih_l1.requires_grad_(False)
    torch.manual_seed(5)
    x = torch.randn(4, 2, 5, dtype=F64)

    def grads(module):
        params = [p for p in module.parameters() if p.requires_grad]
        loss = module(x)[0].pow(2).sum()
        first = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in first), params)

    _compare(grads(reference), grads(ours), TOL64)


def _rand(*shape):
    return (0.5 * torch.randn(*shape, dtype=F64)).requires_grad_()


OP_CASES = [
    pytest.param(mode, directions, packed, zoneout,
                 id=f"{mode}-D{directions}-{'packed' if packed else 'dense'}"
                    f"{'-zoneout' if zoneout else ''}")
    for mode in ("lstm", "gru", "rnn_tanh", "ln_lstm")
    for directions, packed, zoneout in [(1, False, False), (2, True, False), (1, False, True)]
    if not (zoneout and mode == "ln_lstm")
]


@pytest.mark.parametrize("mode,directions,packed,zoneout", OP_CASES)
def test_op_gradgradcheck(mode, directions, packed, zoneout):
    torch.manual_seed(6)
    H, I, G = 3, 2, {"lstm": 4, "ln_lstm": 4, "gru": 3, "rnn_tanh": 1}[mode]
    lstm = mode in ("lstm", "ln_lstm")
    batch_sizes = torch.tensor([3, 2, 1]) if packed else None
    rows, batch = (6, 3) if packed else (6, 2)
    width = 2 * H if lstm else H
    keep = (torch.rand(directions, rows, width) < 0.5).to(F64) if zoneout else None
    x = _rand(rows, I)
    weights = []
    for _ in range(directions):
        weights += [_rand(G * H, I), _rand(G * H, H), _rand(G * H), _rand(G * H)]
        if mode == "ln_lstm":
            weights += [1 + _rand(G * H), 1 + _rand(G * H), 1 + _rand(H), _rand(H)]
    h0 = _rand(directions, batch, H)
    c0 = _rand(directions, batch, H)
    flat = [x, h0, *([c0] if lstm else []), *weights]

    def run(x, h0, *rest):
        c0, weights = (rest[0], rest[1:]) if lstm else (None, rest)
        out = torch.ops.rnnkernels.rnn_layer(mode, x, list(weights), True, False, h0, c0,
                                             batch_sizes, keep, True)
        return out[:3] if lstm else out[:2]

    # The create_graph=True gradients (the kernels, through the backward op's autograd) equal
    # the plain ones; gradgradcheck differentiates them (the reference recompute).
    outputs = run(*flat)
    upstream = [torch.randn_like(o) for o in outputs]
    kernels = torch.autograd.grad(outputs, flat, upstream, retain_graph=True)
    recomputed = torch.autograd.grad(outputs, flat, upstream, create_graph=True)
    _compare(kernels, recomputed, TOL64)
    assert torch.autograd.gradgradcheck(run, tuple(flat))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_third_order_matches_the_reference(mode):
    # The backward op's derivative keeps its graph when asked: d/dx of a function of the
    # second-order gradient, against the same chain through rnnkernels.reference.
    torch.manual_seed(11)
    G, lstm = {"lstm": 4, "gru": 3}[mode], mode == "lstm"
    x = _rand(6, 2)
    w = [_rand(G * 3, 2), _rand(G * 3, 3), _rand(G * 3), _rand(G * 3)]
    h0, c0 = _rand(1, 2, 3), (_rand(1, 2, 3) if lstm else None)

    def third(run):
        out = run()[0]
        (g1,) = torch.autograd.grad(out.pow(3).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(g2.sin().sum(), [x, *w, h0])

    ours = third(lambda: torch.ops.rnnkernels.rnn_layer(mode, x, w, True, False, h0, c0, None,
                                                        None, True))
    dirs = [dict(w_ih=w[0], w_hh=w[1], b_ih=w[2], b_hh=w[3], w_hr=None)]
    expected = third(lambda: rnnkernels.reference.run_layer(mode, x, dirs, h0, c0, [2] * 3))
    _compare(expected, ours, TOL64)


def test_tensor_in_two_slots_gets_each_slots_gradient():
    # An RNN whose input and recurrent weights are one tensor (I == H): the gradient of the
    # tied tensor is the sum over both slots, once each, as with the reference.
    torch.manual_seed(7)
    w = _rand(4, 4)
    b = _rand(4)
    x = _rand(6, 4)
    h0 = _rand(1, 2, 4)

    def penalty(run):
        out, h_n = run()
        grads = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), [x, w], create_graph=True)
        return torch.autograd.grad(sum(g.pow(2).sum() for g in grads), [x, w, b, h0])

    ours = penalty(lambda: torch.ops.rnnkernels.rnn_layer(
        "rnn_tanh", x, [w, w, b, b], True, False, h0, None, None, None, True)[:2])
    dirs = [dict(w_ih=w, w_hh=w, b_ih=b, b_hh=b, w_hr=None)]
    expected = penalty(lambda: rnnkernels.reference.run_layer("rnn", x, dirs, h0, None, [2] * 3)[:2])
    _compare(expected, ours, TOL64)


def test_layer_norm_lstm_gradient_penalty_matches_the_reference(monkeypatch):
    # The layer-normalised LSTM (beyond torch.nn) against rnnkernels.reference, which the
    # module runs where the kernels do not, on the same parameters.
    torch.manual_seed(8)
    module = rnnkernels.LSTM(5, 7, num_layers=2, bidirectional=True, layer_norm=True).to(F64)
    x = torch.randn(4, 2, 5, dtype=F64)
    hx = _initial_state("LSTM", dict(num_layers=2, bidirectional=True), 2, F64)
    ours = _penalty_grads(module, x, hx)
    monkeypatch.setattr(rnnkernels.functional, "kernels_support", lambda x: False)
    expected = _penalty_grads(module, x, hx)
    _compare(expected, ours, TOL64)


def test_first_order_backward_after_double_backward():
    reference, ours = _pair("LSTM", F64)
    torch.manual_seed(9)
    x = torch.randn(5, 2, 5, dtype=F64)
    _penalty_grads(ours, x, _initial_state("LSTM", {}, 2, F64))
    for module in (reference, ours):
        module.zero_grad()
        module(x)[0].pow(2).sum().backward()
    for p_ref, p_ours in zip(reference.parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, **TOL64)
