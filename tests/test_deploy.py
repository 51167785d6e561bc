"""Deploying a model that holds rnnkernels modules the way a torch.nn model ships.

torch.jit.trace and torch.onnx.export(dynamo=False), which traces, record torch's own RNN
ops for our layers and cells (Note [tracing] in rnnkernels/functional.py): the trace passes
the tracer's sanity check, generalises to other batch sizes and lengths, loads in a
process that never imports rnnkernels, and exports to ONNX's native LSTM/GRU/RNN ops, which
ONNX Runtime and OpenVINO run. Every exported graph is run and compared with our eager
module and with the graph torch.nn exports from the same weights.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels

I, H = 6, 10

LAYERS = {
    "lstm_2layers_bidir": ("LSTM", dict(num_layers=2, bidirectional=True)),
    "lstm_batch_first": ("LSTM", dict(batch_first=True)),
    "lstm_no_bias": ("LSTM", dict(bias=False)),
    "lstm_proj": ("LSTM", dict(proj_size=4)),
    "gru_bidir": ("GRU", dict(bidirectional=True)),
    "gru_2layers_batch_first": ("GRU", dict(num_layers=2, batch_first=True)),
    "rnn_relu": ("RNN", dict(nonlinearity="relu")),
    "rnn_tanh_2layers_bidir": ("RNN", dict(num_layers=2, bidirectional=True)),
}
CELLS = ("LSTMCell", "GRUCell", "RNNCell")
RNN_OPS = {"aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu", "aten::lstm_cell",
           "aten::gru_cell", "aten::rnn_tanh_cell", "aten::rnn_relu_cell"}


def _pair(kind, kwargs):
    torch.manual_seed(0)
    ours = getattr(rnnkernels, kind)(I, H, **kwargs).eval()
    ref = getattr(nn, kind)(I, H, **kwargs).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _sequence(kwargs, steps, batch):
    return torch.randn(batch, steps, I) if kwargs.get("batch_first") else torch.randn(steps, batch, I)


def _flat(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in _flat(r)]


def _graph_ops(traced):
    return {node.kind() for node in traced.inlined_graph.nodes()}


# ---------------------------------------------------------------- torch.jit.trace


@pytest.mark.parametrize("name", LAYERS)
def test_jit_trace_of_a_layer_passes_its_check_and_generalises(name):
    kind, kwargs = LAYERS[name]
    ours, _ = _pair(kind, kwargs)
    traced = torch.jit.trace(ours, (_sequence(kwargs, 5, 3),))  # check_trace=True
    ops = _graph_ops(traced)
    assert ops & RNN_OPS and not any(op.startswith("rnnkernels::") for op in ops), ops
    with torch.no_grad():
        for steps, batch in ((5, 3), (9, 2), (1, 7)):
            x = _sequence(kwargs, steps, batch)
            for got, want in zip(_flat(traced(x)), _flat(ours(x))):
                torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", CELLS)
def test_jit_trace_of_a_cell_passes_its_check_and_generalises(kind):
    ours, _ = _pair(kind, {})
    traced = torch.jit.trace(ours, (torch.randn(3, I),))
    # The cell ops are composites: the trace holds what they decompose into, as torch.nn's.
    ops = _graph_ops(traced)
    assert "aten::linear" in ops and not any(op.startswith("rnnkernels::") for op in ops), ops
    with torch.no_grad():
        for batch in (3, 8):
            x = torch.randn(batch, I)
            for got, want in zip(_flat(traced(x)), _flat(ours(x))):
                torch.testing.assert_close(got, want)


def test_traced_model_loads_in_a_process_without_rnnkernels(tmp_path):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = rnnkernels.LSTM(I, H, num_layers=2, batch_first=True)
            self.cell = rnnkernels.GRUCell(H, 5)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.cell(y[:, -1])

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(4, 7, I)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(model, (x,)), str(path))
    torch.save(x, tmp_path / "x.pt")
    script = ("import json, sys, torch\n"
              "assert 'rnnkernels' not in sys.modules\n"
              f"m = torch.jit.load({str(path)!r})\n"
              f"print(json.dumps(m(torch.load({str(tmp_path / 'x.pt')!r})).tolist()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(torch.tensor(json.loads(out.stdout.strip().splitlines()[-1])), want)


# ---------------------------------------------------------------- ONNX


def _onnx_bytes(module, args, input_names, output_names, dynamic_axes):
    buffer = io.BytesIO()
    torch.onnx.export(module, args, buffer, dynamo=False, input_names=input_names,
                      output_names=output_names, dynamic_axes=dynamic_axes)
    return buffer.getvalue()


def _run_onnxruntime(model_bytes, feeds):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _run_openvino(model_bytes, feeds, tmp_path):
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    path = tmp_path / "model.onnx"
    path.write_bytes(model_bytes)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({name: value.numpy() for name, value in feeds.items()})
    return [result[output] for output in compiled.outputs]


class _WithState(nn.Module):
    """The module called with its initial state as graph inputs."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h0, c0=None):
        return self.rnn(x, h0 if c0 is None else (h0, c0))


def _layer_export_case(name, with_state):
    kind, kwargs = LAYERS[name]
    ours, ref = _pair(kind, kwargs)
    time_axis, batch_axis = (1, 0) if kwargs.get("batch_first") else (0, 1)
    x = _sequence(kwargs, 5, 3)
    inputs, names = [x], ["x"]
    axes = {"x": {time_axis: "time", batch_axis: "batch"}}
    outputs = ["y", "h_n"] + (["c_n"] if kind == "LSTM" else [])
    if with_state:
        layers = ours.num_layers * (2 if ours.bidirectional else 1)
        real = ours.proj_size or H if kind == "LSTM" else H
        inputs.append(torch.randn(layers, 3, real))
        names.append("h0")
        axes["h0"] = {1: "batch"}
        if kind == "LSTM":
            inputs.append(torch.randn(layers, 3, H))
            names.append("c0")
            axes["c0"] = {1: "batch"}
        ours, ref = _WithState(ours), _WithState(ref)
    axes.update({out: {} for out in outputs})
    return kind, kwargs, ours, ref, inputs, names, outputs, axes


def _new_feeds(kind, kwargs, names, steps=8, batch=2):
    torch.manual_seed(1)
    feeds = {"x": _sequence(kwargs, steps, batch)}
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    if "h0" in names:
        feeds["h0"] = torch.randn(layers, batch, kwargs.get("proj_size") or H)
    if "c0" in names:
        feeds["c0"] = torch.randn(layers, batch, H)
    return feeds


@pytest.mark.parametrize("with_state", [False, True], ids=["no_state", "state"])
@pytest.mark.parametrize("name", [n for n in LAYERS if n != "lstm_proj"])
def test_onnx_export_of_a_layer_matches_torch_nn_export_in_onnxruntime(name, with_state):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    kind, kwargs, ours, ref, inputs, names, outputs, axes = _layer_export_case(name, with_state)
    ours_bytes = _onnx_bytes(ours, tuple(inputs), names, outputs, axes)
    ref_bytes = _onnx_bytes(ref, tuple(inputs), names, outputs, axes)
    ours_ops = sorted(n.op_type for n in onnx.load_from_string(ours_bytes).graph.node)
    ref_ops = sorted(n.op_type for n in onnx.load_from_string(ref_bytes).graph.node)
    assert ours_ops == ref_ops and kind in ours_ops, (ours_ops, ref_ops)
    feeds = _new_feeds(kind, kwargs, names)
    got = _run_onnxruntime(ours_bytes, feeds)
    from_torch_nn = _run_onnxruntime(ref_bytes, feeds)
    with torch.no_grad():
        eager = _flat(ours(*feeds.values()))
    for g, r, e in zip(got, from_torch_nn, eager):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(g), torch.from_numpy(r), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm_2layers_bidir", "gru_bidir", "rnn_relu"])
def test_onnx_export_of_a_layer_runs_in_openvino(name, tmp_path):
    kind, kwargs, ours, _, inputs, names, outputs, axes = _layer_export_case(name, True)
    model_bytes = _onnx_bytes(ours, tuple(inputs), names, outputs, axes)
    feeds = _new_feeds(kind, kwargs, names)
    got = _run_openvino(model_bytes, feeds, tmp_path)
    with torch.no_grad():
        eager = _flat(ours(*feeds.values()))
    for g, e in zip(got, eager):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", CELLS)
def test_onnx_export_of_a_cell_matches_eager(kind, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed")
    ours, _ = _pair(kind, {})
    names = ["x", "h"] + (["c"] if kind == "LSTMCell" else [])
    torch.manual_seed(2)
    example = [torch.randn(3, I)] + [torch.randn(3, H) for _ in names[1:]]

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = ours

        def forward(self, x, h, c=None):
            return self.cell(x, h if c is None else (h, c))

    model_bytes = _onnx_bytes(Cell(), tuple(example), names, None,
                              {n: {0: "batch"} for n in names})
    feeds = {n: torch.randn(5, I if n == "x" else H) for n in names}
    with torch.no_grad():
        eager = _flat(Cell()(*feeds.values()))
    for run in (lambda: _run_onnxruntime(model_bytes, feeds),
                lambda: _run_openvino(model_bytes, feeds, tmp_path)):
        for g, e in zip(run(), eager):
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=0, atol=1e-5)


def test_onnx_export_of_packed_input_matches_eager():
    """torch.nn's export of a PackedSequence LSTM fails in torch 2.13's ONNX symbolic; ours
    exports (ONNX LSTM with sequence lengths), and the graph computes what eager does."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    torch.manual_seed(3)
    lstm = rnnkernels.LSTM(I, H, bidirectional=True).eval()

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, x, lengths):
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            y, (h, c) = self.lstm(packed)
            return pad_packed_sequence(y, total_length=x.shape[0])[0], h, c

    x = torch.randn(6, 3, I)
    model_bytes = _onnx_bytes(Packed(), (x, torch.tensor([6, 4, 2])), ["x", "lengths"], None,
                              None)
    for lengths in ([6, 4, 2], [3, 6, 1]):
        feeds = {"x": x, "lengths": torch.tensor(lengths)}
        with torch.no_grad():
            eager = _flat(Packed()(x, torch.tensor(lengths)))
        for g, e in zip(_run_onnxruntime(model_bytes, feeds), eager):
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- torch.jit.script


class _ScriptedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnkernels.LSTM(I, H, num_layers=2, bidirectional=True)
        self.gru = rnnkernels.GRU(2 * H, H, batch_first=True)
        self.rnn = rnnkernels.RNN(H, H, nonlinearity="relu")
        self.cell = rnnkernels.LSTMCell(H, 5)

    def forward(self, x):  # x [T, B, I]
        y, _ = self.lstm(x)
        z, _ = self.gru(y.transpose(0, 1))
        r, _ = self.rnn(z.transpose(0, 1))
        h, c = self.cell(r[-1])
        return h + c


class _LayerOnly(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


def test_jit_script_compiles_a_model_with_our_modules(tmp_path):
    torch.manual_seed(4)
    model = _ScriptedModel()
    scripted = torch.jit.script(model)
    ours = model.lstm
    eager = {(steps, batch): torch.randn(steps, batch, I) for steps, batch in ((5, 3), (2, 6))}
    expected = {k: model(x) for k, x in eager.items()}
    scripted = torch.jit.script(model)
    for k, x in eager.items():
        torch.testing.assert_close(scripted(x), expected[k])
    # Our layers script to their scriptable form (Note [scripting]), which runs our op;
    # the cells to torch.nn's cell (torch's cell op).
    graph = str(scripted.inlined_graph)  # nodes inside loops too
    assert "rnnkernels::rnn_layer" in graph
    assert not any(f"aten::{op}(" in graph for op in ("lstm", "gru", "rnn_relu")), graph
    # TorchScript's __prepare_scriptable__ protocol swaps, inside `model`, each of our
    # modules for the form it scripted; that form holds the very same parameters, and
    # rnnkernels.convert(model) brings our modules back for eager use.
    assert isinstance(model.lstm, nn.LSTM) and type(model.cell) is nn.LSTMCell
    assert model.lstm.weight_ih_l0 is ours.weight_ih_l0
    for k, x in eager.items():  # the eager scriptable forms compute the same
        torch.testing.assert_close(model(x), expected[k])
    scripted(torch.randn(4, 2, I)).sum().backward()
    assert ours.weight_hh_l1_reverse.grad is not None
    # Training through the scripted model: our op's backward, checked against torch.nn.
    ref = nn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(ours.state_dict())
    for p in ours.parameters():
        p.grad = None
    x = torch.randn(4, 2, I)
    torch.jit.script(_LayerOnly(ours))(x).pow(2).sum().backward()
    ref(x.double())[0].pow(2).sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=1e-4, atol=1e-5, msg=name)
    rnnkernels.convert(model)
    assert type(model.lstm) is rnnkernels.LSTM and type(model.cell) is rnnkernels.LSTMCell
    for k, x in eager.items():
        torch.testing.assert_close(model(x), expected[k])


@pytest.mark.parametrize("option", [dict(zoneout_h=0.1), dict(recurrent_dropconnect=0.2),
                                    dict(layer_norm=True)])
def test_jit_script_refuses_options_torch_nn_lacks(option):
    with pytest.raises(RuntimeError, match=next(iter(option))):
        torch.jit.script(rnnkernels.LSTM(I, H, **option))


@pytest.fixture(scope="module")
def run_model(tmp_path_factory):
    """examples/cpp_inference built against the LibTorch of the installed wheel."""
    cmake, ninja = shutil.which("cmake"), shutil.which("ninja")
    if cmake is None or ninja is None:
        pytest.skip("cmake or ninja not found on PATH (pip install cmake ninja)")
    source = Path(__file__).resolve().parent.parent / "examples" / "cpp_inference"
    build = tmp_path_factory.mktemp("cpp_inference")
    subprocess.run([cmake, "-S", str(source), "-B", str(build), "-G", "Ninja",
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                   check=True, capture_output=True, text=True, timeout=600)
    subprocess.run([cmake, "--build", str(build)], check=True, capture_output=True,
                   text=True, timeout=900)
    return build / "run_model"


def _run_in_cpp(run_model, model, path, *extra):
    steps, batch = 7, 4
    x = torch.randn(steps, batch, I)
    out = subprocess.run([str(run_model), str(path), str(steps), str(batch), str(I), *extra],
                         input="\n".join(f"{v:.9g}" for v in x.flatten().tolist()),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    with torch.no_grad():
        want = model(x)
    want = want[0] if isinstance(want, tuple) else want
    assert lines[0] == str(list(want.shape)), lines[0]
    torch.testing.assert_close(torch.tensor([float(v) for v in lines[1:]]).view(want.shape), want)


def test_scripted_model_runs_in_a_cpp_program(run_model, tmp_path):
    """examples/cpp_inference: LibTorch from the installed wheel with our op library (a
    scripted model calls our op)."""
    torch.manual_seed(5)
    model = _ScriptedModel().eval()
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    _run_in_cpp(run_model, model, path, rnnkernels.op_library_path())


def test_scripted_model_loads_in_a_fresh_process(tmp_path):
    """jit.save, then jit.load in a new Python process after `import rnnkernels`, with
    PackedSequence and unbatched inputs through the scripted forms."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = rnnkernels.LSTM(I, H, proj_size=4, bidirectional=True)
            self.gru = rnnkernels.GRU(I, H, num_layers=2)

        def forward(self, x, lengths, single):
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            y, (h, c) = self.lstm(packed)
            z, g = self.gru(single)
            return pad_packed_sequence(y)[0], h, c, z, g

    torch.manual_seed(8)
    model = Model().eval()
    args = (torch.randn(6, 3, I), torch.tensor([6, 2, 4]), torch.randn(5, I))
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    torch.save(args, tmp_path / "args.pt")
    script = ("import json, torch, rnnkernels\n"
              f"m = torch.jit.load({str(tmp_path / 'model.pt')!r})\n"
              f"out = m(*torch.load({str(tmp_path / 'args.pt')!r}))\n"
              "print(json.dumps([t.tolist() for t in out]))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ref = nn.ModuleDict({"lstm": nn.LSTM(I, H, proj_size=4, bidirectional=True),
                         "gru": nn.GRU(I, H, num_layers=2)}).eval()
    ref.lstm.load_state_dict(model.lstm.state_dict())
    ref.gru.load_state_dict(model.gru.state_dict())
    with torch.no_grad():
        y, (h, c) = ref.lstm(pack_padded_sequence(args[0], args[1], enforce_sorted=False))
        z, g = ref.gru(args[2])
        want = (pad_packed_sequence(y)[0], h, c, z, g)
    for g_, w in zip(got, want):
        torch.testing.assert_close(torch.tensor(g_), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(layer_norm=True, num_layers=2),
                                    dict(zoneout_h=0.2, zoneout_c=0.1, bidirectional=True)],
                         ids=["layer_norm", "zoneout"])
def test_model_with_our_ops_runs_in_a_cpp_program_with_the_op_library(run_model, kwargs,
                                                                       tmp_path):
    """A trace of what torch has no op for holds ours (torch.ops.rnnkernels.rnn_layer): the
    C++ program runs it with our op library loaded, and refuses it without."""
    torch.manual_seed(7)
    model = rnnkernels.LSTM(I, H, **kwargs).eval()
    path = tmp_path / "model.pt"
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.randn(5, 3, I),))
    assert any(op.startswith("rnnkernels::") for op in _graph_ops(traced))
    torch.jit.save(traced, str(path))
    _run_in_cpp(run_model, model, path, rnnkernels.op_library_path())
    out = subprocess.run([str(run_model), str(path), "1", "1", str(I)],
                         input=" ".join(["0"] * I), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "rnnkernels::rnn_layer" in out.stderr, out.stderr[-2000:]


def test_op_library_runs_our_ops_without_python_bindings(tmp_path):
    """rnnkernels/_ops*.so in a process that never imports rnnkernels: it registers the op
    pair with CPU kernels and autograd, linked without libtorch_python."""
    library = rnnkernels.op_library_path()
    script = (
        "import sys, torch\n"
        f"torch.ops.load_library({library!r})\n"
        "assert 'rnnkernels' not in sys.modules\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(15, 6, dtype=torch.float64, requires_grad=True)\n"
        "w = [torch.randn(40, 6, dtype=torch.float64, requires_grad=True),\n"
        "     torch.randn(40, 10, dtype=torch.float64, requires_grad=True)]\n"
        "h0 = torch.zeros(1, 3, 10, dtype=torch.float64)\n"
        "c0 = torch.zeros(1, 3, 10, dtype=torch.float64)\n"
        "def f(x, *w):\n"
        "    return torch.ops.rnnkernels.rnn_layer('lstm', x, list(w), False, False, h0, c0,\n"
        "                                          None, None, True)[0]\n"
        "assert torch.autograd.gradcheck(f, (x, *w))\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    linked = subprocess.run(["ldd", library], capture_output=True, text=True).stdout
    assert "torch_python" not in linked and "libpython" not in linked, linked


@pytest.mark.parametrize("library_first", [True, False], ids=["library_first", "package_first"])
def test_op_library_and_the_package_share_one_copy_of_the_ops(tmp_path, library_first):
    """rnnkernels._C links the op library, so a process may load both, in either order: the
    ops are registered once (a second TORCH_LIBRARY would abort the process) and run."""
    library = rnnkernels.op_library_path()
    load = f"torch.ops.load_library({library!r})\n"
    script = (
        "import torch\n" + (load if library_first else "") + "import rnnkernels\n"
        + ("" if library_first else load)
        + "torch.manual_seed(0)\n"
        "ours = rnnkernels.LSTM(6, 10, num_layers=2)\n"
        "ref = torch.nn.LSTM(6, 10, num_layers=2)\n"
        "ref.load_state_dict(ours.state_dict())\n"
        "x = torch.randn(7, 3, 6)\n"
        "torch.testing.assert_close(ours(x)[0], ref(x)[0])\n"
        "maps = {line.split()[-1] for line in open('/proc/self/maps') if '_ops' in line}\n"
        "print(sorted(maps))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(rnnkernels.__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str([library]), out.stdout
    (module,) = Path(rnnkernels.__file__).parent.glob("_C*.so")
    linked = subprocess.run(["ldd", str(module)], capture_output=True, text=True).stdout
    assert f"{Path(library).name} => {library}" in linked, linked


# ---------------------------------------------------------------- AOTInductor


class _Layer(nn.Module):
    def __init__(self, kind, **kwargs):
        super().__init__()
        self.rnn = getattr(rnnkernels, kind)(I, H, **kwargs)

    def forward(self, x):
        return self.rnn(x)[0]


def _aoti_roundtrip(model, x, tmp_path):
    program = torch.export.export(model, (x,))
    assert any(str(n.target).startswith("rnnkernels.") for n in program.graph.nodes)
    package = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "model.pt2"))
    return torch._inductor.aoti_load_package(package)


# Every weight layout: the op pair's weight list is never empty (AOTInductor's proxy
# executor reads an empty Tensor[] as a non-tensor list).
@pytest.mark.parametrize("kind,kwargs", [("GRU", {}), ("LSTM", dict(proj_size=4)), ("LSTM", {}),
                                         ("LSTM", dict(bias=False, bidirectional=True)),
                                         ("RNN", dict(nonlinearity="relu", num_layers=2))])
def test_aoti_package_runs_our_ops(kind, kwargs, tmp_path):
    torch.manual_seed(6)
    model = _Layer(kind, **kwargs).eval()
    x = torch.randn(5, 3, I)
    loaded = _aoti_roundtrip(model, x, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
