"""torch.library.opcheck on the ops of torch.ops.rnnkernels.

Each opcheck sub-test (schema, autograd registration, fake tensor, AOT dispatch with
dynamic shapes) is its own test case, so a failure names the sub-test. The AOT dispatch
test traces and compiles (about half a second a case), so it runs on a subset that
still has every op, both need_workspace values, dense and packed rows, one and two
directions, and missing upstream gradients. Forward ops run
with need_workspace True (inputs requiring grad: the AOT test then also runs the
registered backward) and False (no grad: a forward without workspace cannot be
differentiated); with and without batch_sizes, one and two directions, with and without
b_hh, LSTM with and without w_hr. Backward ops get the workspace of a real forward call
and some missing (None) upstream gradients.
"""

import pytest
import torch

import rnnkernels  # noqa: F401  (registers torch.ops.rnnkernels and their fakes and autograd)

F64 = torch.float64
HIDDEN, PROJ = 5, 3
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DENSE_STEPS, DENSE_BATCH = 3, 2
PACKED_BATCH_SIZES = torch.tensor([3, 3, 2, 1])

CHEAP_UTILS = ["test_schema", "test_autograd_registration", "test_faketensor"]
AOT_UTIL = "test_aot_dispatch_dynamic"

_ops = torch.ops.rnnkernels


def _rand(*shape, requires_grad=False):
    return (0.5 * torch.randn(*shape, dtype=F64)).requires_grad_(requires_grad)


def forward_args(cell: str, directions: int, bias: bool, packed: bool, need_workspace: bool,
                 proj: bool = False, nonlinearity: str = "tanh") -> tuple:
    """Arguments of rnnkernels::<cell>_forward, in schema order."""
    grad = need_workspace
    H, G, P = HIDDEN, GATES[cell], PROJ if proj else HIDDEN
    if packed:
        batch_sizes = PACKED_BATCH_SIZES
        rows, batch = int(batch_sizes.sum()), int(batch_sizes[0])
    else:
        batch_sizes = None
        rows, batch = DENSE_STEPS * DENSE_BATCH, DENSE_BATCH
    x_proj = _rand(rows, directions * G * H, requires_grad=grad)
    w_hh = [_rand(G * H, P, requires_grad=grad) for _ in range(directions)]
    b_hh = [_rand(G * H, requires_grad=grad) for _ in range(directions)] if bias else []
    h0 = _rand(directions, batch, P, requires_grad=grad)
    if cell == "lstm":
        w_hr = [_rand(P, H, requires_grad=grad) for _ in range(directions)] if proj else []
        c0 = _rand(directions, batch, H, requires_grad=grad)
        return (x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace)
    if cell == "gru":
        return (x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace)
    return (x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace)


FORWARD_CASES = [
    pytest.param(cell, directions, bias, packed, need_workspace, proj,
                 id=f"{cell}{'_proj' if proj else ''}-D{directions}-"
                    f"{'bias' if bias else 'nobias'}-{'packed' if packed else 'dense'}-"
                    f"{'workspace' if need_workspace else 'noworkspace'}")
    for cell, proj in [("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)]
    for directions in (1, 2)
    for bias in (True, False)
    for packed in (False, True)
    for need_workspace in (True, False)
]


AOT_FORWARD_CASES = [p for p in FORWARD_CASES
                     if p.values[1:4] in [(1, True, False), (2, False, True)]]


@pytest.mark.parametrize("test_util", CHEAP_UTILS)
@pytest.mark.parametrize("cell,directions,bias,packed,need_workspace,proj", FORWARD_CASES)
def test_forward_opcheck(cell, directions, bias, packed, need_workspace, proj, test_util):
    args = forward_args(cell, directions, bias, packed, need_workspace, proj)
    torch.library.opcheck(getattr(_ops, f"{cell}_forward").default, args,
                          test_utils=test_util)


@pytest.mark.parametrize("cell,directions,bias,packed,need_workspace,proj", AOT_FORWARD_CASES)
def test_forward_opcheck_aot_dispatch(cell, directions, bias, packed, need_workspace, proj):
    args = forward_args(cell, directions, bias, packed, need_workspace, proj)
    torch.library.opcheck(getattr(_ops, f"{cell}_forward").default, args, test_utils=AOT_UTIL)


# gru_forward_fused / rnn_forward_fused: x and W_ih instead of x_proj (lstm_forward_fused
# has its own cases in test_lstm_fused.py).
INPUT_SIZE = 4
SINGLE_STATE_FUSED_CASES = [p for p in FORWARD_CASES if p.values[0] in ("gru", "rnn")]


def fused_forward_args(cell, directions, bias, packed, need_workspace, nonlinearity="tanh"):
    """Arguments of rnnkernels::<cell>_forward_fused, in schema order."""
    x_proj, w_hh, b_hh, h0, batch_sizes = forward_args(cell, directions, bias, packed,
                                                       need_workspace)[:5]
    grad, G = need_workspace, GATES[cell]
    x = _rand(x_proj.shape[0], INPUT_SIZE, requires_grad=grad)
    w_ih = [_rand(G * HIDDEN, INPUT_SIZE, requires_grad=grad) for _ in range(directions)]
    b_ih = [_rand(G * HIDDEN, requires_grad=grad) for _ in range(directions)] if bias else []
    if cell == "gru":
        return (x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, need_workspace)
    return (x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace)


@pytest.mark.parametrize("test_util", CHEAP_UTILS)
@pytest.mark.parametrize("cell,directions,bias,packed,need_workspace,proj",
                         SINGLE_STATE_FUSED_CASES)
def test_fused_forward_opcheck(cell, directions, bias, packed, need_workspace, proj, test_util):
    args = fused_forward_args(cell, directions, bias, packed, need_workspace)
    torch.library.opcheck(getattr(_ops, f"{cell}_forward_fused").default, args,
                          test_utils=test_util)


@pytest.mark.parametrize("cell,directions,bias,packed,need_workspace,proj",
                         [p for p in SINGLE_STATE_FUSED_CASES if p in AOT_FORWARD_CASES])
def test_fused_forward_opcheck_aot_dispatch(cell, directions, bias, packed, need_workspace,
                                            proj):
    args = fused_forward_args(cell, directions, bias, packed, need_workspace)
    torch.library.opcheck(getattr(_ops, f"{cell}_forward_fused").default, args,
                          test_utils=AOT_UTIL)


def test_relu_opcheck():
    torch.library.opcheck(_ops.rnn_forward.default,
                          forward_args("rnn", 2, True, True, True, nonlinearity="relu"))
    torch.library.opcheck(_ops.rnn_forward_fused.default,
                          fused_forward_args("rnn", 2, True, True, True, nonlinearity="relu"))
    torch.library.opcheck(_ops.rnn_backward.default,
                          backward_args("rnn", 2, True, True, False, "none", nonlinearity="relu"),
                          test_utils=CHEAP_UTILS)


# Which upstream gradients the backward op gets as None.
MISSING_GRADS = ["none", "grad_output", "grad_states", "grad_h_n_only"]


def backward_args(cell: str, directions: int, bias: bool, packed: bool, proj: bool,
                  missing: str, nonlinearity: str = "tanh") -> tuple:
    """Arguments of rnnkernels::<cell>_backward, in schema order, from a real forward."""
    fwd = forward_args(cell, directions, bias, packed, need_workspace=True, proj=proj,
                       nonlinearity=nonlinearity)
    fwd = tuple(a.detach() if isinstance(a, torch.Tensor) else
                [t.detach() for t in a] if isinstance(a, list) else a for a in fwd)
    with torch.no_grad():
        results = getattr(_ops, f"{cell}_forward")(*fwd)
    output, h_n, workspace = results[0], results[1], results[-1]
    grad_output = None if missing == "grad_output" else _rand(*output.shape)
    grad_h_n = None if missing in ("grad_states", "grad_h_n_only") else _rand(*h_n.shape)
    if cell == "lstm":
        x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, _ = fwd
        grad_c_n = None if missing == "grad_states" else _rand(*results[2].shape)
        return (grad_output, grad_h_n, grad_c_n, w_hh, b_hh, w_hr, h0, c0, output, workspace,
                batch_sizes)
    if cell == "gru":
        x_proj, w_hh, b_hh, h0, batch_sizes, _ = fwd
        return (grad_output, grad_h_n, w_hh, b_hh, h0, output, workspace, batch_sizes)
    x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, _ = fwd
    return (grad_output, grad_h_n, w_hh, b_hh, h0, output, workspace, batch_sizes,
            nonlinearity)


BACKWARD_CASES = [
    pytest.param(cell, directions, bias, packed, proj, missing,
                 id=f"{cell}{'_proj' if proj else ''}-D{directions}-"
                    f"{'bias' if bias else 'nobias'}-{'packed' if packed else 'dense'}-"
                    f"missing_{missing}")
    for cell, proj in [("lstm", False), ("lstm", True), ("gru", False), ("rnn", False)]
    for directions, bias, packed in [(1, True, False), (2, False, True), (2, True, True)]
    for missing in MISSING_GRADS
    if missing != "grad_h_n_only" or cell == "lstm"
]


AOT_BACKWARD_CASES = [p for p in BACKWARD_CASES
                      if (p.values[1:4], p.values[5]) in [((1, True, False), "none"),
                                                           ((2, True, True), "grad_output"),
                                                           ((2, False, True), "grad_states")]]


@pytest.mark.parametrize("test_util", CHEAP_UTILS)
@pytest.mark.parametrize("cell,directions,bias,packed,proj,missing", BACKWARD_CASES)
def test_backward_opcheck(cell, directions, bias, packed, proj, missing, test_util):
    args = backward_args(cell, directions, bias, packed, proj, missing)
    torch.library.opcheck(getattr(_ops, f"{cell}_backward").default, args,
                          test_utils=test_util)


@pytest.mark.parametrize("cell,directions,bias,packed,proj,missing", AOT_BACKWARD_CASES)
def test_backward_opcheck_aot_dispatch(cell, directions, bias, packed, proj, missing):
    args = backward_args(cell, directions, bias, packed, proj, missing)
    torch.library.opcheck(getattr(_ops, f"{cell}_backward").default, args, test_utils=AOT_UTIL)


# ---------------------------------------------------------------- input projection

PROJECTION_CASES = [
    pytest.param(directions, bias, grad, input_size,
                 id=f"D{directions}-{'bias' if bias else 'nobias'}-"
                    f"{'grad' if grad else 'nograd'}-I{input_size}")
    for directions in (1, 2)
    for bias in (True, False)
    for grad in (True, False)
    # 7: MKL below the own GEMM's minimum depth; 300: the own GEMM path (K >= 256)
    for input_size in (7, 300)
]


def projection_args(directions, bias, grad, input_size):
    x = _rand(6, input_size, requires_grad=grad)
    w_ih = [_rand(4 * HIDDEN, input_size, requires_grad=grad) for _ in range(directions)]
    b_ih = [_rand(4 * HIDDEN, requires_grad=grad) for _ in range(directions)] if bias else []
    return x, w_ih, b_ih


@pytest.mark.parametrize("test_util", CHEAP_UTILS)
@pytest.mark.parametrize("directions,bias,grad,input_size", PROJECTION_CASES)
def test_input_projection_opcheck(directions, bias, grad, input_size, test_util):
    torch.library.opcheck(_ops.input_projection.default,
                          projection_args(directions, bias, grad, input_size),
                          test_utils=test_util)


# AOT dispatch (slow) on the differentiable cases of the own GEMM path.
@pytest.mark.parametrize("directions,bias,grad,input_size",
                         [p for p in PROJECTION_CASES if p.values[2] and p.values[3] == 300])
def test_input_projection_opcheck_aot_dispatch(directions, bias, grad, input_size):
    torch.library.opcheck(_ops.input_projection.default,
                          projection_args(directions, bias, grad, input_size),
                          test_utils=AOT_UTIL)


@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("directions,bias,grad,input_size",
                         [p for p in PROJECTION_CASES if not p.values[2]])
def test_input_projection_backward_opcheck(directions, bias, grad, input_size, need_input_grad):
    x, w_ih, _ = projection_args(directions, bias, False, input_size)
    grad_x_proj = _rand(x.shape[0], directions * w_ih[0].shape[0])
    torch.library.opcheck(_ops.input_projection_backward.default,
                          (grad_x_proj, x, w_ih, need_input_grad, bias), test_utils=CHEAP_UTILS)
