"""Tests of the benchmark tool's logic (rnnkernels.bench): argument parsing, presets, the
FLOP and byte model checked against hand arithmetic, the passes (autocast, *Cells), the
engine, result files, compare, plot, the GEMM lower bound helper, the ceilings' cache and
its trust rules, the CPU record, and tiny end-to-end runs. No timing is asserted anywhere."""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkernels
from rnnkernels.bench import (ceilings, cli, compare, env, model, output, runner, table, timing,
                              workload)
from rnnkernels.bench.cases import (CORE_GEOMETRIES, PRESETS, STEP_CELLS, WORKSPACE_PER_HIDDEN, Case,
                                    batch_sizes, custom_cases, preset_cases, sequence_lengths)
from rnnkernels.bench.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


def parse_cases(argv):
    parser = cli.run_parser()
    return cli.cases_from_args(parser.parse_args(argv), parser)


def tiny_options(**overrides):
    """One timed block of one pass, no warm-up, no lower bound: the logic, not the speed."""
    return runner.RunOptions(**dict(dict(repeats=1, min_block_s=0.0, warmup_s=0.0, lower_bound=False,
                                         ceilings=False), **overrides))


@pytest.fixture
def small_quiet_ceilings(monkeypatch):
    """Ceilings of a 64^3 product and a 1 MiB copy, on a machine whose load reads 0.1."""
    monkeypatch.setattr(ceilings, "CPU_MATMUL_N", 64)
    monkeypatch.setattr(ceilings, "CPU_COPY_BYTES", 2**20)
    monkeypatch.setattr(env, "load_average", lambda: 0.1)


AMD_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni

processor\t: 1
model name\t: a second entry, not read
"""
INTEL_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 fma avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""


def fake_cpuinfo(monkeypatch, tmp_path, text):
    path = tmp_path / f"cpuinfo-{abs(hash(text))}"
    path.write_text(text)
    monkeypatch.setattr(env, "CPUINFO_PATH", str(path))


# ---------------------------------------------------------------- cases and CLI parsing


def test_core_preset_is_the_issue_grid():
    cases = preset_cases("core")
    # 7 shapes x 3 cells x 2 modes
    assert len(cases) == 7 * 3 * 2
    shapes = {(c.T, c.B, c.I, c.H, c.layers, c.bidirectional) for c in cases}
    assert shapes == {
        (100, 1, 256, 256, 1, False), (100, 32, 256, 256, 1, False), (100, 64, 512, 512, 1, False),
        (200, 16, 128, 128, 1, False), (50, 128, 1024, 1024, 1, False), (1000, 8, 64, 64, 1, False),
        (100, 32, 256, 256, 2, True)}
    assert {c.cell for c in cases} == {"lstm", "gru", "rnn"}
    assert {c.mode for c in cases} == {"inference", "training"}
    assert all(c.threads == 2 and c.dtype == "float32" and c.device == "cpu" for c in cases)
    assert len({c.key for c in cases}) == len(cases)


def test_gpu_presets_follow_the_cuda_issue():
    cases = preset_cases("gpu")
    assert {c.device for c in cases} == {"cuda"}
    assert {c.dtype for c in cases} == {"float32", "bfloat16", "float16"}
    shapes = {(c.T, c.B, c.H, c.layers, c.bidirectional, c.packed) for c in cases}
    latency = {(256, b, h, 1, False, False) for b in (1, 8, 16) for h in (256, 512, 1024)}
    assert latency <= shapes
    assert {(100, 64, 512, 1, False, False), (100, 64, 256, 1, False, False),
            (100, 64, 1024, 1, False, False), (100, 256, 1024, 1, False, False),
            (100, 64, 512, 2, True, False), (100, 64, 512, 1, False, True)} <= shapes
    assert all(c.I == c.H for c in cases)


def test_cli_grid_is_the_cartesian_product():
    cases = parse_cases(["--cells", "lstm", "gru", "-T", "10", "20", "-B", "1", "-H", "8", "16",
                         "--modes", "training", "--threads", "3", "--direction", "both"])
    # 2 cells x 2 T x 1 B x 2 H x 2 directions
    assert len(cases) == 16
    assert all(c.I == c.H for c in cases)  # I defaults to H
    assert all(c.threads == 3 and c.mode == "training" for c in cases)
    assert {c.bidirectional for c in cases} == {False, True}


def test_cli_preset_filters_and_options():
    cases = parse_cases(["--preset", "core", "--cells", "gru", "--modes", "inference", "--threads", "1"])
    assert len(cases) == 7 and {c.cell for c in cases} == {"gru"} and {c.threads for c in cases} == {1}
    cases = parse_cases(["-T", "5", "-B", "2", "-I", "3", "-H", "4", "--cells", "lstm", "gru",
                         "--proj", "0", "2", "--dtype", "float64", "--packed", "--layers", "2"])
    # proj 2 applies to LSTM only: lstm x {0, 2} + gru x {0}, times 2 modes
    assert len(cases) == 6
    assert all(c.dtype == "float64" and c.packed and c.layers == 2 and c.I == 3 for c in cases)
    assert {(c.cell, c.proj) for c in cases} == {("lstm", 0), ("lstm", 2), ("gru", 0)}


@pytest.mark.parametrize("argv", [
    ["--preset", "core", "-T", "10"],              # a preset and a grid
    ["-T", "10", "-B", "2"],                       # no H
    [],                                            # nothing chosen
    ["--preset", "nope"],
    ["-T", "0", "-B", "1", "-H", "4"],             # not positive
    ["-T", "5", "-B", "1", "-H", "4", "--cells", "lstm", "--proj", "4"],  # proj must be < H
])
def test_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit):
        parse_cases(argv)


def test_case_key_and_validation():
    case = Case("lstm", 100, 32, 256, 256, layers=2, bidirectional=True, mode="training")
    assert case.key == "lstm|training|T100|B32|I256|H256|L2|bi|proj0|float32|cpu|threads2|dense"
    assert Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    with pytest.raises(ValueError, match="proj"):
        Case("gru", 5, 2, 4, 4, proj=2)
    with pytest.raises(ValueError, match="mode"):
        Case("gru", 5, 2, 4, 4, mode="train")


def test_autocast_is_a_precision_of_its_own():
    converted = Case("lstm", 5, 2, 4, 4, dtype="bfloat16")
    autocast = Case("lstm", 5, 2, 4, 4, dtype="autocast_bfloat16")
    assert (converted.module_dtype, converted.compute_dtype, converted.autocast_dtype) == (
        "bfloat16", "bfloat16", None)
    assert (autocast.module_dtype, autocast.compute_dtype, autocast.autocast_dtype) == (
        "float32", "bfloat16", "bfloat16")
    assert Case("gru", 5, 2, 4, 4, dtype="autocast_float16").compute_dtype == "float16"
    # the key keeps the dtype string, so compare matches autocast cases with autocast cases
    assert "|autocast_bfloat16|" in autocast.key and autocast.key != converted.key
    cases = parse_cases(["-T", "5", "-B", "2", "-H", "4", "--cells", "rnn",
                         "--dtype", "autocast_bfloat16", "autocast_float16", "float32"])
    assert {c.dtype for c in cases} == {"autocast_bfloat16", "autocast_float16", "float32"}


def test_cells_are_one_step_cases():
    with pytest.raises(ValueError, match="one step"):
        Case("lstm_cell", 5, 2, 4, 4)
    with pytest.raises(ValueError, match="one step"):
        Case("gru_cell", 1, 2, 4, 4, layers=2)
    # -T is forced to 1 for the *Cells (one case, not one per T), kept for the layers
    cases = parse_cases(["--cells", "lstm", "lstm_cell", "-T", "5", "7", "-B", "2", "-H", "4",
                         "--modes", "training", "--layers", "1", "2"])
    assert sorted((c.cell, c.T, c.layers) for c in cases) == [
        ("lstm", 5, 1), ("lstm", 5, 2), ("lstm", 7, 1), ("lstm", 7, 2), ("lstm_cell", 1, 1)]
    # only *Cells: no -T needed
    cases = parse_cases(["--cells", *STEP_CELLS, "-B", "1", "16", "-H", "8"])
    assert len(cases) == 3 * 2 * 2 and {c.T for c in cases} == {1}
    assert Case("rnn_cell", 1, 16, 8, 8).label() == "rnn_cell infer B=16 I=8 H=8"
    with pytest.raises(SystemExit):  # a layer cell still needs -T
        parse_cases(["--cells", "gru", "gru_cell", "-B", "1", "-H", "8"])


def test_portable_and_cells_presets():
    cases = preset_cases("portable")
    layers = [c for c in cases if not c.is_step_cell]
    steps = [c for c in cases if c.is_step_cell]
    portable_dtypes = {"float32", "bfloat16", "autocast_bfloat16"}
    assert {(c.cell, c.T, c.B, c.I, c.H) for c in layers} == {
        (cell, *shape) for cell in ("lstm", "gru", "rnn")
        for shape in ((100, 32, 256, 256), (200, 16, 128, 128))} | {("lstm", 100, 64, 512, 512)}
    assert {(c.cell, c.dtype, c.mode) for c in layers if (c.B, c.H) == (64, 512)} == {
        ("lstm", dtype, mode) for dtype in portable_dtypes for mode in ("inference", "training")}
    assert {c.dtype for c in layers} == portable_dtypes
    assert {(c.cell, c.B, c.I, c.H, c.dtype, c.mode) for c in steps} == {
        (cell, b, h, h, dtype, mode) for cell in STEP_CELLS for b, h in ((1, 256), (16, 128))
        for dtype in ("float32", "bfloat16") for mode in ("inference", "training")}
    assert len(cases) == 3 * 2 * 3 * 2 + 3 * 2 + 3 * 2 * 2 * 2 == 66
    cells = preset_cases("cells")
    assert {(c.cell, c.B, c.H, c.dtype, c.mode) for c in cells} == {
        (cell, b, h, dtype, mode) for cell in STEP_CELLS for b, h in ((1, 256), (16, 128), (1, 32), (64, 512))
        for dtype in ("float32", "bfloat16") for mode in ("inference", "training")}
    # --cells picks in the grids of its kind: the layer grids take lstm, the *Cell grid lstm_cell
    narrowed = parse_cases(["--preset", "portable", "--cells", "lstm", "lstm_cell", "--dtype", "float32"])
    assert {(c.cell, c.B) for c in narrowed} == {("lstm", 32), ("lstm", 16), ("lstm", 64),
                                                 ("lstm_cell", 1), ("lstm_cell", 16)}
    with pytest.raises(SystemExit):  # the cells preset has no layer grid
        cli.run_main(["--preset", "cells", "--cells", "lstm", "--dry-run"])


def test_packed_lengths_are_seeded_and_in_range():
    case = Case("gru", 40, 9, 4, 4, packed=True)
    lengths = sequence_lengths(case)
    assert lengths == sequence_lengths(Case("lstm", 40, 9, 8, 8, packed=True, mode="training"))
    assert lengths == sorted(lengths, reverse=True) and lengths[0] == 40
    assert all(20 <= n <= 40 for n in lengths)
    sizes = batch_sizes(case)
    assert len(sizes) == 40 and sizes[0] == 9 and sum(sizes) == sum(lengths)
    assert batch_sizes(Case("gru", 4, 3, 2, 2)) == [3, 3, 3, 3]


def test_workspace_constants_match_the_ops():
    assert WORKSPACE_PER_HIDDEN["lstm"] == rnnkernels.ops.WORKSPACE_PER_HIDDEN["lstm"]
    assert WORKSPACE_PER_HIDDEN["gru"] == rnnkernels.ops.WORKSPACE_PER_HIDDEN["gru"]
    assert WORKSPACE_PER_HIDDEN["rnn"] == rnnkernels.ops.WORKSPACE_PER_HIDDEN["rnn"]


# ---------------------------------------------------------------- FLOP and byte model by hand


def test_lstm_training_flops_and_bytes_by_hand():
    case = Case("lstm", T=10, B=4, I=6, H=8, mode="training")
    # N = T*B = 40 rows, G*H = 4*8 = 32, P = H = 8.
    # forward:  input projection [40, 6] x [6, 32]:        2*40*32*6  = 15360
    #           10 steps of [4, 8] x [8, 32]:          10 * 2*4*32*8  = 20480
    # backward: 10 steps of [4, 32] x [32, 8]:         10 * 2*4*8*32  = 20480
    #           dW_hh [32, 40] x [40, 8]:                 2*32*8*40  = 20480
    #           dW_ih [6, 40] x [40, 32]:                 2*6*32*40  = 15360
    #           dX    [40, 32] x [32, 6]:                 2*40*6*32  = 15360
    assert model.gemm_flops(case) == 15360 + 20480 + 20480 + 20480 + 15360 + 15360 == 107520
    # elements, workspace S*H = 5*8 = 40 per row, states h and c [4, 8] = 32 each:
    # fwd input projection: X 40*6=240, W_ih 32*6=192, b_ih 32, x_proj 40*32=1280   = 1744
    # fwd recurrence: x_proj 1280, W_hh 32*8=256, b_hh 32, h0+c0 64, output 40*8=320,
    #                 h_n+c_n 64, workspace 40*40=1600                             = 3616
    # bwd recurrence: grad_out 320, output 320, workspace 1600, W_hh 256,
    #                 dgates 1280, dh0+dc0 64                                      = 3840
    # bwd dW_hh: dgates 1280, output 320, dW_hh 256                                = 1856
    # bwd bias:  dgates 1280, db_ih + db_hh 64                                     = 1344
    # bwd dW_ih: X 240, dgates 1280, dW_ih 192                                     = 1712
    # bwd dX:    dgates 1280, W_ih 192, dX 240                                     = 1712
    elements = model.traffic_elements(case)
    assert elements == {"fwd input projection": 1744, "fwd recurrence": 3616, "bwd recurrence": 3840,
                        "bwd dW_hh": 1856, "bwd bias": 1344, "bwd dW_ih": 1712, "bwd dX": 1712}
    assert model.traffic_bytes(case) == 4 * 15824
    # without an input gradient the layer-0 dX product and its traffic go
    assert model.gemm_flops(case, input_requires_grad=False) == 107520 - 15360
    assert model.traffic_bytes(case, input_requires_grad=False) == 4 * (15824 - 1712)


def test_gru_inference_flops_and_bytes_by_hand():
    case = Case("gru", T=7, B=3, I=5, H=4, dtype="float64")
    # N = 21, G*H = 12, P = 4.
    # input projection [21, 5] x [5, 12]:    2*21*12*5 = 2520
    # 7 steps of [3, 4] x [4, 12]:       7 * 2*3*12*4  = 2016
    assert model.gemm_flops(case) == 2520 + 2016
    # fwd input projection: X 21*5=105, W_ih 12*5=60, b_ih 12, x_proj 21*12=252   = 429
    # fwd recurrence: x_proj 252, W_hh 12*4=48, b_hh 12, h0 12, output 21*4=84,
    #                 h_n 12, no workspace in inference                         = 420
    assert model.traffic_elements(case) == {"fwd input projection": 429, "fwd recurrence": 420}
    assert model.traffic_bytes(case) == 8 * 849  # float64


def test_rnn_bidirectional_training_flops_and_bytes_by_hand():
    case = Case("rnn", T=5, B=2, I=3, H=4, bidirectional=True, mode="training")
    # N = 10, D = 2, G*H = 4, P = 4.
    # input projection, both directions at once [10, 3] x [3, 8]:  2*10*8*3    = 480
    # 2 directions x 5 steps of [2, 4] x [4, 4]:                  2*5*2*2*4*4  = 640
    # backward steps, the same count:                                            640
    # dW_hh, 2 directions of [4, 10] x [10, 4]:                   2*2*4*4*10   = 640
    # dW_ih [3, 10] x [10, 8]:                                    2*3*8*10     = 480
    # dX [10, 8] x [8, 3]:                                        2*10*3*8     = 480
    assert model.gemm_flops(case) == 480 + 640 + 640 + 640 + 480 + 480 == 3360
    # fwd input projection: X 30, W_ih 2*4*3=24, b_ih 8, x_proj 10*8=80          = 142
    # fwd recurrence: x_proj 80, W_hh 2*4*4=32, b_hh 8, h0 2*2*4=16, output 80,
    #                 h_n 16, workspace 0 (RNN keeps none)                       = 232
    # bwd recurrence: grad_out 80, output 80, W_hh 32, dgates 80, dh0 16           = 288
    # bwd dW_hh: 80 + 80 + 32 = 192; bias: 80 + 2*8 = 96;
    # bwd dW_ih: 30 + 80 + 24 = 134; dX: 80 + 24 + 30 = 134
    assert model.traffic_bytes(case) == 4 * (142 + 232 + 288 + 192 + 96 + 134 + 134)


def test_lstm_projection_two_layers_flops_by_hand():
    case = Case("lstm", T=3, B=2, I=5, H=6, proj=4, layers=2)
    # N = 6, G*H = 24, P = 4; layer 1 input size = P = 4.
    # layer 0: input [6, 5] x [5, 24]:        2*6*24*5 = 1440
    #          3 steps: [2, 4] x [4, 24] (384) and projection [2, 6] x [6, 4] (96) -> 1440
    # layer 1: input [6, 4] x [4, 24]:        2*6*24*4 = 1152; steps again           1440
    assert model.gemm_flops(case) == 1440 + 1440 + 1152 + 1440
    phases = [g.phase for g in model.gemms(case)]
    # the projection follows each recurrent product (interleaved, not merged)
    assert phases[:4] == ["fwd input projection", "fwd recurrent", "fwd projection", "fwd recurrent"]


def test_lstm_cell_training_flops_and_bytes_by_hand():
    case = Case("lstm_cell", T=1, B=3, I=5, H=2, mode="training")
    # one step, N = B = 3, G*H = 8, the given state (h, c) requiring grad.
    # forward:  input [3, 5] x [5, 8] = 2*3*8*5 = 240; recurrent [3, 2] x [2, 8] = 96
    # backward: recurrent [3, 8] x [8, 2] (dh) = 96; dW_hh [8, 3] x [3, 2] = 96;
    #           dW_ih [5, 3] x [3, 8] = 240; dx [3, 8] x [8, 5] = 240
    assert model.gemm_flops(case) == 240 + 96 + 96 + 96 + 240 + 240
    # fwd input projection: x 15, W_ih 40, b_ih 8, x_proj 24                       = 87
    # fwd recurrence: x_proj 24, W_hh 16, b_hh 8, h + c 12, h' 6 (the output),
    #                 c' 6 (no h_n beside the output), workspace 3*5*2 = 30          = 102
    elements = model.traffic_elements(case)
    assert elements["fwd input projection"] == 87 and elements["fwd recurrence"] == 102
    assert model.kernel_saved_bytes(case) == 3 * (5 * 2 + 2) * 4


def test_autocast_cases_count_two_byte_elements():
    for cell, shape in (("gru", dict(T=7, B=3, I=5, H=4)), ("lstm_cell", dict(T=1, B=3, I=5, H=4))):
        fp32 = Case(cell, mode="training", **shape)
        autocast = Case(cell, mode="training", dtype="autocast_bfloat16", **shape)
        converted = Case(cell, mode="training", dtype="bfloat16", **shape)
        assert model.gemm_flops(autocast) == model.gemm_flops(fp32)
        assert model.traffic_bytes(autocast) == model.traffic_bytes(converted) == model.traffic_bytes(fp32) // 2


def test_packed_flops_use_the_batch_sizes():
    case = Case("rnn", T=10, B=5, I=3, H=4, packed=True)
    sizes = batch_sizes(case)
    n = sum(sizes)
    # input projection [N, 3] x [3, 4], then step t: [B_t, 4] x [4, 4]
    assert model.gemm_flops(case) == 2 * n * 4 * 3 + sum(2 * b * 4 * 4 for b in sizes)


def test_gemm_sequence_expands_counts_with_transposes():
    case = Case("gru", T=4, B=2, I=3, H=5, mode="training")
    seq = model.gemm_sequence(case)
    # 1 input projection + 4 steps forward; 4 steps backward + dW_hh + dW_ih + dX
    assert len(seq) == 1 + 4 + 4 + 3
    assert seq[0] == [8, 15, 3, 0, 1]       # X [8, 3] x W_ih^T
    assert seq[1] == [2, 15, 5, 0, 1]       # h [2, 5] x W_hh^T
    assert seq[5] == [2, 5, 15, 0, 0]       # dgates [2, 15] x W_hh
    assert seq[9] == [15, 5, 8, 1, 0]       # dgates^T [15, 8] x H_prev [8, 5]
    assert seq[10] == [3, 15, 8, 1, 0]      # X^T [3, 8] x dgates [8, 15]
    assert seq[11] == [8, 3, 15, 0, 0]      # dgates [8, 15] x W_ih [15, 3]
    assert sum(2 * m * n * k for m, n, k, _, _ in seq) == model.gemm_flops(case)


@pytest.mark.parametrize("cell, state_tensors", [("lstm", 2), ("gru", 1), ("rnn", 1)])
def test_measured_saved_bytes_match_the_kernel_model(cell, state_tensors):
    """What autograd keeps for our backward = workspace + output (model.kernel_saved_bytes)
    plus the initial states h0 (and c0) the op saves."""
    case = Case(cell, T=6, B=3, I=5, H=7, mode="training")
    models = workload.build_models(case)
    inputs = workload.make_inputs(case)
    ours = workload.saved_activation_bytes(case, models["ours"], inputs)
    assert ours == model.kernel_saved_bytes(case) + state_tensors * 3 * 7 * 4
    # N * (S*H + P) * 4 bytes: LSTM 18*(35+7)*4, GRU 18*(28+7)*4, RNN 18*7*4
    assert model.kernel_saved_bytes(case) == {"lstm": 3024, "gru": 2520, "rnn": 504}[cell]
    assert workload.saved_activation_bytes(case, models["nn"], inputs) > 0


@pytest.mark.parametrize("cell", STEP_CELLS)
def test_measured_saved_bytes_of_a_cell_match_the_kernel_model(cell):
    """A *Cell's state is an input leaf (not counted): our saved bytes are the model's."""
    case = Case(cell, T=1, B=3, I=5, H=7, mode="training")
    models = workload.build_models(case)
    inputs = workload.make_inputs(case)
    assert workload.saved_activation_bytes(case, models["ours"], inputs) == model.kernel_saved_bytes(case)


# ---------------------------------------------------------------- passes and engines


def test_autocast_pass_runs_float32_modules_under_autocast():
    case = Case("rnn", T=4, B=2, I=6, H=5, mode="training", dtype="autocast_bfloat16")
    models = workload.build_models(case)
    inputs = workload.make_inputs(case)
    assert inputs.x.dtype == torch.float32
    for model_ in models.values():
        assert {p.dtype for p in model_.parameters()} == {torch.float32}
        out = workload.make_pass(case, model_, inputs)()
        # RNN's products run in bfloat16 under CPU autocast; the backward left float32 gradients
        assert out.dtype == torch.bfloat16
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model_.parameters())
        assert inputs.x.grad is not None and inputs.x.grad.dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "autocast_bfloat16", "autocast_float16"])
@pytest.mark.parametrize("cell", STEP_CELLS)
def test_cell_pass_is_one_call_with_a_given_state(cell, dtype):
    case = Case(cell, T=1, B=3, I=5, H=4, mode="training", dtype=dtype)
    models = workload.build_models(case)
    inputs = workload.make_inputs(case)
    assert inputs.x.shape == (3, 5)
    for model_ in models.values():
        out = workload.make_pass(case, model_, inputs)()
        assert out.shape == (3, 4)
        # every leaf (x, h and LSTMCell's c) and every weight got its gradient
        assert all(leaf.grad is not None for leaf in inputs.leaves())
        assert len(inputs.leaves()) == (3 if cell == "lstm_cell" else 2)
        assert all(p.grad is not None for p in model_.parameters())
    inference = Case(cell, T=1, B=3, I=5, H=4, dtype=dtype)
    models = workload.build_models(inference)
    inputs = workload.make_inputs(inference)
    outs = [workload.make_pass(inference, m, inputs)() for m in models.values()]
    assert all(o.is_inference() for o in outs)
    torch.testing.assert_close(outs[0].float(), outs[1].float(), atol=0.05, rtol=0.05)


def test_engine_from_op_names():
    assert workload.engine_from_op_names({"rnnkernels::rnn_layer", "aten::mm"}) == "rnnk"
    assert workload.engine_from_op_names({"aten::lstm", "aten::mkldnn_rnn_layer"}) == "torch:oneDNN"
    assert workload.engine_from_op_names({"aten::_cudnn_rnn"}) == "torch:cuDNN"
    assert workload.engine_from_op_names({"aten::lstm_cell", "aten::linear"}) == "torch:native"
    assert workload.engine_from_op_names({"rnnkernels::rnn_layer", "aten::mkldnn_rnn_layer"}) == "rnnk+torch:oneDNN"


def test_training_engine_profiles_the_backward_too(monkeypatch):
    seen = []
    monkeypatch.setattr(workload, "engine_from_op_names", lambda names: seen.append(names) or "x")
    case = Case("gru", T=3, B=2, I=4, H=4, mode="training")
    models = workload.build_models(case)
    assert workload.profile_engine(workload.make_pass(case, models["ours"], workload.make_inputs(case))) == "x"
    assert any(name.startswith("rnnkernels::gru_backward") for name in seen[0]), seen[0]


class _LSTMRoutedByBatch(rnnkernels.LSTM):
    """Stands in for an engine choice that sends batches above 2 to torch's own LSTM."""

    def forward(self, input, hx=None):
        if input.shape[1] > 2:
            return torch.nn.LSTM.forward(self, input, hx)
        return super().forward(input, hx)


def test_engine_is_profiled_per_case(monkeypatch):
    """Not cached per cell and dtype: one module class reports the engine of each case."""
    monkeypatch.setitem(workload._OUR_CLASSES, "lstm", _LSTMRoutedByBatch)
    engines = {}
    for batch in (1, 4):
        for mode in ("inference", "training"):
            record = runner.run_case(Case("lstm", T=3, B=batch, I=4, H=4, mode=mode), tiny_options(), {})
            engines[batch, mode] = record["ours"]["engine"]
            assert record["ours"]["path"] == workload.ENGINE_PATHS[record["ours"]["engine"]]
    assert engines[1, "inference"] == engines[1, "training"] == "rnnk"
    assert engines[4, "inference"] == engines[4, "training"] in ("torch:oneDNN", "torch:native")
    ours_ms = output.COLUMNS[0][2](record)
    assert ours_ms.endswith("*") and ours_ms in output.row(record)  # ours ran torch's engine


class _RaisingLSTM(torch.nn.LSTM):
    def forward(self, input, hx=None):
        raise RuntimeError("could not create a primitive descriptor (as oneDNN under fp16 autocast)")


def test_a_torch_nn_error_is_reported_and_ours_still_timed(monkeypatch):
    monkeypatch.setitem(workload._TORCH_CLASSES, "lstm", _RaisingLSTM)
    case = Case("lstm", T=3, B=2, I=4, H=4, mode="training", dtype="autocast_float16")
    record = runner.run_case(case, tiny_options(lower_bound=True), {})
    assert record["nn"]["median_s"] is None and record["nn"]["engine"] is None
    assert record["nn"]["error"].startswith("RuntimeError: could not create a primitive descriptor")
    assert record["ours"]["median_s"] > 0 and record["ours"]["engine"] == "rnnk"
    assert record["speedup"] is None and record["gflops_nn"] is None and record["nn_over_lb"] is None
    assert record["lb"]["backend"] == "torch.mm loop (Python)"  # float16 products
    line = output.row(record)
    assert " error " in line
    lines = output.summary([record])
    assert lines[0] == "torch.nn raised in 1 cases (ours timed alone):"
    assert "could not create a primitive descriptor" in lines[1]


# ---------------------------------------------------------------- timing logic (no timings)


def test_time_interleaved_alternates_the_variants():
    calls = []
    variants = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    result = timing.time_interleaved(variants, repeats=3, min_block_s=0.0, warmup_s=0.0,
                                     min_warmup_calls=2)
    # warm-up a b a b, then blocks of one call: a b | b a | a b
    assert calls == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]
    assert all(len(t.samples) == 3 and t.number == 1 for t in result.values())
    assert timing.iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == 2.0


# ---------------------------------------------------------------- result files


def _record(key_cell="lstm", T=10, B=4, H=8, ours=1e-3, nn=2e-3, spread=0.0, repeats=9,
            cpu="CPU X", mode="inference"):
    case = Case(key_cell, T, B, H, H, mode=mode)
    ours_samples = [ours * (1 + spread * ((i % 3) - 1)) for i in range(repeats)]
    nn_samples = [nn * (1 + spread * ((i % 3) - 1)) for i in range(repeats)]
    return {
        "schema": "rnnkernels.bench/1", "key": case.key, "case": case.to_dict(),
        "ours": {"median_s": ours, "iqr_s": 0.0, "samples_s": ours_samples, "number": 1,
                 "repeats": repeats, "engine": "rnnk", "path": "rnnkernels"},
        "nn": {"median_s": nn, "iqr_s": 0.0, "samples_s": nn_samples, "number": 1,
               "repeats": repeats, "engine": "torch:oneDNN", "path": "oneDNN"},
        "lb": {"median_s": ours / 3, "iqr_s": 0.0, "samples_s": [ours / 3], "backend": "sgemm_ (dlsym)",
               "products": 11},
        "speedup": nn / ours, "ours_over_lb": 3.0, "nn_over_lb": 3 * nn / ours,
        "per_step_s": ours / T, "steps_per_s": T / ours, "gemm_flops": model.gemm_flops(case),
        "bytes": model.traffic_bytes(case), "gflops_ours": 1.5, "gflops_nn": 0.75, "gbs_ours": 0.5,
        "gbs_nn": 0.25, "ceilings": None, "frac_peak_flops_ours": None, "frac_peak_bw_ours": None,
        "memory": {"ours_saved_bytes": None, "nn_saved_bytes": None, "ours_peak_bytes": None,
                   "nn_peak_bytes": None},
        "env": {"cpu_model": cpu, "cpu_identity": f"{cpu} (family 1 model 2)", "gpu_name": None, "threads": 2,
                "git": {"commit": "1234e5678", "branch": "main", "dirty": False},
                "rnnkernels_build": {"source_hash": "0123456789", "cpu_dtypes": ["float32", "float64"]}},
    }


def test_jsonl_and_csv_round_trip(tmp_path):
    records = [_record(), _record("gru", B=8, ours=3e-3), _record("rnn", H=16, mode="training")]
    output.write_jsonl(records, tmp_path / "r.jsonl")
    output.write_csv(records, tmp_path / "r.csv")
    assert output.read_results(tmp_path / "r.jsonl") == records
    from_csv = output.read_results(tmp_path / "r.csv")
    assert len(from_csv) == 3
    for original, back in zip(records, from_csv):
        expected = {k: v for k, v in output.flatten(original).items() if v is not None}
        assert output.flatten(back) == expected
    # strings that look like numbers stay strings
    assert from_csv[0]["env"]["git"]["commit"] == "1234e5678"
    assert from_csv[0]["env"]["rnnkernels_build"]["source_hash"] == "0123456789"
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert {"key", "case.cell", "ours.median_s", "nn.median_s", "speedup", "lb.median_s",
            "env.cpu_model"} <= set(header)


def test_table_rows_print_every_column():
    record = _record()
    line = output.row(record)
    assert line.startswith("lstm")
    assert "2.00x" in line  # nn/ours
    assert len(output.header().split()) >= len(output.COLUMNS)
    text = io.StringIO()
    output.print_table([record], text)
    assert "geomean nn/ours 2.00x" in text.getvalue()


def test_markdown_table_pairs_the_modes_and_keeps_the_last_run(tmp_path):
    from rnnkernels.bench import table

    records = [_record("lstm", ours=4e-3, nn=2e-3), _record("lstm", ours=1e-3, nn=2e-3),
               _record("lstm", mode="training", ours=2e-3, nn=3e-3)]
    text = io.StringIO()
    table.render(records, text)
    machine, blank, *lines = text.getvalue().splitlines()
    assert machine.startswith("CPU: CPU X (family 1 model 2)") and blank == ""
    assert lines[0].count("nn/ours") == 2  # inference and training columns
    assert len(lines) == 3  # header, rule, one row for the shape's two modes
    assert "**2.00x**" in lines[2] and "**1.50x**" in lines[2]  # the later inference run
    assert "**0.50x**" not in lines[2]
    assert lines[2].count("|") == lines[0].count("|")


# ---------------------------------------------------------------- compare


def _write(path, records):
    output.write_jsonl(records, path)
    return str(path)


def test_compare_flags_a_regression_and_not_noise(tmp_path):
    old = [_record("lstm", ours=1.00e-3, spread=0.002), _record("gru", ours=1.00e-3, spread=0.002),
           _record("rnn", ours=1.00e-3, spread=0.30), _record("lstm", B=1, ours=1.00e-3, spread=0.002),
           _record("gru", B=1, ours=1.00e-3, spread=0.002)]
    new = [_record("lstm", ours=1.10e-3, spread=0.002),   # 10% slower, tight: regression
           _record("gru", ours=1.02e-3, spread=0.002),    # 2%: under the 3% floor
           _record("rnn", ours=1.08e-3, spread=0.30),     # 8% inside +-30% samples: noise
           _record("lstm", B=1, ours=0.80e-3, spread=0.002),  # 20% faster
           _record("gru", B=1, ours=1.00e-3, spread=0.002)]
    result = compare.compare_records(old, new)
    assert result["metric"] == "time"  # same machine
    verdicts = {r.key.split("|")[0] + r.key.split("|")[3]: r.verdict for r in result["rows"]}
    assert verdicts == {"lstmB4": "REGRESSION", "gruB4": "", "rnnB4": "", "lstmB1": "faster", "gruB1": ""}
    out = io.StringIO()
    code = compare.main(_write(tmp_path / "o.jsonl", old), _write(tmp_path / "n.jsonl", new),
                        fail_on_regression=True, out=out)
    assert code == 1 and "1 regressions, 1 faster" in out.getvalue()
    assert compare.main(str(tmp_path / "o.jsonl"), str(tmp_path / "o.jsonl"), fail_on_regression=True,
                        out=io.StringIO()) == 0


def test_compare_across_machines_divides_out_the_machine():
    old = [_record(cell, B=b, ours=1e-3, nn=2e-3, spread=0.002, cpu="old CPU")
           for cell in ("lstm", "gru", "rnn") for b in (1, 4)]
    # everything 1.5x slower on the new machine; our lstm B=4 a further 20%
    new = [_record(cell, B=b, ours=1.5e-3 * (1.2 if (cell, b) == ("lstm", 4) else 1), nn=3e-3,
                   spread=0.002, cpu="new CPU") for cell in ("lstm", "gru", "rnn") for b in (1, 4)]
    result = compare.compare_records(old, new)
    assert result["metric"] == "speedup"
    flagged = [r.key for r in result["rows"] if r.verdict]
    assert flagged == [old[1]["key"]]
    assert math.isclose(result["control_drift"], math.log(1.5))
    by_time = compare.compare_records(old, new, metric="time")
    assert all(r.verdict == "REGRESSION" for r in by_time["rows"])


def test_compare_noise_from_repeated_runs():
    # the old file holds two runs of the case whose medians differ by 20%: a 10% change is noise
    old = [_record("lstm", ours=0.9e-3, spread=0.001), _record("lstm", ours=1.1e-3, spread=0.001)]
    new = [_record("lstm", ours=1.1e-3, spread=0.001)]
    (row,) = compare.compare_records(old, new)["rows"]
    assert row.verdict == ""
    (row,) = compare.compare_records(old[:1], new)["rows"]  # one run only: 22% is flagged
    assert row.verdict == "REGRESSION"


def test_compare_tells_cpu_generations_apart():
    """Two CPUs with one vague model name ("AMD EPYC") are two machines: speedup metric."""
    old = [_record(cpu="AMD EPYC")]
    new = [dict(_record(cpu="AMD EPYC"), env=dict(_record()["env"], cpu_identity="AMD EPYC (family 23 model 49)"))]
    assert compare.compare_records(old, new)["metric"] == "speedup"
    assert compare.compare_records(old, old)["metric"] == "time"


# ---------------------------------------------------------------- plot


def test_plot_writes_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional dependency of `plot`")
    from rnnkernels.bench import plot

    records = [_record("lstm", T=50, B=b, H=h, ours=1e-3 * b * h / 64, nn=2e-3) for b in (1, 8) for h in (8, 16)]
    records += [_record("gru", T=t, ours=1e-5 * t, nn=2e-5 * t) for t in (10, 20, 40)]
    path = tmp_path / "res.jsonl"
    output.write_jsonl(records, path)
    written = plot.main(str(path), str(tmp_path / "pics"))
    assert sorted(p.name for p in written) == ["res-heatmap.png", "res-time-vs-T.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plot.heatmap_groups(records)) == 1 and len(plot.time_groups(records)) == 1


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    from rnnkernels.bench import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    path = tmp_path / "res.jsonl"
    output.write_jsonl([_record()], path)
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        plot.main(str(path))


# ---------------------------------------------------------------- lower bound and ceilings


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gemm_sequence_helper_computes_the_listed_products(dtype, backend):
    shapes = [[m, n, k, ta, tb] for m, n, k in [(7, 13, 5), (1, 33, 17)] for ta in (0, 1) for tb in (0, 1)]
    from rnnkernels import _bench_C

    result = _bench_C.gemm_sequence_seconds(shapes, 2, dtype, 1, backend, True)
    assert len(result["seconds"]) == 2 and all(s > 0 for s in result["seconds"])
    assert result["max_relative_error"] < (1e-5 if dtype == "float32" else 1e-12)
    assert result["threads"] == torch.get_num_threads()
    if backend == "torch":
        assert result["backend"] == "at::mm_out"
    else:
        assert result["backend"] in ("sgemm_ (dlsym)", "dgemm_ (dlsym)", "at::mm_out")
    with pytest.raises(RuntimeError, match="shape"):
        _bench_C.gemm_sequence_seconds([[1, 2]], 1)


def test_lower_bound_measure_reports_its_backend():
    from rnnkernels.bench import lower_bound

    case = Case("gru", T=3, B=2, I=4, H=4, mode="training")
    lb = lower_bound.measure(case, 2)
    assert lb["products"] == len(model.gemm_sequence(case)) and len(lb["samples_s"]) == 2
    lb = lower_bound.measure(Case("rnn", T=3, B=2, I=4, H=4, dtype="bfloat16"), 1)
    assert lb["backend"] == "torch.mm loop (Python)"


def test_ceilings_are_cached_per_key(tmp_path, small_quiet_ceilings):
    path = tmp_path / "c.json"
    first = ceilings.get("cpu", "float32", torch.get_num_threads(), path=path)
    assert first["cached"] is False and first["matmul_gflops"] > 0 and first["copy_gbs"] > 0
    second = ceilings.get("cpu", "float32", torch.get_num_threads(), path=path)
    assert second["cached"] is True and second["matmul_gflops"] == first["matmul_gflops"]
    assert ceilings.get("cpu", "float32", torch.get_num_threads(), remeasure=True, path=path)["cached"] is False
    assert list(json.loads(path.read_text())) == [first["key"]]
    assert "threads=" in first["key"] and torch.__version__ in first["key"]


def _plant(path, key, **entry):
    fields = dict(matmul_gflops=0.001, copy_gbs=0.001, matmul_n=64, copy_bytes=2**20, device="cpu",
                  dtype="float32", threads=torch.get_num_threads(), machine=env.machine_name("cpu"),
                  loadavg_1min=0.1, logical_cpus=2, loaded=False, measured="2026-01-01T00:00:00")
    fields.update(entry)
    path.write_text(json.dumps({key: fields}))


@pytest.mark.parametrize("planted, reason", [
    (dict(loadavg_1min=1.9, logical_cpus=2), "under load 1.9 on 2 CPUs"),
    (dict(loadavg_1min=None), "without a load record"),
    (dict(machine="AMD EPYC"), "measured on AMD EPYC, this is"),  # an old key's vague model name
])
def test_an_untrusted_cached_ceiling_is_measured_again(tmp_path, small_quiet_ceilings, planted, reason):
    """A ceiling cached under load, without its load, or on another CPU is never reused: its
    0.001 GFLOP/s would make every fraction of it thousands of percent."""
    path = tmp_path / "c.json"
    threads = torch.get_num_threads()
    key = ceilings.ceiling_key("cpu", "float32", threads)
    _plant(path, key, **planted)
    got = ceilings.get("cpu", "float32", threads, path=path)
    assert got["cached"] is False and got["matmul_gflops"] != 0.001
    assert reason in got["note"] and "measured again" in got["note"]
    # the quiet measurement replaced the untrusted entry, and is reused next time
    assert json.loads(path.read_text())[key]["loadavg_1min"] == 0.1
    assert ceilings.get("cpu", "float32", threads, path=path)["cached"] is True


def test_a_ceiling_cached_on_another_cpu_model_is_not_used(tmp_path, monkeypatch, small_quiet_ceilings):
    path = tmp_path / "c.json"
    threads = torch.get_num_threads()
    fake_cpuinfo(monkeypatch, tmp_path, INTEL_CPUINFO)
    intel = ceilings.get("cpu", "float32", threads, path=path)
    assert intel["cached"] is False and "Xeon" in intel["key"] and "family 6 model 143" in intel["key"]
    fake_cpuinfo(monkeypatch, tmp_path, AMD_CPUINFO)
    amd = ceilings.get("cpu", "float32", threads, path=path)
    assert amd["cached"] is False and amd["machine"].startswith("AMD EPYC (AuthenticAMD family 25 model 17")
    assert set(json.loads(path.read_text())) == {intel["key"], amd["key"]}


def test_a_ceiling_measured_under_load_is_used_but_not_cached(tmp_path, monkeypatch, small_quiet_ceilings):
    path = tmp_path / "c.json"
    monkeypatch.setattr(env, "load_average", lambda: 2.0 * (os.cpu_count() or 1))
    got = ceilings.get("cpu", "bfloat16", torch.get_num_threads(), path=path)
    assert got["loaded"] is True and got["matmul_gflops"] > 0 and got["dtype"] == "bfloat16"
    assert "not cached" in got["note"]
    assert not path.exists()
    row = output.row(dict(_record(), ceilings={"bfloat16": got}, ceiling_dtype="bfloat16",
                          frac_peak_flops_ours=0.5))
    assert "50.0%!" in row  # the table marks a fraction of a loaded ceiling


def test_every_run_measures_the_fp32_and_bf16_ceilings(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(ceilings, "get", lambda device, dtype, threads, remeasure=False: asked.append(
        (device, dtype, threads)) or {"dtype": dtype})
    fake_cpuinfo(monkeypatch, tmp_path, AMD_CPUINFO)  # no float16 matrix hardware
    cases = [Case("lstm", 5, 2, 4, 4), Case("gru", 5, 2, 4, 4, dtype="autocast_float16"),
             Case("rnn", 5, 2, 4, 4, dtype="float64", threads=1)]
    found = runner.ceilings_for(cases, runner.RunOptions())
    assert asked == [("cpu", "float32", 2), ("cpu", "bfloat16", 2), ("cpu", "float32", 1),
                     ("cpu", "bfloat16", 1), ("cpu", "float64", 1)]
    assert set(found) == {("cpu", 2), ("cpu", 1)}
    assert ceilings.ceiling_dtype("float16", "cpu") == "float32"
    fake_cpuinfo(monkeypatch, tmp_path, INTEL_CPUINFO)  # avx512_fp16: float16 has a ceiling of its own
    assert ceilings.ceiling_dtype("float16", "cpu") == "float16"
    assert ceilings.ceiling_dtype("bfloat16", "cpu") == "bfloat16"


def test_cpu_record_reads_cpuinfo(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, INTEL_CPUINFO)
    info = env.cpu_info()
    assert info == {"model_name": "Intel(R) Xeon(R) Platinum 8480+", "vendor": "GenuineIntel", "family": "6",
                    "model": "143", "flags": ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                                              "amx_tile", "amx_bf16", "amx_int8"]}
    fake_cpuinfo(monkeypatch, tmp_path, AMD_CPUINFO)
    assert env.cpu_identity() == ("AMD EPYC (AuthenticAMD family 25 model 17; avx2 fma avx512f avx512bw "
                                  "avx512vl avx512_bf16)")
    assert env.machine_name("cpu") == env.cpu_identity()
    record = env.environment(2)
    assert record["cpu_model"] == "AMD EPYC" and record["cpu"]["family"] == "25"
    assert record["cpu_identity"] == env.cpu_identity()
    assert record["cpu_flags"] == ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16"]
    assert env.is_loaded(1.1, 2) and not env.is_loaded(1.0, 2) and env.is_loaded(None, 2)


# ---------------------------------------------------------------- progress


def test_progress_prints_lines_off_a_terminal():
    stream = io.StringIO()
    bar = Progress(4, stream=stream)
    bar.show("first")
    bar.advance()
    bar.show("second")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[") and "0/4" in lines[0] and lines[0].endswith("first")
    assert "1/4" in lines[1] and "eta" in lines[1]


# ---------------------------------------------------------------- end to end


def test_tiny_end_to_end_run_writes_valid_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNKERNELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ceilings, "CPU_MATMUL_N", 64)
    monkeypatch.setattr(ceilings, "CPU_COPY_BYTES", 2**20)
    out = tmp_path / "tiny.jsonl"
    code = cli.main(["-T", "5", "-B", "2", "-H", "8", "--cells", "lstm", "gru", "rnn",
                     "--repeats", "1", "--min-block-ms", "0", "--warmup-ms", "0",
                     "--threads", str(torch.get_num_threads()), "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    machine, header = printed.splitlines()[:2]
    assert machine.startswith(f"CPU: {env.cpu_identity()}") and "fp32" in machine and "bf16" in machine
    assert header == output.header() and "engine" in header
    records = output.read_results(out)
    assert len(records) == 6
    assert [r["key"] for r in records] == [c.key for c in custom_cases(
        [5], [2], [None], [8], cells=("lstm", "gru", "rnn"), modes=("inference", "training"),
        threads=torch.get_num_threads())]
    for r in records:
        case = Case.from_dict(r["case"])
        assert r["gemm_flops"] == model.gemm_flops(case) and r["bytes"] == model.traffic_bytes(case)
        assert r["ours"]["engine"] == "rnnk" and r["ours"]["path"] == "rnnkernels"
        assert r["nn"]["path"] in ("oneDNN", "ATen native")
        assert r["nn"]["engine"] in ("torch:oneDNN", "torch:native")
        assert r["lb"]["products"] == len(model.gemm_sequence(case))
        assert math.isclose(r["speedup"], r["nn"]["median_s"] / r["ours"]["median_s"])
        # both matmul ceilings, and ours' and torch.nn's GFLOP/s as fractions of each
        assert set(r["ceilings"]) == {"float32", "bfloat16"} and r["ceiling_dtype"] == "float32"
        assert all(c["matmul_n"] == 64 for c in r["ceilings"].values())
        for name in ("ours", "nn"):
            assert math.isclose(r[f"gflops_{name}"], r["gemm_flops"] / r[name]["median_s"] / 1e9)
            for dtype, short in (("float32", "fp32"), ("bfloat16", "bf16")):
                assert math.isclose(r[f"frac_{short}_peak_{name}"],
                                    r[f"gflops_{name}"] / r["ceilings"][dtype]["matmul_gflops"])
            assert r[f"frac_peak_flops_{name}"] == r[f"frac_fp32_peak_{name}"]
        assert r["env"]["cpu_identity"] == env.cpu_identity() and r["env"]["cpu"]["model_name"]
        assert r["env"]["torch_version"] == torch.__version__
        assert r["env"]["cpu_capability"] == rnnkernels._C.cpu_capability()
        assert r["env"]["lower_bound_backend"] == records[0]["lb"]["backend"]
        if case.mode == "training":
            assert r["memory"]["ours_saved_bytes"] > 0
    assert (tmp_path / "tiny.csv").exists()
    assert len(output.read_results(tmp_path / "tiny.csv")) == 6
    # LSTM in fp32 on CPU runs oneDNN inside torch.nn; GRU and RNN the native path
    nn_engines = {r["case"]["cell"]: r["nn"]["engine"] for r in records}
    if torch.backends.mkldnn.is_available():
        assert nn_engines == {"lstm": "torch:oneDNN", "gru": "torch:native", "rnn": "torch:native"}


def test_tiny_run_of_cells_and_autocast(tmp_path, monkeypatch, capsys, small_quiet_ceilings):
    monkeypatch.setenv("RNNKERNELS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "cells.jsonl"
    code = cli.main(["--cells", "gru", "lstm_cell", "-T", "3", "-B", "2", "-H", "8", "--modes", "training",
                     "--dtype", "autocast_bfloat16", "float16", "--repeats", "1", "--no-lb", "--min-block-ms", "0",
                     "--warmup-ms", "0", "--threads", str(torch.get_num_threads()), "--out", str(out),
                     "--no-progress", "--no-legend"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("CPU: ") and printed[1] == output.header()
    records = output.read_results(out)
    assert [(r["case"]["cell"], r["case"]["T"], r["case"]["dtype"]) for r in records] == [
        ("gru", 3, "autocast_bfloat16"), ("gru", 3, "float16"),
        ("lstm_cell", 1, "autocast_bfloat16"), ("lstm_cell", 1, "float16")]
    for r in records:
        assert r["ours"]["engine"] == "rnnk" and r["nn"]["engine"] == "torch:native"
        assert r["ours"]["median_s"] > 0 and r["nn"]["median_s"] > 0
        # bfloat16 autocast against the bf16 ceiling; float16 on this CPU per ceiling_dtype
        own = ceilings.ceiling_dtype(r["case"]["dtype"].replace("autocast_", ""), "cpu")
        assert r["ceiling_dtype"] == own and set(r["ceilings"]) == {"float32", "bfloat16", own}
        assert r["frac_peak_flops_ours"] == r["frac_bf16_peak_ours" if own == "bfloat16" else "frac_fp32_peak_ours"]
        assert r["memory"]["ours_saved_bytes"] > 0
    labels = [line for line in printed if line.startswith(("gru", "lstm_cell"))]
    assert [line.split()[6] for line in labels[:4]] == ["ac-bf16", "fp16", "ac-bf16", "fp16"]


@pytest.mark.parametrize("size, saved", [
    ((40, 16, 64, 64), 983040),  # the workspace and output, 40*16*(5*64 + 64)*4 bytes
    # workspace 5.2 MB: from rnnkernels' buffer cache, which the worker must empty before
    # its baseline or the warm-up's cached blocks would hide the pass's peak
    ((64, 32, 128, 128), 64 * 32 * (5 * 128 + 128) * 4),
])
def test_memory_worker_measures_a_peak_at_least_the_saved_activations(size, saved):
    from rnnkernels.bench.memory import RssWorker

    T, B, I, H = size
    case = Case("lstm", T=T, B=B, I=I, H=H, mode="training", threads=1)
    with RssWorker() as worker:
        answer = worker.measure(case, "ours")
        if "error" in answer and "clear_refs" in answer["error"]:
            pytest.skip(answer["error"])
        assert "error" not in answer, answer
        # the workspace and the output are live at the peak
        assert answer["peak_bytes"] >= model.kernel_saved_bytes(case) == saved


def test_module_entry_point_lists_presets():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "rnnkernels.bench", "presets"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in PRESETS:
        assert name in result.stdout
    assert str(CORE_GEOMETRIES[0][:4]) in result.stdout
    portable = next(line for line in result.stdout.splitlines() if line.startswith("portable"))
    assert f"{len(preset_cases('portable'))} cases, 5 repeats" in portable
    assert "(B, I, H) = (1, 256, 256)" in result.stdout


def test_peers_time_the_exported_graph_in_the_runtimes(tmp_path, monkeypatch, capsys):
    """--peers: our module exported to ONNX, timed in ONNX Runtime and OpenVINO beside ours
    and torch.nn (inference of float32 layers only), the fastest named."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("openvino", reason="openvino is not installed")
    out = tmp_path / "peers.jsonl"
    code = cli.main(["-T", "6", "-B", "3", "-H", "8", "--cells", "lstm", "gru", "--modes",
                     "inference", "training", "--repeats", "1", "--min-block-ms", "0",
                     "--warmup-ms", "0", "--no-ceilings", "--no-lb", "--threads",
                     str(torch.get_num_threads()), "--out", str(out), "--no-progress",
                     "--peers", "onnxruntime", "openvino"])
    assert code == 0
    printed = capsys.readouterr().out
    records = output.read_results(out)
    for r in records:
        if r["case"]["mode"] == "training":
            assert "peers" not in r
            continue
        assert {"onnxruntime", "openvino"} <= set(r["peers"]), r["peers"]
        for name, peer in r["peers"].items():
            assert peer["median_s"] > 0 and math.isclose(
                peer["speedup_vs_nn"], r["nn"]["median_s"] / peer["median_s"]), name
        times = {"ours": r["ours"]["median_s"], "nn": r["nn"]["median_s"],
                 **{n: p["median_s"] for n, p in r["peers"].items()}}
        assert r["fastest"] == min(times, key=times.get)
        assert f"fastest: {r['fastest']}" in printed


def test_int8_cases_time_the_int8_module_beside_the_int8_peers(tmp_path, capsys):
    """--dtype int8: ours is rnnkernels.quantize_dynamic of the float32 module, nn torch.nn
    float32, and torch.nn bfloat16 and torch's dynamic int8 are peers (torch has no dynamic
    int8 RNN: its entry says so); the table command renders them; training is refused."""
    out = tmp_path / "int8.jsonl"
    code = cli.main(["-T", "5", "-B", "3", "-H", "16", "--cells", "lstm", "rnn", "lstm_cell",
                     "--modes", "inference", "--dtype", "int8", "--repeats", "1",
                     "--min-block-ms", "0", "--warmup-ms", "0", "--no-ceilings", "--no-lb",
                     "--threads", str(torch.get_num_threads()), "--out", str(out),
                     "--no-progress"])
    assert code == 0
    records = output.read_results(out)
    assert len(records) == 3
    for r in records:
        assert r["case"]["dtype"] == "int8" and r["ours"]["engine"] == "rnnk"
        assert r["peers"]["nn_bf16"]["median_s"] > 0
        times = {"ours": r["ours"]["median_s"], "nn": r["nn"]["median_s"],
                 **{n: p["median_s"] for n, p in r["peers"].items() if p.get("median_s")}}
        assert r["fastest"] == min(times, key=times.get)
        others = [t for n, t in times.items() if n != "ours"]
        assert math.isclose(r["speedup_vs_fastest_other"], min(others) / times["ours"])
    by_cell = {r["case"]["cell"]: r for r in records}
    assert by_cell["lstm"]["peers"]["torch_int8"]["median_s"] > 0
    assert "no dynamic int8 RNN" in by_cell["rnn"]["peers"]["torch_int8"]["error"]
    capsys.readouterr()
    assert table.main(str(out)) == 0
    rendered = capsys.readouterr().out
    assert "ours vs the fastest other" in rendered and "torch_int8 ms" in rendered
    with pytest.raises(ValueError, match="int8 cases are CPU inference"):
        Case("lstm", T=2, B=1, I=4, H=4, mode="training", dtype="int8")
