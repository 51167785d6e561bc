"""torch.compile on rnnkernels' LSTM, GRU and RNN: outputs and gradients equal eager.

Dynamo refuses to trace any instance of torch.nn.RNN, GRU or LSTM unless
`torch._dynamo.config.allow_rnn` is set ("Attempted to wrap RNN, GRU, or LSTM", an
isinstance check in torch/_dynamo/variables/builder.py). Our modules subclass those
classes so that isinstance holds for users, and so inherit the refusal: with the default
config a compiled model runs our forward eagerly around the graph (still correct), and
fullgraph=True fails. With allow_rnn=True the dense path is meant to compile as one graph:
our argument checks are plain Python on shapes, and the recurrence ops have fake kernels
and registered autograd. The packed path breaks the graph where it reads batch_sizes
(and checks sorted_indices) on the host, as torch.nn's own code does.

Compilation is slow (inductor compiles C++), so the cases are few and tiny.
"""

from __future__ import annotations

import pytest
import torch
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
    with torch._dynamo.config.patch(allow_rnn=True):
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
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(module, backend="inductor")
        _assert_compiled_matches_eager(module, compiled, x)


@pytest.mark.xfail(strict=True, raises=torch._dynamo.exc.Unsupported,
                   reason="torch 2.13 dynamo refuses every instance of nn.RNN/GRU/LSTM unless "
                          "torch._dynamo.config.allow_rnn=True; ours subclass them")
def test_fullgraph_with_default_dynamo_config():
    module = rnnkernels.GRU(I, H, dtype=F64)
    torch.compile(module, backend="eager", fullgraph=True)(torch.randn(T, B, I, dtype=F64))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_default_config_compile_is_correct(kind):
    # What a user gets without allow_rnn: our forward runs outside the graph, correctly.
    module = getattr(rnnkernels, kind)(I, H, num_layers=2, dtype=F64)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    compiled = torch.compile(module, backend="aot_eager")
    _assert_compiled_matches_eager(module, compiled, x)


def test_packed_compiles_and_matches_eager():
    module = rnnkernels.LSTM(I, H, dtype=F64)
    sequences = [torch.randn(n, I, dtype=F64) for n in (4, 2, 3)]
    packed = pack_sequence(sequences, enforce_sorted=False)
    packed = type(packed)(packed.data.clone().requires_grad_(), *packed[1:])
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(module, backend="aot_eager")
        _assert_compiled_matches_eager(module, compiled, packed)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fullgraph_graph_holds_the_rnnkernels_ops(kind):
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    module = getattr(rnnkernels, kind)(I, H, num_layers=2, dtype=F64)
    with torch._dynamo.config.patch(allow_rnn=True):
        torch.compile(module, backend=recording_backend, fullgraph=True)(
            torch.randn(T, B, I, dtype=F64))
    assert len(graphs) == 1
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    op = f"rnnkernels.{kind.lower()}_forward"
    assert any(op in target for target in targets), targets
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
