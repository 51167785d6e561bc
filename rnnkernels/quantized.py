"""int8 inference: dynamically quantized LSTM, GRU, RNN and cells for the CPU.

    qmodel = rnnkernels.quantize_dynamic(model)    # every LSTM/GRU/RNN/cell, ours or torch.nn's
    model = rnnkernels.dequantize(qmodel)          # back to float32 rnnkernels modules

Weights are int8, symmetric per output channel (row), quantized once; activations are
quantized per row at run time (the input before the input projection of all steps, h
before every step's recurrent product); products run in int8 with int32 sums, gates, cell
state and outputs in float32 (Note [int8 inference] in csrc/cpu/int8_isa.h;
rnnkernels.reference.quantized_layer simulates the scheme in float64).

The modules subclass their float rnnkernels counterparts, so forward takes the same
arguments (PackedSequence, unbatched input, batch_first, h0/c0) and checks them the same
way. They are for inference: a call in training mode, a float64 or bfloat16 input, or a
backward through them raises. Their state_dict holds each weight as int8 under torch.nn's
name with a float32 `<name>_scale` beside it, and the float32 biases.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import Tensor, nn

from . import nn as rnn
from ._ext import _C

__all__ = ["QuantizedLSTM", "QuantizedGRU", "QuantizedRNN", "QuantizedLSTMCell",
           "QuantizedGRUCell", "QuantizedRNNCell", "quantize_dynamic", "dequantize",
           "quantize_weight", "int8_kernels"]


def int8_kernels() -> str:
    """The int8 kernel variant this CPU runs: "avx512_vnni" (VNNI dot products),
    "avx512" or "avx2" (16-bit products), "default" (portable)."""
    return _C.int8_kernels()


def quantize_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output row: (W_q int8 [N, K], scale float32 [N]) with
    scale = max|W[n, :]| / 127 and W_q = round_half_even(W / scale) (0 for a zero row)."""
    w = w.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("quantize_weight: the weight holds NaN or infinite values")
    scale = w.abs().amax(dim=1) / 127
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    w_q = torch.round(w / divisor[:, None]).clamp_(-127, 127).to(torch.int8)
    return w_q, scale


class _InferenceOnly(torch.autograd.Function):
    """Identity on the result that refuses the backward (int8 modules have none)."""

    @staticmethod
    def forward(ctx, name, result, *sources):
        ctx.name = name
        return result.view_as(result)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"{ctx.name} is an int8 inference module and has no backward; convert it back "
            f"with rnnkernels.dequantize(model) to train")


def _refuse_backward(name: str, result, sources):
    """result (a tensor or a tuple of them) tied to the sources that require grad, so that
    a backward through it raises instead of silently treating it as a constant."""
    needs = [s for s in sources if isinstance(s, Tensor) and s.requires_grad]
    if not needs or not torch.is_grad_enabled():
        return result
    if isinstance(result, tuple):
        return tuple(_refuse_backward(name, r, sources) for r in result)
    return _InferenceOnly.apply(name, result, *needs)


# Batches from which a layer's input projection runs inside its steps (Note [int8 fused
# input projection]); below, a step is a matrix-vector product bound by reading the
# weights, and one product of all steps before the loop reads W_ih once.
_MIN_FUSED_BATCH = int(os.environ.get("RNNKERNELS_INT8_MIN_FUSED_BATCH", "8"))

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


class _Int8Weights:
    """Weights as int8 buffers (torch.nn's names) with <name>_scale, biases as float32
    buffers, and the packed panels cached per kernel vector width and buffer version."""

    def _install_int8(self, source: nn.Module, names) -> None:
        self._int8_cache = {}
        for name in names:
            value = getattr(source, name)
            self._parameters.pop(name, None)
            if value is None:
                self.register_buffer(name, None)
                continue
            if name.startswith("weight"):
                try:
                    w_q, scale = quantize_weight(value)
                except ValueError as e:
                    raise ValueError(f"{type(self).__name__}: {name}: {e}") from None
                self.register_buffer(name, w_q)
                self.register_buffer(name + "_scale", scale)
            else:
                self.register_buffer(name, value.detach().to(device="cpu", dtype=torch.float32)
                                     .clone())
        self.train(False)

    def _packed(self, name: str, gates: int) -> tuple:
        w_q, scale = getattr(self, name), getattr(self, name + "_scale")
        width = _C.int8_vector_width()
        key = (width, w_q.data_ptr(), w_q._version, scale.data_ptr(), scale._version)
        cache = self.__dict__.setdefault("_int8_cache", {})
        hit = cache.get(name)
        if hit is None or hit[0] != key:
            if w_q.dtype != torch.int8 or scale.dtype != torch.float32:
                raise RuntimeError(
                    f"{type(self).__name__}: {name} must be int8 with a float32 scale, got "
                    f"{w_q.dtype} and {scale.dtype} (was the module converted with .to()?)")
            panels, panel_scale, panel_sum = _C.int8_pack(w_q, scale, gates)
            units = w_q.shape[0] // gates
            hit = (key, (panels, panel_scale, panel_sum, units, gates, w_q.shape[1], width))
            cache[name] = hit
        return hit[1]

    def _float_weight(self, name: str) -> Tensor:
        return getattr(self, name).to(torch.float32) * getattr(self, name + "_scale")[:, None]

    def _check_inference(self) -> None:
        name = type(self).__name__
        if torch.jit.is_tracing():
            # The kernels are opaque to the tracer: the trace would hold this call's output
            # as a constant.
            raise RuntimeError(
                f"{name} cannot be traced (torch.jit.trace, ONNX export): the int8 kernels are "
                f"not operators a graph can hold; export the float model instead")
        if self.training:
            raise RuntimeError(
                f"{name} is an int8 inference module: call .eval() before running it (it has "
                f"no training mode; rnnkernels.dequantize(model) gives float modules to train)")

    def _input_dtype(self) -> torch.dtype:
        return torch.float32

    def __prepare_scriptable__(self):
        raise RuntimeError(f"{type(self).__name__} cannot be scripted: the int8 kernels are not "
                           f"TorchScript operators; script the float model instead")

    def reset_parameters(self) -> None:  # noqa: D102  (quantized weights are not re-drawn)
        pass

    def __getstate__(self):  # the packed panels are rebuilt on first use, not pickled
        state = dict(super().__getstate__())
        state["_int8_cache"] = {}
        return state


def _check_input_dtype(module, input: Tensor) -> None:
    if input.dtype != torch.float32:
        raise rnn.DtypeMismatchError(
            f"{type(module).__name__}: expected float32 input (int8 weights, float32 "
            f"activations), got {input.dtype}; convert the input with input.float()")
    if input.device.type != "cpu":
        raise RuntimeError(f"{type(module).__name__}: the int8 kernels run on the CPU, got "
                           f"input on {input.device}")


def _check_state_dtypes(name: str, states) -> None:
    for state in states:
        if state.dtype != torch.float32:
            raise rnn.DtypeMismatchError(f"{name}: int8 modules take float32 states, got "
                                         f"{state.dtype}")


class _QuantizedLayers(_Int8Weights):
    """LSTM, GRU and RNN: the float module's argument handling around int8 layers."""

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False):
        """The int8 module of a float torch.nn or rnnkernels module (its weights quantized
        now). torch.ao.quantization.quantize_dynamic calls this."""
        _check_convertible(mod, cls)
        kwargs = dict(num_layers=mod.num_layers, bias=mod.bias, batch_first=mod.batch_first,
                      dropout=mod.dropout, bidirectional=mod.bidirectional, device="meta")
        if cls is QuantizedLSTM:
            kwargs["proj_size"] = mod.proj_size
        if cls is QuantizedRNN:
            kwargs["nonlinearity"] = mod.nonlinearity
        q = cls(mod.input_size, mod.hidden_size, **kwargs)
        q._install_int8(mod, q._flat_weights_names)
        q._init_flat_weights()
        return q

    def flatten_parameters(self) -> None:  # noqa: D102
        pass

    def extra_repr(self) -> str:
        return (nn.RNNBase.extra_repr(self) + ", int8 weights per output channel, activations "
                "quantized per row at run time")

    def check_input(self, input: Tensor, batch_sizes) -> None:  # noqa: D102
        # torch.nn's check_input without its weight-dtype comparison (the weights are int8).
        _check_input_dtype(self, input)
        expected = 2 if batch_sizes is not None else 3
        if input.dim() != expected:
            raise RuntimeError(f"input must have {expected} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.size(-1)}")

    @staticmethod
    def _check_state_dtypes(hx, is_lstm: bool, input: Tensor):
        _check_state_dtypes("int8 module", hx if is_lstm else (hx,))
        return rnn._RecurrentForward._check_state_dtypes(hx, is_lstm, input)

    def forward(self, input, hx=None):  # noqa: D102
        self._check_inference()
        output, hidden = self._run(input, hx, is_lstm=self.mode == "LSTM")
        data = input.data if isinstance(input, nn.utils.rnn.PackedSequence) else input
        sources = [data] + list(hx if isinstance(hx, tuple) else [hx])
        if isinstance(output, nn.utils.rnn.PackedSequence):
            data = _refuse_backward(type(self).__name__, output.data, sources)
            output = nn.utils.rnn.PackedSequence(data, output.batch_sizes, output.sorted_indices,
                                                 output.unsorted_indices)
        else:
            output = _refuse_backward(type(self).__name__, output, sources)
        return output, _refuse_backward(type(self).__name__, hidden, sources)

    def _kernel_forward(self, input, hx, batch_sizes):
        cell, gates = _CELLS[self.mode], _GATES[self.mode]
        lstm = self.mode == "LSTM"
        directions = 2 if self.bidirectional else 1
        if batch_sizes is None:
            x = input.transpose(0, 1) if self.batch_first else input
            steps, batch = x.shape[0], x.shape[1]
            layer_input = x.reshape(steps * batch, x.shape[2])
        else:
            layer_input = input
        h0, c0 = hx if lstm else (hx, None)
        with torch.no_grad():
            h_n, c_n = [], []
            for layer in range(self.num_layers):
                outputs = []
                for d in range(directions):
                    suffix = f"_l{layer}" + ("_reverse" if d else "")
                    index = layer * directions + d
                    b_ih = getattr(self, "bias_ih" + suffix, None) if self.bias else None
                    b_hh = getattr(self, "bias_hh" + suffix, None) if self.bias else None
                    # Both biases on the input side, but GRU's b_hn, which r multiplies.
                    fold = b_ih is not None and self.mode != "GRU"
                    input_bias = b_ih + b_hh if fold else b_ih
                    w_ih = self._packed("weight_ih" + suffix, gates)
                    w_hr = (self._packed("weight_hr" + suffix, 1)
                            if lstm and self.proj_size > 0 else None)
                    if h0.shape[1] >= _MIN_FUSED_BATCH:  # Note [int8 fused input projection]
                        step_input, fused_w_ih, fused_b_ih = layer_input, w_ih, input_bias
                    else:
                        step_input = _C.int8_linear(layer_input, w_ih, input_bias)
                        fused_w_ih = fused_b_ih = None
                    out, h, c = _C.int8_recurrence(
                        cell, step_input, fused_w_ih, fused_b_ih,
                        self._packed("weight_hh" + suffix, gates), w_hr,
                        None if fold else b_hh, h0[index], c0[index] if lstm else None,
                        batch_sizes, d == 1)
                    outputs.append(out)
                    h_n.append(h)
                    c_n.append(c)
                layer_input = outputs[0] if directions == 1 else torch.cat(outputs, 1)
            output = layer_input
            if batch_sizes is None:
                output = output.view(steps, batch, output.shape[-1])
                if self.batch_first:
                    output = output.transpose(0, 1)
            hidden = torch.stack(h_n)
            return output, ((hidden, torch.stack(c_n)) if lstm else hidden)


class QuantizedLSTM(_QuantizedLayers, rnn.LSTM):
    """int8 inference twin of rnnkernels.LSTM / torch.nn.LSTM (see rnnkernels.quantized)."""


class QuantizedGRU(_QuantizedLayers, rnn.GRU):
    """int8 inference twin of rnnkernels.GRU / torch.nn.GRU (see rnnkernels.quantized)."""


class QuantizedRNN(_QuantizedLayers, rnn.RNN):
    """int8 inference twin of rnnkernels.RNN / torch.nn.RNN (see rnnkernels.quantized)."""


_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class _QuantizedCell(_Int8Weights):
    """The cells: one step of the int8 layer kernels, the float cell's argument checks."""

    @classmethod
    def from_float(cls, mod: nn.Module, use_precomputed_fake_quant: bool = False):
        """The int8 cell of a float torch.nn or rnnkernels cell (see _QuantizedLayers)."""
        _check_convertible(mod, cls)
        kwargs = dict(bias=mod.bias, device="meta")
        if cls is QuantizedRNNCell:
            kwargs["nonlinearity"] = mod.nonlinearity
        q = cls(mod.input_size, mod.hidden_size, **kwargs)
        q._install_int8(mod, _CELL_WEIGHTS)
        return q

    def extra_repr(self) -> str:
        return (type(self).__mro__[2].extra_repr(self) + ", int8 weights per output channel, "
                "activations quantized per row at run time")

    def _step(self, cell: str, gates: int, input, hx, is_lstm: bool):
        self._check_inference()
        if isinstance(input, Tensor):
            _check_input_dtype(self, input)
        x, states, is_batched = self._cell_inputs(input, hx, is_lstm=is_lstm)
        _check_state_dtypes(type(self).__name__, states)
        with torch.no_grad():
            fold = self.bias and cell != "gru"
            b_ih = self.bias_ih + self.bias_hh if fold else (self.bias_ih if self.bias else None)
            x_proj = _C.int8_linear(x, self._packed("weight_ih", gates), b_ih)
            _, h, c = _C.int8_recurrence(cell, x_proj, None, None,
                                         self._packed("weight_hh", gates), None,
                                         None if fold or not self.bias else self.bias_hh,
                                         states[0], states[1] if is_lstm else None, None, False)
        result = (h, c) if is_lstm else h
        if not is_batched:
            result = (h.squeeze(0), c.squeeze(0)) if is_lstm else h.squeeze(0)
        sources = [input] + list(hx if isinstance(hx, tuple) else [hx])
        return _refuse_backward(type(self).__name__, result, sources)


class QuantizedLSTMCell(_QuantizedCell, rnn.LSTMCell):
    """int8 inference twin of LSTMCell (see rnnkernels.quantized)."""

    def forward(self, input: Tensor, hx=None):  # noqa: D102
        return self._step("lstm", 4, input, hx, is_lstm=True)


class QuantizedGRUCell(_QuantizedCell, rnn.GRUCell):
    """int8 inference twin of GRUCell (see rnnkernels.quantized)."""

    def forward(self, input: Tensor, hx=None):  # noqa: D102
        return self._step("gru", 3, input, hx, is_lstm=False)


class QuantizedRNNCell(_QuantizedCell, rnn.RNNCell):
    """int8 inference twin of RNNCell (see rnnkernels.quantized)."""

    def forward(self, input: Tensor, hx=None):  # noqa: D102
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return self._step(f"rnn_{self.nonlinearity}", 1, input, hx, is_lstm=False)


# float class -> int8 class, for every class quantize_dynamic swaps (by exact type, as
# torch.ao.quantization does: a subclass may have changed what forward computes).
_QUANTIZED = {
    nn.LSTM: QuantizedLSTM, rnn.LSTM: QuantizedLSTM,
    nn.GRU: QuantizedGRU, rnn.GRU: QuantizedGRU,
    nn.RNN: QuantizedRNN, rnn.RNN: QuantizedRNN,
    nn.LSTMCell: QuantizedLSTMCell, rnn.LSTMCell: QuantizedLSTMCell,
    nn.GRUCell: QuantizedGRUCell, rnn.GRUCell: QuantizedGRUCell,
    nn.RNNCell: QuantizedRNNCell, rnn.RNNCell: QuantizedRNNCell,
}
_FLOAT = {QuantizedLSTM: rnn.LSTM, QuantizedGRU: rnn.GRU, QuantizedRNN: rnn.RNN,
          QuantizedLSTMCell: rnn.LSTMCell, QuantizedGRUCell: rnn.GRUCell,
          QuantizedRNNCell: rnn.RNNCell}


def _check_convertible(mod: nn.Module, cls) -> None:
    name = f"{type(mod).__name__} -> {cls.__name__}"
    qconfig = getattr(mod, "qconfig", None)
    if qconfig is not None and hasattr(qconfig, "weight"):
        dtype = getattr(qconfig.weight(), "dtype", torch.qint8)
        if dtype != torch.qint8:
            raise ValueError(f"{name}: rnnkernels' int8 modules quantize weights to qint8, the "
                             f"qconfig asks for {dtype}")
    for p in mod.parameters():
        if p.device.type != "cpu":
            raise ValueError(f"{name}: the int8 kernels run on the CPU; move the module to the "
                             f"CPU first (its weights are on {p.device})")
    for feature in ("recurrent_dropconnect", "zoneout_h", "zoneout_c", "layer_norm"):
        if getattr(mod, feature, 0):
            raise ValueError(f"{name}: {feature} has no int8 kernel; leave this module in "
                             f"float32 (quantize_dynamic(model, skip=...))")


def _swap(model: nn.Module, table: dict, make, skip) -> nn.Module:
    if type(model) in table and model not in skip:
        return make(model)
    for child_name, child in list(model.named_children()):
        swapped = _swap(child, table, make, skip)
        if swapped is not child:
            setattr(model, child_name, swapped)
    return model


def quantize_dynamic(model: nn.Module, *, inplace: bool = False, skip=()) -> nn.Module:
    """Swaps every torch.nn and rnnkernels LSTM, GRU, RNN, LSTMCell, GRUCell and RNNCell of
    `model` (exact types; the model itself too) for its int8 inference module. Modules in
    `skip` stay as they are. Returns the model (a deep copy unless inplace); call
    rnnkernels.dequantize to go back."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_dynamic: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        skip_ids = {id(m) for m in skip}
        memo = {}
        copied = copy.deepcopy(model, memo)
        skip = [memo[i] for i in skip_ids if i in memo]
        model = copied
    return _swap(model, _QUANTIZED, lambda m: _QUANTIZED[type(m)].from_float(m), list(skip))


def dequantize(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The inverse of quantize_dynamic: every int8 module becomes the float32 rnnkernels
    module (LSTM, GRU, ...) whose weights are the dequantized int8 ones (W_q * scale)."""
    if not inplace:
        model = copy.deepcopy(model)
    return _swap(model, _FLOAT, _to_float, [])


def _to_float(q: nn.Module) -> nn.Module:
    cls = _FLOAT[type(q)]
    if isinstance(q, _QuantizedLayers):
        kwargs = dict(num_layers=q.num_layers, bias=q.bias, batch_first=q.batch_first,
                      dropout=q.dropout, bidirectional=q.bidirectional)
        if cls is rnn.LSTM:
            kwargs["proj_size"] = q.proj_size
        if cls is rnn.RNN:
            kwargs["nonlinearity"] = q.nonlinearity
        names = q._flat_weights_names
    else:
        kwargs = dict(bias=q.bias)
        if cls is rnn.RNNCell:
            kwargs["nonlinearity"] = q.nonlinearity
        names = _CELL_WEIGHTS
    f = cls(q.input_size, q.hidden_size, **kwargs)
    with torch.no_grad():
        for name in names:
            if getattr(f, name, None) is None:
                continue
            value = q._float_weight(name) if name.startswith("weight") else getattr(q, name)
            getattr(f, name).copy_(value)
    f.train(q.training)
    return f


def _register_with_torch_ao() -> None:
    """torch.ao.quantization.quantize_dynamic(model, {rnnkernels.LSTM, ...}) swaps our float
    modules for these (its default dynamic mapping, by exact type)."""
    try:
        from torch.ao.quantization import quantization_mappings
    except ImportError:  # a torch without torch.ao.quantization
        return
    table = quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    for float_cls in (rnn.LSTM, rnn.GRU, rnn.RNN, rnn.LSTMCell, rnn.GRUCell, rnn.RNNCell):
        table.setdefault(float_cls, _QUANTIZED[float_cls])


_register_with_torch_ao()
