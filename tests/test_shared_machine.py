"""What a user on a shared machine does to a module between and during calls: interrupt a
long forward or backward with Ctrl-C, change torch.set_num_threads between calls, call
the modules from fork-based DataLoader workers and from torch.multiprocessing spawn
children, and train one module from two processes after share_memory(). Each time the
module must stay usable and give torch.nn's results (float64, so the comparisons are
tight)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import rnnkernels

F64 = torch.float64


def _pair(cls, *args, **kwargs):
    golden = getattr(nn, cls)(*args, dtype=F64, **kwargs)
    ours = getattr(rnnkernels, cls)(*args, dtype=F64, **kwargs)
    ours.load_state_dict(golden.state_dict())
    return golden, ours


def _assert_same_forward_and_grads(golden, ours, x):
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [golden(xs[0])[0], ours(xs[1])[0]]
    upstream = torch.randn_like(outs[0])
    grads = [torch.autograd.grad(o, [xi, *m.parameters()], upstream)
             for o, xi, m in zip(outs, xs, (golden, ours))]
    torch.testing.assert_close(outs[1], outs[0])
    for ours_grad, golden_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours_grad, golden_grad)


def _interrupt_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to self")
@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_keyboard_interrupt_leaves_the_module_usable(phase):
    # The interrupt lands while our op runs in C++; Python raises KeyboardInterrupt when the
    # op returns (or in the loop around it). Afterwards the module's state is unchanged and
    # a call gives torch.nn's answer (the buffer cache and thread pool are not left locked).
    torch.manual_seed(0)
    golden, ours = _pair("LSTM", 64, 128, num_layers=2)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    x_long = torch.randn(400, 16, 64, dtype=F64, requires_grad=True)
    interrupted = False
    timer = None
    # Python's own SIGINT handler for this test: a handler another test or library left
    # installed would swallow the interrupt (seen once in a full CI run).
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if phase == "forward":
            timer = _interrupt_after(0.05)
            for _ in range(200):
                ours(x_long)
        else:
            out, _ = ours(x_long)
            timer = _interrupt_after(0.05)
            for _ in range(200):
                torch.autograd.grad(out.sum(), x_long, retain_graph=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if timer is not None:
            timer.cancel()
        signal.signal(signal.SIGINT, previous_handler)
    assert interrupted, (f"the loop finished before the interrupt; make it longer (SIGINT "
                         f"handler before the test: {previous_handler!r})")
    for name, value in ours.state_dict().items():
        assert torch.equal(value, before[name]), name
    _assert_same_forward_and_grads(golden, ours, torch.randn(9, 5, 64, dtype=F64))


def test_thread_count_changed_between_calls():
    torch.manual_seed(1)
    golden, ours = _pair("GRU", 33, 65, bidirectional=True)
    x = torch.randn(12, 64, 33, dtype=F64)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 1, previous):
            torch.set_num_threads(threads)
            _assert_same_forward_and_grads(golden, ours, x)
    finally:
        torch.set_num_threads(previous)


class _SequenceDataset(torch.utils.data.Dataset):
    """Each item runs the module in the worker process (the module travels by fork)."""

    def __init__(self, module, inputs):
        self.module, self.inputs = module, inputs

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        with torch.no_grad():
            return self.module(self.inputs[i])[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_dataloader_workers_run_the_modules():
    torch.manual_seed(2)
    golden, ours = _pair("LSTM", 17, 33, proj_size=5)
    ours(torch.randn(3, 2, 17, dtype=F64))  # the parent has used its thread pool and cache
    inputs = [torch.randn(6, 9, 17, dtype=F64) for _ in range(4)]
    loader = torch.utils.data.DataLoader(_SequenceDataset(ours, inputs), batch_size=None,
                                         num_workers=2, multiprocessing_context="fork")
    got = list(loader)
    with torch.no_grad():
        for out, x in zip(got, inputs):
            torch.testing.assert_close(out, golden(x)[0])


def _spawned_forward(rank, state, inputs, results):
    torch.set_num_threads(1)
    module = rnnkernels.RNN(5, 7, nonlinearity="relu", dtype=F64)
    module.load_state_dict(state)
    with torch.no_grad():
        results[rank] = module(inputs[rank])[0]


def test_spawned_processes_run_the_modules():
    torch.manual_seed(3)
    golden, _ = _pair("RNN", 5, 7, nonlinearity="relu")
    inputs = [torch.randn(4, 3, 5, dtype=F64) for _ in range(2)]
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_spawned_forward, args=(golden.state_dict(), inputs, results), nprocs=2, join=True)
    with torch.no_grad():
        for rank in range(2):
            torch.testing.assert_close(results[rank], golden(inputs[rank])[0])


def _hogwild_step(module, x, done):
    torch.set_num_threads(1)
    module.zero_grad()
    module(x).sum().backward()
    with torch.no_grad():
        for p in module.parameters():
            p -= 0.1 * p.grad
    done.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_shared_memory_module_trained_from_a_child_process():
    # share_memory() then a child process updates the parameters in place (Hogwild): the
    # parent sees the child's update and keeps using the module.
    torch.manual_seed(4)
    golden, ours = _pair("GRUCell", 6, 8)
    ours.share_memory()
    x = torch.randn(5, 6, dtype=F64)
    ctx = mp.get_context("fork")
    done = ctx.Event()
    child = ctx.Process(target=_hogwild_step, args=(ours, x, done))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0 and done.is_set()
    golden(x).sum().backward()
    with torch.no_grad():
        for p in golden.parameters():
            p -= 0.1 * p.grad
    for name, value in golden.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), golden(x))
