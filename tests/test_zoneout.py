"""Zoneout (beyond torch.nn, off by default; Note [zoneout] in cell_math.h), fused in the
kernels: zoneout_h on h for RNN, GRU and LSTM, zoneout_c on LSTM's c.

The module runs our kernels; rnnkernels.reference runs the same equations one step at a
time in plain PyTorch with the same weight draws (reference.zoneout_weights, same seed).
Checked: values and every gradient against the reference in float64 over cells and
options (projection, 2 layers, bidirectional, packed, batch 1/3/9 (the fused LSTM input
path from 8), T = 1), the reference against a loop over torch.nn's cells, gradcheck,
opcheck of the ops with zoneout weights, evaluation (the expectation), reproducibility,
bfloat16, and bad arguments.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels import functional as RF
from rnnkernels import reference as R

F64 = torch.float64
I, H = 5, 6


def _module(kind, zoneout_h, zoneout_c=0.0, **kwargs):
    extra = dict(zoneout_h=zoneout_h)
    if kind == "LSTM":
        extra["zoneout_c"] = zoneout_c
    if kind == "RNN_RELU":
        kind, kwargs = "RNN", dict(kwargs, nonlinearity="relu")
    return getattr(rnnkernels, kind)(I, H, dtype=F64, **extra, **kwargs)


def _reference(module, data, hx, batch_sizes):
    """reference.<cell> on the module's weights, options and zoneout probabilities."""
    args = (module._flat_weights, module.bias, module.num_layers, module.dropout,
            module.training, module.bidirectional, False, batch_sizes)
    if isinstance(module, nn.LSTM):
        return R.lstm(data, hx, *args, zoneout_h=module.zoneout_h, zoneout_c=module.zoneout_c)
    if isinstance(module, nn.GRU):
        return R.gru(data, hx, *args, zoneout_h=module.zoneout_h)
    nonlinearity = "relu" if module.mode == "RNN_RELU" else "tanh"
    return R.rnn(data, hx, *args, nonlinearity, zoneout_h=module.zoneout_h)


def _states(module, batch):
    d = 2 if module.bidirectional else 1
    out_size = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    h0 = torch.randn(module.num_layers * d, batch, out_size, dtype=F64, requires_grad=True)
    if isinstance(module, nn.LSTM):
        c0 = torch.randn(module.num_layers * d, batch, H, dtype=F64, requires_grad=True)
        return (h0, c0), [h0, c0]
    return h0, [h0]


def _flatten(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


CASES = [
    ("LSTM", dict()),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=4, bidirectional=True)),
    ("LSTM", dict(bias=False, num_layers=2)),
    ("GRU", dict()),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(bidirectional=True)),
    ("RNN_RELU", dict(num_layers=2)),
]


def _case_id(case):
    kind, kwargs = case
    return kind + "".join(f"-{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("batch", [1, 3, 9])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_training_matches_reference_values_and_gradients(case, batch, packed):
    kind, kwargs = case
    module = _module(kind, zoneout_h=0.3, zoneout_c=0.5, **kwargs).train()
    steps = 7
    x = torch.randn(steps, batch, I, dtype=F64, requires_grad=True)
    hx, state_leaves = _states(module, batch)
    if packed:
        lengths = torch.randint(1, steps + 1, (batch,))
        lengths[0] = steps
        data_in = pack_padded_sequence(x, lengths, enforce_sorted=False)
        data, batch_sizes = data_in.data, data_in.batch_sizes
        # The module permutes hx into sorted order; the reference gets it permuted.
        perm = data_in.sorted_indices
        ref_hx = tuple(s[:, perm] for s in hx) if isinstance(hx, tuple) else hx[:, perm]
    else:
        data_in, data, batch_sizes, ref_hx = x, x, None, hx

    torch.manual_seed(7)
    out, hidden = module(data_in, hx)
    torch.manual_seed(7)
    ref = _reference(module, data, ref_hx, batch_sizes)
    ref_out, ref_hidden = ref[0], ref[1:]
    if packed:
        out = out.data
        unsort = data_in.unsorted_indices
        ref_hidden = tuple(s[:, unsort] for s in ref_hidden)
    torch.testing.assert_close(out, ref_out)
    for got, want in zip(_flatten(hidden), ref_hidden):
        torch.testing.assert_close(got, want)

    weights = [torch.randn_like(t) for t in [out, *_flatten(hidden)]]
    inputs = [x, *state_leaves, *module.parameters()]

    def loss(tensors):
        return sum((w * t).sum() for w, t in zip(weights, tensors))

    got = torch.autograd.grad(loss([out, *_flatten(hidden)]), inputs, retain_graph=True)
    want = torch.autograd.grad(loss([ref_out, *ref_hidden]), inputs)
    names = ["input"] + [f"state{i}" for i in range(len(state_leaves))] + \
        [n for n, _ in module.named_parameters()]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"grad of {name}: {m}")

    # Zoneout changed the result: the same module without it differs.
    plain = _module(kind, zoneout_h=0.0, **kwargs).train()
    plain.load_state_dict(module.state_dict())
    plain_out = plain(data_in, hx)[0]
    assert not torch.allclose(plain_out.data if packed else plain_out, out)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_single_step_and_eval(kind):
    # T = 1 runs the single-step path (the host's recurrent product); eval uses p itself.
    module = _module(kind, zoneout_h=0.4, zoneout_c=0.2, num_layers=2)
    for steps, training in ((1, True), (1, False), (6, False)):
        module.train(training)
        x = torch.randn(steps, 4, I, dtype=F64, requires_grad=True)
        hx, leaves = _states(module, 4)
        torch.manual_seed(3)
        out, hidden = module(x, hx)
        torch.manual_seed(3)
        ref = _reference(module, x, hx, None)
        torch.testing.assert_close(out, ref[0])
        got = torch.autograd.grad(out.sum() + sum(h.sum() for h in _flatten(hidden)),
                                  [x, *leaves, *module.parameters()])
        want = torch.autograd.grad(ref[0].sum() + sum(h.sum() for h in ref[1:]),
                                   [x, *leaves, *module.parameters()])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_reference_matches_a_loop_over_torch_nn_cells(kind):
    # The reference's zoneout, written independently: torch.nn's cell gives the candidate,
    # then m * prev + (1 - m) * candidate with the documented weight draws.
    torch.manual_seed(0)
    steps, batch = 5, 3
    cell = {"LSTM": nn.LSTMCell, "GRU": nn.GRUCell, "RNN": nn.RNNCell}[kind](I, H, dtype=F64)
    params = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    x = torch.randn(steps, batch, I, dtype=F64)
    h0 = torch.randn(batch, H, dtype=F64)
    c0 = torch.randn(batch, H, dtype=F64)
    p_c = 0.6 if kind == "LSTM" else None
    torch.manual_seed(1)
    keep = R.zoneout_weights(0.3, p_c, 1, steps * batch, H, H, True, x)[0]
    keep = keep.view(steps, batch, -1)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    h, c, outputs = h0, c0, []
    with torch.no_grad():
        for t in range(steps):
            if kind == "LSTM":
                h_new, c_new = cell(x[t], (h, c))
                m_h, m_c = keep[t, :, :H], keep[t, :, H:]
                h, c = m_h * h + (1 - m_h) * h_new, m_c * c + (1 - m_c) * c_new
            else:
                h_new = cell(x[t], h)
                h = keep[t] * h + (1 - keep[t]) * h_new
            outputs.append(h)
        torch.manual_seed(1)
        if kind == "LSTM":
            got, h_n, c_n = R.lstm(x, (h0[None], c0[None]), params, True, 1, 0.0, True, False,
                                   zoneout_h=0.3, zoneout_c=0.6)
            torch.testing.assert_close(c_n[0], c)
        elif kind == "GRU":
            got, h_n = R.gru(x, h0[None], params, True, 1, 0.0, True, False, zoneout_h=0.3)
        else:
            got, h_n = R.rnn(x, h0[None], params, True, 1, 0.0, True, False, zoneout_h=0.3)
    torch.testing.assert_close(got, torch.stack(outputs))
    torch.testing.assert_close(h_n[0], h)


@pytest.mark.parametrize("kind", ["LSTM", "LSTM_PROJ", "GRU", "RNN"])
def test_gradcheck(kind):
    kwargs = dict(bidirectional=True)
    if kind == "LSTM_PROJ":
        kind, kwargs = "LSTM", dict(kwargs, proj_size=3)
    module = _module(kind, zoneout_h=0.4, zoneout_c=0.3, **kwargs).train()
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)
    hx, leaves = _states(module, 2)
    params = list(module._flat_weights)

    def run(x, *tensors):
        states, weights = tensors[:len(leaves)], list(tensors[len(leaves):])
        torch.manual_seed(5)  # the same draws at every evaluation
        state = tuple(states) if kind == "LSTM" else states[0]
        common = (weights, True, 1, 0.0, True, True)
        if kind == "LSTM":
            return RF.lstm(x, state, *common, zoneout_h=0.4, zoneout_c=0.3)
        fn = RF.gru if kind == "GRU" else RF.rnn
        return fn(x, state, *common, zoneout_h=0.4)

    torch.autograd.gradcheck(run, (x, *leaves, *params))


def _op_samples(mode, batch=3, broadcast=False):
    """rnn_layer's arguments with zoneout weights: two directions, biases, the LSTM with a
    projection (output size 4)."""
    torch.manual_seed(0)
    d, steps = 2, 4
    n = steps * batch
    lstm = mode == "lstm"
    out_size = 4 if lstm else H
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[mode]
    t = lambda *s: torch.randn(*s, dtype=F64, requires_grad=True)  # noqa: E731
    width = out_size + (H if lstm else 0)
    if broadcast:  # evaluation: one row of probabilities, row stride 0
        keep = torch.full((1, 1, width), 0.25, dtype=F64).expand(d, n, width)
    else:
        keep = torch.empty(d, n, width, dtype=F64).bernoulli_(0.5)
    weights = []
    for _ in range(d):
        weights += [t(gates * H, I), t(gates * H, out_size), t(gates * H), t(gates * H)]
        if lstm:
            weights.append(t(out_size, H))
    c0 = t(d, batch, H) if lstm else None
    return (mode, t(n, I), weights, True, lstm, t(d, batch, out_size), c0, None, keep, True)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_opcheck_with_zoneout(mode):
    torch.library.opcheck(torch.ops.rnnkernels.rnn_layer, _op_samples(mode))


def test_opcheck_lstm_in_loop_projection_with_broadcast_zoneout():
    # A batch of 8: the CPU LSTM's input projection inside the time loop.
    torch.library.opcheck(torch.ops.rnnkernels.rnn_layer,
                          _op_samples("lstm", batch=8, broadcast=True))


def test_eval_is_the_expectation_and_deterministic():
    # Eval: h_t = p h_{t-1} + (1 - p) h~_t, no draws; checked through the reference, and
    # the generator is left untouched.
    module = _module("LSTM", zoneout_h=0.3, zoneout_c=0.6).eval()
    x = torch.randn(6, 2, I, dtype=F64)
    state = torch.get_rng_state()
    first = module(x)[0]
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(module(x)[0], first, rtol=0, atol=0)
    hx = (torch.zeros(1, 2, H, dtype=F64), torch.zeros(1, 2, H, dtype=F64))
    torch.testing.assert_close(first, _reference(module, x, hx, None)[0])
    keep = R.zoneout_weights(0.3, 0.6, 1, 12, H, H, False, x)
    assert keep.stride(1) == 0 and torch.equal(keep[0, 5, :H], torch.full((H,), 0.3, dtype=F64))


def test_reproducible_under_a_seed_and_fresh_draws_each_forward():
    module = _module("GRU", zoneout_h=0.5).train()
    x = torch.randn(5, 3, I, dtype=F64)
    torch.manual_seed(11)
    a = module(x)[0]
    b = module(x)[0]
    torch.manual_seed(11)
    torch.testing.assert_close(module(x)[0], a, rtol=0, atol=0)
    assert not torch.equal(a, b)


def test_zero_probability_is_exactly_torch_nn():
    theirs = nn.LSTM(I, H, num_layers=2, dtype=F64)
    ours = rnnkernels.LSTM(I, H, num_layers=2, dtype=F64, zoneout_h=0.0, zoneout_c=0.0)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, I, dtype=F64)
    torch.testing.assert_close(ours.train()(x)[0], theirs.train()(x)[0])


def test_bfloat16_close_to_float64():
    module = _module("LSTM", zoneout_h=0.3, zoneout_c=0.3, bidirectional=True).train()
    low = _module("LSTM", zoneout_h=0.3, zoneout_c=0.3, bidirectional=True).to(torch.bfloat16)
    low.load_state_dict(module.state_dict())
    low.train()
    x = torch.randn(6, 3, I, dtype=F64)
    torch.manual_seed(2)
    want = module(x)[0]
    torch.manual_seed(2)
    got = low(x.to(torch.bfloat16))[0]
    assert got.dtype == torch.bfloat16
    # bfloat16 inputs, weights and outputs (8 bits of mantissa): errors of a few 1e-3.
    assert (got.double() - want).abs().max() < 3e-2


def test_state_dict_repr_and_pickle():
    import pickle

    module = _module("LSTM", zoneout_h=0.25, zoneout_c=0.5)
    assert "zoneout_h=0.25" in repr(module) and "zoneout_c=0.5" in repr(module)
    assert set(module.state_dict()) == set(nn.LSTM(I, H).state_dict())
    clone = pickle.loads(pickle.dumps(module))
    assert (clone.zoneout_h, clone.zoneout_c) == (0.25, 0.5)
    converted = rnnkernels.convert(nn.GRU(I, H))
    assert converted.zoneout_h == 0.0  # class default: converted modules run without it


@pytest.mark.parametrize("name,value", [("zoneout_h", -0.1), ("zoneout_h", 1.0),
                                        ("zoneout_h", True), ("zoneout_c", "0.5"),
                                        ("zoneout_c", 1.5)])
def test_bad_probabilities_raise_value_error(name, value):
    with pytest.raises(ValueError, match=name):
        rnnkernels.LSTM(I, H, **{name: value})


def test_zoneout_c_is_lstm_only():
    with pytest.raises(TypeError):
        rnnkernels.GRU(I, H, zoneout_c=0.5)


@pytest.mark.parametrize("shape", [(1, 9, 2 * H), (2, 12, 2 * H), (1, 12, H)])
def test_op_rejects_zoneout_of_the_wrong_shape(shape):
    n, d = 12, 1
    weights = [torch.randn(4 * H, I, dtype=F64), torch.randn(4 * H, H, dtype=F64)]
    args = ("lstm", torch.randn(n, I, dtype=F64), weights, False, False,
            torch.zeros(d, 3, H, dtype=F64), torch.zeros(d, 3, H, dtype=F64), None)
    with pytest.raises(RuntimeError, match=r"zoneout of shape \[1, 12, 12\]"):
        torch.ops.rnnkernels.rnn_layer(*args, torch.zeros(shape, dtype=F64), True)
    with pytest.raises(RuntimeError, match="zoneout has dtype"):
        torch.ops.rnnkernels.rnn_layer(*args, torch.zeros(1, n, 2 * H), True)
