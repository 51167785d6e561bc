"""Fake (meta) kernels of the torch.ops.rnnkernels recurrence ops.

The schemas live in csrc/rnnkernels.cpp, the autograd Functions in csrc/autograd.cpp.
Each forward op runs one layer (one or two directions) over the whole sequence; its
backward op returns the gradients of the projected input, the initial state and the
recurrent weights, and autograd carries grad_x_proj back through the caller's input
projection.
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


def _gates_hidden(w_hh: list[Tensor], gates: int) -> int:
    return w_hh[0].shape[0] // gates


def _workspace_dtype(x_proj: Tensor) -> torch.dtype:
    """float32 for bfloat16/float16 calls (cell state and saved gates stay in float32)."""
    return torch.float32 if x_proj.dtype in (torch.bfloat16, torch.float16) else x_proj.dtype


# The results of the lstm/gru/rnn forward ops have h0's dtype, which is x_proj's except on
# CUDA, where x_proj may be float32 for 16-bit weights (Note [cuda x_proj in float32] in
# csrc/cuda/recurrence_cuda.cpp).


# ---------------------------------------------------------------- fakes


@torch.library.register_fake("rnnkernels::input_projection")
def _input_projection_fake(x, w_ih, b_ih):
    return x.new_empty((x.shape[0], len(w_ih) * w_ih[0].shape[0]))


@torch.library.register_fake("rnnkernels::input_projection_backward")
def _input_projection_backward_fake(grad_x_proj, x, w_ih, need_input_grad, has_bias):
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_input_grad \
        else x.new_empty((0,))
    grad_w = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in w_ih]
    grad_b = [x.new_empty((w.shape[0],)) for w in w_ih] if has_bias else []
    return grad_x, grad_w, grad_b


@torch.library.register_fake("rnnkernels::lstm_forward")
def _lstm_forward_fake(x_proj, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace,
                       zoneout=None):
    n, d, b = x_proj.shape[0], len(w_hh), h0.shape[1]
    h, p = _gates_hidden(w_hh, 4), h0.shape[2]
    return (
        h0.new_empty((n, d * p)),
        h0.new_empty((d, b, p)),
        h0.new_empty((d, b, h)),
        h0.new_empty((d, n if need_workspace else 0, _workspace_width("lstm", h, zoneout)),
                     dtype=_workspace_dtype(h0)),
    )


@torch.library.register_fake("rnnkernels::lstm_forward_fused")
def _lstm_forward_fused_fake(x, w_ih, b_ih, w_hh, b_hh, w_hr, h0, c0, batch_sizes,
                             need_workspace, zoneout=None):
    # The results of lstm_forward: x has the rows and dtype x_proj would have.
    return _lstm_forward_fake(x, w_hh, b_hh, w_hr, h0, c0, batch_sizes, need_workspace, zoneout)


@torch.library.register_fake("rnnkernels::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, b_hh, w_hr, h0, c0, output,
                        workspace, batch_sizes, zoneout=None):
    n, d = output.shape[0], len(w_hh)
    h = _gates_hidden(w_hh, 4)
    return (
        output.new_empty((n, d * 4 * h)),
        torch.empty_like(h0, memory_format=torch.contiguous_format),
        torch.empty_like(c0, memory_format=torch.contiguous_format),
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in w_hh],
        [torch.empty_like(b, memory_format=torch.contiguous_format) for b in b_hh],
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in w_hr],
    )


def layer_norm_lstm_workspace_width(hidden: int) -> int:
    """i, f, g, o, the normalised product, c, the normalised c, two rstd (cell_math.h)."""
    slots, extra = _WORKSPACE_SLOTS["layer_norm_lstm"]
    return slots * hidden + extra


@torch.library.register_fake("rnnkernels::layer_norm_lstm_forward")
def _layer_norm_lstm_forward_fake(x_side, w_hh, ln_hh_weight, ln_c_weight, ln_c_bias, h0, c0,
                                  batch_sizes, need_workspace):
    n, d, b = x_side.shape[0], len(w_hh), h0.shape[1]
    h = _gates_hidden(w_hh, 4)
    return (
        x_side.new_empty((n, d * h)),
        x_side.new_empty((d, b, h)),
        x_side.new_empty((d, b, h)),
        x_side.new_empty((d, n if need_workspace else 0, layer_norm_lstm_workspace_width(h)),
                         dtype=_workspace_dtype(x_side)),
    )


@torch.library.register_fake("rnnkernels::layer_norm_lstm_backward")
def _layer_norm_lstm_backward_fake(grad_output, grad_h_n, grad_c_n, w_hh, ln_hh_weight,
                                   ln_c_weight, ln_c_bias, h0, c0, output, workspace,
                                   batch_sizes):
    n, d = output.shape[0], len(w_hh)
    h = _gates_hidden(w_hh, 4)

    def like_all(ts):
        return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in ts]

    return (
        output.new_empty((n, d * 4 * h)),
        torch.empty_like(h0, memory_format=torch.contiguous_format),
        torch.empty_like(c0, memory_format=torch.contiguous_format),
        like_all(w_hh), like_all(ln_hh_weight), like_all(ln_c_weight), like_all(ln_c_bias),
    )


@torch.library.register_fake("rnnkernels::gru_forward")
def _gru_forward_fake(x_proj, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout=None):
    n, d, b = x_proj.shape[0], len(w_hh), h0.shape[1]
    h = _gates_hidden(w_hh, 3)
    return (
        h0.new_empty((n, d * h)),
        h0.new_empty((d, b, h)),
        h0.new_empty((d, n if need_workspace else 0, _workspace_width("gru", h, zoneout)),
                     dtype=_workspace_dtype(h0)),
    )


@torch.library.register_fake("rnnkernels::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, w_hh, b_hh, h0, output, workspace, batch_sizes,
                       zoneout=None):
    n, d = output.shape[0], len(w_hh)
    h = _gates_hidden(w_hh, 3)
    return (
        output.new_empty((n, d * 3 * h)),
        torch.empty_like(h0, memory_format=torch.contiguous_format),
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in w_hh],
        [torch.empty_like(b, memory_format=torch.contiguous_format) for b in b_hh],
    )


@torch.library.register_fake("rnnkernels::rnn_forward")
def _rnn_forward_fake(x_proj, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                      zoneout=None):
    n, d, b = x_proj.shape[0], len(w_hh), h0.shape[1]
    h = _gates_hidden(w_hh, 1)
    return (
        h0.new_empty((n, d * h)),
        h0.new_empty((d, b, h)),
        h0.new_empty((d, n if need_workspace else 0, _workspace_width("rnn", h, zoneout)),
                     dtype=_workspace_dtype(h0)),
    )


@torch.library.register_fake("rnnkernels::rnn_backward")
def _rnn_backward_fake(grad_output, grad_h_n, w_hh, b_hh, h0, output, workspace, batch_sizes,
                       nonlinearity, zoneout=None):
    n, d = output.shape[0], len(w_hh)
    h = _gates_hidden(w_hh, 1)
    return (
        output.new_empty((n, d * h)),
        torch.empty_like(h0, memory_format=torch.contiguous_format),
        [torch.empty_like(w, memory_format=torch.contiguous_format) for w in w_hh],
        [torch.empty_like(b, memory_format=torch.contiguous_format) for b in b_hh],
    )


@torch.library.register_fake("rnnkernels::gru_forward_fused")
def _gru_forward_fused_fake(x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, need_workspace,
                            zoneout=None):
    # The results of gru_forward: x has the rows and dtype x_proj would have.
    return _gru_forward_fake(x, w_hh, b_hh, h0, batch_sizes, need_workspace, zoneout)


@torch.library.register_fake("rnnkernels::rnn_forward_fused")
def _rnn_forward_fused_fake(x, w_ih, b_ih, w_hh, b_hh, h0, batch_sizes, nonlinearity,
                            need_workspace, zoneout=None):
    return _rnn_forward_fake(x, w_hh, b_hh, h0, batch_sizes, nonlinearity, need_workspace,
                             zoneout)


# Autograd: C++ autograd Functions registered at the Autograd key (csrc/autograd.cpp,
# see Note [autograd in C++] there).

input_projection = _ops.input_projection
input_projection_backward = _ops.input_projection_backward
lstm_forward = _ops.lstm_forward
lstm_forward_fused = _ops.lstm_forward_fused
lstm_backward = _ops.lstm_backward
layer_norm_lstm_forward = _ops.layer_norm_lstm_forward
layer_norm_lstm_backward = _ops.layer_norm_lstm_backward
gru_forward = _ops.gru_forward
gru_backward = _ops.gru_backward
rnn_forward = _ops.rnn_forward
gru_forward_fused = _ops.gru_forward_fused
rnn_forward_fused = _ops.rnn_forward_fused
rnn_backward = _ops.rnn_backward
