"""Batching rules of the op pair for torch.vmap (Note [vmap rules]).

Note [vmap rules]
An RNN layer is batch-parallel: sample b of a batch never meets sample b'. So a vmapped
dimension of size V over x, h0, c0 or zoneout folds into the batch, and rnn_layer runs once
on a batch of B*V rows a step. The fold is batch-major (row b*V + v), which keeps the
PackedSequence rule that a step's active rows are a prefix: with batch_sizes, step t holds
batch_sizes[t]*V rows. In rows layout x [N, I] that is x.transpose(0, 1) of the vmapped
[V, N, I], whatever the step structure, and h0 [V, D, B, P] becomes [D, B*V, P].
What cannot fold runs once per v and is stacked: a vmapped weight (each v its own layer),
and rnn_layer_backward, whose weight gradients are per v (a fold would sum them over v).
That backward rule is what batched gradients use (autograd.grad(..., is_grads_batched=True),
gradcheck's check_batched_grad, jacobian(vectorize=True)): the grads are vmapped, the saved
tensors are not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops

def _moved(t: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """t with its vmapped dimension first (expanded when t is not vmapped)."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(dim, 0)


def _select(value, dim, v: int):
    """Sample v of a vmapped argument (a tensor, a list of tensors, or anything unbatched)."""
    if isinstance(value, (list, tuple)):
        return [_select(t, d, v) for t, d in zip(value, dim or [None] * len(value))]
    if isinstance(value, Tensor) and dim is not None:
        return value.select(dim, v)
    return value


def _per_sample(op, info, in_dims, args):
    """op once per v, each result stacked along a new first dimension."""
    if info.batch_size == 0:
        raise ValueError(f"{op}: cannot run a vmapped batch of size 0")
    results = [op(*(_select(a, d, v) for a, d in zip(args, in_dims)))
               for v in range(info.batch_size)]
    stacked = []
    for parts in zip(*results):
        if isinstance(parts[0], (list, tuple)):
            stacked.append([torch.stack(p) for p in zip(*parts)])
        else:
            stacked.append(torch.stack(parts))
    dims = tuple([0] * len(s) if isinstance(s, list) else 0 for s in stacked)
    return tuple(stacked), dims


def _fold_state(t: Tensor | None, dim, size: int) -> Tensor | None:
    """[V, D, B, X] -> [D, B*V, X] (batch-major)."""
    if t is None:
        return None
    t = _moved(t, dim, size)
    return t.permute(1, 2, 0, 3).reshape(t.shape[1], t.shape[2] * size, t.shape[3])


def _unfold_state(t: Tensor, size: int) -> Tensor:
    """[D, B*V, X] -> [V, D, B, X]."""
    return t.view(t.shape[0], -1, size, t.shape[2]).permute(2, 0, 1, 3)


def _fold_rows(t: Tensor | None, dim, size: int, row_dim: int) -> Tensor | None:
    """The vmapped [V, ..., N, ...] (rows at row_dim of the unbatched tensor) -> [..., N*V, ...]."""
    if t is None:
        return None
    t = _moved(t, dim, size).movedim(0, row_dim + 1)
    shape = list(t.shape)
    return t.reshape(shape[:row_dim] + [shape[row_dim] * size] + shape[row_dim + 2:])


def _unfold_rows(t: Tensor, size: int, row_dim: int) -> Tensor:
    """[..., N*V, ...] -> [V, ..., N, ...]."""
    shape = list(t.shape)
    t = t.view(shape[:row_dim] + [shape[row_dim] // size, size] + shape[row_dim + 1:])
    return t.movedim(row_dim + 1, 0)


@torch.library.register_vmap("rnnkernels::rnn_layer")
def _rnn_layer_vmap(info, in_dims, mode, x, weights, has_biases, has_projection, h0, c0,
                    batch_sizes, zoneout, need_workspace):
    args = (mode, x, weights, has_biases, has_projection, h0, c0, batch_sizes, zoneout,
            need_workspace)
    x_dim, w_dims, h0_dim, c0_dim, bs_dim, z_dim = (in_dims[1], in_dims[2], in_dims[5],
                                                    in_dims[6], in_dims[7], in_dims[8])
    if bs_dim is not None:
        raise ValueError("rnnkernels::rnn_layer: batch_sizes cannot be vmapped (it is the "
                         "PackedSequence's step structure, shared by every sample)")
    if any(d is not None for d in (w_dims or [])):
        return _per_sample(ops.rnn_layer, info, in_dims, args)
    size = info.batch_size
    if size == 0:
        raise ValueError("rnnkernels.rnn_layer: cannot run a vmapped batch of size 0")
    output, h_n, c_n, workspace = ops.rnn_layer(
        mode, _fold_rows(x, x_dim, size, 0), weights, has_biases, has_projection,
        _fold_state(h0, h0_dim, size), _fold_state(c0, c0_dim, size),
        None if batch_sizes is None else batch_sizes * size,
        _fold_rows(zoneout, z_dim, size, 1), need_workspace)
    lstm = mode in ops.LSTM_MODES
    return ((_unfold_rows(output, size, 0), _unfold_state(h_n, size),
             _unfold_state(c_n, size) if lstm else c_n, _unfold_rows(workspace, size, 1)),
            (0, 0, 0 if lstm else None, 0))


@torch.library.register_vmap("rnnkernels::rnn_layer_backward")
def _rnn_layer_backward_vmap(info, in_dims, *args):
    return _per_sample(ops.rnn_layer_backward, info, in_dims, args)
