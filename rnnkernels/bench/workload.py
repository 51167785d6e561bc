"""The two models of a case (torch.nn and rnnkernels, one state_dict) and their passes."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels

from .cases import Case, sequence_lengths

VARIANTS = ("nn", "ours")

_TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "rnn_relu": nn.RNN}
_OUR_CLASSES = {"lstm": rnnkernels.LSTM, "gru": rnnkernels.GRU, "rnn": rnnkernels.RNN,
                "rnn_relu": rnnkernels.RNN}


def module_kwargs(case: Case) -> dict:
    kwargs = dict(input_size=case.I, hidden_size=case.H, num_layers=case.layers,
                  bidirectional=case.bidirectional, batch_first=False)
    if case.proj:
        kwargs["proj_size"] = case.proj
    if case.cell == "rnn_relu":
        kwargs["nonlinearity"] = "relu"
    return kwargs


def build_models(case: Case, seed: int = 0) -> dict[str, nn.Module]:
    """torch.nn's module and ours with the same state_dict, on the case's device and dtype."""
    torch.manual_seed(seed)
    reference = _TORCH_CLASSES[case.cell](**module_kwargs(case))
    ours = _OUR_CLASSES[case.cell](**module_kwargs(case))
    ours.load_state_dict(reference.state_dict())
    dtype = getattr(torch, case.dtype)
    models = {"nn": reference, "ours": ours}
    for model in models.values():
        model.to(device=case.device, dtype=dtype)
        model.train(case.mode == "training")
    return models


def build_model(case: Case, variant: str, seed: int = 0) -> nn.Module:
    return build_models(case, seed)[variant]


@dataclass
class Inputs:
    x: torch.Tensor | PackedSequence
    grad_output: torch.Tensor | None  # upstream gradient of the output (training)


def make_inputs(case: Case, seed: int = 1) -> Inputs:
    """x [T, B, I] (or its PackedSequence), requiring grad in training mode, and a fixed
    upstream gradient for the output."""
    generator = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    x = torch.randn(case.T, case.B, case.I, generator=generator).to(device=case.device, dtype=dtype)
    out_features = case.directions * case.output_size
    if case.packed:
        lengths = torch.tensor(sequence_lengths(case), dtype=torch.int64)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
        data = packed.data.detach().clone()
        if case.mode == "training":
            data.requires_grad_()  # a leaf, so every pass can run backward
        x_in = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        grad_shape = (data.shape[0], out_features)
    else:
        x_in = x.requires_grad_() if case.mode == "training" else x
        grad_shape = (case.T, case.B, out_features)
    grad = None
    if case.mode == "training":
        grad = torch.randn(*grad_shape, generator=generator).to(device=case.device, dtype=dtype)
    return Inputs(x_in, grad)


def _leaf_input(inputs: Inputs) -> torch.Tensor:
    return inputs.x.data if isinstance(inputs.x, PackedSequence) else inputs.x


def make_pass(case: Case, model: nn.Module, inputs: Inputs) -> Callable[[], object]:
    """One pass: the forward under torch.inference_mode(), or in training the forward and
    the backward of output.backward(grad_output), with the gradients set to None first as
    a training loop's zero_grad(set_to_none=True) does. Returns the output."""
    x = inputs.x
    if case.mode == "inference":
        def inference_pass():
            with torch.inference_mode():
                return model(x)[0]
        return inference_pass

    params = [p for p in model.parameters() if p.requires_grad]
    leaf = _leaf_input(inputs)
    grad = inputs.grad_output

    def training_pass():
        for p in params:
            p.grad = None
        leaf.grad = None
        out = model(x)[0]
        out_tensor = out.data if isinstance(out, PackedSequence) else out
        out_tensor.backward(grad)
        return out_tensor

    return training_pass


def saved_activation_bytes(case: Case, model: nn.Module, inputs: Inputs) -> int:
    """Bytes of the distinct storages autograd saves during one training forward, less the
    parameters and the input (both already exist): what a model keeps alive for its
    backward. Measured with torch.autograd.graph.saved_tensors_hooks."""
    if case.mode != "training":
        return 0
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude.add(_leaf_input(inputs).untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inputs.x)
    del out
    return sum(seen.values())


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (the profiler's C++ start/stop lines) for a moment."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_PATH_CACHE: dict[tuple, str] = {}


def implementation_path(case: Case, variant: str, model: nn.Module, inputs: Inputs) -> str:
    """Which implementation one inference call runs, from the profiler's op names:
    'rnnkernels', 'oneDNN', 'cuDNN' or 'ATen native'. It depends on the cell, dtype,
    device, packing and projection only, so it is profiled once per such combination."""
    cache_key = (variant, case.cell, case.dtype, case.device, case.packed, case.proj > 0)
    if cache_key in _PATH_CACHE:
        return _PATH_CACHE[cache_key]
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            model(inputs.x)
        names = {event.key for event in prof.key_averages()}
    except Exception as err:  # the profiler is a diagnostic; never fail the benchmark on it
        return f"unknown ({type(err).__name__})"
    if any(name.startswith("rnnkernels::") for name in names):
        path = "rnnkernels"
    elif any("mkldnn_rnn" in name for name in names):
        path = "oneDNN"
    elif any("cudnn_rnn" in name for name in names):
        path = "cuDNN"
    else:
        path = "ATen native"
    _PATH_CACHE[cache_key] = path
    return path
