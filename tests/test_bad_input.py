"""Bad input: rnnkernels' modules must reject it like torch.nn does.

For every case of the catalogue the test runs torch.nn on the same input LIVE and takes
its behaviour as the reference:

- torch.nn raises: ours raises an exception that is an instance of torch.nn's type (so an
  `except` clause written against torch.nn catches it; see Note [exception types] in
  rnnkernels/nn.py), with a message that names the problem (the expected and the actual
  size / dtype / rank), and leaves the module's state_dict bitwise unchanged and the
  module usable: a valid forward afterwards equals torch.nn's.
- torch.nn silently returns something (marked `torch_silent` with what it does): ours must
  not give a silent wrong answer, it raises `ours_raises` with such a message. Should a
  later torch raise here, the test follows torch's type instead.
- torch.nn crashes the process (marked `torch_crashes`): torch.nn runs in a child
  process to document the crash, ours must raise with such a message.
- torch.nn accepts and its answer is right (ACCEPTED): ours returns the same answer.

Sizes are odd and distinct so that a message naming "5" or "[2, 4, 7]" names this case.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels

I, H, P, L, B, T = 5, 7, 4, 2, 3, 4   # input, hidden, proj, layers, batch, steps
F64, F32 = torch.float64, torch.float32
LAYERS = ("RNN", "GRU", "LSTM")
CELLS = ("RNNCell", "GRUCell", "LSTMCell")


def rand(*shape, dtype=F64):
    return torch.randn(*shape, dtype=dtype)


def packed(lengths=(4, 2, 3), enforce_sorted=False, features=I, dtype=F64):
    """A valid PackedSequence; unsorted lengths give sorted_indices."""
    padded = rand(max(lengths), len(lengths), features, dtype=dtype)
    return pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=enforce_sorted)


def raw_packed(batch_sizes, rows=None, bs_dtype=torch.int64, sorted_indices=None,
               unsorted_indices=None):
    """A PackedSequence built by hand, as corrupt as asked."""
    batch_sizes = torch.tensor(batch_sizes, dtype=bs_dtype)
    rows = int(batch_sizes.sum()) if rows is None else rows
    return PackedSequence(rand(rows, I), batch_sizes, sorted_indices, unsorted_indices)


@dataclass
class Case:
    id: str
    module: str
    make_args: Callable[[], tuple]
    mentions: tuple[str, ...]
    options: dict = field(default_factory=dict)   # constructor options: num_layers, dtype, ...
    torch_silent: str | None = None                # what torch.nn does instead of raising
    ours_raises: type = RuntimeError               # what ours raises where torch.nn does not
    torch_crashes: bool = False
    broken_module: bool = False                    # no input is valid for this module

    @property
    def name(self):
        return f"{self.module}-{self.id}"


def build(lib, case_module: str, options: dict):
    options = dict(options)
    hidden = options.pop("hidden_size", H)
    dtype = options.pop("dtype", F64)
    if case_module.endswith("Cell"):
        return getattr(lib, case_module)(I, hidden, dtype=dtype, **options)
    return getattr(lib, case_module)(I, hidden, num_layers=options.pop("num_layers", L),
                                     dtype=dtype, **options)


def _layer_cases(kind: str) -> list[Case]:
    lstm = kind == "LSTM"
    shape_word = "hidden[0] size" if lstm else "hidden size"

    def state(layers=L, batch=B, hidden=H, dtype=F64):
        """h_0, or (h_0, c_0) for the LSTM, of the given shape and dtype."""
        if not lstm:
            return rand(layers, batch, hidden, dtype=dtype)
        return rand(layers, batch, hidden, dtype=dtype), rand(layers, batch, H, dtype=dtype)

    def rank2_state():
        return (rand(L, B), rand(L, B)) if lstm else rand(L, B)

    cases = [
        Case("input_rank1", kind, lambda: (rand(I),), ("2D or 3D", "1D")),
        Case("input_rank4", kind, lambda: (rand(T, B, I, 1),), ("2D or 3D", "4D")),
        Case("input_features", kind, lambda: (rand(T, B, 9),), ("Expected 5", "got 9")),
        Case("input_features_unbatched", kind, lambda: (rand(T, 9),), ("Expected 5", "got 9")),
        Case("input_features_batch_first", kind, lambda: (rand(B, T, 9),),
             ("Expected 5", "got 9"), dict(batch_first=True)),
        Case("hx_layers", kind, lambda: (rand(T, B, I), state(layers=3)),
             (shape_word, "(2, 3, 7)", "[3, 3, 7]")),
        Case("hx_batch", kind, lambda: (rand(T, B, I), state(batch=4)),
             (shape_word, "(2, 3, 7)", "[2, 4, 7]")),
        Case("hx_hidden", kind, lambda: (rand(T, B, I), state(hidden=11)),
             (shape_word, "(2, 3, 7)", "[2, 3, 11]")),
        Case("hx_batch_bidirectional", kind, lambda: (rand(T, B, I), state(layers=2, batch=B)),
             ("(4, 3, 7)", "[2, 3, 7]"), dict(bidirectional=True)),
        Case("hx_batch_batch_first", kind, lambda: (rand(B, T, I), state(batch=T)),
             ("(2, 3, 7)", "[2, 4, 7]"), dict(batch_first=True)),
        Case("hx_rank2_for_batched", kind, lambda: (rand(T, B, I), rank2_state()),
             ("3-D", "2-D")),
        Case("hx_rank3_for_unbatched", kind, lambda: (rand(T, I), state(batch=1)),
             ("2-D", "3-D")),
        Case("hx_unbatched_layers", kind, lambda: (rand(T, I), (rand(3, H), rand(3, H))
                                                   if lstm else rand(3, H)),
             ("(2, 1, 7)", "[3, 1, 7]")),
        Case("input_dtype", kind, lambda: (rand(T, B, I, dtype=F32),),
             ("torch.float32", "torch.float64")),
        Case("input_int", kind, lambda: (torch.randint(0, 5, (T, B, I)),),
             ("torch.int64", "torch.float64")),
        Case("input_float32_module_float64_batch_first", kind,
             lambda: (rand(B, T, I, dtype=F32),), ("torch.float32", "torch.float64"),
             dict(batch_first=True)),
        Case("hx_dtype", kind, lambda: (rand(T, B, I), state(dtype=F32)),
             ("torch.float32", "torch.float64")),
        Case("seq_len_0", kind, lambda: (rand(0, B, I),), ("sequence length",)),
        Case("seq_len_0_unbatched", kind, lambda: (rand(0, I),), ("sequence length",)),
        Case("seq_len_0_batch_first", kind, lambda: (rand(B, 0, I),), ("sequence length",),
             dict(batch_first=True)),
        Case("input_list", kind, lambda: ([[1.0] * I] * T,), ("Tensor", "list")),
        Case("input_none", kind, lambda: (None,), ("Tensor", "NoneType")),
        Case("hx_float", kind, lambda: (rand(T, B, I), 3.0), ("float",)),
        Case("packed_features", kind, lambda: (packed(features=9),), ("Expected 5", "got 9")),
        Case("packed_dtype", kind, lambda: (packed(dtype=F32),),
             ("torch.float32", "torch.float64")),
        Case("packed_hx_batch_smaller", kind, lambda: (packed(), state(batch=2)),
             ("(2, 3, 7)", "[2, 2, 7]")),
        Case("packed_hx_layers", kind, lambda: (packed(), state(layers=3)),
             ("(2, 3, 7)", "[3, 3, 7]")),
        Case("packed_hx_hidden", kind, lambda: (packed(), state(hidden=11)),
             ("(2, 3, 7)", "[2, 3, 11]")),
        Case("packed_hx_dtype", kind, lambda: (packed(), state(dtype=F32)),
             ("torch.float32", "torch.float64")),
        Case("packed_hx_rank2", kind, lambda: (packed(), rank2_state()), ("3-D", "2-D")),
        Case("packed_sorted_hx_batch_bigger", kind,
             lambda: (packed((4, 3, 2), enforce_sorted=True), state(batch=5)),
             ("(2, 3, 7)", "[2, 5, 7]")),
        Case("packed_hx_batch_bigger", kind, lambda: (packed(), state(batch=5)),
             ("(2, 3, 7)", "[2, 5, 7]"),
             torch_silent="index_select with sorted_indices keeps 3 of the 5 states: no error"),
        Case("packed_batch_sizes_increasing", kind, lambda: (raw_packed([1, 2, 3]),),
             ("non-increasing", "[1, 2, 3]")),
        Case("packed_batch_sizes_zero", kind, lambda: (raw_packed([3, 0, 2]),),
             ("positive", "[3, 0, 2]")),
        Case("packed_batch_sizes_negative", kind, lambda: (raw_packed([3, -1], rows=2),),
             ("positive", "[3, -1]")),
        Case("packed_batch_sizes_trailing_zero", kind, lambda: (raw_packed([3, 2, 0]),),
             ("positive", "[3, 2, 0]"),
             torch_silent="runs, as if the zero step were not there"),
        Case("packed_batch_sizes_sum_less_than_rows", kind,
             lambda: (raw_packed([3, 2, 1], rows=8),), ("sum to 6", "8 rows"),
             torch_silent="ignores the last 2 rows of data"),
        Case("packed_batch_sizes_sum_more_than_rows", kind,
             lambda: (raw_packed([3, 3, 3], rows=7),), ("sum to 9", "7 rows")),
        Case("packed_batch_sizes_int32", kind,
             lambda: (raw_packed([3, 2, 1], bs_dtype=torch.int32),), ("int64", "int32")),
        Case("packed_batch_sizes_float", kind,
             lambda: (raw_packed([3, 2, 1], bs_dtype=F64),), ("int64", "float64")),
        Case("packed_batch_sizes_float_with_hx", kind,
             lambda: (raw_packed([3, 2, 1], bs_dtype=F64), state()), ("int64", "float64")),
        Case("packed_batch_sizes_empty", kind,
             lambda: (PackedSequence(rand(0, I), torch.zeros(0, dtype=torch.int64)),),
             ("empty",)),
        Case("packed_batch_sizes_2d", kind,
             lambda: (PackedSequence(rand(6, I), torch.tensor([[3, 2, 1]])),), ("1-D", "(1, 3)")),
        Case("packed_batch_sizes_2d_with_hx", kind,
             lambda: (PackedSequence(rand(6, I), torch.tensor([[3, 2, 1]])), state()),
             ("1-D", "(1, 3)"),
             torch_silent="LSTM runs on it; RNN/GRU raise ValueError from int()"),
        Case("packed_data_rank3", kind,
             lambda: (PackedSequence(rand(6, I, 1), torch.tensor([3, 2, 1])),),
             ("2 dimensions", "got 3")),
        Case("packed_sorted_indices_short", kind,
             lambda: (raw_packed([3, 2, 1], sorted_indices=torch.tensor([1, 0]),
                                 unsorted_indices=torch.tensor([1, 0])),),
             ("3 indices", "(2,)"),
             torch_silent="returns h_n for 2 of the 3 sequences"),
        Case("packed_sorted_indices_not_a_permutation", kind,
             lambda: (raw_packed([3, 2, 1], sorted_indices=torch.tensor([0, 0, 1]),
                                 unsorted_indices=torch.tensor([0, 2, 1])),),
             ("permutation", "[0, 0, 1]"),
             torch_silent="returns sequence 0's state twice and loses sequence 2's"),
        # torch.nn constructs these and rejects them in forward.
        Case("bidirectional_int", kind, lambda: (rand(T, B, I),), ("bidirectional", "1"),
             dict(bidirectional=1), broken_module=True),
        Case("bidirectional_none", kind, lambda: (rand(T, B, I),), ("bidirectional", "None"),
             dict(bidirectional=None), broken_module=True),
        Case("num_layers_bool", kind, lambda: (rand(T, B, I),), ("num_layers", "True"),
             dict(num_layers=True), broken_module=True),
    ]
    if lstm:
        cases += [
            Case("hx_single_tensor", kind, lambda: (rand(T, B, I), rand(L, B, H)),
                 ("(h_0, c_0)", "(2, 3, 7)")),
            Case("hx_single_tensor_4d", kind, lambda: (rand(T, B, I), rand(2, L, B, H)),
                 ("(h_0, c_0)", "(2, 2, 3, 7)")),
            Case("hx_3_tuple", kind,
                 lambda: (rand(T, B, I), (rand(L, B, H), rand(L, B, H), rand(L, B, H))),
                 ("(h_0, c_0)", "length 3")),
            Case("hx_1_tuple", kind, lambda: (rand(T, B, I), (rand(L, B, H),)),
                 ("(h_0, c_0)", "length 1")),
            # torch.nn rejects the input's dtype before it needs a pair: ValueError.
            Case("hx_3_tuple_input_int", kind,
                 lambda: (torch.ones(T, B, I, dtype=torch.int64), (rand(L, B, H),) * 3),
                 ("(h_0, c_0)", "length 3")),
            Case("unbatched_hx_single_row", kind, lambda: (rand(T, I), rand(1, L, H)),
                 ("(h_0, c_0)", "(1, 2, 7)")),
            Case("hx_1_list", kind, lambda: (rand(T, B, I), [rand(L, B, H)]),
                 ("(h_0, c_0)", "length 1")),
            Case("packed_hx_single_tensor", kind, lambda: (packed(), rand(L, B, H)),
                 ("(h_0, c_0)", "(2, 3, 7)")),
            Case("c0_dtype_complex", kind,
                 lambda: (rand(T, B, I), (rand(L, B, H), rand(L, B, H, dtype=torch.complex128))),
                 ("torch.complex128", "torch.float64")),
            Case("c0_dtype_wider_than_input", kind,
                 lambda: (rand(T, B, I, dtype=F32), (rand(L, B, H, dtype=F32), rand(L, B, H))),
                 ("torch.float64", "torch.float32"), dict(dtype=F32)),
            Case("c0_layers", kind, lambda: (rand(T, B, I), (rand(L, B, H), rand(1, B, H))),
                 ("hidden[1]", "(2, 3, 7)", "[1, 3, 7]")),
            Case("c0_batch", kind, lambda: (rand(T, B, I), (rand(L, B, H), rand(L, 4, H))),
                 ("hidden[1]", "(2, 3, 7)", "[2, 4, 7]")),
            Case("c0_hidden_is_proj", kind,
                 lambda: (rand(T, B, I), (rand(L, B, P), rand(L, B, P))),
                 ("hidden[1]", "(2, 3, 7)", "[2, 3, 4]"), dict(proj_size=P)),
            Case("h0_proj", kind, lambda: (rand(T, B, I), (rand(L, B, H), rand(L, B, H))),
                 ("hidden[0]", "(2, 3, 4)", "[2, 3, 7]"), dict(proj_size=P)),
            Case("c0_rank2_h0_rank3", kind, lambda: (rand(T, B, I), (rand(L, B, H), rand(L, H))),
                 ("3-D", "(3-D, 2-D)")),
            Case("c0_float", kind, lambda: (rand(T, B, I), (rand(L, B, H), 3.0)),
                 ("Tensor", "float")),
            Case("h0_list", kind, lambda: (rand(T, B, I), ([[0.0]], rand(L, B, H))),
                 ("Tensor", "list")),
            Case("packed_h0_proj", kind, lambda: (packed(), (rand(L, B, H), rand(L, B, H))),
                 ("(2, 3, 4)", "[2, 3, 7]"), dict(proj_size=P)),
            Case("packed_c0_hidden", kind, lambda: (packed(), (rand(L, B, H), rand(L, B, 11))),
                 ("(2, 3, 7)", "[2, 3, 11]")),
            Case("packed_c0_more_layers", kind,
                 lambda: (packed(), (rand(L, B, H), rand(3, B, H))),
                 ("hidden[1]", "(2, 3, 7)", "[3, 3, 7]"),
                 torch_silent="uses the first 2 layers of c_0 and ignores the third"),
            Case("packed_c0_fewer_layers", kind,
                 lambda: (packed(), (rand(L, B, H), rand(1, B, H))),
                 ("hidden[1]", "(2, 3, 7)", "[1, 3, 7]"), torch_crashes=True),
            Case("packed_sorted_c0_fewer_layers", kind,
                 lambda: (packed((4, 3, 2), enforce_sorted=True), (rand(L, B, H), rand(1, B, H))),
                 ("hidden[1]", "(2, 3, 7)", "[1, 3, 7]"), torch_crashes=True),
        ]
    return cases


def _cell_cases(kind: str) -> list[Case]:
    lstm = kind == "LSTMCell"

    def state(*shape, dtype=F64):
        return (rand(*shape, dtype=dtype), rand(*shape, dtype=dtype)) if lstm \
            else rand(*shape, dtype=dtype)

    label = "hx[0]" if lstm else "hidden"
    cases = [
        Case("input_rank3", kind, lambda: (rand(B, I, 1),), ("1D or 2D", "3D")),
        Case("input_rank0", kind, lambda: (rand(()),), ("1D or 2D", "0D")),
        Case("input_features", kind, lambda: (rand(B, 9),), ("got 9", "expected 5")),
        Case("input_features_unbatched", kind, lambda: (rand(9),), ("got 9", "expected 5")),
        Case("batch_mismatch", kind, lambda: (rand(B, I), state(4, H)),
             ("batch size 3", "batch size 4")),
        Case("hidden_mismatch", kind, lambda: (rand(B, I), state(B, 11)),
             ("got 11", "expected 7")),
        Case("hidden_mismatch_unbatched", kind, lambda: (rand(I), state(11)),
             ("got 11", "expected 7")),
        Case("input_1d_state_2d", kind, lambda: (rand(I), state(1, H)),
             (label, "1-D", "2-D", "(1, 7)")),
        Case("input_1d_state_2d_batch3", kind, lambda: (rand(I), state(B, H)),
             (label, "1-D", "2-D", "(3, 7)")),
        Case("input_2d_state_1d", kind, lambda: (rand(B, I), state(H)),
             (label, "2-D", "1-D", "(7,)")),
        # batch == hidden_size: torch.nn's check reads state.size(1) and raises IndexError.
        Case("input_2d_state_1d_batch_is_hidden", kind, lambda: (rand(H, I), state(H)),
             (label, "2-D", "1-D", "(7,)")),
        Case("state_rank3", kind, lambda: (rand(B, I), state(1, B, H)), ("1D or 2D", "3D")),
        Case("input_dtype", kind, lambda: (rand(B, I, dtype=F32),),
             ("torch.float32", "torch.float64")),
        Case("input_int", kind, lambda: (torch.randint(0, 5, (B, I)),),
             ("torch.int64", "torch.float64")),
        Case("hx_dtype", kind, lambda: (rand(B, I), state(B, H, dtype=F32)),
             ("torch.float32", "torch.float64")),
        Case("input_list", kind, lambda: ([[1.0] * I] * B,), ("Tensor", "list")),
        Case("input_none", kind, lambda: (None,), ("Tensor", "NoneType")),
        Case("input_packed", kind, lambda: (packed(),), ("Tensor", "PackedSequence")),
        Case("hx_float", kind, lambda: (rand(B, I), 3.0), ("float",)),
        # hidden_size 1 lets a 2-D state of an unbatched input through torch.nn's size checks.
        Case("input_1d_state_2d_hidden1", kind, lambda: (rand(I), state(1, 1)),
             (label, "1-D", "2-D", "(1, 1)"), dict(hidden_size=1),
             torch_crashes=kind in ("LSTMCell", "GRUCell"),
             torch_silent=None if lstm or kind == "GRUCell" else
             "returns a 2-D (1, 1) output for an unbatched input"),
    ]
    if kind == "RNNCell":
        cases.append(Case("input_1d_state_square", kind, lambda: (rand(I), rand(H, H)),
                          ("hidden", "1-D", "2-D", "(7, 7)"),
                          torch_silent="returns a (7, 7) output: state rows as a batch"))
    if lstm:
        cases += [
            Case("hx_single_tensor", kind, lambda: (rand(B, I), rand(B, H)),
                 ("(h_0, c_0)", "(3, 7)")),
            Case("hx_single_tensor_2xBxH", kind, lambda: (rand(B, I), rand(2, B, H)),
                 ("(h_0, c_0)", "(2, 3, 7)")),
            Case("hx_3_tuple", kind, lambda: (rand(B, I), (rand(B, H),) * 3),
                 ("(h_0, c_0)", "length 3")),
            Case("hx_1_tuple", kind, lambda: (rand(B, I), (rand(B, H),)),
                 ("(h_0, c_0)", "length 1")),
            # torch.nn checks every element's rank before it needs a pair: ValueError.
            Case("hx_3_tuple_rank3", kind,
                 lambda: (rand(B, I), (rand(B, H), rand(B, H), rand(B, H, 1))),
                 ("hx[2]", "3D")),
            Case("hx_single_tensor_1d", kind, lambda: (rand(I), rand(H)), ("hx[0]", "0D")),
            Case("unbatched_hx_single_row", kind, lambda: (rand(I), rand(1, H)),
                 ("(h_0, c_0)", "(1, 7)")),
            Case("c_batch", kind, lambda: (rand(B, I), (rand(B, H), rand(4, H))),
                 ("hidden1", "batch size 3", "batch size 4")),
            Case("c_hidden", kind, lambda: (rand(B, I), (rand(B, H), rand(B, 11))),
                 ("hidden1", "got 11", "expected 7")),
            Case("c_dtype_complex", kind,
                 lambda: (rand(B, I), (rand(B, H), rand(B, H, dtype=torch.complex128))),
                 ("torch.complex128", "torch.float64"),
                 torch_silent="returns complex128 h_1 and c_1 from float64 weights and input"),
            Case("h_1d_c_2d", kind, lambda: (rand(I), (rand(H), rand(1, H))),
                 ("hx[1]", "1-D", "2-D")),
            Case("h_2d_c_1d", kind, lambda: (rand(B, I), (rand(B, H), rand(H))),
                 ("hx[1]", "2-D", "1-D")),
            Case("c_float", kind, lambda: (rand(B, I), (rand(B, H), 3.0)), ("Tensor", "float")),
            Case("h_1d_c_2d_hidden1", kind, lambda: (rand(I), (rand(1), rand(1, 1))),
                 ("hx[1]", "1-D", "2-D"), dict(hidden_size=1),
                 torch_silent="returns 2-D (1, 1) h_1 and c_1 for an unbatched input"),
            Case("h_2d_c_1d_hidden1", kind, lambda: (rand(I), (rand(1, 1), rand(1))),
                 ("hx[0]", "1-D", "2-D"), dict(hidden_size=1), torch_crashes=True),
        ]
    else:
        cases.append(Case("hx_tuple", kind, lambda: (rand(B, I), (rand(B, H),)),
                          ("Tensor", "tuple")))
    return cases


CASES = [c for kind in LAYERS for c in _layer_cases(kind)] + \
        [c for kind in CELLS for c in _cell_cases(kind)] + [
    Case("unknown_nonlinearity", "RNNCell", lambda: (rand(B, I),), ("sigmoid",),
         dict(nonlinearity="sigmoid"), broken_module=True),
]
IN_PROCESS = [c for c in CASES if not c.torch_crashes]
CRASHING = [c for c in CASES if c.torch_crashes]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Shapes here are tiny: worker threads only add wake-up latency on a busy 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_state_unchanged(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key in before:
        assert after[key].dtype == before[key].dtype
        assert torch.equal(after[key], before[key]), f"{key} changed"


def _valid_args(module_name: str, options: dict):
    if module_name.endswith("Cell"):
        return (rand(B, I, dtype=options.get("dtype", F64)),)
    shape = (B, T, I) if options.get("batch_first") else (T, B, I)
    return (rand(*shape, dtype=options.get("dtype", F64)),)


def _assert_still_usable(ours, case: Case):
    if case.broken_module:
        return
    reference = build(nn, case.module, case.options)
    reference.load_state_dict(ours.state_dict())
    args = _valid_args(case.module, case.options)
    torch.testing.assert_close(ours(*args), reference(*args))


def _assert_message(error: BaseException, case: Case):
    message = str(error)
    missing = [m for m in case.mentions if m not in message]
    assert not missing, f"message {message!r} does not mention {missing}"


def _clone_args(args):
    def clone(a):
        if isinstance(a, Tensor_):
            return a.clone()
        if isinstance(a, PackedSequence):
            return PackedSequence(*(clone(x) for x in a))
        if isinstance(a, (tuple, list)):
            return type(a)(clone(x) for x in a)
        return a
    return tuple(clone(a) for a in args)


Tensor_ = torch.Tensor


@pytest.mark.parametrize("case", IN_PROCESS, ids=lambda c: c.name)
def test_bad_input_like_torch_nn(case: Case):
    torch.manual_seed(0)
    ours = build(rnnkernels, case.module, case.options)
    reference = build(nn, case.module, case.options)
    reference.load_state_dict(ours.state_dict())
    args = case.make_args()

    torch_error = None
    try:
        reference(*_clone_args(args))
    except Exception as error:  # noqa: BLE001  (any type torch.nn raises is the reference)
        torch_error = error
    if torch_error is None:
        assert case.torch_silent, (
            "torch.nn accepted this input without error: mark the case torch_silent and "
            "decide what ours does")
        expected = case.ours_raises
    else:
        expected = type(torch_error)

    before = _state(ours)
    with pytest.raises(Exception) as info:
        ours(*args)
    assert isinstance(info.value, expected), (
        f"ours raised {type(info.value).__mro__}, torch.nn {expected.__name__}: "
        f"{torch_error if torch_error is not None else case.torch_silent}")
    assert type(info.value) not in (Exception, BaseException)
    _assert_message(info.value, case)
    _assert_state_unchanged(ours, before)
    _assert_still_usable(ours, case)


# Inputs that torch.nn accepts with a right answer, and ours must accept too.
ACCEPTED = [
    # c_0 only enters f * c_0, so torch.nn's type promotion gives exactly c_0.to(input dtype).
    Case("c0_float32", "LSTM", lambda: (rand(T, B, I), (rand(L, B, H), rand(L, B, H, dtype=F32))),
         ()),
    Case("c0_bfloat16", "LSTM",
         lambda: (rand(T, B, I), (rand(L, B, H), rand(L, B, H, dtype=torch.bfloat16))), ()),
    Case("c0_int", "LSTM", lambda: (rand(T, B, I), (rand(L, B, H), torch.randint(-2, 3, (L, B, H)))),
         ()),
    Case("c0_bool", "LSTM", lambda: (rand(T, B, I), (rand(L, B, H), torch.rand(L, B, H) > 0.5)),
         ()),
    Case("packed_c0_float32", "LSTM",
         lambda: (packed(), (rand(L, B, H), rand(L, B, H, dtype=F32))), ()),
    Case("unbatched_c0_float32", "LSTM", lambda: (rand(T, I), (rand(L, H), rand(L, H, dtype=F32))),
         ()),
    Case("c_float32", "LSTMCell", lambda: (rand(B, I), (rand(B, H), rand(B, H, dtype=F32))), ()),
    Case("c_int_unbatched", "LSTMCell", lambda: (rand(I), (rand(H), torch.randint(-2, 3, (H,)))),
         ()),
    Case("hx_list", "LSTM", lambda: (rand(T, B, I), [rand(L, B, H), rand(L, B, H)]), ()),
    # Unbatched, torch.nn reads hx[0] and hx[1] of any longer tuple or stacked tensor.
    Case("unbatched_hx_stacked", "LSTM", lambda: (rand(T, I), rand(2, L, H)), ()),
    Case("unbatched_hx_3_stacked", "LSTM", lambda: (rand(T, I), rand(3, L, H)), ()),
    Case("unbatched_hx_3_tuple", "LSTM", lambda: (rand(T, I), (rand(L, H),) * 3), ()),
    # So does its path for an unsorted PackedSequence (permute_hidden).
    Case("packed_unsorted_hx_stacked", "LSTM", lambda: (packed(), rand(2, L, B, H)), ()),
    Case("packed_unsorted_hx_3_tuple", "LSTM", lambda: (packed(), (rand(L, B, H),) * 3), ()),
    Case("unbatched_hx_stacked", "LSTMCell", lambda: (rand(I), rand(2, H)), ()),
    Case("unbatched_hx_3_stacked", "LSTMCell", lambda: (rand(I), rand(3, H)), ()),
    Case("unbatched_hx_3_tuple", "LSTMCell", lambda: (rand(I), (rand(H),) * 3), ()),
    Case("hx_list", "LSTMCell", lambda: (rand(B, I), [rand(B, H), rand(B, H)]), ()),
] + [Case("batch_0", kind, lambda: (rand(T, 0, I),), ()) for kind in LAYERS] + \
    [Case("batch_0", kind, lambda: (rand(0, I),), ()) for kind in CELLS]


def _unpack(out):
    if isinstance(out, PackedSequence):
        return (out.data, out.batch_sizes, out.sorted_indices, out.unsorted_indices)
    if isinstance(out, (tuple, list)):
        return tuple(_unpack(o) for o in out)
    return out


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.name)
def test_accepted_like_torch_nn(case: Case):
    torch.manual_seed(0)
    ours = build(rnnkernels, case.module, case.options)
    reference = build(nn, case.module, case.options)
    reference.load_state_dict(ours.state_dict())
    args = case.make_args()
    expected = reference(*_clone_args(args))
    torch.testing.assert_close(_unpack(ours(*args)), _unpack(expected))


# torch.nn crashes on these: run it in a child process, one fork per case.
_CRASH_PROBE = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests_dir!r})
    import test_bad_input as catalogue
    result = {{}}
    for name in sys.argv[1:]:
        case = next(c for c in catalogue.CRASHING if c.name == name)
        pid = os.fork()
        if pid == 0:
            torch.manual_seed(0)
            module = catalogue.build(torch.nn, case.module, case.options)
            try:
                module(*case.make_args())
            except Exception:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        result[name] = [os.WIFSIGNALED(status) and os.WTERMSIG(status), os.WIFEXITED(status)
                        and os.WEXITSTATUS(status)]
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def torch_crash_report():
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork to run torch.nn on crashing inputs")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    probe = _CRASH_PROBE.format(tests_dir=tests_dir)
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:
        # Under tools/sanitize.sh: torch.nn's own crash here is expected, not a finding;
        # let it die by its signal unreported, as it does without AddressSanitizer.
        env["ASAN_OPTIONS"] += ":handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_abort=0"
    completed = subprocess.run([sys.executable, "-c", probe, *(c.name for c in CRASHING)],
                               capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CRASHING, ids=lambda c: c.name)
def test_input_that_crashes_torch_nn(case: Case, torch_crash_report):
    signal_number, exit_code = torch_crash_report[case.name]
    if not signal_number and exit_code == 3:
        pytest.skip(f"torch {torch.__version__} raises on {case.name} instead of crashing; "
                    "covered by its own type in test_bad_input_like_torch_nn terms")
    assert signal_number or exit_code, f"torch.nn ran {case.name} without error or crash"

    torch.manual_seed(0)
    ours = build(rnnkernels, case.module, case.options)
    before = _state(ours)
    # torch.nn raises RuntimeError for the same mistake where it does not crash.
    with pytest.raises(RuntimeError) as info:
        ours(*case.make_args())
    _assert_message(info.value, case)
    _assert_state_unchanged(ours, before)
    _assert_still_usable(ours, case)


# ---------------------------------------------------------------- constructor arguments

# (module, args, kwargs, what our message must name). Construction is torch.nn's own code;
# ours must accept and reject exactly the same, raise the same type with torch.nn's message
# and name the offending argument's value.
CONSTRUCTOR_CASES = [
    (kind, args, kwargs, mention)
    for kind in LAYERS
    for args, kwargs, mention in [
        ((0, H), {}, "input_size=0"), ((-1, H), {}, "input_size=-1"),
        ((2.5, H), {}, "input_size=2.5"), (("5", H), {}, "input_size='5'"),
        ((I, 0), {}, "hidden_size=0"), ((I, -3), {}, "hidden_size=-3"),
        ((I, 7.0), {}, "hidden_size=7.0"),
        ((I, H), dict(num_layers=0), "num_layers=0"), ((I, H), dict(num_layers=-1), "num_layers=-1"),
        ((I, H), dict(num_layers=2.0), "num_layers=2.0"),
        ((I, H), dict(num_layers=2, dropout=-0.1), "dropout=-0.1"),
        ((I, H), dict(num_layers=2, dropout=1.5), "dropout=1.5"),
        ((I, H), dict(num_layers=2, dropout=True), "dropout=True"),
        ((I, H), dict(num_layers=2, dropout="0.5"), "dropout='0.5'"),
        ((I, H), dict(bias=1), "bias=1"), ((I, H), dict(bias="yes"), "bias='yes'"),
        ((I, H), dict(bias=None), "bias=None"),
        ((I, H), dict(batch_first=1), "batch_first=1"),
        ((I, H), dict(batch_first=None), "batch_first=None"),
        ((I, H), dict(bidirectional=1), "bidirectional=1"),
        ((I, H), dict(proj_size=-1), "proj_size=-1"), ((I, H), dict(proj_size=H), "proj_size=7"),
        ((I, H), dict(proj_size=9), "proj_size=9"), ((I, H), dict(proj_size=2), "proj_size=2"),
        ((I, H), dict(nonlinearity="sigmoid"), "nonlinearity='sigmoid'"),
        ((I, H), dict(mode="LSTM"), "mode='LSTM'"), ((I, H), dict(unknown=1), "unknown=1"),
        ((I, H, L, "sigmoid"), {}, "'sigmoid'"),
        ((I, H, L, True, False, 0.0, False, 0, None, None, 1), {}, "None"),
        ((I, H), dict(input_size=I), "input_size=5"),
    ]
] + [
    (kind, args, kwargs, mention)
    for kind in CELLS
    for args, kwargs, mention in [
        ((-1, H), {}, "input_size=-1"), ((I, -1), {}, "hidden_size=-1"),
        ((I, H), dict(nonlinearity="relu"), "nonlinearity='relu'"),
        ((I, H), dict(proj_size=2), "proj_size=2"),
        ((I, H, True, "tanh", None, None, 1), {}, "'tanh'"),
    ]
]


@pytest.mark.parametrize("kind,args,kwargs,mention", CONSTRUCTOR_CASES,
                         ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_constructor_arguments_like_torch_nn(kind, args, kwargs, mention):
    def outcome(lib):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)   # dropout with one layer
                module = getattr(lib, kind)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001
            return error
        return module

    theirs, ours = outcome(nn), outcome(rnnkernels)
    if isinstance(theirs, Exception):
        assert isinstance(ours, type(theirs)), f"ours: {ours!r}, torch.nn: {theirs!r}"
        assert str(ours).startswith(str(theirs)), (str(ours), str(theirs))
        assert mention in str(ours), f"{str(ours)!r} does not name {mention}"
    else:
        assert not isinstance(ours, Exception), f"torch.nn accepts it, ours raised {ours!r}"
        assert repr(ours) == repr(theirs)
        assert [(n, p.shape) for n, p in ours.named_parameters()] == \
            [(n, p.shape) for n, p in theirs.named_parameters()]


# ---------------------------------------------------------------- several faults at once

# One fault each, combined up to three at a time: ours must raise what torch.nn raises
# first (same exception type, and an error about the same kind of fault: a dtype, or a
# size/rank), or accept where torch.nn accepts.
_LAYER_FAULTS = {
    "x_float64": lambda a: a.update(x=a["x"].double()),
    "x_width": lambda a: a.update(x=torch.randn(T, B, I + 2, dtype=a["x"].dtype)),
    "h_float64": lambda a: a.update(h=a["h"].double()),
    "h_batch": lambda a: a.update(h=torch.randn(1, B + 1, H, dtype=a["h"].dtype)),
    "h_rank": lambda a: a.update(h=a["h"][0]),
    "h_width": lambda a: a.update(h=torch.randn(1, B, H + 1, dtype=a["h"].dtype)),
    "c_float64": lambda a: a.update(c=a["c"].double()),
    "c_float16": lambda a: a.update(c=a["c"].half()),
    "c_batch": lambda a: a.update(c=torch.randn(1, B + 1, H, dtype=a["c"].dtype)),
}
_CELL_FAULTS = {
    "x_float64": lambda a: a.update(x=a["x"].double()),
    "x_width": lambda a: a.update(x=torch.randn(B, I + 2, dtype=a["x"].dtype)),
    "x_rank": lambda a: a.update(x=torch.randn(2, B, I, dtype=a["x"].dtype)),
    "h_float64": lambda a: a.update(h=a["h"].double()),
    "h_batch": lambda a: a.update(h=torch.randn(B + 1, H, dtype=a["h"].dtype)),
    "h_width": lambda a: a.update(h=torch.randn(B, H + 1, dtype=a["h"].dtype)),
    "h_rank": lambda a: a.update(h=a["h"][0]),
    "c_float64": lambda a: a.update(c=a["c"].double()),
    "c_batch": lambda a: a.update(c=torch.randn(B + 1, H, dtype=a["c"].dtype)),
}


def _fault_kind(error: Exception) -> str:
    message = str(error).lower()
    if "dtype" in message or "scalar type" in message:
        return "dtype"
    if any(word in message for word in ("size", "shape", "-d", "dim", "2d or 3d")):
        return "size or rank"
    return "other: " + message[:80]


def _fault_combinations(kind: str):
    faults = _CELL_FAULTS if kind.endswith("Cell") else _LAYER_FAULTS
    names = [f for f in faults if kind.startswith("LSTM") or not f.startswith("c_")]
    for count in (1, 2, 3):
        yield from itertools.combinations(names, count)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_several_faults_raise_torch_nn_first_error(kind):
    torch.manual_seed(0)
    cell = kind.endswith("Cell")
    faults = _CELL_FAULTS if cell else _LAYER_FAULTS
    reference = getattr(nn, kind)(I, H)
    ours = getattr(rnnkernels, kind)(I, H)
    ours.load_state_dict(reference.state_dict())
    mismatches, checked = [], 0
    for combo in _fault_combinations(kind):
        args = dict(x=torch.randn(B, I) if cell else torch.randn(T, B, I),
                    h=torch.randn(B, H) if cell else torch.randn(1, B, H))
        args["c"] = torch.randn_like(args["h"])
        for fault in combo:
            faults[fault](args)
        hx = (args["h"], args["c"]) if kind.startswith("LSTM") else args["h"]
        outcomes = []
        for module in (reference, ours):
            try:
                outcomes.append(module(args["x"], hx))
            except Exception as error:  # noqa: BLE001  (the error is what is compared)
                outcomes.append(error)
        expected, got = outcomes
        checked += 1
        if (isinstance(expected, RuntimeError) and "primitive descriptor" in str(expected)
                and set(combo) <= {"c_float16", "c_float64"}):
            # torch.nn's oneDNN LSTM fails to build its kernel for a float16 c_0 that its
            # other paths promote (c_0 only enters f * c_0); ours promotes: compare with
            # torch.nn run on c_0 converted to the input's dtype.
            assert args["c"].dtype == torch.float16, combo
            want = reference(args["x"], (args["h"], args["c"].to(args["x"].dtype)))
            torch.testing.assert_close(got, want)
            continue
        if isinstance(expected, Exception):
            if not (isinstance(got, type(expected)) and _fault_kind(got) == _fault_kind(expected)):
                mismatches.append((combo, f"torch.nn: {type(expected).__name__}: {expected}",
                                   f"ours: {type(got).__name__}: {got}"))
        elif isinstance(got, Exception):
            mismatches.append((combo, "torch.nn accepts", f"ours: {type(got).__name__}: {got}"))
        else:
            torch.testing.assert_close(got, expected, msg=lambda m: f"{combo}: {m}")
    assert checked >= 40
    assert not mismatches, "\n".join(" | ".join(map(str, m)) for m in mismatches)


@pytest.mark.parametrize("input_dtype,state_dtype", [(torch.float32, torch.float64),
                                                     (torch.bfloat16, torch.float32),
                                                     (torch.float32, torch.float16)])
@pytest.mark.parametrize("batched", [True, False])
def test_lstm_cell_takes_c0_of_another_dtype_like_torch_nn(input_dtype, state_dtype, batched):
    """torch.nn.LSTMCell promotes: a wider c_0 makes h' and c' wider, a narrower one is
    read in the input's dtype."""
    torch.manual_seed(1)
    reference = nn.LSTMCell(I, H).to(input_dtype)
    ours = rnnkernels.LSTMCell(I, H).to(input_dtype)
    ours.load_state_dict(reference.state_dict())
    x, h = torch.randn(B, I, dtype=input_dtype), torch.randn(B, H, dtype=input_dtype)
    c = torch.randn(B, H, dtype=state_dtype)
    if not batched:
        x, h, c = x[0], h[0], c[0]
    expected, got = reference(x, (h, c)), ours(x, (h, c))
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e)
