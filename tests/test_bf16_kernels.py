"""The native bfloat16 CPU kernels (Note [storage and compute types] in csrc/cpu/kernels.h):
bfloat16 products on AVX512-BF16 dot products with float32 sums, gates and cell state.
Every result and gradient within twice torch.nn's own bfloat16 error against float64, over
the shapes that reach each code path: odd sizes (vector tails, odd K in the pair-wise
products), a batch below and above the fused input projection's threshold (8), a batch
whose teams split rows (64), H=1040 (the LSTM backward's sliced recurrent product), one
step, packed and bidirectional input, projection and the cells. On CPUs without the
kernels bfloat16 runs widened to float32 (tests/test_reduced_precision.py covers both)."""

import math
import pathlib
import zlib

import pytest
import torch

import rnnkernels
from equivalence import (CellCase, SequenceCase, check_low_precision_cell_case,
                         check_low_precision_sequence_case)

NATIVE = rnnkernels.build_info()["cpu_bf16_kernels"] != ""
pytestmark = pytest.mark.skipif(
    not NATIVE, reason="no native bfloat16 kernels here (needs AVX-512 with AVX512-BF16; "
                       f"build: {rnnkernels.build_info()['cpu_isas']})")


def _cpu_flags() -> set[str]:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_native_kernels_run_where_the_cpu_has_them():
    flags = _cpu_flags()
    if "avx512_bf16" not in flags or rnnkernels._C.cpu_capability() != "avx512":
        pytest.skip("the CPU (or the forced ATEN_CPU_CAPABILITY) has no AVX512-BF16")
    info = rnnkernels.build_info()
    assert info["cpu_bf16_kernels"] == "avx512_bf16"
    assert "bfloat16" in info["cpu_dtypes"] and "bfloat16" not in info["cpu_widened_dtypes"]


SEQUENCE_CASES = {
    "lstm_B9_odd": dict(kind="lstm", batch=9, steps=12),
    "lstm_B3_unfused": dict(kind="lstm", batch=3, steps=12, given_hx=True),
    "lstm_B64_rows": dict(kind="lstm", batch=64, hidden_size=65, steps=6, given_hx=True),
    "lstm_packed_bi_2layers": dict(kind="lstm", batch=10, steps=9, num_layers=2,
                                   bidirectional=True, layout="packed_unsorted", given_hx=True),
    "lstm_H1040_sliced": dict(kind="lstm", batch=6, input_size=9, hidden_size=1040, steps=4),
    "lstm_one_step": dict(kind="lstm", batch=9, steps=1, given_hx=True),
    "lstm_proj_packed": dict(kind="lstm_proj", batch=11, steps=7, layout="packed_sorted"),
    "gru_B9_bi": dict(kind="gru", batch=9, steps=12, bidirectional=True),
    "gru_B64_packed": dict(kind="gru", batch=64, hidden_size=65, steps=5,
                           layout="packed_unsorted", given_hx=True),
    "rnn_tanh_B9": dict(kind="rnn_tanh", batch=9, steps=12, given_hx=True),
    "rnn_relu_B64_2layers": dict(kind="rnn_relu", batch=64, hidden_size=65, steps=5,
                                 num_layers=2),
    "rnn_batch_first_nobias": dict(kind="rnn_tanh", batch=9, steps=8, bias=False,
                                   layout="batch_first"),
}


@pytest.mark.parametrize("name", list(SEQUENCE_CASES))
def test_sequence_within_twice_torch_nn_error(name):
    # One fixed draw per case. The ratio of two max errors has a tail: over 200 seeds of
    # lstm_B3_unfused (Zen 4) our gradients' errors were 0.75-0.87x torch.nn's (geometric
    # mean), and 1-3 draws in 200 put a bias gradient above 2x. The seed once came from
    # hash(name), which Python salts per process, so CI drew a new case on every run and
    # met that tail; test_error_ratio_over_many_draws judges the distribution.
    torch.manual_seed(zlib.crc32(name.encode()))
    check_low_precision_sequence_case(SequenceCase(**SEQUENCE_CASES[name]), torch.bfloat16)


@pytest.mark.parametrize("name", ["lstm_B3_unfused", "gru_B9_bi", "rnn_tanh_B9"])
def test_error_ratio_over_many_draws(name, monkeypatch):
    """Over 24 draws, each tensor's error relative to torch.nn's (geometric mean) at most
    1.25: a systematic loss of precision (a state rounded to bfloat16 once too often, a
    sum taken in bfloat16) moves the whole distribution, which one draw cannot show."""
    import equivalence
    ratios: dict[str, list[float]] = {}

    def record(context, got, theirs, want):
        for key in want:
            err_nn = (theirs[key].detach().double() - want[key]).abs().max().item()
            err_ours = (got[key].detach().double() - want[key]).abs().max().item()
            ratios.setdefault(key, []).append((err_ours + 1e-9) / (err_nn + 1e-9))

    monkeypatch.setattr(equivalence, "_assert_error_within_twice_torch", record)
    for seed in range(24):
        torch.manual_seed(seed)
        check_low_precision_sequence_case(SequenceCase(**SEQUENCE_CASES[name]), torch.bfloat16)
    geomeans = {key: math.exp(sum(map(math.log, v)) / len(v)) for key, v in ratios.items()}
    assert len(ratios) > 3 and all(len(v) == 24 for v in ratios.values())
    assert max(geomeans.values()) <= 1.25, geomeans


@pytest.mark.parametrize("kind", ["lstm_cell", "gru_cell", "rnn_cell_tanh", "rnn_cell_relu"])
@pytest.mark.parametrize("batch", [1, 9])
def test_cell_within_twice_torch_nn_error(kind, batch):
    torch.manual_seed(batch)
    check_low_precision_cell_case(CellCase(kind, batch=batch), torch.bfloat16)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_no_element_past_an_input_row_is_read(cls):
    # The pair-wise products read x two elements at a time; with an odd input size a row's
    # last pair must not take the next row's first element (a NaN there would turn this
    # row's outputs into NaN through 0 * NaN).
    torch.manual_seed(0)
    module = getattr(rnnkernels, cls)(33, 16).bfloat16()
    x = torch.randn(4, 9, 33, dtype=torch.bfloat16)
    x[0, 1, 0] = float("nan")  # batch row 1 follows row 0 in memory
    with torch.no_grad():
        out, _ = module(x)
    assert torch.isfinite(out[:, 0]).all() and torch.isfinite(out[:, 2:]).all()
    assert torch.isnan(out[:, 1]).all()


def test_zoneout_matches_the_reference_within_twice_its_own_bfloat16_error():
    torch.manual_seed(0)
    ours = rnnkernels.LSTM(33, 17, zoneout_h=0.2, zoneout_c=0.3).eval()
    golden_params = [p.detach().double() for p in ours._flat_weights]
    x = torch.randn(10, 9, 33, dtype=torch.float64)
    h0 = torch.zeros(1, 9, 17, dtype=torch.float64)

    def reference(dtype):
        params = [p.to(dtype) for p in golden_params]
        return rnnkernels.reference.lstm(x.to(dtype), (h0.to(dtype), h0.to(dtype)), params,
                                         True, 1, 0.0, False, False, zoneout_h=0.2,
                                         zoneout_c=0.3)[0]
    want, theirs = reference(torch.float64), reference(torch.bfloat16)
    with torch.no_grad():
        got = ours.bfloat16()(x.bfloat16())[0]
    err_ref = (theirs.double() - want).abs().max().item()
    err_ours = (got.double() - want).abs().max().item()
    assert err_ours <= 2 * err_ref + 1e-6, (err_ours, err_ref)
