"""Gradients with a graph for the op pair (Note [double backward] in csrc/double_backward.h).

rnn_layer's backward, when it runs with create_graph=True, calls ``recompute_backward``
with its saved inputs: the layer is rerun through rnnkernels.reference (plain tensor ops,
differentiable to any order) and differentiated with create_graph=True. Each input slot
is first given its own alias (``view_as``), so that a tensor passed in two slots (tied
weights) gets each slot's own gradient, not their sum twice.
"""

from __future__ import annotations

import torch

from . import reference
from ._ext import _C

def _rnn_layer_inputs(slots, mode, has_biases, has_projection):
    """rnn_layer's x, weights (csrc/host/layer.h's order), h0 (, c0) -> the reference's
    (cell, x, dirs, h0, c0, ln_dirs, nonlinearity)."""
    cell = "lstm" if mode in ("lstm", "ln_lstm") else mode[:3]
    layer_norm = mode == "ln_lstm"
    per = 2 + 2 * has_biases + (3 + has_biases if layer_norm else has_projection)
    x, rest = slots[0], slots[1:]
    c0 = rest.pop() if cell == "lstm" else None
    h0 = rest.pop()
    dirs, ln_dirs = [], []
    for d in range(len(rest) // per):
        taken = iter(rest[d * per:(d + 1) * per])
        w = dict(w_ih=next(taken), w_hh=next(taken))
        w["b_ih"], w["b_hh"] = (next(taken), next(taken)) if has_biases else (None, None)
        w["w_hr"] = next(taken) if has_projection else None
        dirs.append(w)
        if layer_norm:
            ln_dirs.append(dict(ih=next(taken), hh=next(taken), c_weight=next(taken),
                                c_bias=next(taken) if has_biases else None))
    nonlinearity = "relu" if mode == "rnn_relu" else "tanh"
    return cell, x, dirs, h0, c0, ln_dirs if layer_norm else None, nonlinearity


def recompute_backward(op, inputs, counts, batch_sizes, zoneout, mode, grads, needs):
    """Gradients of the op's outputs (weighted by ``grads``) w.r.t. ``inputs``, with a graph.

    op: rnnkernels::rnn_layer; inputs: x, weights, h0 (, c0); counts: (has_biases,
    has_projection); mode: rnn_layer's mode. grads: of output, h_n (, c_n), None where
    absent. Returns one gradient (or None) per input.
    """
    result = [None] * len(inputs)
    wanted = [i for i, need in enumerate(needs) if need]
    if not wanted or all(g is None for g in grads):
        return result
    with torch.enable_grad():
        slots = [t.view_as(t) if need else t for t, need in zip(inputs, needs)]
        if op != "rnnkernels::rnn_layer":
            raise RuntimeError(f"recompute_backward: unknown op {op}")
        cell, x, dirs, h0, c0, ln_dirs, nonlinearity = _rnn_layer_inputs(
            list(slots), mode, bool(counts[0]), bool(counts[1]))
        outputs = reference.run_layer(cell, x, dirs, h0, c0, _batch_sizes(x, h0, batch_sizes),
                                      zoneout, nonlinearity, ln_dirs=ln_dirs)
        return _gradients(outputs, grads, slots, wanted, result)


def _batch_sizes(x, h0, batch_sizes) -> list[int]:
    if batch_sizes is None:
        batch = h0.shape[1]
        return [batch] * (x.shape[0] // batch) if batch else []
    return [int(b) for b in batch_sizes]


def _gradients(outputs, grads, slots, wanted, result):
    """autograd.grad of the outputs weighted by grads, with a graph, into result's slots."""
    pairs = [(out, g) for out, g in zip(outputs, grads) if g is not None and out is not None]
    got = torch.autograd.grad([out for out, _ in pairs], [slots[i] for i in wanted],
                              [g for _, g in pairs], create_graph=True, allow_unused=True)
    for i, g in zip(wanted, got):
        result[i] = g
    return result


_C._set_recompute_backward(recompute_backward)
