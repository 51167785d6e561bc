"""torch.compile on rnnkernels' LSTM, GRU and RNN: outputs and gradients equal eager.

Dynamo refuses to trace any instance of torch.nn.RNN, GRU or LSTM unless
`torch._dynamo.config.allow_rnn` is set ("Attempted to wrap RNN, GRU, or LSTM", an
isinstance check in torch/_dynamo/variables/builder.py). Our modules subclass those
classes so that isinstance holds for users; rnnkernels scopes the flag to Dynamo's wrap
of our modules (Note [compile without allow_rnn] in rnnkernels/_dynamo_support.py), so
they compile with the default config and torch.nn's own modules are refused as before.
The dense path compiles as one graph: our argument checks are plain Python on shapes,
and the recurrence ops have fake kernels and registered autograd. The packed path breaks the graph where it reads batch_sizes
(and checks sorted_indices) on the host, as torch.nn's own code does.

Compilation is slow (inductor compiles C++), so the cases are few and tiny.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo.testing
from torch.nn.utils.rnn import pack_sequence

import rnnkernels

I, H, B, T = 5, 7, 3, 4
F64 = torch.float64


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny shapes; worker threads only add latency on a busy box
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def _run(model, *args):
    """Output tensors of a forward and the gradients of a fixed loss w.r.t. every leaf."""
    inputs = [a.data if hasattr(a, "batch_sizes") else a for a in args]   # PackedSequence
    leaves = [a for a in inputs if isinstance(a, torch.Tensor)] + list(model.parameters())
    for leaf in leaves:
        leaf.grad = None
    output, hidden = model(*args)
    data = output.data if hasattr(output, "batch_sizes") else output
    tensors = [data] + (list(hidden) if isinstance(hidden, tuple) else [hidden])
    generator = torch.Generator().manual_seed(0)
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=generator)).sum()
               for t in tensors)
    loss.backward()
    grads = [leaf.grad.clone() for leaf in leaves]
    return [t.detach() for t in tensors], grads


def _assert_compiled_matches_eager(module, compiled, *args):
    eager_out, eager_grads = _run(module, *args)
    compiled_out, compiled_grads = _run(compiled, *args)
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(compiled_grads, eager_grads)


@pytest.mark.parametrize("kind,batch", [("LSTM", B), ("GRU", B), ("RNN", B), ("LSTM", 8)],
                         ids=["LSTM", "GRU", "RNN", "LSTM-fused_input"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_fullgraph_dense_matches_eager(kind, batch, backend):
    options = {"LSTM": dict(proj_size=3) if batch == B else {},
               "RNN": dict(nonlinearity="relu")}.get(kind, {})
    module = getattr(rnnkernels, kind)(I, H, num_layers=2, bidirectional=True, batch_first=True,
                                        dtype=F64, **options)
    x = torch.randn(batch, T, I, dtype=F64, requires_grad=True)
    compiled = torch.compile(module, backend=backend, fullgraph=True)
    _assert_compiled_matches_eager(module, compiled, x)
    # A weight change between calls is seen by the compiled module too.
    with torch.no_grad():
        module.weight_hh_l0.mul_(0.5)
    _assert_compiled_matches_eager(module, compiled, x)


def test_inductor_matches_eager():
    # Not fullgraph: inductor must lower whatever graphs dynamo hands it, our ops included.
    module = rnnkernels.LSTM(I, H, dtype=F64)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    compiled = torch.compile(module, backend="inductor")
    _assert_compiled_matches_eager(module, compiled, x)


class _Model(torch.nn.Module):
    """Our layers inside a user's model, next to a plain layer."""

    def __init__(self):
        super().__init__()
        self.lstm = rnnkernels.LSTM(I, H, batch_first=True, dtype=F64)
        self.head = torch.nn.Sequential(torch.nn.Linear(H, H, dtype=F64),
                                        rnnkernels.GRU(H, H, dtype=F64))
        self.rnn = rnnkernels.RNN(H, H, nonlinearity="relu", dtype=F64)

    def forward(self, x):
        out, _ = self.lstm(x)
        out = self.head[0](out).transpose(0, 1)
        out, _ = self.head[1](out)
        return self.rnn(out)


def test_fullgraph_with_default_dynamo_config():
    """No flag: a model holding our layers compiles as one graph; the flag stays off and
    isinstance still holds."""
    assert torch._dynamo.config.allow_rnn is False
    model = _Model()
    assert isinstance(model.lstm, torch.nn.LSTM) and isinstance(model.head[1], torch.nn.GRU)
    x = torch.randn(B, T, I, dtype=F64, requires_grad=True)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    _assert_compiled_matches_eager(model, compiled, x)
    assert counter.frame_count == 1
    assert torch._dynamo.config.allow_rnn is False


def test_torch_nn_modules_are_refused_as_before():
    """Only our modules get the scoped flag: torch.nn's own still meet Dynamo's refusal
    (fullgraph raises, and without fullgraph Dynamo falls back around them)."""
    torch.compile(rnnkernels.LSTM(I, H, dtype=F64), backend="eager", fullgraph=True)(
        torch.randn(T, B, I, dtype=F64))
    for module in (torch.nn.LSTM(I, H, dtype=F64), torch.nn.GRU(I, H, dtype=F64),
                   torch.nn.RNN(I, H, dtype=F64)):
        with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
            torch.compile(module, backend="eager", fullgraph=True)(torch.randn(T, B, I, dtype=F64))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_at_most_one_recompile_over_batch_and_length(kind):
    """Batch size and sequence length marked dynamic: the first call compiles, new sizes
    recompile at most once (counted by the backend)."""
    module = getattr(rnnkernels, kind)(I, H, dtype=F64)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    for steps, batch in ((5, 3), (7, 4), (9, 2), (4, 6), (11, 5)):
        x = torch.randn(steps, batch, I, dtype=F64)
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(x, 1)
        got, want = compiled(x), module(x)
        torch.testing.assert_close(got[0], want[0])
    assert counter.frame_count <= 2, counter.frame_count


def test_import_does_not_import_dynamo_and_the_hook_patches_it():
    code = ("import sys, rnnkernels; assert 'torch._dynamo' not in sys.modules; "
            "from torch._dynamo.variables.builder import VariableBuilder; "
            "assert VariableBuilder.wrap_module._rnnkernels_scoped_allow_rnn; "
            "import torch._dynamo as d; import sys as s; "
            "print('ok')")
    first = ("import torch._dynamo, rnnkernels; "
             "from torch._dynamo.variables.builder import VariableBuilder; "
             "assert VariableBuilder.wrap_module._rnnkernels_scoped_allow_rnn; print('ok')")
    for program in (code, first):
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
        assert out.stdout.strip() == "ok", out.stderr


def test_packed_compiles_and_matches_eager():
    module = rnnkernels.LSTM(I, H, dtype=F64)
    sequences = [torch.randn(n, I, dtype=F64) for n in (4, 2, 3)]
    packed = pack_sequence(sequences, enforce_sorted=False)
    packed = type(packed)(packed.data.clone().requires_grad_(), *packed[1:])
    compiled = torch.compile(module, backend="aot_eager")
    _assert_compiled_matches_eager(module, compiled, packed)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fullgraph_graph_holds_the_rnnkernels_ops(kind):
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    module = getattr(rnnkernels, kind)(I, H, num_layers=2, dtype=F64)
    torch.compile(module, backend=recording_backend, fullgraph=True)(
        torch.randn(T, B, I, dtype=F64))
    assert len(graphs) == 1
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    assert any("rnnkernels.rnn_layer" in target for target in targets), targets
    assert not any("_VF" in target or "aten.lstm" in target for target in targets), targets


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fullgraph_training_with_zoneout_matches_eager(kind):
    # Zoneout draws its weights with torch.rand inside forward: one graph, and under the same
    # seed the same draws as eager (aot_eager runs the graph's rand as eager does).
    options = dict(zoneout_h=0.3) | (dict(zoneout_c=0.4) if kind == "LSTM" else {})
    module = getattr(rnnkernels, kind)(I, H, num_layers=2, bidirectional=True, dtype=F64,
                                        **options).train()
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
        torch.manual_seed(4)
        eager_out, eager_grads = _run(module, x)
        torch.manual_seed(4)
        compiled_out, compiled_grads = _run(compiled, x)
    torch.testing.assert_close(compiled_out, eager_out)
    torch.testing.assert_close(compiled_grads, eager_grads)
