"""rnnkernels.reference, the pure-PyTorch specification, against float64 torch.nn.

The reference's functional API is called directly with the golden module's
_flat_weights (no rnnkernels module in between), so these tests check the reference on
its own: outputs, final states and gradients, dense and packed rows, both directions,
projections, dropout with the same seed. The whole file runs in float64.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels.reference as reference
from equivalence import (CELL_KINDS, SEQUENCE_KINDS, CellCase, SequenceCase, assert_matches,
                         gradients, random_upstream, run_cell, run_sequence, single_thread,
                         torch_module)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Everything here is small per-step torch ops, which threads only slow down."""
    with single_thread():
        yield


def _reference_sequence(golden, case: SequenceCase, inputs: dict):
    """The reference on `inputs`, with the argument handling torch.nn does around _VF:
    zero initial states when none are given, hx permuted into and out of the packed
    batch order. Returns (results, leaves, packed_data_metadata)."""
    x = inputs["input"].detach().clone().requires_grad_()
    leaves = {"input": x}
    batch_sizes = sorted_indices = unsorted_indices = None
    data = x
    if case.packed:
        packed = pack_padded_sequence(x, inputs["lengths"],
                                      enforce_sorted=case.layout == "packed_sorted")
        data, batch_sizes, sorted_indices, unsorted_indices = packed
    states = case.num_layers * (2 if case.bidirectional else 1)
    batch = case.batch
    names = ["h0", "c0"] if case.is_lstm else ["h0"]
    sizes = {"h0": case.output_size, "c0": case.hidden_size}
    hx = []
    for name in names:
        if name in inputs:
            leaves[name] = inputs[name].detach().clone().requires_grad_()
            state = leaves[name]
        else:
            state = torch.zeros(states, batch, sizes[name], dtype=F64)
        if sorted_indices is not None:
            state = state.index_select(1, sorted_indices)
        hx.append(state)
    args = (golden._flat_weights, golden.bias, golden.num_layers, golden.dropout,
            golden.training, golden.bidirectional, golden.batch_first, batch_sizes)
    if case.is_lstm:
        output, h_n, c_n = reference.lstm(data, (hx[0], hx[1]), *args)
        finals = {"h_n": h_n, "c_n": c_n}
    elif case.kind == "gru":
        output, h_n = reference.gru(data, hx[0], *args)
        finals = {"h_n": h_n}
    else:
        nonlinearity = SEQUENCE_KINDS[case.kind][1]["nonlinearity"]
        output, h_n = reference.rnn(data, hx[0], *args, nonlinearity=nonlinearity)
        finals = {"h_n": h_n}
    if unsorted_indices is not None:
        finals = {k: v.index_select(1, unsorted_indices) for k, v in finals.items()}
    leaves.update(golden.named_parameters())
    return {"output": output, **finals}, leaves, batch_sizes


def check_reference(case: SequenceCase, train: bool = False) -> None:
    golden = torch_module(case.kind, F64, **case.module_options())
    golden.train(train)
    inputs = case.make_inputs()
    seed = int(torch.randint(0, 2**31, ()))
    want, want_leaves, want_packed = run_sequence(golden, case, inputs, F64, seed)
    upstream = random_upstream(want)
    want_grads = gradients(want, want_leaves, upstream)
    torch.manual_seed(seed)
    got, got_leaves, batch_sizes = _reference_sequence(golden, case, inputs)
    got_grads = gradients(got, got_leaves, upstream)
    if case.packed:
        assert torch.equal(batch_sizes, want_packed.batch_sizes)
    context = f"reference {case}: "
    assert list(got) == list(want) and list(got_grads) == list(want_grads)
    for name in want:
        assert_matches(name, got[name], want[name], F64, context=context)
    for name in want_grads:
        assert_matches(name, got_grads[name], want_grads[name], F64, context=context)


@pytest.mark.parametrize("given_hx", [False, True], ids=["hx_none", "hx_given"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "packed_sorted",
                                    "packed_unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_reference_matches_torch(kind, bias, num_layers, bidirectional, layout, given_hx):
    check_reference(SequenceCase(kind, num_layers=num_layers, bias=bias,
                                 bidirectional=bidirectional, layout=layout,
                                 given_hx=given_hx))


@pytest.mark.parametrize("size", [dict(steps=1, batch=1), dict(steps=40, batch=9)],
                         ids=["T1_B1", "T40_B9"])
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_reference_sizes_match_torch(kind, size):
    check_reference(SequenceCase(kind, bidirectional=True, layout="packed_unsorted", **size))


@pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last")
@pytest.mark.parametrize("layout", ["time_major", "packed_unsorted"])
@pytest.mark.parametrize("num_layers", [2, 3], ids=["2layers", "3layers"])
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_reference_dropout_matches_torch_with_same_seed(kind, num_layers, layout):
    check_reference(SequenceCase(kind, num_layers=num_layers, bidirectional=True,
                                 layout=layout, dropout=0.5, given_hx=True), train=True)


_REFERENCE_CELLS = {
    "rnn_cell_tanh": lambda x, hx, w, b: reference.rnn_cell(x, hx, *w, *b,
                                                            nonlinearity="tanh"),
    "rnn_cell_relu": lambda x, hx, w, b: reference.rnn_cell(x, hx, *w, *b,
                                                            nonlinearity="relu"),
    "lstm_cell": lambda x, hx, w, b: reference.lstm_cell(x, hx, *w, *b),
    "gru_cell": lambda x, hx, w, b: reference.gru_cell(x, hx, *w, *b),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_reference_cell_matches_torch(kind, bias):
    case = CellCase(kind, bias=bias)
    golden = torch_module(kind, F64, **case.module_options())
    inputs = case.make_inputs()
    want, want_leaves = run_cell(golden, case, inputs, F64)
    upstream = random_upstream(want)
    want_grads = gradients(want, want_leaves, upstream)

    leaves = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    hx = (leaves["h0"], leaves["c0"]) if case.is_lstm else leaves["h0"]
    biases = (golden.bias_ih, golden.bias_hh) if bias else ()
    out = _REFERENCE_CELLS[kind](leaves["input"], hx, (golden.weight_ih, golden.weight_hh),
                                 biases)
    got = {"h": out[0], "c": out[1]} if case.is_lstm else {"h": out}
    leaves.update(golden.named_parameters())
    got_grads = gradients(got, leaves, upstream)
    assert list(got_grads) == list(want_grads)
    for name in want:
        assert_matches(name, got[name], want[name], F64, context=f"reference {case}: ")
    for name in want_grads:
        assert_matches(name, got_grads[name], want_grads[name], F64,
                       context=f"reference {case}: ")
