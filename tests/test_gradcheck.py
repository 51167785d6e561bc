"""torch.autograd.gradcheck in float64, default tolerances, through rnnkernels.functional:
the forward ops, their registered backward ops and the input projection around them.

Tiny shapes (T 3-4, B 2-3, I 3, H 3, proj_size 2); every differentiable argument is a
gradcheck input: the input (the PackedSequence data for packed input), h0, c0 and every
weight and bias. One thread: a gradcheck runs the forward about twice per input element,
and on a busy machine each two-thread region of a bidirectional layer can stall for
milliseconds; the threaded paths are covered by test_equivalence.
"""

import pytest
import torch
from torch.autograd import gradcheck

import rnnkernels.functional as RF
from equivalence import CELL_KINDS, SEQUENCE_KINDS, single_thread, torch_module

F64 = torch.float64
INPUT, HIDDEN, PROJ = 3, 3, 2
STEPS, BATCH = 3, 2
PACKED_BATCH_SIZES = torch.tensor([3, 3, 2, 1])  # B=3, lengths 4, 3, 2


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _leaf(shape):
    return torch.randn(*shape, dtype=F64, requires_grad=True)


def _sequence_call(kind):
    """(x, hx, params, has_biases, layers, bidirectional, batch_sizes) -> tuple of outputs."""
    def call(x, hx, params, has_biases, layers, bidirectional, batch_sizes):
        common = (params, has_biases, layers, 0.0, False, bidirectional, False, batch_sizes)
        if kind.startswith("lstm"):
            return RF.lstm(x, hx, *common)
        if kind == "gru":
            return RF.gru(x, hx[0], *common)
        return RF.rnn(x, hx[0], *common, nonlinearity=SEQUENCE_KINDS[kind][1]["nonlinearity"])
    return call


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_sequence_gradcheck(kind, bias, num_layers, bidirectional, packed):
    options = dict(input_size=INPUT, hidden_size=HIDDEN, num_layers=num_layers, bias=bias,
                   bidirectional=bidirectional)
    if kind == "lstm_proj":
        options["proj_size"] = PROJ
    module = torch_module(kind, F64, **options)
    params = [p.detach().clone().requires_grad_() for p in module._flat_weights]
    states = num_layers * (2 if bidirectional else 1)
    if packed:
        batch_sizes = PACKED_BATCH_SIZES
        x, batch = _leaf((int(batch_sizes.sum()), INPUT)), int(batch_sizes[0])
    else:
        batch_sizes = None
        x, batch = _leaf((STEPS, BATCH, INPUT)), BATCH
    output_size = PROJ if kind == "lstm_proj" else HIDDEN
    hx = [_leaf((states, batch, output_size))]
    if kind.startswith("lstm"):
        hx.append(_leaf((states, batch, HIDDEN)))
    call = _sequence_call(kind)
    n_hx = len(hx)

    def fn(x, *rest):
        return call(x, tuple(rest[:n_hx]), list(rest[n_hx:]), bias, num_layers, bidirectional,
                    batch_sizes)

    assert gradcheck(fn, (x, *hx, *params))


_CELL_CALLS = {
    "rnn_cell_tanh": lambda x, hx, *w: RF.rnn_cell(x, hx[0], *w, nonlinearity="tanh"),
    "rnn_cell_relu": lambda x, hx, *w: RF.rnn_cell(x, hx[0], *w, nonlinearity="relu"),
    "lstm_cell": lambda x, hx, *w: RF.lstm_cell(x, tuple(hx), *w),
    "gru_cell": lambda x, hx, *w: RF.gru_cell(x, hx[0], *w),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_cell_gradcheck(kind, bias):
    module = torch_module(kind, F64, input_size=INPUT, hidden_size=HIDDEN, bias=bias)
    weights = [module.weight_ih, module.weight_hh]
    if bias:
        weights += [module.bias_ih, module.bias_hh]
    weights = [w.detach().clone().requires_grad_() for w in weights]
    hx = [_leaf((BATCH + 1, HIDDEN)) for _ in range(2 if kind == "lstm_cell" else 1)]
    n_hx = len(hx)

    def fn(x, *rest):
        return _CELL_CALLS[kind](x, rest[:n_hx], *rest[n_hx:])

    assert gradcheck(fn, (_leaf((BATCH + 1, INPUT)), *hx, *weights))
