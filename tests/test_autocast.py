"""torch.autocast on CPU (bfloat16): our modules return what torch.nn's return under the
same autocast (output and state dtypes, per cell: Note [autocast] in functional.py), and
their error against a float64 torch.nn reference, outputs and every gradient, is at most
twice torch.nn's own error under autocast."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels

CASES = [
    ("LSTM", dict(num_layers=2, bidirectional=True), False),
    ("LSTM", dict(proj_size=5), False),
    ("LSTM", dict(), True),
    ("GRU", dict(num_layers=2), False),
    ("GRU", dict(bidirectional=True), True),
    ("RNN", dict(nonlinearity="relu"), False),
    ("RNN", dict(bidirectional=True), True),
    ("RNNCell", dict(), False),
    ("GRUCell", dict(), False),
    ("LSTMCell", dict(), False),
]

T, B, I, H = 12, 9, 20, 16


def _flat(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.utils.rnn.PackedSequence):
        return [value.data]
    return [t for v in value for t in _flat(v)]


def _run(module, x, hx, packed, autocast):
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    inp = pack_padded_sequence(x, torch.linspace(T, 3, B).long()) if packed else x
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        result = module(inp, hx) if hx is not None else module(inp)
    outs = _flat(result)
    gen = torch.Generator().manual_seed(5)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum()
               for o in outs)
    loss.backward()
    return outs, [x.grad, *(p.grad for p in module.parameters())]


def _error(got, want):
    return (got.double() - want.double()).abs().max().item()


@pytest.mark.parametrize("give_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("name,kwargs,packed", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_cpu_bfloat16_autocast_matches_torch_nn(name, kwargs, packed, give_hx):
    torch.manual_seed(0)
    is_cell = name.endswith("Cell")
    theirs = getattr(nn, name)(I, H, **kwargs)
    ours = getattr(rnnkernels, name)(I, H, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    reference = getattr(nn, name)(I, H, **kwargs).double()
    reference.load_state_dict(theirs.state_dict())
    x = torch.randn(B, I) if is_cell else torch.randn(T, B, I)
    hx = None
    if give_hx:
        layers = 1 if is_cell else kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
        out_size = kwargs.get("proj_size", 0) or H
        h = torch.randn(B, out_size) if is_cell else torch.randn(layers, B, out_size)
        c = torch.randn(B, H) if is_cell else torch.randn(layers, B, H)
        hx = (h, c) if "LSTM" in name else h
    ref_hx = None if hx is None else tuple(t.double() for t in hx) if isinstance(hx, tuple) \
        else hx.double()

    ours_out, ours_grads = _run(ours, x, hx, packed, autocast=True)
    nn_out, nn_grads = _run(theirs, x, hx, packed, autocast=True)
    ref_out, ref_grads = _run(reference, x.double(), ref_hx, packed, autocast=False)

    assert [o.dtype for o in ours_out] == [o.dtype for o in nn_out]
    assert [g.dtype for g in ours_grads] == [g.dtype for g in nn_grads]
    for got, theirs_t, want in zip(ours_out + ours_grads, nn_out + nn_grads, ref_out + ref_grads):
        nn_error = _error(theirs_t, want)
        assert _error(got, want) <= 2 * nn_error + 1e-6, (_error(got, want), nn_error)
