"""The layer-normalised LSTM (beyond torch.nn, off by default; Note [layer-normalised
LSTM] in cell_math.h), fused in the kernels: LSTM(..., layer_norm=True).

The module runs our kernels (the recurrent product's and the cell state's LayerNorm
inside the time loop); rnnkernels.reference runs the same equations one step at a time
with torch's own F.layer_norm, and is itself checked against a loop written here from
torch.nn.LayerNorm modules and the paper's equations. Checked: values and every gradient
(input, h0, c0, every weight and LayerNorm parameter) against the reference in float64
over layers, directions, bias, batch_first, packed and unbatched input, odd sizes, T = 1
and batch 1; float32 and bfloat16 against float64; gradcheck and opcheck of the ops;
construction, parameters, state_dict, repr and bad arguments; torch.compile; determinism.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from rnnkernels import reference as R

F64 = torch.float64


def _module(input_size=5, hidden_size=6, dtype=F64, **kwargs):
    module = rnnkernels.LSTM(input_size, hidden_size, layer_norm=True, dtype=dtype, **kwargs)
    with torch.no_grad():  # away from the initial 1 and 0, so every parameter matters
        for name, p in module.named_parameters():
            if name.startswith("layer_norm_"):
                p.copy_(torch.rand_like(p) + 0.5 if "_weight_" in name else torch.randn_like(p))
    return module


def _layer_norm_params(module):
    return [getattr(module, name) for name, _ in module._layer_norm_shapes()]


def _reference(module, data, hx, batch_sizes=None, batch_first=False):
    return R.lstm(data, hx, module._flat_weights, module.bias, module.num_layers,
                  module.dropout, module.training, module.bidirectional, batch_first,
                  batch_sizes, layer_norm=_layer_norm_params(module))


def _states(module, batch, dtype=F64):
    d = 2 if module.bidirectional else 1
    shape = (module.num_layers * d, batch, module.hidden_size)
    return (torch.randn(shape, dtype=dtype, requires_grad=True),
            torch.randn(shape, dtype=dtype, requires_grad=True))


def _compare_grads(results_ours, results_ref, leaves):
    grads = [torch.randn_like(r) for r in results_ref]
    # retain_graph: both sides may share ops before the LSTM (packing).
    ours = torch.autograd.grad(results_ours, leaves, grads, allow_unused=True, retain_graph=True)
    ref = torch.autograd.grad(results_ref, leaves, grads, allow_unused=True)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a is not None and b is not None, f"gradient {i} missing"
        torch.testing.assert_close(a, b, msg=lambda m: f"gradient {i}: {m}")


# ---------------------------------------------------------------- the reference itself


def _paper_loop(x, h, c, w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c):
    """Ba et al. (2016) eq. 20-22 with torch.nn.LayerNorm modules, x [T, B, I]."""
    outputs = []
    for x_t in x:
        gates = ln_ih(x_t @ w_ih.t()) + ln_hh(h @ w_hh.t()) + b_ih + b_hh
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(ln_c(c))
        outputs.append(h)
    return torch.stack(outputs), h, c


def test_reference_matches_the_papers_equations_with_torch_layernorm():
    H, I, T, B = 7, 4, 5, 3
    module = _module(I, H)
    ln_ih, ln_hh = nn.LayerNorm(4 * H, dtype=F64), nn.LayerNorm(4 * H, dtype=F64)
    ln_c = nn.LayerNorm(H, dtype=F64)
    with torch.no_grad():
        ln_ih.weight.copy_(module.layer_norm_ih_weight_l0)
        ln_hh.weight.copy_(module.layer_norm_hh_weight_l0)
        ln_ih.bias.zero_()
        ln_hh.bias.zero_()
        ln_c.weight.copy_(module.layer_norm_c_weight_l0)
        ln_c.bias.copy_(module.layer_norm_c_bias_l0)
    x = torch.randn(T, B, I, dtype=F64)
    (h0, c0) = _states(module, B)
    expected = _paper_loop(x, h0[0], c0[0], module.weight_ih_l0, module.weight_hh_l0,
                           module.bias_ih_l0, module.bias_hh_l0, ln_ih, ln_hh, ln_c)
    out, h_n, c_n = _reference(module, x, (h0, c0))
    torch.testing.assert_close(out, expected[0])
    torch.testing.assert_close(h_n[0], expected[1])
    torch.testing.assert_close(c_n[0], expected[2])


# ---------------------------------------------------------------- kernels vs reference

CASES = {
    "plain": dict(),
    "2layers_bi": dict(num_layers=2, bidirectional=True),
    "no_bias": dict(bias=False, bidirectional=True),
    "odd_sizes": dict(input_size=33, hidden_size=17),
    "dropout_eval": dict(num_layers=2, dropout=0.5),
}


@pytest.mark.parametrize("steps,batch", [(6, 3), (1, 4), (9, 1), (4, 20)],
                         ids=["T6B3", "T1", "B1", "B20"])
@pytest.mark.parametrize("case", list(CASES))
def test_dense_matches_reference_values_and_every_gradient(case, steps, batch):
    module = _module(**CASES[case]).eval()
    x = torch.randn(steps, batch, module.input_size, dtype=F64, requires_grad=True)
    hx = _states(module, batch)
    out, (h_n, c_n) = module(x, hx)
    ref = _reference(module, x, hx)
    torch.testing.assert_close(out, ref[0])
    torch.testing.assert_close(h_n, ref[1])
    torch.testing.assert_close(c_n, ref[2])
    _compare_grads([out, h_n, c_n], list(ref), [x, *hx, *module.parameters()])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_packed_unsorted_matches_reference(bidirectional):
    module = _module(num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(4, 7, module.input_size, dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    hx = _states(module, 4)
    out, (h_n, c_n) = module(packed, hx)
    # The reference on the sorted rows, with the states permuted as the module does.
    order = packed.sorted_indices
    ref_out, ref_h, ref_c = _reference(module, packed.data,
                                       (hx[0][:, order], hx[1][:, order]), packed.batch_sizes)
    inverse = packed.unsorted_indices
    torch.testing.assert_close(out.data, ref_out)
    torch.testing.assert_close(h_n, ref_h[:, inverse])
    torch.testing.assert_close(c_n, ref_c[:, inverse])
    _compare_grads([out.data, h_n, c_n], [ref_out, ref_h[:, inverse], ref_c[:, inverse]],
                   [x, *hx, *module.parameters()])
    padded, _ = pad_packed_sequence(out, batch_first=True)
    assert padded.shape == (4, 7, module.hidden_size * (2 if bidirectional else 1))


def test_batch_first_and_unbatched_input():
    module = _module(batch_first=True)
    x = torch.randn(2, 5, module.input_size, dtype=F64)
    out, (h_n, c_n) = module(x)
    ref = _reference(module, x, (torch.zeros(1, 2, 6, dtype=F64),) * 2, batch_first=True)
    torch.testing.assert_close(out, ref[0])
    single, (h1, c1) = module(x[1])  # unbatched [T, I] (batch_first has no effect)
    torch.testing.assert_close(single, out[1])
    torch.testing.assert_close(h1, h_n[:, 1])
    torch.testing.assert_close(c1, c_n[:, 1])


def test_training_dropout_between_layers_matches_reference_under_one_seed():
    module = _module(num_layers=3, dropout=0.4).train()
    x = torch.randn(5, 3, module.input_size, dtype=F64, requires_grad=True)
    hx = _states(module, 3)
    torch.manual_seed(7)
    out, (h_n, _) = module(x, hx)
    torch.manual_seed(7)
    ref = _reference(module, x, hx)
    torch.testing.assert_close(out, ref[0])
    torch.testing.assert_close(h_n, ref[1])


def test_float32_and_bfloat16_against_float64():
    module64 = _module(input_size=12, hidden_size=32, num_layers=2, bidirectional=True)
    x = torch.randn(20, 8, 12, dtype=F64)
    expected = module64(x)[0]
    module32 = copy.deepcopy(module64).float()
    torch.testing.assert_close(module32(x.float())[0], expected.float())
    # bfloat16: our error at most twice that of the reference computed in bfloat16.
    module16 = copy.deepcopy(module64).bfloat16()
    ours = module16(x.bfloat16())[0].double()
    ref16 = _reference(module16, x.bfloat16(),
                       (torch.zeros(4, 8, 32, dtype=torch.bfloat16),) * 2)[0].double()
    ours_error = (ours - expected).abs().max().item()
    ref_error = (ref16 - expected).abs().max().item()
    assert ours_error <= 2 * ref_error, (ours_error, ref_error)


# ---------------------------------------------------------------- ops


def _op_inputs(D=2, B=3, H=4, T=3, I=5, bias=True, packed=False):
    """rnn_layer's arguments in mode ln_lstm: x, then per direction w_ih, w_hh, [b_ih, b_hh],
    ln_ih, ln_hh, ln_c_weight, [ln_c_bias]."""
    g = lambda *shape, low=None: (torch.rand(*shape, dtype=F64) + 0.5 if low else  # noqa: E731
                                  torch.randn(*shape, dtype=F64)).requires_grad_()
    batch_sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    N = int(batch_sizes.sum()) if packed else T * B
    weights = []
    for _ in range(D):
        weights += [g(4 * H, I), g(4 * H, H)]
        if bias:
            weights += [g(4 * H), g(4 * H)]
        weights += [g(4 * H, low=True), g(4 * H, low=True), g(H, low=True)]
        if bias:
            weights.append(g(H))
    return ["ln_lstm", g(N, I), weights, bias, False, g(D, B, H), g(D, B, H), batch_sizes, None,
            True]


@pytest.mark.parametrize("D,bias,packed", [(1, True, False), (2, True, True), (2, False, False)],
                         ids=["uni", "bi_packed", "bi_nobias"])
def test_gradcheck(D, bias, packed):
    # Through the host's layer-normalised input side too: x, W_ih, b_ih, b_hh and LN_ih.
    args = _op_inputs(D, bias=bias, packed=packed)

    def run(x, h0, c0, *weights):
        out, h_n, c_n, _ = torch.ops.rnnkernels.rnn_layer(
            "ln_lstm", x, list(weights), bias, False, h0, c0, args[7], None, True)
        return out, h_n, c_n

    assert torch.autograd.gradcheck(run, (args[1], args[5], args[6], *args[2]))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    args = _op_inputs(bias=bias, packed=True)
    torch.library.opcheck(torch.ops.rnnkernels.rnn_layer.default, args)
    with torch.no_grad():
        out, h_n, c_n, ws = torch.ops.rnnkernels.rnn_layer(*args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else
                [t.detach() for t in a] if isinstance(a, list) else a for a in args]
    backward_args = (*detached[:7], out, ws, detached[7], None, torch.randn_like(out),
                     torch.randn_like(h_n), torch.randn_like(c_n), True)
    torch.library.opcheck(torch.ops.rnnkernels.rnn_layer_backward.default, backward_args)


def test_op_rejects_wrong_layer_norm_shapes():
    args = _op_inputs()
    weights = args[2]  # per direction: w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c, ln_c_bias

    def run(changed):
        torch.ops.rnnkernels.rnn_layer(*args[:2], changed, *args[3:9], False)

    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"ln_hh_weight\[1\] of shape \[16\], got \[15\]"):
            run(weights[:13] + [weights[13][:15]] + weights[14:])
        with pytest.raises(RuntimeError, match=r"expected 8 or 16 weights .*got 15"):
            run(weights[:15])
        with pytest.raises(RuntimeError, match="ln_c_weight has dtype Float"):
            run(weights[:6] + [weights[6].float()] + weights[7:])


def test_deterministic_run_to_run():
    module = _module(input_size=16, hidden_size=64, num_layers=2, dtype=torch.float32)
    x = torch.randn(30, 16, 16, requires_grad=True)
    results = []
    for _ in range(2):
        module.zero_grad()
        x.grad = None
        out, (h_n, c_n) = module(x)
        (out.square().sum() + h_n.sum() + c_n.sum()).backward()
        results.append([out, x.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- module


def test_parameters_state_dict_and_repr():
    module = rnnkernels.LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True)
    names = [n for n, _ in module.named_parameters() if n.startswith("layer_norm_")]
    assert names[:4] == ["layer_norm_ih_weight_l0", "layer_norm_hh_weight_l0",
                         "layer_norm_c_weight_l0", "layer_norm_c_bias_l0"]
    assert names[-1] == "layer_norm_c_bias_l1_reverse" and len(names) == 16
    assert torch.equal(module.layer_norm_hh_weight_l1, torch.ones(16))
    assert torch.equal(module.layer_norm_c_bias_l0_reverse, torch.zeros(4))
    # torch.nn's weights stay torch.nn's: _flat_weights and their names are unchanged.
    assert module._flat_weights_names == nn.LSTM(3, 4, num_layers=2,
                                                 bidirectional=True)._flat_weights_names
    module.reset_parameters()
    assert torch.equal(module.layer_norm_c_weight_l1, torch.ones(4))
    assert "layer_norm=True" in repr(module)
    other = rnnkernels.LSTM(3, 4, num_layers=2, bidirectional=True, layer_norm=True)
    other.load_state_dict(module.state_dict())
    x = torch.randn(5, 2, 3)
    assert torch.equal(other(x)[0], module(x)[0])
    # A torch.nn checkpoint loads into the recurrent weights, LayerNorm parameters missing.
    missing, unexpected = other.load_state_dict(
        nn.LSTM(3, 4, num_layers=2, bidirectional=True).state_dict(), strict=False)
    assert sorted(missing) == sorted(names) and unexpected == []
    assert not rnnkernels.LSTM(3, 4, bias=False, layer_norm=True).__dict__.get("bias", True)
    assert not any("bias" in n for n, _ in
                   rnnkernels.LSTM(3, 4, bias=False, layer_norm=True).named_parameters())


def test_layer_norm_changes_the_result_and_off_is_exactly_torch_nn():
    torch.manual_seed(0)
    plain = rnnkernels.LSTM(4, 5)
    normed = rnnkernels.LSTM(4, 5, layer_norm=True)
    normed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(6, 2, 4)
    assert not torch.allclose(plain(x)[0], normed(x)[0])
    reference = nn.LSTM(4, 5)
    reference.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain(x)[0], reference(x)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="neither proj_size nor zoneout.*proj_size=2"):
        rnnkernels.LSTM(3, 4, proj_size=2, layer_norm=True)
    with pytest.raises(ValueError, match="zoneout_h=0.1"):
        rnnkernels.LSTM(3, 4, zoneout_h=0.1, layer_norm=True)
    with pytest.raises(TypeError, match="layer_norm must be a bool"):
        rnnkernels.LSTM(3, 4, layer_norm=1)
    module = rnnkernels.LSTM(3, 4, layer_norm=True)
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        module(torch.randn(5, 2, 7))
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k])
    assert module(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)


def test_torch_compile_fullgraph_training_matches_eager():
    module = _module(input_size=4, hidden_size=8, num_layers=2, dtype=torch.float32)
    x = torch.randn(5, 3, 4, requires_grad=True)

    def step(m, x):
        out, (h, c) = m(x)
        return out.square().mean() + h.sum() + c.sum()

    eager = step(module, x)
    eager_grads = torch.autograd.grad(eager, [x, *module.parameters()])
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    # allow_rnn: dynamo refuses nn.LSTM subclasses without it (tests/test_compile.py).
    with torch._dynamo.config.patch(allow_rnn=True):
        loss = compiled(module, x)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    torch.testing.assert_close(loss, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_cpu_bfloat16_autocast():
    """Under CPU bfloat16 autocast the result dtypes follow a dense LSTM's (bfloat16, Note
    [autocast]) and the error against float64 stays within twice the reference's own
    error when it runs on bfloat16-rounded weights and input."""
    module = _module(input_size=12, hidden_size=32, num_layers=2, dtype=torch.float32)
    x = torch.randn(20, 8, 12)
    expected = copy.deepcopy(module).double()(x.double())[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = module(x)
    assert out.dtype == h_n.dtype == c_n.dtype == torch.bfloat16
    module16 = copy.deepcopy(module).bfloat16()
    ref16 = _reference(module16, x.bfloat16(),
                       (torch.zeros(2, 8, 32, dtype=torch.bfloat16),) * 2)[0].double()
    ours_error = (out.double() - expected).abs().max().item()
    ref_error = (ref16 - expected).abs().max().item()
    assert ours_error <= 2 * ref_error, (ours_error, ref_error)
