"""torch.export of a model using our modules: the exported program holds the rnnkernels
ops and matches eager on new inputs, with a static and a dynamic batch size."""

import warnings

import pytest
import torch

import rnnkernels


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnkernels.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = rnnkernels.GRU(32, 12)
        self.rnn = rnnkernels.RNN(12, 6, nonlinearity="relu")
        self.cell = rnnkernels.LSTMCell(6, 5)

    def forward(self, x):  # x [B, T, 8]
        y, _ = self.lstm(x)
        z, _ = self.gru(y.transpose(0, 1))
        r, _ = self.rnn(z)
        h, c = self.cell(r[-1])
        return h + c.sum(-1, keepdim=True)


@pytest.fixture(autouse=True)
def _allow_rnn():
    # dynamo refuses to trace nn.RNNBase subclasses without it (README, Limitations).
    # torch's own patch, not monkeypatch: pytest 9.2 undoes setattr with a delattr, which
    # torch's config module takes as "hide this key" for every later test.
    with torch._dynamo.config.patch(allow_rnn=True):
        yield


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic_batch"])
def test_export_matches_eager(dynamic_batch):
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(9, 7, 8)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=2, max=64)},) if dynamic_batch else None
    with warnings.catch_warnings():
        # torch.nn's own LSTM warns the same: _flat_weights is refreshed in forward.
        warnings.filterwarnings("ignore", message=".*were assigned during export.*")
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    # Every layer and cell is one call of the op pair's forward (DEVELOPING.md, The ops).
    assert "rnnkernels.rnn_layer.default" in targets, targets
    assert not any("_VF" in t or "aten.lstm" in t or "aten.gru" in t for t in targets), targets
    exported = program.module()
    for batch in ([9, 3, 20] if dynamic_batch else [9]):
        x_new = torch.randn(batch, 7, 8)
        with torch.no_grad():
            torch.testing.assert_close(exported(x_new), model(x_new))


@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic_batch"])
def test_export_with_zoneout_in_eval_matches_eager(dynamic_batch):
    # Evaluation-mode zoneout (the expectation p, a broadcast row) exports with the ops.
    torch.manual_seed(0)
    lstm = rnnkernels.LSTM(8, 16, batch_first=True, zoneout_h=0.2, zoneout_c=0.3).eval()
    x = torch.randn(9, 7, 8)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=2, max=64)},) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(lstm, (x,), dynamic_shapes=dynamic_shapes)
    x_new = torch.randn(5 if dynamic_batch else 9, 7, 8)
    torch.testing.assert_close(program.module()(x_new)[0], lstm(x_new)[0])
    plain = rnnkernels.LSTM(8, 16, batch_first=True).eval()
    plain.load_state_dict(lstm.state_dict())
    assert not torch.allclose(plain(x_new)[0], lstm(x_new)[0])
