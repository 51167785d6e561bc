"""torch.func transforms, forward-mode AD and batched gradients on our kernels.

Under a transform or a forward-AD tangent the layers and cells run the op pair through
rnnkernels/_transforms.py (Note [transforms]); vmap folds into the batch or loops
(rnnkernels/_vmap.py, Note [vmap rules]); torch's legacy vmap, which batched gradients use,
loops in csrc/legacy_batching.cpp. Every result is checked against float64 torch.nn (or,
where torch.nn has none, such as vmap over its forward, against a loop over samples), and
that our kernels ran.
"""

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import rnnkernels
from equivalence import assert_matches, module_pair

NAMES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
LAYER_OPTIONS = {"LSTM": dict(num_layers=2, bidirectional=True), "GRU": dict(bidirectional=True),
                 "RNN": dict(nonlinearity="relu", num_layers=2)}
F64 = torch.float64


def _pair(name, dtype, **kwargs):
    """(torch.nn in float64, ours in dtype), input size 5, hidden size 7."""
    torch.manual_seed(0)
    options = {**LAYER_OPTIONS.get(name, {}), **kwargs}
    return module_pair(name, dtype, golden_dtype=F64, input_size=5, hidden_size=7, **options)


def _input(name, dtype, batch=3):
    torch.manual_seed(1)
    shape = (batch, 5) if "Cell" in name else (4, batch, 5)
    return torch.randn(*shape, dtype=F64).to(dtype)


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def _ran_kernels(fn):
    """fn's result, asserting the op pair ran (forward and backward)."""
    with torch.autograd.profiler.profile() as prof:
        result = fn()
    names = {event.name for event in prof.function_events}
    assert "rnnkernels::rnn_layer" in names, sorted(names)
    return result, names


def _params(module, dtype=None):
    return {k: v.detach().to(dtype or v.dtype) for k, v in module.named_parameters()}


def _loss(module):
    return lambda p, x: _first(functional_call(module, p, (x,))).pow(2).sum()


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_func_grad_runs_our_kernels(name, dtype):
    golden, ours = _pair(name, dtype)
    x = _input(name, dtype)
    expected = grad(_loss(golden))(_params(golden), x.double())
    actual, names = _ran_kernels(lambda: grad(_loss(ours))(_params(ours), x))
    assert "rnnkernels::rnn_layer_backward" in names
    assert expected.keys() == actual.keys()
    for key in expected:
        assert actual[key].dtype == dtype
        assert_matches(key, actual[key], expected[key], dtype)


@pytest.mark.parametrize("name", NAMES)
def test_func_vjp_and_jvp_match_torch_nn(name):
    golden, ours = _pair(name, F64)
    x = _input(name, F64)
    tangent = torch.randn_like(x)
    results = {}
    for label, module in (("golden", golden), ("ours", ours)):
        out, pullback = vjp(lambda v: _first(module(v)), x)
        results[label] = (pullback(torch.ones_like(out))[0],
                          jvp(lambda v: _first(module(v)), (x,), (tangent,))[1])
    for got, want in zip(results["ours"], results["golden"]):
        assert_matches(name, got, want, F64)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_ad_runs_our_kernels(name, dtype):
    # torch.nn's float32 CPU LSTM (oneDNN) has no forward AD; ours has, in every dtype.
    golden, ours = _pair(name, dtype)
    x = _input(name, dtype)
    tangent = torch.randn_like(x)
    tangents = {}
    for label, module, dt in (("golden", golden, F64), ("ours", ours, dtype)):
        def run(module=module, dt=dt):
            with forward_ad.dual_level():
                out = _first(module(forward_ad.make_dual(x.to(dt), tangent.to(dt))))
                return forward_ad.unpack_dual(out).tangent
        tangents[label] = _ran_kernels(run)[0] if label == "ours" else run()
    assert tangents["ours"].dtype == dtype
    assert_matches(name, tangents["ours"], tangents["golden"], dtype)


def test_tangent_on_a_parameter_only():
    golden, ours = _pair("GRU", F64)
    x = _input("GRU", F64)
    tangents = []
    for module in (golden, ours):
        with forward_ad.dual_level():
            weight = module.weight_hh_l0
            dual = forward_ad.make_dual(weight.detach(), torch.ones_like(weight))
            out = functional_call(module, {"weight_hh_l0": dual}, (x,))[0]
            tangents.append(forward_ad.unpack_dual(out).tangent)
    assert_matches("tangent", tangents[1], tangents[0], F64)


@pytest.mark.parametrize("name", NAMES)
def test_jacfwd_jacrev_and_hessian_match_torch_nn(name):
    golden, ours = _pair(name, F64)
    x = _input(name, F64, batch=2)[:2] if "Cell" not in name else _input(name, F64, batch=2)
    for transform in (jacfwd, jacrev):
        expected = torch.autograd.functional.jacobian(lambda v: _first(golden(v)), x)
        actual = _ran_kernels(lambda: transform(lambda v: _first(ours(v)))(x))[0]
        assert_matches(transform.__name__, actual, expected, F64)
    square = lambda module: (lambda v: _first(module(v)).pow(2).sum())  # noqa: E731
    expected = torch.autograd.functional.hessian(square(golden), x)
    actual = _ran_kernels(lambda: hessian(square(ours))(x))[0]
    assert_matches("hessian", actual, expected, F64)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell"])
def test_per_sample_gradients_equal_a_loop(name):
    # vmap(grad(loss)): what differential-privacy training computes; each sample is its own
    # batch of one, and its gradient must equal an ordinary backward on that sample alone.
    _, ours = _pair(name, F64, **({"batch_first": True} if name == "GRU" else {}))
    x = _input(name, F64, batch=4)
    batch_dim = 0 if ("Cell" in name or name == "GRU") else 1
    if name == "GRU":
        x = x.transpose(0, 1).contiguous()
    params = _params(ours)

    def sample_loss(p, sample):
        return _first(functional_call(ours, p, (sample.unsqueeze(batch_dim),))).pow(2).sum()

    per_sample = _ran_kernels(lambda: vmap(grad(sample_loss), in_dims=(None, batch_dim))(params, x))[0]
    for b in range(x.shape[batch_dim]):
        sample = x.select(batch_dim, b).unsqueeze(batch_dim)
        loss = _first(ours(sample)).pow(2).sum()
        expected = torch.autograd.grad(loss, list(ours.parameters()))
        for (key, _), e in zip(ours.named_parameters(), expected):
            torch.testing.assert_close(per_sample[key][b], e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, packed", [(name, False) for name in ("LSTM", "GRU", "RNN",
                                                                       "LSTMCell", "RNNCell")]
                         + [(name, True) for name in ("LSTM", "GRU", "RNN")])
def test_vmap_over_the_forward_equals_a_loop(name, packed):
    # torch.nn has no batching rule for its RNN ops; ours folds the vmapped dimension into
    # the batch (Note [vmap rules]): one kernel call, each sample's result as if alone.
    _, ours = _pair(name, F64, **({"proj_size": 3} if name == "LSTM" else {}))
    torch.manual_seed(3)
    xs = torch.randn(5, *_input(name, F64).shape, dtype=F64)
    if packed:
        # The samples share one step structure (batch_sizes); each has its own data.
        batch_sizes = nn.utils.rnn.pack_padded_sequence(xs[0], [4, 2, 1]).batch_sizes
        xs = torch.stack([nn.utils.rnn.pack_padded_sequence(x, [4, 2, 1]).data for x in xs])

    def run(x):
        if packed:
            out, state = ours(nn.utils.rnn.PackedSequence(x, batch_sizes))
            return out.data, state
        return ours(x)

    with torch.autograd.profiler.profile() as prof:
        batched = vmap(run)(xs)
    calls = [e for e in prof.function_events if e.name == "rnnkernels::rnn_layer"]
    layers = LAYER_OPTIONS.get(name, {}).get("num_layers", 1)
    # Folded: per layer the vmapped call and the one batched call it makes (a loop would
    # make one per sample).
    assert len(calls) == 2 * layers, [e.name for e in calls]
    for v in range(xs.shape[0]):
        expected = run(xs[v])
        for got, want in zip(torch.utils._pytree.tree_leaves(batched),
                             torch.utils._pytree.tree_leaves(expected)):
            torch.testing.assert_close(got[v], want, rtol=1e-12, atol=1e-12)


def test_vmap_over_stacked_weights_runs_each_model():
    # An ensemble: each vmapped weight set its own layer (the rule loops over samples).
    torch.manual_seed(4)
    models = [rnnkernels.GRU(5, 7).double() for _ in range(3)]
    stacked = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models])
               for k, _ in models[0].named_parameters()}
    x = _input("GRU", F64)
    out = vmap(lambda p: functional_call(models[0], p, (x,))[0])(stacked)
    for i, model in enumerate(models):
        torch.testing.assert_close(out[i], model(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_with_batched_grads(name):
    # The settings torch's own module tests use: batched gradients through torch's legacy
    # vmap over our backward (csrc/legacy_batching.cpp) and double backward.
    _, ours = _pair(name, F64)
    x = _input(name, F64, batch=2)[:3].clone().requires_grad_()
    fn = lambda v: _first(ours(v))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, (x,), check_batched_grad=True)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell"])
def test_is_grads_batched_and_vectorized_jacobian(name):
    golden, ours = _pair(name, F64)
    x = _input(name, F64).requires_grad_()
    out = _first(ours(x))
    basis = torch.eye(out.numel(), dtype=F64).view(-1, *out.shape)[:6]
    batched = torch.autograd.grad(out, [x, *ours.parameters()], basis, is_grads_batched=True,
                                  retain_graph=True)
    for k in range(basis.shape[0]):
        one = torch.autograd.grad(out, [x, *ours.parameters()], basis[k], retain_graph=True)
        for got, want in zip(batched, one):
            torch.testing.assert_close(got[k], want, rtol=0, atol=0)
    xd = x.detach()
    expected = torch.autograd.functional.jacobian(lambda v: _first(golden(v)), xd)
    actual = torch.autograd.functional.jacobian(lambda v: _first(ours(v)), xd, vectorize=True)
    assert_matches("jacobian(vectorize=True)", actual, expected, F64)


def test_zoneout_and_layer_norm_under_func_grad_match_ordinary_backward():
    # Options torch.nn lacks run our kernels under torch.func too (evaluation-mode zoneout:
    # the deterministic expectation); their gradients equal an ordinary backward's.
    torch.manual_seed(2)
    for module in (rnnkernels.LSTM(5, 7, zoneout_h=0.3, zoneout_c=0.2).to(F64).eval(),
                   rnnkernels.LSTM(5, 7, layer_norm=True).to(F64)):
        x = _input("LSTM", F64)
        expected = torch.autograd.grad(module(x)[0].pow(2).sum(), list(module.parameters()))
        actual = _ran_kernels(lambda: grad(_loss(module))(_params(module), x))[0]
        for (key, _), e in zip(module.named_parameters(), expected):
            torch.testing.assert_close(actual[key], e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_ordinary_calls_still_run_the_cpp_function(name):
    _, ours = _pair(name, torch.float32)
    x = _input(name, torch.float32).requires_grad_()
    # A dual level with no tangent anywhere changes nothing: the C++ autograd Function.
    with torch.autograd.profiler.profile() as prof, forward_ad.dual_level():
        out = _first(ours(x))
        assert type(out.grad_fn).__name__ != "RnnLayerTransformableBackward", out.grad_fn
        out.sum().backward()
    names = {event.name for event in prof.function_events}
    assert "rnnkernels::rnn_layer" in names, names
    assert "rnnkernels::rnn_layer_backward" in names, names


def test_vmapped_batch_sizes_are_refused_with_a_message():
    # Packing inside vmap makes batch_sizes itself vmapped: the samples must share one step
    # structure (Note [vmap rules]), so ours says so instead of failing deep inside.
    _, ours = _pair("GRU", F64)
    xs = torch.randn(2, 4, 3, 5, dtype=F64)
    run = lambda x: ours(nn.utils.rnn.pack_padded_sequence(x, [4, 2, 1]))[1]  # noqa: E731
    with pytest.raises(ValueError, match="batch_sizes cannot be vmapped"):
        vmap(run)(xs)


def test_vmap_over_an_empty_batch_is_refused_with_a_message():
    _, ours = _pair("LSTM", F64)
    with pytest.raises(ValueError, match="vmapped batch of size 0"):  # folded into the batch
        vmap(lambda x: ours(x)[0])(torch.randn(0, 4, 3, 5, dtype=F64))
    empty = {k: v.unsqueeze(0)[:0] for k, v in _params(ours).items()}
    x = _input("LSTM", F64)
    with pytest.raises(ValueError, match="vmapped batch of size 0"):  # one call per model
        vmap(lambda p: functional_call(ours, p, (x,))[0])(empty)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_legacy_vmap_over_the_forward_op_equals_a_loop(mode):
    # torch's legacy vmap (the Batched key) runs the op once per sample
    # (csrc/legacy_batching.cpp), as it does the backward for batched gradients.
    from torch._vmap_internals import _vmap

    torch.manual_seed(5)
    gates = 4 if mode == "lstm" else 3
    weights = [torch.randn(gates * 5, 4, dtype=F64), torch.randn(gates * 5, 5, dtype=F64)]
    h0 = torch.randn(1, 2, 5, dtype=F64)
    c0 = torch.randn(1, 2, 5, dtype=F64) if mode == "lstm" else None
    xs = torch.randn(3, 6, 4, dtype=F64)
    layer = lambda x: torch.ops.rnnkernels.rnn_layer(  # noqa: E731
        mode, x, weights, False, False, h0, c0, None, None, True)
    batched = _vmap(layer)(xs)
    for v in range(xs.shape[0]):
        for got, want in zip(batched, layer(xs[v])):
            torch.testing.assert_close(got[v], want, rtol=0, atol=0)
