"""A compact but real subset of the equivalence checks, run by test_isa_paths.py in a
child process per CPU kernel variant (ATEN_CPU_CAPABILITY=default|avx2|avx512).

Not collected by a plain `pytest tests` (the name does not match test_*.py); run it
through test_isa_paths.py, which sets RNNKERNELS_EXPECTED_ISA to the forced variant.
Sizes are odd so every vector width has a tail: H=17 and I=33 (16+1, 32+1), H=65 with
B=128 so each cell's step is big enough for a two-thread team (the LSTM's team splits the
batch there and in the packed B=64 case, Note [row-split teams]), proj_size 5, and H=1040
so the LSTM backward's recurrent product is cut into K slices on every variant (Note
[sliced recurrent product]; 4H = 4160 exceeds two slices at every vector width; B=6
keeps that team splitting columns).
"""

import os

import pytest
import torch

import rnnkernels
from equivalence import (CELL_KINDS, SEQUENCE_KINDS, CellCase, SequenceCase, check_cell_case,
                         check_low_precision_sequence_case, check_sequence_case)

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def test_the_forced_kernel_variant_is_active():
    expected = os.environ.get("RNNKERNELS_EXPECTED_ISA")
    assert expected, "run this file through tests/test_isa_paths.py"
    assert rnnkernels._C.cpu_capability() == expected
    assert rnnkernels.build_info()["cpu_capability"] == expected


SEQUENCE_CASES = {
    "packed_bi_2layers": dict(num_layers=2, bidirectional=True, layout="packed_unsorted",
                              given_hx=True),
    "nobias_batch_first": dict(bias=False, layout="batch_first"),
    "B128_H65": dict(batch=128, hidden_size=65, steps=6, given_hx=True),
    "packed_bi_B64": dict(batch=64, hidden_size=33, steps=5, bidirectional=True,
                          layout="packed_unsorted", given_hx=True),
    "packed_bi_H1040": dict(batch=6, input_size=9, hidden_size=1040, steps=4,
                            bidirectional=True, layout="packed_unsorted", given_hx=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(SEQUENCE_CASES))
@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_sequence_matches_torch(kind, case, dtype):
    check_sequence_case(SequenceCase(kind, **SEQUENCE_CASES[case]), dtype,
                        relative_to_torch_fp32=case in ("B128_H65", "packed_bi_H1040"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(CELL_KINDS))
def test_cell_matches_torch(kind, dtype):
    check_cell_case(CellCase(kind, batch=5), dtype)


@pytest.mark.parametrize("kind", list(SEQUENCE_KINDS))
def test_bfloat16_within_twice_torch_nn_error(kind):
    """bfloat16: the native kernels under avx512 on CPUs with AVX512-BF16, else the float32
    kernels of this variant after widening (Note [precision policy] in csrc/host/precision.h)."""
    case = SequenceCase(kind, batch=9, steps=7, bidirectional=True, layout="packed_unsorted",
                        given_hx=True)
    check_low_precision_sequence_case(case, torch.bfloat16)


LAYER_NORM_CASES = {
    "bi_H17_I33": dict(input_size=33, hidden_size=17, bidirectional=True, steps=5, batch=3),
    "B128_H65": dict(input_size=9, hidden_size=65, steps=4, batch=128),
}


@pytest.mark.parametrize("case", list(LAYER_NORM_CASES))
def test_layer_norm_lstm_matches_reference(case):
    """LSTM(layer_norm=True) on this variant's kernels against rnnkernels.reference (the
    float64 values and every gradient; tests/test_layer_norm_lstm.py has the full matrix)."""
    from rnnkernels import reference

    kwargs = dict(LAYER_NORM_CASES[case])
    steps, batch = kwargs.pop("steps"), kwargs.pop("batch")
    module = rnnkernels.LSTM(layer_norm=True, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("layer_norm_"):
                p.copy_(torch.rand_like(p) + 0.5)
    x = torch.randn(steps, batch, module.input_size, dtype=torch.float64, requires_grad=True)
    out, (h_n, c_n) = module(x)
    ln = [getattr(module, name) for name, _ in module._layer_norm_shapes()]
    zeros = torch.zeros(h_n.shape, dtype=torch.float64)
    ref = reference.lstm(x, (zeros, zeros), module._flat_weights, True, 1, 0.0, False,
                         module.bidirectional, layer_norm=ln)
    for ours, expected in zip((out, h_n, c_n), ref):
        torch.testing.assert_close(ours, expected)
    grads = [torch.randn_like(r) for r in ref]
    leaves = [x, *module.parameters()]
    ours = torch.autograd.grad((out, h_n, c_n), leaves, grads)
    expected = torch.autograd.grad(ref, leaves, grads)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)
