"""The graphs our layers export to ONNX where torch's RNN ops cannot express them.

Note [ONNX export]
Inside torch.onnx.export (either exporter) a layer or cell that torch's own implementation
can run records torch's RNN op (Note [tracing] in functional.py), which the exporters
translate to ONNX's native LSTM/GRU/RNN operators, the graph torch.nn exports. Three kinds
of layer have no such op, and export here as an explicit loop over time instead:
  - an LSTM with proj_size (ONNX's LSTM has no projection; torch's TorchScript exporter
    refuses it, and its dynamo exporter emits an LSTM node with the wrong hidden size
    that ONNX Runtime rejects);
  - zoneout in evaluation (each state is p * previous + (1 - p) * update: a recurrence
    of its own, not the plain cell);
  - the layer-normalised LSTM.
The Elman RNN keeps torch's op under the dynamo exporter too, which unrolls it for the
example's sequence length, as torch.nn's export does: a Scan would keep the length
dynamic, but torch 2.13 fails to decompose it when the initial state is a graph input.
The loop body is the reference's recurrence (rnnkernels/reference.py, the executable
specification), after one product of the whole sequence with W_ih. torch.onnx.export
(dynamo=False) traces: the loop is a TorchScript function, which the exporter turns into
an ONNX Loop; torch.onnx.export(dynamo=True) goes through torch.export: the loop is
torch's scan, which the exporter turns into an ONNX Scan. Both keep the batch and sequence
axes dynamic. Not exported: a PackedSequence through these layers, and zoneout or
dropout in training mode (random draws), each refused with an OnnxExporterError.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import Tensor

from . import _layers, reference


def in_onnx_export() -> bool:
    """Inside torch.onnx.export: its tracing (dynamo=False) or torch.export (dynamo=True).
    Cheap outside both, so the functional entry points may ask on every call."""
    if torch.jit.is_tracing():
        return torch.onnx.is_in_onnx_export()
    if torch.compiler.is_compiling():
        # dynamo folds torch.onnx.is_in_onnx_export() to False, so the dynamo exporter's
        # strict capture (its fallback) would record our ops: read the flag it reads.
        from torch.onnx._internal.exporter import _flags
        return getattr(_flags, "_is_onnx_exporting", False) or torch.onnx.is_in_onnx_export()
    return False


def needs_loop(proj: bool, zoneout_h: float = 0.0, zoneout_c: float = 0.0, layer_norm=None,
               **_) -> bool:
    """Whether a layer call exports here rather than as torch's RNN op (Note [ONNX export])."""
    return proj or bool(zoneout_h) or bool(zoneout_c) or layer_norm is not None


# ---------------------------------------------------------------- loops over time
# x_part [T, B, G*H]: the input products of every step; states [B, P] / [B, H]; keep_h,
# keep_c: zoneout's weight of the previous state per unit ([P], [H]) or None. The loops run
# forward; the reverse direction flips its sequence around them.

def _zoneout(keep: Tensor | None, previous: Tensor, update: Tensor) -> Tensor:
    return update if keep is None else keep * previous + (1 - keep) * update


def _lstm_loop(x_part: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None,
               w_hr: Tensor | None, keep_h: Tensor | None,
               keep_c: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    outputs: list[Tensor] = []
    for t in range(x_part.size(0)):
        h_next, c_next = reference.lstm_recurrence(x_part[t], h, c, w_hh, b_hh, w_hr)
        h = _zoneout(keep_h, h, h_next)
        c = _zoneout(keep_c, c, c_next)
        outputs.append(h)
    return torch.stack(outputs), h, c


def _layer_norm_lstm_loop(x_part: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, ln_hh: Tensor,
                          b_ih: Tensor | None, b_hh: Tensor | None, c_weight: Tensor,
                          c_bias: Tensor | None, hidden_size: int) -> tuple[Tensor, Tensor, Tensor]:
    outputs: list[Tensor] = []
    for t in range(x_part.size(0)):
        h, c = reference.layer_norm_lstm_recurrence(x_part[t], h, c, w_hh, ln_hh, b_ih, b_hh,
                                                    c_weight, c_bias, hidden_size)
        outputs.append(h)
    return torch.stack(outputs), h, c


def _gru_loop(x_part: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              keep_h: Tensor | None) -> tuple[Tensor, Tensor]:
    outputs: list[Tensor] = []
    for t in range(x_part.size(0)):
        h = _zoneout(keep_h, h, reference.gru_recurrence(x_part[t], h, w_hh, b_hh))
        outputs.append(h)
    return torch.stack(outputs), h


def _rnn_loop(x_part: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, relu: bool,
              keep_h: Tensor | None) -> tuple[Tensor, Tensor]:
    outputs: list[Tensor] = []
    for t in range(x_part.size(0)):
        h = _zoneout(keep_h, h, reference.rnn_recurrence(x_part[t], h, w_hh, b_hh, relu))
        outputs.append(h)
    return torch.stack(outputs), h


@functools.cache
def _scripted(loop):
    """The TorchScript form of a loop, compiled on the first export that needs it."""
    return torch.jit.script(loop)


def _scan(loop, x_part: Tensor, states: tuple, *args):
    """`loop` as torch's scan over x_part's first dim: the form torch.export keeps as a
    loop. Returns (outputs [T, ...], *final states) like the loops."""
    from torch._higher_order_ops.scan import scan

    def combine(carry, x_t):
        # One step of `loop`: the loop over a length-1 sequence.
        result = loop(x_t.unsqueeze(0), *carry, *args)
        # scan's outputs may not alias each other or the inputs.
        return tuple(s.clone() for s in result[1:]), result[0][0].clone()

    # scan compiles `combine` with dynamo, which caches what it compiled on the code
    # object: a later scan (the next layer, the next export) would reuse or recompile that
    # entry for other symbolic shapes, and its scan then fails to decompose (the body
    # returns a SymInt; torch 2.13). A copy of the code object per scan starts afresh.
    combine = types.FunctionType(combine.__code__.replace(), combine.__globals__,
                                 combine.__name__, combine.__defaults__, combine.__closure__)
    final, outputs = scan(combine, states, x_part)
    return (outputs, *final)


def _run_loop(loop, x_part: Tensor, states: tuple, *args):
    if torch.jit.is_tracing():
        return _scripted(loop)(x_part, *states, *args)
    return _scan(loop, x_part, states, *args)


# ---------------------------------------------------------------- layers

def _direction(cell: str, nonlinearity: str, x_part: Tensor, w, h0: Tensor,
               c0: Tensor | None, keep_h: Tensor | None, keep_c: Tensor | None,
               ln: dict | None, reverse: bool):
    """One direction over its input products x_part [T, B, G*H] (a view is fine):
    (output [T, B, P], h_n [B, P], c_n [B, H] or None)."""
    if reverse:
        x_part = x_part.flip(0)
    if ln is not None:
        result = _run_loop(_layer_norm_lstm_loop, x_part, (h0, c0), w.w_hh, ln["hh"], w.b_ih,
                           w.b_hh, ln["c_weight"], ln["c_bias"], c0.shape[1])
    elif cell == "lstm":
        result = _run_loop(_lstm_loop, x_part, (h0, c0), w.w_hh, w.b_hh, w.w_hr, keep_h, keep_c)
    elif cell == "gru":
        result = _run_loop(_gru_loop, x_part, (h0,), w.w_hh, w.b_hh, keep_h)
    else:
        result = _run_loop(_rnn_loop, x_part, (h0,), w.w_hh, w.b_hh, nonlinearity == "relu",
                           keep_h)
    output = result[0].flip(0) if reverse else result[0]
    return output, result[1], result[2] if cell == "lstm" else None


def _check_exportable(cell: str, batch_sizes, train: bool, dropout: float, num_layers: int,
                      zoneout_h: float, zoneout_c: float) -> None:
    from torch.onnx.errors import OnnxExporterError  # torch.onnx loads on first use only

    if batch_sizes is not None:
        raise OnnxExporterError(
            f"Unsupported: ONNX export of a PackedSequence through a {cell.upper()} with "
            "proj_size, zoneout or layer_norm; export it on padded input")
    if train and (zoneout_h or zoneout_c or (dropout > 0 and num_layers > 1)):
        raise OnnxExporterError(
            f"Unsupported: ONNX export of {cell.upper()} zoneout or dropout in training mode "
            "(random draws); export the model in eval mode")


def _input_part(x: Tensor, w, ln: dict | None, time_major: bool) -> Tensor:
    """The input products of every step, [T, B, G*H], from x [T, B, I] (time_major) or
    [B, T, I] (then a transposed view). A time-major x goes through rows [T*B, I]: the
    second layer's scan fails to decompose when its input products come from a 3-d
    product of the first scan's output (torch 2.13)."""
    rows = x.reshape(-1, x.shape[-1]) if time_major else x
    if ln is not None:
        part = reference.layer_norm_input(rows, w.w_ih, ln["ih"])
    else:
        part = torch.nn.functional.linear(rows, w.w_ih, w.b_ih)
    return part.view(-1, x.shape[1], part.shape[-1]) if time_major else part.transpose(0, 1)


def _keep(p: float, size: int, like: Tensor) -> Tensor | None:
    """Zoneout's weight of the previous state in evaluation (its expectation p), [size]."""
    return torch.full((size,), p, dtype=like.dtype, device=like.device) if p else None


def export_layers(cell: str, input: Tensor, hx, params, has_biases: bool, num_layers: int,
                  dropout: float, train: bool, bidirectional: bool, batch_first: bool = False,
                  batch_sizes: Tensor | None = None, nonlinearity: str = "tanh", *,
                  zoneout_h: float = 0.0, zoneout_c: float = 0.0, layer_norm=None):
    """A layer call inside an ONNX export (Note [ONNX export]), with the functional
    signature of rnnkernels.functional.lstm / gru / rnn; hx is (h0, c0) for the LSTM.

    Layers in the sequence's own layout, no rows layout and no copy of a batch-first input:
    a transposing copy would add a guard torch.export cannot prove for a dynamic batch."""
    h0, c0 = hx if cell == "lstm" else (hx, None)
    zoneout_c = zoneout_c if cell == "lstm" else 0.0
    _check_exportable(cell, batch_sizes, train, dropout, num_layers, zoneout_h, zoneout_c)
    if layer_norm is not None:
        _layers.check_layer_norm_options(_layers.projection_size(hx), zoneout_h, zoneout_c)
    directions = 2 if bidirectional else 1
    layers = _layers.split_weights(params, has_biases, num_layers, directions)
    ln_layers = (_layers.split_layer_norm(layer_norm, has_biases, num_layers, directions)
                 if layer_norm is not None else [None] * num_layers)
    keep_h = _keep(zoneout_h, h0.shape[2], input)
    keep_c = None if c0 is None else _keep(zoneout_c, c0.shape[2], input)
    x, time_major = input, not batch_first
    h_n, c_n = [], []
    for layer, dirs in enumerate(layers):
        outputs = []
        for d, w in enumerate(dirs):
            index = layer * directions + d
            ln = None if ln_layers[layer] is None else ln_layers[layer][d]
            output, h, c = _direction(cell, nonlinearity, _input_part(x, w, ln, time_major),
                                      w, h0[index], None if c0 is None else c0[index], keep_h,
                                      keep_c, ln, reverse=d == 1)
            outputs.append(output)
            h_n.append(h)
            c_n.append(c)
        x, time_major = torch.cat(outputs, 2) if directions > 1 else outputs[0], True
    output = x.transpose(0, 1) if batch_first else x
    if cell == "lstm":
        return output, torch.stack(h_n, 0), torch.stack(c_n, 0)
    return output, torch.stack(h_n, 0)
