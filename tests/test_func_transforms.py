"""torch.func transforms and forward-mode AD through our modules.

C++ autograd Functions serve neither, so under them the layers and cells run torch's own
implementation (the reference for options torch lacks): the results must be those of
torch.nn, errors included (torch.nn's float32 CPU LSTM, oneDNN, has no forward AD, and
neither has ours then), and ordinary calls must still run our kernels.
"""

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch.func import functional_call, grad, jvp, vjp

import rnnkernels
from equivalence import module_pair

NAMES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
F64 = torch.float64


def _pair(name, dtype, **kwargs):
    """(torch.nn, ours), both in dtype, input size 5, hidden size 7."""
    torch.manual_seed(0)
    return module_pair(name, dtype, golden_dtype=dtype, input_size=5, hidden_size=7, **kwargs)


def _input(name, dtype):
    torch.manual_seed(1)
    return torch.randn(3, 5, dtype=dtype) if "Cell" in name else torch.randn(4, 3, 5, dtype=dtype)


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def _func_grad(module, x):
    params = {k: v.detach() for k, v in module.named_parameters()}
    return grad(lambda p: _first(functional_call(module, p, (x,))).pow(2).sum())(params)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_func_grad_matches_torch_nn(name, dtype):
    reference, ours = _pair(name, dtype)
    x = _input(name, dtype)
    expected, actual = _func_grad(reference, x), _func_grad(ours, x)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_func_vjp_and_jvp_match_torch_nn(name):
    reference, ours = _pair(name, F64)
    x = _input(name, F64)
    tangent = torch.randn_like(x)
    for transform in ("vjp", "jvp"):
        results = []
        for module in (reference, ours):
            if transform == "vjp":
                out, pullback = vjp(lambda v: _first(module(v)), x)
                results.append(pullback(torch.ones_like(out))[0])
            else:
                results.append(jvp(lambda v: _first(module(v)), (x,), (tangent,))[1])
        torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_ad_like_torch_nn(name, dtype):
    reference, ours = _pair(name, dtype)
    x = _input(name, dtype)
    tangent = torch.randn_like(x)
    outcomes = []
    for module in (reference, ours):
        try:
            with forward_ad.dual_level():
                out = _first(module(forward_ad.make_dual(x, tangent)))
                outcomes.append(forward_ad.unpack_dual(out).tangent)
        except Exception as error:  # torch.nn's float32 LSTM (oneDNN) has none
            outcomes.append(error)
    if isinstance(outcomes[0], Exception):
        assert type(outcomes[1]) is type(outcomes[0]), outcomes[1]
        assert str(outcomes[1]) == str(outcomes[0])
    else:
        torch.testing.assert_close(outcomes[1], outcomes[0], rtol=0, atol=0)


def test_tangent_on_a_parameter_only():
    reference, ours = _pair("GRU", F64)
    x = _input("GRU", F64)
    tangents = []
    for module in (reference, ours):
        with forward_ad.dual_level():
            weight = module.weight_hh_l0
            dual = forward_ad.make_dual(weight.detach(), torch.ones_like(weight))
            out = functional_call(module, {"weight_hh_l0": dual}, (x,))[0]
            tangents.append(forward_ad.unpack_dual(out).tangent)
    torch.testing.assert_close(tangents[1], tangents[0], rtol=0, atol=0)


def test_zoneout_under_func_grad_matches_ordinary_backward():
    # torch has no zoneout: under torch.func the reference runs it (evaluation mode: the
    # deterministic expectation), and its gradients equal our kernels' own.
    torch.manual_seed(2)
    module = rnnkernels.LSTM(5, 7, zoneout_h=0.3, zoneout_c=0.2).to(F64).eval()
    x = _input("LSTM", F64)
    expected = torch.autograd.grad(module(x)[0].pow(2).sum(), list(module.parameters()))
    actual = _func_grad(module, x)
    for (key, _), e in zip(module.named_parameters(), expected):
        torch.testing.assert_close(actual[key], e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_ordinary_calls_still_run_the_kernels(name):
    _, ours = _pair(name, torch.float32)
    x = _input(name, torch.float32).requires_grad_()
    # A dual level with no tangent anywhere changes nothing.
    with torch.autograd.profiler.profile() as prof, forward_ad.dual_level():
        _first(ours(x)).sum().backward()
    names = {event.name for event in prof.function_events}
    assert "rnnkernels::rnn_layer" in names, names
    assert "rnnkernels::rnn_layer_backward" in names, names
