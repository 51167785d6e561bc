"""The two models of a case (torch.nn and rnnkernels, one state_dict), their passes, and
the engine each pass runs."""

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

_TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN, "rnn_relu": nn.RNN,
                  "lstm_cell": nn.LSTMCell, "gru_cell": nn.GRUCell, "rnn_cell": nn.RNNCell}
_OUR_CLASSES = {"lstm": rnnkernels.LSTM, "gru": rnnkernels.GRU, "rnn": rnnkernels.RNN,
                "rnn_relu": rnnkernels.RNN, "lstm_cell": rnnkernels.LSTMCell,
                "gru_cell": rnnkernels.GRUCell, "rnn_cell": rnnkernels.RNNCell}


def module_kwargs(case: Case) -> dict:
    if case.is_step_cell:
        return dict(input_size=case.I, hidden_size=case.H)
    kwargs = dict(input_size=case.I, hidden_size=case.H, num_layers=case.layers,
                  bidirectional=case.bidirectional, batch_first=False)
    if case.proj:
        kwargs["proj_size"] = case.proj
    if case.cell == "rnn_relu":
        kwargs["nonlinearity"] = "relu"
    return kwargs


def build_models(case: Case, seed: int = 0) -> dict[str, nn.Module]:
    """torch.nn's module and ours with the same state_dict, on the case's device and in
    its module dtype (float32 for autocast cases)."""
    torch.manual_seed(seed)
    reference = _TORCH_CLASSES[case.cell](**module_kwargs(case))
    ours = _OUR_CLASSES[case.cell](**module_kwargs(case))
    ours.load_state_dict(reference.state_dict())
    dtype = getattr(torch, case.module_dtype)
    models = {"nn": reference, "ours": ours}
    for model in models.values():
        model.to(device=case.device, dtype=dtype)
        model.train(case.mode == "training")
    if case.dtype == "int8":
        models["ours"] = rnnkernels.quantize_dynamic(ours)
    return models


def build_model(case: Case, variant: str, seed: int = 0) -> nn.Module:
    return build_models(case, seed)[variant]


@dataclass
class Inputs:
    x: torch.Tensor | PackedSequence
    state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None  # a *Cell's hx; None for layers
    grad_output: torch.Tensor | None  # upstream gradient of the output (training)

    def leaves(self) -> list[torch.Tensor]:
        """The input tensors a training pass takes gradients of: x (its packed data), and
        a *Cell's state, which in a user's unrolled loop comes from the previous step."""
        x = self.x.data if isinstance(self.x, PackedSequence) else self.x
        if self.state is None:
            return [x]
        return [x, self.state] if isinstance(self.state, torch.Tensor) else [x, *self.state]


def make_inputs(case: Case, seed: int = 1) -> Inputs:
    """Layers: x [T, B, I] (or its PackedSequence), no state. *Cells: x [B, I] and the state
    h [B, H] (LSTMCell: (h, c)). In the module dtype; requiring grad in training mode; and
    a fixed upstream gradient for the output ([T, B, D*P], packed [N, D*P]; *Cells [B, H])."""
    generator = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.module_dtype)
    training = case.mode == "training"

    def draw(*shape):
        return torch.randn(*shape, generator=generator).to(device=case.device, dtype=dtype)

    if case.is_step_cell:
        x = draw(case.B, case.I).requires_grad_(training)
        h = draw(case.B, case.H).requires_grad_(training)
        state = (h, draw(case.B, case.H).requires_grad_(training)) if case.cell == "lstm_cell" else h
        return Inputs(x, state, draw(case.B, case.H) if training else None)
    x = draw(case.T, case.B, case.I)
    out_features = case.directions * case.output_size
    if case.packed:
        lengths = torch.tensor(sequence_lengths(case), dtype=torch.int64)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
        data = packed.data.detach().clone().requires_grad_(training)  # a leaf: every pass runs backward
        x_in = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        grad_shape = (data.shape[0], out_features)
    else:
        x_in = x.requires_grad_(training)
        grad_shape = (case.T, case.B, out_features)
    return Inputs(x_in, None, draw(*grad_shape) if training else None)


def _precision(case: Case):
    """torch.autocast for an autocast case; nothing for a converted one."""
    if case.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(case.device, dtype=getattr(torch, case.autocast_dtype))


def forward(case: Case, model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """One forward call, under torch.autocast for an autocast case; returns the output
    tensor (a layer's output or its PackedSequence's data; a *Cell's h')."""
    with _precision(case):
        result = model(inputs.x) if inputs.state is None else model(inputs.x, inputs.state)
    out = result[0] if isinstance(result, tuple) else result
    return out.data if isinstance(out, PackedSequence) else out


def make_pass(case: Case, model: nn.Module, inputs: Inputs) -> Callable[[], object]:
    """One pass: the forward under torch.inference_mode(), or in training the forward and
    the backward of output.backward(grad_output) outside autocast, with the gradients set
    to None first as a training loop's zero_grad(set_to_none=True) does. The upstream
    gradient takes the output's dtype (under autocast torch.nn returns float32 for some
    cells, the autocast dtype for others), cast once. Returns the output."""
    if case.mode == "inference":
        def inference_pass():
            with torch.inference_mode():
                return forward(case, model, inputs)
        return inference_pass

    params = [p for p in model.parameters() if p.requires_grad]
    leaves = inputs.leaves()
    grad_by_dtype = {inputs.grad_output.dtype: inputs.grad_output}

    def training_pass():
        for tensor in params + leaves:
            tensor.grad = None
        out = forward(case, model, inputs)
        if out.dtype not in grad_by_dtype:
            grad_by_dtype[out.dtype] = inputs.grad_output.to(out.dtype)
        out.backward(grad_by_dtype[out.dtype])
        return out

    return training_pass


def saved_activation_bytes(case: Case, model: nn.Module, inputs: Inputs) -> int:
    """Bytes of the distinct storages autograd saves during one training forward, less the
    parameters and the input (both already exist): what a model keeps alive for its
    backward. Measured with torch.autograd.graph.saved_tensors_hooks."""
    if case.mode != "training":
        return 0
    exclude = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + inputs.leaves()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(case, model, inputs)
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


# The engine names of the results table and the old records' `path` for each.
ENGINE_PATHS = {"rnnk": "rnnkernels", "torch:oneDNN": "oneDNN", "torch:cuDNN": "cuDNN",
                "torch:native": "ATen native"}


def engine_from_op_names(names: set[str]) -> str:
    """The engine that ran, from the profiler's op names: 'rnnk' (an rnnkernels:: op),
    'torch:oneDNN' (mkldnn_rnn*), 'torch:cuDNN' (cudnn_rnn*), 'torch:native' (none of
    these: ATen's composite cells and layers); '+' joins engines that ran in one call."""
    engines = [engine for engine, marker in (("rnnk", "rnnkernels::"), ("torch:oneDNN", "mkldnn_rnn"),
                                             ("torch:cuDNN", "cudnn_rnn"))
               if any(marker in name for name in names)]
    return "+".join(engines) or "torch:native"


def profile_engine(run_pass: Callable[[], object]) -> str:
    """Which engine one run of the pass uses (inference: the forward; training: forward
    and backward), profiled on the case's own call: the engine can depend on the shape,
    mode and dtype, so nothing is cached. 'unknown (...)' when the profiler fails."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            run_pass()
        names = {event.key for event in prof.key_averages()}
    except Exception as err:  # the profiler is a diagnostic; never fail the benchmark on it
        return f"unknown ({type(err).__name__})"
    return engine_from_op_names(names)
