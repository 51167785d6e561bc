"""torch.library.opcheck on the op pair rnnkernels::rnn_layer / rnn_layer_backward.

Each opcheck sub-test (schema, autograd registration, fake tensor, AOT dispatch with
dynamic shapes) is its own test case, so a failure names the sub-test. The AOT dispatch
test traces and compiles (about half a second a case), so it runs on a subset that still
has every mode, both need_workspace values, dense and packed rows, one and two directions,
and missing upstream gradients. The forward runs with need_workspace True (inputs
requiring grad: the AOT test then also runs the registered backward) and False (no grad:
a forward without workspace cannot be differentiated); with and without batch_sizes, one
and two directions, with and without biases, the LSTM with and without a projection, with
and without zoneout, and at a batch of 8, where the CPU LSTM projects its input inside the
time loop. The backward gets the workspace of a real forward call and some missing (None)
upstream gradients.
"""

import pytest
import torch

import rnnkernels  # noqa: F401  (registers torch.ops.rnnkernels and their fakes and autograd)

F64 = torch.float64
INPUT_SIZE, HIDDEN, PROJ = 4, 5, 3
GATES = {"lstm": 4, "lstm_proj": 4, "ln_lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
LSTM_MODES = ("lstm", "lstm_proj", "ln_lstm")
DENSE_STEPS = 3
PACKED_BATCH_SIZES = torch.tensor([3, 3, 2, 1])

CHEAP_UTILS = ["test_schema", "test_autograd_registration", "test_faketensor"]
AOT_UTIL = "test_aot_dispatch_dynamic"

_ops = torch.ops.rnnkernels


def _rand(*shape, requires_grad=False, offset=0.0):
    return (offset + 0.5 * torch.randn(*shape, dtype=F64)).requires_grad_(requires_grad)


def layer_args(mode: str, directions: int, bias: bool, packed: bool, need_workspace: bool,
               batch: int = 2, zoneout: bool = False) -> tuple:
    """Arguments of rnnkernels::rnn_layer, in schema order (mode lstm_proj: lstm with
    has_projection)."""
    grad = need_workspace
    proj, layer_norm = mode == "lstm_proj", mode == "ln_lstm"
    H, G, P = HIDDEN, GATES[mode], PROJ if proj else HIDDEN
    if packed:
        batch_sizes = PACKED_BATCH_SIZES
        rows, batch = int(batch_sizes.sum()), int(batch_sizes[0])
    else:
        batch_sizes, rows = None, DENSE_STEPS * batch
    x = _rand(rows, INPUT_SIZE, requires_grad=grad)
    weights = []
    for _ in range(directions):
        weights += [_rand(G * H, INPUT_SIZE, requires_grad=grad),
                    _rand(G * H, P, requires_grad=grad)]
        if bias:
            weights += [_rand(G * H, requires_grad=grad), _rand(G * H, requires_grad=grad)]
        if proj:
            weights.append(_rand(P, H, requires_grad=grad))
        if layer_norm:
            weights += [_rand(G * H, requires_grad=grad, offset=1.0),
                        _rand(G * H, requires_grad=grad, offset=1.0),
                        _rand(H, requires_grad=grad, offset=1.0)]
            if bias:
                weights.append(_rand(H, requires_grad=grad))
    h0 = _rand(directions, batch, P, requires_grad=grad)
    c0 = _rand(directions, batch, H, requires_grad=grad) if mode in LSTM_MODES else None
    keep = None
    if zoneout:
        width = P + H if mode in LSTM_MODES else P
        keep = torch.rand(directions, rows, width, dtype=F64)
    op_mode = "lstm" if proj else mode
    return (op_mode, x, weights, bias, proj, h0, c0, batch_sizes, keep, need_workspace)


def _case_id(mode, directions, bias, packed, extra):
    return (f"{mode}-D{directions}-{'bias' if bias else 'nobias'}-"
            f"{'packed' if packed else 'dense'}-{extra}")


FORWARD_CASES = [
    pytest.param(mode, directions, bias, packed, need_workspace,
                 id=_case_id(mode, directions, bias, packed,
                             "workspace" if need_workspace else "noworkspace"))
    for mode in GATES
    for directions in (1, 2)
    for bias in (True, False)
    for packed in (False, True)
    for need_workspace in (True, False)
]
AOT_FORWARD_CASES = [p for p in FORWARD_CASES
                     if p.values[1:4] in [(1, True, False), (2, False, True)]]


@pytest.mark.parametrize("test_util", CHEAP_UTILS)
@pytest.mark.parametrize("mode,directions,bias,packed,need_workspace", FORWARD_CASES)
def test_forward_opcheck(mode, directions, bias, packed, need_workspace, test_util):
    args = layer_args(mode, directions, bias, packed, need_workspace)
    torch.library.opcheck(_ops.rnn_layer.default, args, test_utils=test_util)


@pytest.mark.parametrize("mode,directions,bias,packed,need_workspace", AOT_FORWARD_CASES)
def test_forward_opcheck_aot_dispatch(mode, directions, bias, packed, need_workspace):
    args = layer_args(mode, directions, bias, packed, need_workspace)
    torch.library.opcheck(_ops.rnn_layer.default, args, test_utils=AOT_UTIL)


@pytest.mark.parametrize("mode", [m for m in GATES if m != "ln_lstm"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_zoneout_and_fused_batch_opcheck(mode, packed):
    # Zoneout weights (every mode but the layer-normalised LSTM, which has none) and a
    # batch of 8 (the CPU LSTM's in-loop input projection).
    args = layer_args(mode, 2, True, packed, True, batch=8, zoneout=True)
    torch.library.opcheck(_ops.rnn_layer.default, args)


# Which upstream gradients the backward op gets as None.
MISSING_GRADS = ["none", "grad_output", "grad_states", "grad_h_n_only"]


def backward_args(mode, directions, bias, packed, missing, need_input_grad=True) -> tuple:
    """Arguments of rnnkernels::rnn_layer_backward, in schema order, from a real forward."""
    fwd = layer_args(mode, directions, bias, packed, need_workspace=True)
    fwd = tuple(a.detach() if isinstance(a, torch.Tensor) else
                [t.detach() for t in a] if isinstance(a, list) else a for a in fwd)
    with torch.no_grad():
        output, h_n, c_n, workspace = _ops.rnn_layer(*fwd)
    op_mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes, zoneout, _ = fwd
    grad_output = None if missing == "grad_output" else _rand(*output.shape)
    grad_h_n = None if missing in ("grad_states", "grad_h_n_only") else _rand(*h_n.shape)
    grad_c_n = None
    if mode in LSTM_MODES and missing != "grad_states":
        grad_c_n = _rand(*c_n.shape)
    return (op_mode, x, weights, has_biases, has_projection, h0, c0, output, workspace,
            batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n, need_input_grad)


BACKWARD_CASES = [
    pytest.param(mode, directions, bias, packed, missing,
                 id=_case_id(mode, directions, bias, packed, f"missing_{missing}"))
    for mode in GATES
    for directions, bias, packed in [(1, True, False), (2, False, True), (2, True, True)]
    for missing in MISSING_GRADS
    if missing != "grad_h_n_only" or mode in LSTM_MODES
]
AOT_BACKWARD_CASES = [p for p in BACKWARD_CASES
                      if (p.values[1:4], p.values[4]) in [((1, True, False), "none"),
                                                          ((2, True, True), "grad_output"),
                                                          ((2, False, True), "grad_states")]]


@pytest.mark.parametrize("test_util", CHEAP_UTILS)
@pytest.mark.parametrize("mode,directions,bias,packed,missing", BACKWARD_CASES)
def test_backward_opcheck(mode, directions, bias, packed, missing, test_util):
    args = backward_args(mode, directions, bias, packed, missing)
    torch.library.opcheck(_ops.rnn_layer_backward.default, args, test_utils=test_util)


@pytest.mark.parametrize("mode", list(GATES))
def test_backward_without_input_grad_opcheck(mode):
    args = backward_args(mode, 2, True, True, "none", need_input_grad=False)
    torch.library.opcheck(_ops.rnn_layer_backward.default, args, test_utils=CHEAP_UTILS)
    assert _ops.rnn_layer_backward(*args)[0].numel() == 0


@pytest.mark.parametrize("mode,directions,bias,packed,missing", AOT_BACKWARD_CASES)
def test_backward_opcheck_aot_dispatch(mode, directions, bias, packed, missing):
    args = backward_args(mode, directions, bias, packed, missing)
    torch.library.opcheck(_ops.rnn_layer_backward.default, args, test_utils=AOT_UTIL)


# ---------------------------------------------------------------- argument checks


def test_wrong_weight_count_names_the_layout():
    args = list(layer_args("gru", 1, True, False, False))
    args[2] = args[2][:3]
    with pytest.raises(RuntimeError, match=r"expected 4 or 8 weights .*got 3"):
        _ops.rnn_layer(*args)


def test_unknown_mode_is_refused():
    args = list(layer_args("gru", 1, True, False, False))
    args[0] = "lstmx"
    with pytest.raises(RuntimeError, match="unknown mode 'lstmx'"):
        _ops.rnn_layer(*args)


@pytest.mark.parametrize("mode", ["gru", "rnn_tanh", "rnn_relu"])
def test_c0_outside_the_lstm_modes_is_refused(mode):
    args = list(layer_args(mode, 1, True, False, False))
    args[6] = _rand(*args[5].shape)
    with pytest.raises(RuntimeError, match="c0 is for the LSTM modes"):
        _ops.rnn_layer(*args)


def test_backward_after_a_forward_without_workspace_is_refused():
    args = layer_args("lstm", 1, True, False, need_workspace=True)
    args = args[:-1] + (False,)
    out = _ops.rnn_layer(*args)[0]
    with pytest.raises(RuntimeError, match="need_workspace=False"):
        out.sum().backward()
