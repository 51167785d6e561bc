"""rnnkernels.convert / revert on a model with nested, shared and parametrized modules:
the same objects, parameters and numbers, our kernels after convert, torch.nn's after
revert."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import rnnkernels

F64 = torch.float64


class MyLSTM(nn.LSTM):
    """A user's subclass: its forward may differ from nn.LSTM's, so convert leaves it."""


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh())
        self.inner = nn.ModuleDict({
            "lstm": nn.LSTM(6, 7, num_layers=2, bidirectional=True, proj_size=3),
            "gru": nn.GRU(6, 4, batch_first=True),
        })
        self.shared_rnn = nn.RNN(6, 4, nonlinearity="relu")
        self.again = self.shared_rnn  # the same module under two names
        self.cells = nn.ModuleList([nn.RNNCell(6, 4), nn.LSTMCell(6, 4), nn.GRUCell(6, 4)])
        self.custom = MyLSTM(6, 2)

    def forward(self, x):  # x [T, B, 5]
        e = self.encoder(x)
        a = self.inner["lstm"](e)[0]
        b = self.inner["gru"](e.transpose(0, 1))[0].transpose(0, 1)
        c = self.shared_rnn(e)[0] + self.again(e.flip(0))[0]
        h = self.cells[0](e[0])
        hc = self.cells[1](e[0])
        g = self.cells[2](e[-1])
        d = self.custom(e)[0]
        return torch.cat([a, b, c, d], -1).sum() + h.sum() + hc[0].sum() + g.sum()


def _grads(model, x):
    model.zero_grad()
    out = model(x)
    out.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_convert_keeps_objects_and_numbers_and_revert_restores():
    torch.manual_seed(0)
    model = Model().to(F64).train()
    reference = copy.deepcopy(model)
    params_before = {n: p for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lstm = model.inner["lstm"]

    assert rnnkernels.convert(model) is model
    assert type(model.inner["lstm"]) is rnnkernels.LSTM and model.inner["lstm"] is lstm
    assert type(model.inner["gru"]) is rnnkernels.GRU
    assert type(model.shared_rnn) is rnnkernels.RNN and model.again is model.shared_rnn
    assert [type(c) for c in model.cells] == [rnnkernels.RNNCell, rnnkernels.LSTMCell,
                                              rnnkernels.GRUCell]
    assert type(model.custom) is MyLSTM
    assert model.training and all(p.dtype == F64 for p in model.parameters())
    assert {n: p for n, p in model.named_parameters()} == params_before  # same objects
    assert model.shared_rnn.mode == "RNN_RELU"

    x = torch.randn(6, 3, 5, dtype=F64)
    out, grads = _grads(model, x)
    want, want_grads = _grads(reference, x)
    torch.testing.assert_close(out, want)
    for name in want_grads:
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)

    # an optimizer built before the conversion steps the converted model's parameters
    before = model.inner["lstm"].weight_hh_l0.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.inner["lstm"].weight_hh_l0)

    sd = model.state_dict()
    rnnkernels.revert(model)
    assert type(model.inner["lstm"]) is nn.LSTM and type(model.cells[1]) is nn.LSTMCell
    assert type(model.shared_rnn) is nn.RNN and model.again is model.shared_rnn
    assert type(model.custom) is MyLSTM
    assert model.state_dict().keys() == sd.keys()
    reference.load_state_dict(sd)  # the converted model's checkpoint loads into torch.nn
    torch.testing.assert_close(model(x), reference(x))


def test_convert_runs_our_kernels(monkeypatch):
    calls = []
    real = rnnkernels.functional.lstm

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rnnkernels.functional, "lstm", spy)
    lstm = nn.LSTM(3, 4)
    lstm(torch.randn(2, 1, 3))
    assert calls == []
    rnnkernels.convert(lstm)(torch.randn(2, 1, 3))
    assert calls == [1]


def test_convert_keeps_parametrizations():
    torch.manual_seed(1)
    lstm = nn.LSTM(4, 5).to(F64)
    parametrizations.weight_norm(lstm, "weight_hh_l0")
    reference = copy.deepcopy(lstm)
    rnnkernels.convert(lstm)
    assert isinstance(lstm, rnnkernels.LSTM) and parametrize.is_parametrized(lstm, "weight_hh_l0")
    x = torch.randn(3, 2, 4, dtype=F64)
    torch.testing.assert_close(lstm(x)[0], reference(x)[0])
    # the parametrization still drives the weight
    with torch.no_grad():
        lstm.parametrizations.weight_hh_l0.original0.mul_(2)
        reference.parametrizations.weight_hh_l0.original0.mul_(2)
    torch.testing.assert_close(lstm(x)[0], reference(x)[0])
    rnnkernels.revert(lstm)
    assert not isinstance(lstm, rnnkernels.LSTM) and isinstance(lstm, nn.LSTM)
    parametrize.remove_parametrizations(lstm, "weight_hh_l0")
    assert type(lstm) is nn.LSTM


def test_convert_rejects_a_non_module():
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        rnnkernels.convert([nn.LSTM(2, 3)])


@pytest.mark.parametrize("option", [dict(layer_norm=True), dict(zoneout_h=0.1),
                                    dict(zoneout_c=0.2), dict(recurrent_dropconnect=0.3)],
                         ids=lambda o: next(iter(o)))
def test_revert_refuses_options_torch_nn_cannot_run(option):
    model = nn.Sequential(rnnkernels.LSTM(3, 4), rnnkernels.LSTM(4, 4, **option))
    with pytest.raises(ValueError, match=f"cannot revert 1 \\(LSTM\\).*{next(iter(option))}"):
        rnnkernels.revert(model)
    # Nothing changed: the first module, before the offending one, was not reverted either.
    assert all(type(m) is rnnkernels.LSTM for m in model)
