"""rnnkernels' modules against float64 torch.nn: outputs, final states and the gradients
with respect to the input, the initial states and every parameter.

Every test builds a golden float64 torch.nn module, loads its state_dict into ours
(float32 or float64), feeds both the same random inputs and random upstream gradients,
and compares with the rules of tests/equivalence.py (assert_close defaults of our dtype;
for the large float32 cases, at most torch.nn's own float32 error plus the defaults).

The option matrices run our kernels on one thread (ONE_THREAD; see tests/equivalence.py
for why); the threaded paths get their own tests below, at torch's default thread count.
"""

import pytest
import torch

from equivalence import (CELL_KINDS, LAYOUTS, SEQUENCE_KINDS, CellCase, SequenceCase,
                         build_pair, check_cell_case, check_sequence_case)

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
ONE_THREAD = 1


# ---------------------------------------------------------------- the option matrix
# Two crossed matrices instead of their full product (960 cases): the options the
# kernels see (cell, bias, layers, directions, dense or packed rows, dtype), and the
# ones the module's argument handling sees (layouts, hx given or not, directions) on a
# two-layer stack, so hx indexing across layers and directions is exercised.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["time_major", "packed_unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_kernel_options_match_torch(kind, bias, num_layers, bidirectional, layout, dtype):
    case = SequenceCase(kind, num_layers=num_layers, bias=bias, bidirectional=bidirectional,
                        layout=layout, given_hx=True)
    check_sequence_case(case, dtype, ours_threads=ONE_THREAD)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("given_hx", [False, True], ids=["hx_none", "hx_given"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_input_layouts_match_torch(kind, layout, bidirectional, given_hx, dtype):
    case = SequenceCase(kind, num_layers=2, bidirectional=bidirectional, layout=layout,
                        given_hx=given_hx)
    check_sequence_case(case, dtype, ours_threads=ONE_THREAD)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("given_hx", [False, True], ids=["hx_none", "hx_given"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_cell_matches_torch(kind, bias, unbatched, given_hx, dtype):
    check_cell_case(CellCase(kind, bias=bias, unbatched=unbatched, given_hx=given_hx), dtype,
                    ours_threads=ONE_THREAD)


# ---------------------------------------------------------------- sizes

# One step, one sequence: edge cases of the time loop and the batch tiling.
EDGE_SIZES = {
    "T1_2layers_bi": dict(steps=1, num_layers=2, bidirectional=True, given_hx=True),
    "T1_packed": dict(steps=1, layout="packed_sorted"),
    "B1_2layers_bi": dict(batch=1, steps=7, num_layers=2, bidirectional=True, given_hx=True),
    "B1_packed_bi": dict(batch=1, steps=7, bidirectional=True, layout="packed_sorted"),
}

# At torch's default thread count: the directions of a bidirectional layer run side by
# side, and B=128 with H=65 gives every cell enough work per step for a two-thread team
# (Note [time loop threads]).
THREADED_CASES = {
    "bi_2layers_packed": dict(num_layers=2, bidirectional=True, layout="packed_unsorted",
                              given_hx=True),
    "bi_nobias": dict(bidirectional=True, bias=False, layout="batch_first"),
    "team_B128_H65": dict(batch=128, hidden_size=65, steps=4, bias=False, given_hx=True),
}

# Big batches and long sequences, also at the default thread count. float32 is judged
# against torch.nn's own float32 error here (equivalence.assert_matches).
LARGE_SIZES = {
    "B64_2layers_bi": dict(batch=64, steps=12, num_layers=2, bidirectional=True,
                           given_hx=True),
    "B128_H65": dict(batch=128, steps=10, hidden_size=65, given_hx=True),
    "B128_H65_packed": dict(batch=128, steps=10, hidden_size=65, layout="packed_unsorted"),
}
# (size, dtype): float32 where accumulation error matters most, float64 on packed rows.
LONG_CASES = {
    "T500_2layers_bi-f32": (dict(steps=500, batch=3, num_layers=2, bidirectional=True,
                                 given_hx=True), torch.float32),
    "T500_packed_bi-f64": (dict(steps=500, batch=5, bidirectional=True,
                                layout="packed_unsorted"), torch.float64),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", list(EDGE_SIZES))
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_edge_sizes_match_torch(kind, size, dtype):
    check_sequence_case(SequenceCase(kind, **EDGE_SIZES[size]), dtype, ours_threads=ONE_THREAD)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(THREADED_CASES))
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_threaded_paths_match_torch(kind, case, dtype):
    check_sequence_case(SequenceCase(kind, **THREADED_CASES[case]), dtype,
                        relative_to_torch_fp32=case.startswith("team"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", list(LARGE_SIZES))
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_large_batches_match_torch(kind, size, dtype):
    check_sequence_case(SequenceCase(kind, **LARGE_SIZES[size]), dtype,
                        relative_to_torch_fp32=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LONG_CASES))
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_long_sequences_match_torch(kind, case):
    size, dtype = LONG_CASES[case]
    check_sequence_case(SequenceCase(kind, **size), dtype, relative_to_torch_fp32=True)


CELL_SIZES = {
    "B1": dict(batch=1),
    "B64": dict(batch=64),
    "B128_H65": dict(batch=128, hidden_size=65),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", list(CELL_SIZES))
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_cell_sizes_match_torch(kind, size, dtype):
    check_cell_case(CellCase(kind, **CELL_SIZES[size]), dtype)


# ---------------------------------------------------------------- dropout


@pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["time_major", "packed_unsorted"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["1layer", "2layers", "3layers"])
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_dropout_matches_torch_with_same_seed(kind, num_layers, bidirectional, layout, dtype):
    """Training mode, dropout=0.5: torch.manual_seed(s) before each module's forward must
    give identical masks, hence identical outputs and gradients (rnnkernels draws the
    mask with F.dropout on the layer output, as torch's own RNN code does)."""
    case = SequenceCase(kind, num_layers=num_layers, bidirectional=bidirectional,
                        layout=layout, dropout=0.5, given_hx=True)
    check_sequence_case(case, dtype, train=True, ours_threads=ONE_THREAD)


@pytest.mark.filterwarnings("ignore:dropout option adds dropout after all but last")
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_dropout_acts_in_training_mode_only(kind):
    """Keeps the test above from passing vacuously: in training mode with dropout the
    output depends on the seed; in eval mode, or with a single layer, it does not."""
    x = torch.randn(6, 3, 33)

    def output(module, seed):
        torch.manual_seed(seed)
        return module(x)[0]

    two_layers, _ = build_pair(kind, torch.float32, input_size=33, hidden_size=17,
                               num_layers=2, dropout=0.5)
    assert not torch.equal(output(two_layers, 1), output(two_layers, 2))
    two_layers.eval()
    assert torch.equal(output(two_layers, 1), output(two_layers, 2))
    one_layer, _ = build_pair(kind, torch.float32, input_size=33, hidden_size=17,
                              num_layers=1, dropout=0.5)
    assert torch.equal(output(one_layer, 1), output(one_layer, 2))


@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_eval_mode_ignores_dropout(kind):
    case = SequenceCase(kind, num_layers=2, bidirectional=True, dropout=0.5, given_hx=True)
    check_sequence_case(case, torch.float64, train=False, ours_threads=ONE_THREAD)
