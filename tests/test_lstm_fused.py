"""rnnkernels::lstm_forward_fused: the LSTM forward that runs the input projection inside
the time loop (CPU float32/float64 from a batch of 8; smaller batches, one-step sequences
and other dtypes go through input_projection + lstm_forward).

Checked against that two-op composition, values and gradients; gradcheck in float64;
opcheck. Batches 8 and 9 take the fused kernel, batch 2 the composition inside the op.
"""

import pytest
import torch

import rnnkernels  # noqa: F401

_ops = torch.ops.rnnkernels
F64 = torch.float64
HIDDEN, PROJ = 5, 3


def fused_args(batch, directions, bias, proj, packed, input_size=7, dtype=F64, grad=True,
               need_workspace=True, steps=4):
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
    w_ih = [rand(4 * HIDDEN, input_size) for _ in range(directions)]
    b_ih = [rand(4 * HIDDEN) for _ in range(directions)] if bias else []
    w_hh = [rand(4 * HIDDEN, P) for _ in range(directions)]
    b_hh = [rand(4 * HIDDEN) for _ in range(directions)] if bias else []
    w_hr = [rand(P, HIDDEN) for _ in range(directions)] if proj else []
    h0 = rand(directions, batch, P)
    c0 = rand(directions, batch, HIDDEN)
    return (x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace)


def composed(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace):
    x_proj = _ops.input_projection(x, w_ih, b_ih)
    return _ops.lstm_forward(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace)


def _leaves(args):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.requires_grad:
            out.append(a)
        elif isinstance(a, list):
            out.extend(a)
    return out


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
def test_matches_composition(batch, directions, bias, proj, packed, dtype):
    args = fused_args(batch, directions, bias, proj, packed, dtype=dtype)
    ours = _ops.lstm_forward_fused(*args)[:3]
    want = composed(*args)[:3]
    upstream = [torch.randn_like(t) for t in want]
    leaves = _leaves(args)
    got_grads = torch.autograd.grad(ours, leaves, upstream)
    want_grads = torch.autograd.grad(want, leaves, upstream)
    # The fused tile sums x W_ih^T and h W_hh^T in one accumulator, the composition in two:
    # equal up to float rounding, not bitwise.
    tol = {} if dtype == F64 else dict(rtol=1e-5, atol=1e-5)
    for g, w in zip(ours, want):
        torch.testing.assert_close(g, w, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("input_size", [7, 260], ids=["I7", "I260"])
@pytest.mark.parametrize("directions,proj,packed", [(1, False, False), (2, True, True)])
def test_gradcheck(directions, proj, packed, input_size):
    args = fused_args(8, directions, True, proj, packed, input_size=input_size, steps=3)
    tensors = _leaves(args)
    structure = [len(a) if isinstance(a, list) else None for a in args]

    def fn(*flat):
        it = iter(flat)
        rebuilt = []
        for a, n in zip(args, structure):
            if n is not None:
                rebuilt.append([next(it) for _ in range(n)])
            elif isinstance(a, torch.Tensor) and a.requires_grad:
                rebuilt.append(next(it))
            else:
                rebuilt.append(a)
        return _ops.lstm_forward_fused(*rebuilt)[:3]

    assert torch.autograd.gradcheck(fn, tuple(tensors))


OPCHECK_CASES = [
    pytest.param(batch, directions, bias, proj, packed, need_workspace,
                 id=f"B{batch}-D{directions}-{'bias' if bias else 'nobias'}"
                    f"{'-proj' if proj else ''}-{'packed' if packed else 'dense'}-"
                    f"{'workspace' if need_workspace else 'noworkspace'}")
    for batch in (2, 8)
    for directions, bias, proj, packed in [(1, True, False, False), (2, False, True, True),
                                           (2, True, True, False)]
    for need_workspace in (True, False)
]


@pytest.mark.parametrize("test_util",
                         ["test_schema", "test_autograd_registration", "test_faketensor"])
@pytest.mark.parametrize("batch,directions,bias,proj,packed,need_workspace", OPCHECK_CASES)
def test_opcheck(batch, directions, bias, proj, packed, need_workspace, test_util):
    args = fused_args(batch, directions, bias, proj, packed, grad=need_workspace,
                      need_workspace=need_workspace)
    torch.library.opcheck(_ops.lstm_forward_fused.default, args, test_utils=test_util)


@pytest.mark.parametrize("batch", [2, 8])
def test_opcheck_aot_dispatch(batch):
    args = fused_args(batch, 2, True, True, True)
    torch.library.opcheck(_ops.lstm_forward_fused.default, args,
                          test_utils="test_aot_dispatch_dynamic")


def test_forward_without_workspace_cannot_be_differentiated():
    args = fused_args(8, 1, True, False, False, need_workspace=False)
    out = _ops.lstm_forward_fused(*args)[0]
    with pytest.raises(RuntimeError, match="workspace"):
        out.sum().backward()


@pytest.mark.parametrize("bad,match", [
    ("w_ih_shape", r"w_ih\[0\]"),
    ("w_ih_count", "w_ih has 1 weights but w_hh has 2"),
    ("b_ih_shape", r"b_ih\[0\]"),
    ("x_rank", "expected x of shape"),
])
def test_bad_arguments_raise(bad, match):
    args = list(fused_args(8, 2, True, False, False, grad=False))
    if bad == "w_ih_shape":
        args[1] = [torch.randn(4 * HIDDEN, 6, dtype=F64), args[1][1]]
    elif bad == "w_ih_count":
        args[1] = args[1][:1]
    elif bad == "b_ih_shape":
        args[2] = [torch.randn(4 * HIDDEN + 1, dtype=F64), args[2][1]]
    else:
        args[0] = args[0][None]
    with pytest.raises(RuntimeError, match=match):
        _ops.lstm_forward_fused(*args)


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
