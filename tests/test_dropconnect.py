"""recurrent_dropconnect (beyond torch.nn, off by default): in training each forward
masks every weight_hh with Bernoulli(1 - p) / (1 - p), drawn from the default generator
in parameter order. Checked against torch.nn run on weights masked by hand with the same
draws, values and gradients w.r.t. the unmasked parameters; gradcheck; eval and p=0 are
exactly torch.nn; reproducible under a seed."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call

import rnnkernels

F64 = torch.float64
I, H, T, B = 5, 6, 7, 3


def _pair(kind, **kwargs):
    theirs = getattr(nn, kind)(I, H, dtype=F64, **kwargs)
    ours = getattr(rnnkernels, kind)(I, H, dtype=F64, recurrent_dropconnect=0.4, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _masked_reference(theirs, p, x, seed):
    """torch.nn's forward on weights masked as documented (same generator draws)."""
    torch.manual_seed(seed)
    params = dict(theirs.named_parameters())
    masked = {}
    for name in theirs._flat_weights_names:
        w = params[name]
        if name.startswith("weight_hh"):
            keep = 1 - p
            w = w * (torch.empty_like(w).bernoulli_(keep) / keep)
        masked[name] = w
    return functional_call(theirs, masked, (x,))


@pytest.mark.parametrize("kind,kwargs", [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=4)),
    ("GRU", dict(num_layers=2)),
    ("RNN", dict(nonlinearity="relu", bidirectional=True)),
], ids=["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_training_matches_hand_masked_torch_nn(kind, kwargs):
    ours, theirs = _pair(kind, **kwargs)
    ours.train()
    theirs.train()
    x = torch.randn(T, B, I, dtype=F64)
    torch.manual_seed(11)
    out, hidden = ours(x)
    want_out, want_hidden = _masked_reference(theirs, 0.4, x, seed=11)
    torch.testing.assert_close(out, want_out)
    got = torch.autograd.grad(out.sum() + (hidden[0] if kind == "LSTM" else hidden).sum(),
                              list(ours.parameters()))
    want = torch.autograd.grad(
        want_out.sum() + (want_hidden[0] if kind == "LSTM" else want_hidden).sum(),
        list(theirs.parameters()))
    for (name, _), g, w in zip(ours.named_parameters(), got, want):
        torch.testing.assert_close(g, w, msg=name)
    # the mask really dropped something: plain torch.nn differs
    assert not torch.allclose(out, theirs(x)[0])


def test_eval_and_zero_probability_are_torch_nn():
    ours, theirs = _pair("LSTM", num_layers=2)
    x = torch.randn(T, B, I, dtype=F64)
    ours.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    plain = rnnkernels.LSTM(I, H, num_layers=2, dtype=F64)
    plain.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(plain.train()(x)[0], theirs.train()(x)[0])


def test_reproducible_under_a_seed_and_fresh_each_forward():
    ours, _ = _pair("GRU")
    x = torch.randn(T, B, I, dtype=F64)
    torch.manual_seed(5)
    a, b = ours(x)[0], ours(x)[0]
    torch.manual_seed(5)
    a2 = ours(x)[0]
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)


def test_gradcheck_with_a_fixed_mask():
    ours, _ = _pair("LSTM", bidirectional=True)
    x = torch.randn(4, 2, I, dtype=F64, requires_grad=True)
    params = dict(ours.named_parameters())

    def fn(x, *weights):
        torch.manual_seed(3)
        return functional_call(ours, dict(zip(params, weights)), (x,))[0]

    assert torch.autograd.gradcheck(fn, (x, *params.values()))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.2", None])
def test_bad_probability_raises(bad):
    with pytest.raises(ValueError, match="recurrent_dropconnect"):
        rnnkernels.LSTM(I, H, recurrent_dropconnect=bad)


def test_state_dict_repr_copy_and_pickle():
    ours, theirs = _pair("LSTM")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert "recurrent_dropconnect=0.4" in repr(ours)
    assert copy.deepcopy(ours).recurrent_dropconnect == 0.4
    assert pickle.loads(pickle.dumps(ours)).recurrent_dropconnect == 0.4
    assert rnnkernels.convert(nn.LSTM(2, 3)).recurrent_dropconnect == 0.0
