"""The CPU LSTM's input projection inside the time loop: rnn_layer in mode lstm projects x
inside the loop for float32/float64 from a batch of 8; smaller batches, one-step sequences
and other dtypes project first (one GEMM) and run the x_proj recurrence.

Checked against that two-step composition through the CPU test hooks
(rnnkernels._C._cpu_recurrence), values and workspace; against the float64 reference,
every gradient; gradcheck in float64. Batches 8 and 9 take the in-loop projection, batch 2
the composition inside the op.
"""

import pytest
import torch

import rnnkernels
from rnnkernels import _C, reference

_ops = torch.ops.rnnkernels
_cpu = _C._cpu_recurrence
F64 = torch.float64
HIDDEN, PROJ = 5, 3


def layer_args(batch, directions, bias, proj, packed, input_size=7, dtype=F64, grad=True,
               need_workspace=True, steps=4):
    """rnn_layer's arguments (mode lstm) and the per-direction weights."""
    def rand(*shape):
        return (0.5 * torch.randn(*shape, dtype=dtype)).requires_grad_(grad)

    if packed:
        # lengths steps, steps, ..., down to 1: batch_sizes[0] == batch
        lengths = torch.linspace(steps, 1, batch).round().long()
        batch_sizes = torch.tensor([int((lengths > t).sum()) for t in range(steps)])
        rows = int(batch_sizes.sum())
    else:
        batch_sizes, rows = None, steps * batch
    P = PROJ if proj else HIDDEN
    x = rand(rows, input_size)
    dirs = [dict(w_ih=rand(4 * HIDDEN, input_size), w_hh=rand(4 * HIDDEN, P),
                 b_ih=rand(4 * HIDDEN) if bias else None, b_hh=rand(4 * HIDDEN) if bias else None,
                 w_hr=rand(P, HIDDEN) if proj else None) for _ in range(directions)]
    weights = [w[k] for w in dirs for k in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
               if w[k] is not None]
    h0 = rand(directions, batch, P)
    c0 = rand(directions, batch, HIDDEN)
    args = ("lstm", x, weights, bias, proj, h0, c0, batch_sizes, None, need_workspace)
    return args, dirs


def composed(args, dirs):
    """The two steps the op fuses: one GEMM for x_proj, then the x_proj recurrence."""
    _, x, _, bias, _, h0, c0, batch_sizes, _, need_workspace = args
    keys = lambda k: [w[k] for w in dirs] if dirs[0][k] is not None else []  # noqa: E731
    x_proj = _cpu.input_projection(x, keys("w_ih"), keys("b_ih"))
    return _cpu.lstm_forward(x_proj, keys("w_hh"), keys("b_hh"), keys("w_hr"), h0, c0,
                             batch_sizes, need_workspace)


def _sizes(args):
    x, h0, batch_sizes = args[1], args[5], args[7]
    if batch_sizes is None:
        return [h0.shape[1]] * (x.shape[0] // h0.shape[1])
    return [int(b) for b in batch_sizes]


def _leaves(args):
    return [args[1], *args[2], args[5], args[6]]


CASES = [
    pytest.param(batch, directions, bias, proj, packed,
                 id=f"B{batch}-D{directions}-{'bias' if bias else 'nobias'}"
                    f"{'-proj' if proj else ''}-{'packed' if packed else 'dense'}")
    for batch in (2, 8, 9)
    for directions in (1, 2)
    for bias in (True, False)
    for proj in (False, True)
    for packed in (False, True)
]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("batch,directions,bias,proj,packed", CASES)
def test_matches_composition_and_reference(batch, directions, bias, proj, packed, dtype):
    args, dirs = layer_args(batch, directions, bias, proj, packed, dtype=dtype)
    ours = _ops.rnn_layer(*args)
    with torch.no_grad():
        two_steps = composed(args, dirs)
    # The in-loop tile sums x W_ih^T and h W_hh^T in one accumulator, the composition in
    # two: equal up to float rounding, not bitwise. The workspace (gates, c) too.
    tol = {} if dtype == F64 else dict(rtol=1e-5, atol=1e-5)
    for g, w in zip(ours, two_steps):
        torch.testing.assert_close(g, w, **tol)
    # Every gradient against the float64 reference on the same (rounded) values.
    leaves64 = [t.detach().double().requires_grad_(True) for t in _leaves(args)]
    weights64 = iter(leaves64[1:-2])
    dirs64 = [{k: None if v is None else next(weights64) for k, v in w.items()} for w in dirs]
    expected = reference.run_layer("lstm", leaves64[0], dirs64, leaves64[-2], leaves64[-1],
                                   _sizes(args))
    upstream = [torch.randn_like(t, dtype=F64) for t in expected]
    got_grads = torch.autograd.grad(ours[:3], _leaves(args), [u.to(dtype) for u in upstream])
    want_grads = torch.autograd.grad(expected, leaves64, upstream)
    for g, w in zip(ours[:3], expected):
        torch.testing.assert_close(g.double(), w, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, **tol)


@pytest.mark.parametrize("input_size", [7, 260], ids=["I7", "I260"])
@pytest.mark.parametrize("directions,proj,packed", [(1, False, False), (2, True, True)])
def test_gradcheck(directions, proj, packed, input_size):
    args, _ = layer_args(8, directions, True, proj, packed, input_size=input_size, steps=3)
    n = len(args[2])

    def fn(x, h0, c0, *weights):
        return _ops.rnn_layer("lstm", x, list(weights), True, proj, h0, c0, args[7], None,
                              True)[:3]

    assert torch.autograd.gradcheck(fn, (args[1], args[5], args[6], *args[2]))
    assert n == directions * (5 if proj else 4)


@pytest.mark.parametrize("batch", [2, 8])
def test_opcheck(batch):
    args, _ = layer_args(batch, 2, True, True, True)
    torch.library.opcheck(_ops.rnn_layer.default, args)


def test_forward_without_workspace_cannot_be_differentiated():
    args, _ = layer_args(8, 1, True, False, False, need_workspace=False)
    out = _ops.rnn_layer(*args)[0]
    with pytest.raises(RuntimeError, match="workspace"):
        out.sum().backward()


@pytest.mark.parametrize("bad,match", [
    ("w_ih_shape", r"w_ih\[0\]"),
    ("weight_count", "expected 4 or 8 weights"),
    ("b_ih_shape", r"b_ih\[0\]"),
    ("x_rank", "expected x of shape"),
])
def test_bad_arguments_raise(bad, match):
    args, _ = layer_args(8, 2, True, False, False, grad=False)
    args = list(args)
    if bad == "w_ih_shape":
        args[2] = [torch.randn(4 * HIDDEN, 6, dtype=F64)] + args[2][1:]
    elif bad == "weight_count":
        args[2] = args[2][:7]
    elif bad == "b_ih_shape":
        args[2] = args[2][:2] + [torch.randn(4 * HIDDEN + 1, dtype=F64)] + args[2][3:]
    else:
        args[1] = args[1][None]
    with pytest.raises(RuntimeError, match=match):
        _ops.rnn_layer(*args)


def test_bias_gradients_are_equal_but_never_share_storage():
    # The backward copies grad b_hh into grad b_ih (equal by the gate math).
    module = rnnkernels.LSTM(7, HIDDEN, bidirectional=True).double()
    x = torch.randn(4, 8, 7, dtype=F64)
    for _ in range(2):  # the second pass accumulates into the first pass's .grad
        module(x)[0].sum().backward()
    for suffix in ("l0", "l0_reverse"):
        g_ih = getattr(module, f"bias_ih_{suffix}").grad
        g_hh = getattr(module, f"bias_hh_{suffix}").grad
        assert g_ih.data_ptr() != g_hh.data_ptr()
        torch.testing.assert_close(g_ih, g_hh)
    reference = torch.nn.LSTM(7, HIDDEN, bidirectional=True).double()
    reference.load_state_dict(module.state_dict())
    for _ in range(2):
        reference(x)[0].sum().backward()
    for (name, p), q in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
