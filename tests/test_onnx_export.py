"""ONNX export with both of torch's exporters, run in ONNX Runtime and OpenVINO.

torch.onnx.export(dynamo=True) records torch's own RNN ops for the layers and cells torch
has, as torch.onnx.export(dynamo=False) does (tests/test_deploy.py): native ONNX LSTM and
GRU nodes, the cells as their products. What torch's ops cannot express (an LSTM with
proj_size, zoneout, the layer-normalised LSTM)
exports as a loop over time (Note [ONNX export] in rnnkernels/_onnx_graphs.py): an ONNX
Loop (dynamo=False) or Scan (dynamo=True). Every exported graph is run on shapes other
than the example's and compared with our eager module (float32, within 1e-5).
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxscript", reason="onnxscript (torch.onnx.export(dynamo=True)) is not installed")

I, H = 6, 10

NATIVE = {  # torch has the op: the dynamo export holds ONNX's LSTM / GRU
    "lstm_2layers_bidir": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "lstm_batch_first_no_bias": ("LSTM", dict(batch_first=True, bias=False)),
    "gru_bidir": ("GRU", dict(bidirectional=True)),
    "gru_2layers_batch_first": ("GRU", dict(num_layers=2, batch_first=True)),
    "lstm_dropconnect": ("LSTM", dict(recurrent_dropconnect=0.3)),  # eval: the plain cell
}
LOOPS = {  # exported as a loop over time
    "lstm_proj": ("LSTM", dict(proj_size=4)),
    "lstm_proj_2layers_bidir_batch_first": ("LSTM", dict(proj_size=4, num_layers=2,
                                                         bidirectional=True, batch_first=True)),
    "lstm_zoneout": ("LSTM", dict(zoneout_h=0.3, zoneout_c=0.1)),
    "gru_zoneout_bidir": ("GRU", dict(zoneout_h=0.2, bidirectional=True)),
    "rnn_relu_zoneout": ("RNN", dict(nonlinearity="relu", zoneout_h=0.2)),
    "lstm_layer_norm_2layers": ("LSTM", dict(layer_norm=True, num_layers=2)),
    "lstm_layer_norm_bidir_no_bias": ("LSTM", dict(layer_norm=True, bidirectional=True,
                                                   bias=False)),
}
CELLS = ("LSTMCell", "GRUCell", "RNNCell")


class _Layer(nn.Module):
    """A layer called with its initial state as graph inputs (or none), returning a flat
    tuple: (output, h_n[, c_n])."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h0=None, c0=None):
        if h0 is None:
            y, state = self.rnn(x)
        else:
            y, state = self.rnn(x, h0 if c0 is None else (h0, c0))
        return (y, *state) if isinstance(state, tuple) else (y, state)


def _module(lib, kind, kwargs, seed=0):
    torch.manual_seed(seed)
    return getattr(lib, kind)(I, H, **kwargs).eval()


def _layer(lib, kind, kwargs):
    return _Layer(_module(lib, kind, kwargs)).eval()


def _inputs(kind, kwargs, steps, batch, with_state, seed):
    torch.manual_seed(seed)
    x = torch.randn(batch, steps, I) if kwargs.get("batch_first") else torch.randn(steps, batch, I)
    if not with_state:
        return (x,)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    h0 = torch.randn(layers, batch, kwargs.get("proj_size") or H)
    return (x, h0, torch.randn(layers, batch, H)) if kind == "LSTM" else (x, h0)


def _export(model, args, path, dynamo, kwargs, optimize=True):
    """Exports with dynamic batch and sequence axes; returns the ONNX op types."""
    time_axis, batch_axis = (1, 0) if kwargs.get("batch_first") else (0, 1)
    names = ["x", "h0", "c0"][:len(args)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
            shapes = ({time_axis: time, batch_axis: batch},) + ({1: batch},) * (len(args) - 1)
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=names,
                              dynamic_shapes=shapes, optimize=optimize)
        else:
            axes = {"x": {time_axis: "time", batch_axis: "batch"}}
            axes.update({n: {1: "batch"} for n in names[1:]})
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=names,
                              dynamic_axes=axes)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    for node in graph.node:  # the loop bodies
        for attribute in node.attribute:
            if attribute.g is not None:
                ops |= {n.op_type for n in attribute.g.node}
    return ops, names


def _count(path, op_type):
    return sum(n.op_type == op_type for n in onnx.load(str(path)).graph.node)


@functools.lru_cache(maxsize=4)
def _load(path: str, runtime: str):
    """The graph at `path` loaded in `runtime` (once per graph: OpenVINO's compile is most
    of a run's time), as a function of the feeds."""
    if runtime == "onnxruntime":
        ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda feeds: [torch.from_numpy(r) for r in session.run(None, feeds)]
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(feeds):
        result = compiled(list(feeds.values()))
        return [torch.from_numpy(result[output]) for output in compiled.outputs]
    return run


def _run(path, names, args, runtime):
    return _load(str(path), runtime)({n: a.numpy() for n, a in zip(names, args)})


def _check_runs(path, names, model, kind, kwargs, with_state, shapes=((8, 2), (1, 5))):
    """The graph on shapes other than the example's matches eager within 1e-5."""
    runtimes = ("onnxruntime", "openvino")
    for steps, batch in shapes:
        args = _inputs(kind, kwargs, steps, batch, with_state, seed=steps)
        with torch.no_grad():
            eager = model(*args)
        for runtime in runtimes:
            got = _run(path, names, args, runtime)
            assert len(got) == len(eager)
            for g, e in zip(got, eager):
                torch.testing.assert_close(g, e, rtol=0, atol=1e-5, msg=lambda m: f"{runtime}: {m}")


@pytest.mark.parametrize("name, with_state", [(n, False) for n in NATIVE] + [
    ("lstm_2layers_bidir", True), ("gru_2layers_batch_first", True)])
def test_dynamo_export_of_a_layer_is_torch_nn_graph(name, with_state, tmp_path):
    kind, kwargs = NATIVE[name]
    ours = _layer(rnnkernels, kind, kwargs)
    # optimize=False: onnxscript's optimizer folds the example's sequence length into the
    # Reshape after a native LSTM / GRU node (torch.nn's export alike; README, Deploying).
    ops, names = _export(ours, _inputs(kind, kwargs, 5, 3, with_state, 0),
                         tmp_path / "ours.onnx", True, kwargs, optimize=False)
    assert kind in ops and "Scan" not in ops, ops
    # torch.export fixes one of the two axes to the example's size in some layouts while
    # it decomposes aten::lstm / gru, for torch.nn's export as for ours (which one can
    # depend on what the process exported before; README, Deploying): vary what is left.
    time_axis, batch_axis = (1, 0) if kwargs.get("batch_first") else (0, 1)
    dims = onnx.load(str(tmp_path / "ours.onnx")).graph.input[0].type.tensor_type.shape.dim
    time_dynamic, batch_dynamic = (bool(dims[a].dim_param) for a in (time_axis, batch_axis))
    assert time_dynamic or batch_dynamic, dims
    _check_runs(tmp_path / "ours.onnx", names, ours, kind, kwargs, with_state,
                shapes=((8 if time_dynamic else 5, 2 if batch_dynamic else 3),
                        (1 if time_dynamic else 5, 6 if batch_dynamic else 3)))
    plain = {k: v for k, v in kwargs.items() if k != "recurrent_dropconnect"}
    ref = _layer(nn, kind, plain)
    ref.load_state_dict(ours.state_dict())
    ref_ops, _ = _export(ref, _inputs(kind, kwargs, 5, 3, with_state, 0),
                         tmp_path / "ref.onnx", True, kwargs, optimize=False)
    # The same native RNN nodes (the shape plumbing around them differs with which axes
    # torch.export kept dynamic).
    assert _count(tmp_path / "ours.onnx", kind) == _count(tmp_path / "ref.onnx", kind) > 0
    assert not (ops | ref_ops) & {"Scan", "Loop"}
    args = _inputs(kind, kwargs, 5, 3, with_state, 9)  # torch.nn's may fix either axis
    for g, r in zip(_run(tmp_path / "ours.onnx", names, args, "onnxruntime"),
                    _run(tmp_path / "ref.onnx", names, args, "onnxruntime")):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)


# torch 2.13's scan fails to decompose (its body returns a SymInt) in these layouts when
# the initial state is a graph input sharing the dynamic batch dimension (README, Deploying).
_SCAN_STATE_FAILS = {"lstm_proj_2layers_bidir_batch_first", "gru_zoneout_bidir",
                     "rnn_relu_zoneout"}


# The TorchScript exporter's Loop takes its states as loop-carried values either way: with
# states given only; the dynamo exporter's Scan both ways.
@pytest.mark.parametrize("dynamo, with_state", [(False, True), (True, False), (True, True)],
                         ids=["torchscript-state", "dynamo-no_state", "dynamo-state"])
@pytest.mark.parametrize("name", LOOPS)
def test_export_as_a_loop_runs_in_both_runtimes(name, dynamo, with_state, tmp_path, request):
    if dynamo and with_state and name in _SCAN_STATE_FAILS:
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="torch 2.13: scan with a state input fails to decompose"))
    kind, kwargs = LOOPS[name]
    model = _layer(rnnkernels, kind, kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ops, names = _export(model, _inputs(kind, kwargs, 5, 3, with_state, 0),
                         tmp_path / "m.onnx", dynamo, kwargs)
    assert ("Scan" if dynamo else "Loop") in ops and kind not in ops, ops
    if kwargs.get("layer_norm"):
        assert "LayerNormalization" in ops
    _check_runs(tmp_path / "m.onnx", names, model, kind, kwargs, with_state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not model.training


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
def test_dynamo_export_of_the_rnn_is_torch_nn_graph(with_state, tmp_path):
    """The Elman RNN: torch's op, which the dynamo exporter unrolls for the example's
    length, as for torch.nn's RNN (Note [ONNX export])."""
    kwargs = dict(num_layers=2, bidirectional=True, nonlinearity="relu")
    ours = _layer(rnnkernels, "RNN", kwargs)
    ref = _layer(nn, "RNN", kwargs)
    ref.load_state_dict(ours.state_dict())
    example = _inputs("RNN", kwargs, 5, 3, with_state, 0)
    ops, names = _export(ours, example, tmp_path / "ours.onnx", True, kwargs)
    ref_ops, _ = _export(ref, example, tmp_path / "ref.onnx", True, kwargs)
    assert ops == ref_ops and "Relu" in ops and not ops & {"Scan", "Loop", "RNN"}, ops
    args = _inputs("RNN", kwargs, 5, 3, with_state, 4)
    with torch.no_grad():
        eager = ours(*args)
    for runtime in ("onnxruntime", "openvino"):
        got = _run(tmp_path / "ours.onnx", names, args, runtime)
        for g, r, e in zip(got, _run(tmp_path / "ref.onnx", names, args, runtime), eager):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-5)
            torch.testing.assert_close(g, r, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", CELLS)
def test_export_of_a_cell_matches_eager(kind, dynamo, tmp_path):
    cell = _module(rnnkernels, kind, {})

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x, h, c=None):
            out = self.cell(x, h if c is None else (h, c))
            return tuple(out) if isinstance(out, tuple) else (out,)

    names = ["x", "h", "c"][:3 if kind == "LSTMCell" else 2]

    def args(batch):
        return tuple(torch.randn(batch, I if n == "x" else H) for n in names)

    path = tmp_path / "cell.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            torch.onnx.export(Cell(), args(3), str(path), dynamo=True, input_names=names,
                              dynamic_shapes=tuple({0: batch} for _ in names))
        else:
            torch.onnx.export(Cell(), args(3), str(path), dynamo=False, input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in names})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"Gemm", "MatMul"} and not ops & {"Loop", "Scan"}, ops
    for batch in (5, 1):
        feeds = args(batch)
        with torch.no_grad():
            eager = Cell()(*feeds)
        for runtime in ("onnxruntime", "openvino"):
            for g, e in zip(_run(path, names, feeds, runtime), eager):
                torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


def test_unbatched_input_exports_as_a_loop(tmp_path):
    model = _layer(rnnkernels, "LSTM", dict(proj_size=4))
    x = torch.randn(5, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "time"}})
    for steps in (5, 9):
        x = torch.randn(steps, I)
        with torch.no_grad():
            eager = model(x)
        for g, e in zip(_run(tmp_path / "m.onnx", ["x"], (x,), "onnxruntime"), eager):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- refusals

def test_torch_nn_dynamo_export_of_proj_size_is_wrong_and_ours_is_not(tmp_path):
    """torch.nn's dynamo export of an LSTM with proj_size emits an ONNX LSTM with the
    projected size as its hidden size, which ONNX Runtime rejects; ours exports a Scan.
    Should torch fix its export, the first half of this test says so."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    ref = _layer(nn, "LSTM", dict(proj_size=4))
    x = torch.randn(5, 3, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ref, (x,), str(tmp_path / "ref.onnx"), dynamo=True)
    session = ort.InferenceSession(str(tmp_path / "ref.onnx"))
    with pytest.raises(Exception, match="initial_c"):
        session.run(None, {session.get_inputs()[0].name: x.numpy()})
    ours = _layer(rnnkernels, "LSTM", dict(proj_size=4))
    ours.load_state_dict(ref.state_dict())
    ops, names = _export(ours, (x,), tmp_path / "ours.onnx", True, {})
    with torch.no_grad():
        want = ref(x)
    for g, r in zip(_run(tmp_path / "ours.onnx", names, (x,), "onnxruntime"), want):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_packed_input_through_a_loop_is_refused(dynamo, tmp_path):
    lstm = _module(rnnkernels, "LSTM", dict(proj_size=4))

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x, lengths):
            return self.lstm(pack_padded_sequence(x, lengths))[1][0]

    args = (torch.randn(5, 3, I), torch.tensor([5, 4, 2]))
    with warnings.catch_warnings(), pytest.raises(Exception) as info:
        warnings.simplefilter("ignore")
        torch.onnx.export(Packed(), args, str(tmp_path / "m.onnx"), dynamo=dynamo)
    chain = []
    error = info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("PackedSequence" in message for message in chain), chain


def test_zoneout_in_training_mode_is_refused(tmp_path):
    """As torch.nn's export refuses dropout in training mode (torch.onnx.TrainingMode)."""
    model = _layer(rnnkernels, "GRU", dict(zoneout_h=0.2))
    x = torch.randn(5, 3, I)
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="training mode"):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING)
    model.train()
    with warnings.catch_warnings(), pytest.raises(Exception) as info:
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True)
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("training mode" in message for message in chain), chain
    model.eval()  # the module is left usable
    with torch.no_grad():
        model(x)
