"""The fake (meta) kernels of the op pair torch.ops.rnnkernels.rnn_layer / rnn_layer_backward.

The schemas live in csrc/op_library.cpp, the weights' layout and the shapes in
csrc/host/layer.h, the autograd Function in csrc/autograd.cpp. rnn_layer runs one layer
(one or two directions) of any mode over the whole sequence from its input x;
rnn_layer_backward returns the gradients of x, of every weight, of h0 (and c0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ext import _C  # also registers the schemas and kernels

_ops = torch.ops.rnnkernels

# Workspace floats per hidden unit and row, as the kernels store them; with zoneout the
# LSTM also keeps c after zoneout and the RNN h before it. Defined once, in
# csrc/include/rnnkernels/cell_math.h; the opcheck tests compare these fakes with the ops.
_WORKSPACE_SLOTS = _C._workspace_widths()
WORKSPACE_PER_HIDDEN = {cell: _WORKSPACE_SLOTS[cell][0] for cell in ("lstm", "gru", "rnn")}
WORKSPACE_PER_HIDDEN_ZONEOUT = {cell: _WORKSPACE_SLOTS[cell][1] for cell in ("lstm", "gru", "rnn")}


def _workspace_width(cell: str, hidden: int, zoneout) -> int:
    table = WORKSPACE_PER_HIDDEN if zoneout is None else WORKSPACE_PER_HIDDEN_ZONEOUT
    return table[cell] * hidden


def layer_norm_lstm_workspace_width(hidden: int) -> int:
    """i, f, g, o, the normalised product, c, the normalised c, two rstd (cell_math.h)."""
    slots, extra = _WORKSPACE_SLOTS["layer_norm_lstm"]
    return slots * hidden + extra


def _workspace_dtype(h0: Tensor) -> torch.dtype:
    """float32 for bfloat16/float16 calls (cell state and saved gates stay in float32)."""
    return torch.float32 if h0.dtype in (torch.bfloat16, torch.float16) else h0.dtype


# ---------------------------------------------------------------- fakes

# The results have h0's dtype (the weights'): on CUDA the host's x_proj may be float32 for
# 16-bit weights (Note [cuda x_proj in float32] in csrc/cuda/recurrence_common.h).
LSTM_MODES = ("lstm", "ln_lstm")
_GATES = {"lstm": 4, "ln_lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def cell_of(mode: str) -> str:
    """The cell of rnn_layer's mode: lstm, gru or rnn."""
    return "lstm" if mode in LSTM_MODES else mode[:3]


def weights_per_direction(mode: str, has_biases: bool, has_projection: bool) -> int:
    """Weights per direction of rnn_layer (csrc/host/layer.h: weights_per_direction)."""
    biases = 2 if has_biases else 0
    if mode == "ln_lstm":
        return 2 + biases + 3 + int(has_biases)
    return 2 + biases + int(has_projection)


def _rnn_layer_workspace_width(mode: str, hidden: int, zoneout) -> int:
    if mode == "ln_lstm":
        return layer_norm_lstm_workspace_width(hidden)
    return _workspace_width(cell_of(mode), hidden, zoneout)


@torch.library.register_fake("rnnkernels::rnn_layer")
def _rnn_layer_fake(mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes, zoneout,
                    need_workspace):
    n, b, p = x.shape[0], h0.shape[1], h0.shape[2]
    d = len(weights) // weights_per_direction(mode, has_biases, has_projection)
    h = weights[1].shape[0] // _GATES[mode]
    return (
        h0.new_empty((n, d * p)),
        h0.new_empty((d, b, p)),
        h0.new_empty((d, b, h)) if mode in LSTM_MODES else h0.new_empty((0,)),
        h0.new_empty((d, n if need_workspace else 0, _rnn_layer_workspace_width(mode, h, zoneout)),
                     dtype=_workspace_dtype(h0)),
    )


@torch.library.register_fake("rnnkernels::rnn_layer_backward")
def _rnn_layer_backward_fake(mode, x, weights, has_biases, has_projection, h0, c0, output,
                             workspace, batch_sizes, zoneout, grad_output, grad_h_n, grad_c_n,
                             need_input_grad):
    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    return (
        like(x) if need_input_grad else x.new_empty((0,)),
        [like(w) for w in weights],
        like(h0),
        like(c0) if mode in LSTM_MODES else h0.new_empty((0,)),
    )


# Autograd: a C++ autograd Function registered at the Autograd key (csrc/autograd.cpp,
# see Note [autograd in C++] there).

rnn_layer = _ops.rnn_layer
rnn_layer_backward = _ops.rnn_layer_backward
