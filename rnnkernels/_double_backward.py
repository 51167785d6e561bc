"""Gradients with a graph for the fused ops (Note [double backward] in csrc/double_backward.h).

A fused op's backward, when it runs with create_graph=True, calls ``recompute_backward``
with its saved inputs: the layer is rerun through rnnkernels.reference (plain tensor ops,
differentiable to any order) and differentiated with create_graph=True. Each input slot
is first given its own alias (``view_as``), so that a tensor passed in two slots (tied
weights) gets each slot's own gradient, not their sum twice.
"""

from __future__ import annotations

import torch

from . import reference
from ._ext import _C

_CELLS = {
    "rnnkernels::lstm_forward_fused": "lstm",
    "rnnkernels::gru_forward_fused": "gru",
    "rnnkernels::rnn_forward_fused": "rnn",
}


def recompute_backward(op, inputs, counts, batch_sizes, zoneout, nonlinearity, grads, needs):
    """Gradients of the op's outputs (weighted by ``grads``) w.r.t. ``inputs``, with a graph.

    inputs: x, w_ih[D], b_ih[nb], w_hh[D], b_hh[nb], (w_hr[np],) h0 (, c0) with counts
    (D, nb(, np)); grads: of output, h_n (, c_n), None where absent. Returns one gradient
    (or None) per input.
    """
    cell = _CELLS[op]
    result = [None] * len(inputs)
    wanted = [i for i, need in enumerate(needs) if need]
    if not wanted or all(g is None for g in grads):
        return result
    with torch.enable_grad():
        slots = [t.view_as(t) if need else t for t, need in zip(inputs, needs)]
        directions, n_bias = counts[0], counts[1]
        n_proj = counts[2] if cell == "lstm" else 0
        taken = iter(slots)
        x = next(taken)
        w_ih = [next(taken) for _ in range(directions)]
        b_ih = [next(taken) for _ in range(n_bias)]
        w_hh = [next(taken) for _ in range(directions)]
        b_hh = [next(taken) for _ in range(n_bias)]
        w_hr = [next(taken) for _ in range(n_proj)]
        h0 = next(taken)
        c0 = next(taken) if cell == "lstm" else None
        dirs = [dict(w_ih=w_ih[d], w_hh=w_hh[d], b_ih=b_ih[d] if n_bias else None,
                     b_hh=b_hh[d] if n_bias else None, w_hr=w_hr[d] if n_proj else None)
                for d in range(directions)]
        if batch_sizes is None:
            batch = h0.shape[1]
            sizes = [batch] * (x.shape[0] // batch) if batch else []
        else:
            sizes = [int(b) for b in batch_sizes]
        outputs = reference.run_layer(cell, x, dirs, h0, c0, sizes, zoneout,
                                      nonlinearity or "tanh")
        pairs = [(out, g) for out, g in zip(outputs, grads) if g is not None and out is not None]
        got = torch.autograd.grad([out for out, _ in pairs], [slots[i] for i in wanted],
                                  [g for _, g in pairs], create_graph=True, allow_unused=True)
    for i, g in zip(wanted, got):
        result[i] = g
    return result


_C._set_recompute_backward(recompute_backward)
