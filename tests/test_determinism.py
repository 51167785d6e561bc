"""Run-to-run determinism on CPU: with torch.use_deterministic_algorithms(True) (and
without) our ops give bit-identical outputs and gradients when called twice on the same
inputs. The CPU kernels split work by a fixed rule of the sizes and thread count and
reduce in a fixed order, with no atomics."""

import pytest
import torch

import rnnkernels


def _run(module, x, hx):
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out, hidden = module(x, hx)
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    upstream = torch.Generator().manual_seed(3)
    loss = (out * torch.randn(out.shape, generator=upstream)).sum() + sum(s.sum() for s in states)
    loss.backward()
    return [out, *states, x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "default"])
@pytest.mark.parametrize("cls,kwargs", [
    (rnnkernels.LSTM, dict(num_layers=2, bidirectional=True)),
    (rnnkernels.LSTM, dict(proj_size=7)),
    (rnnkernels.GRU, dict(bidirectional=True)),
    (rnnkernels.RNN, dict(nonlinearity="relu", num_layers=2)),
], ids=["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_bit_identical_run_to_run(cls, kwargs, deterministic):
    torch.manual_seed(0)
    module = cls(300, 33, **kwargs)  # input 300: the own-GEMM projection path
    x = torch.randn(40, 16, 300)  # batch 16: the fused LSTM path
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        first = _run(module, x, None)
        second = _run(module, x, None)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
